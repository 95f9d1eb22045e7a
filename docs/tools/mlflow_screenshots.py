"""Regenerate README's MLflow screenshots (docs/mlflow_runs_table.png, docs/mlflow_run_page.png).

A maintainer's tool, not a dependency of the project: it drives a system Chromium (Debian:
`apt-get install chromium`) through Playwright in a venv of its own (Playwright's browser download
is not needed) against `mlflow ui` serving a store that holds one finished sweep after `src.figures`:

    python3 -m venv /tmp/pw && /tmp/pw/bin/pip install playwright
    python -m src.run -m schedule=decay_lr,increase_bs,hybrid paths.output_dir=/tmp/shots/outputs
    python -m src.figures paths.output_dir=/tmp/shots/outputs
    /tmp/pw/bin/python docs/tools/mlflow_screenshots.py /tmp/shots/outputs   # ~1 minute
    pngquant --force --ext .png --quality 70-90 docs/mlflow_*.png   # 270 kB -> 100 kB, no visible loss

It starts `mlflow ui` (this project's .venv; --mlflow names another) on a free port of 127.0.0.1, finds the experiment's
newest sweep (`kind=sweep` tag) and its runs through the REST API, sets the runs table's view
state (columns, widths, the sweep expanded) the way the UI stores it in the browser's
localStorage, takes both screenshots, and stops the server.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[2]
# The runs table's columns in order, with their widths (px), the verdict tags' after them: the UI
# applies stored widths only to the columns listed in its stored column order.
TABLE_COLUMNS = {
    "attributes.`Run Name`": 320, "runDateAndNestInfo": 135, "attributes.`Dataset`": 240,
    "duration": 80, "attributes.`Source`": 85, "attributes.`Models`": 85,
    "metrics.`final_val_acc`": 110, "metrics.`total_param_updates`": 150, "metrics.`train_time_s`": 110,
}
VERDICT_WIDTH = 140  # px, per verdict.<schedule> tag column
TABLE_VIEW = (1920, 470)  # px: the table and its footer, no empty rows below
RUN_VIEW = (1600, 1700)  # px: tall enough that the overview's Logged models table is on screen
RUN_CLIP_HEIGHT = 1330  # px: the run page down to its Logged models row
LOAD_TIMEOUT_MS = 60_000  # the UI loads the runs, then their models, asynchronously
SETTLE_MS = 1000  # after the last load, for the table's layout and the icons


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def search(base: str, experiment_id: str, filter_string: str) -> list[dict]:
    body = {"experiment_ids": [experiment_id], "filter": filter_string, "order_by": ["attributes.start_time DESC"]}
    return api(base, "runs/search", body).get("runs", [])


def tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def wait_for(base: str, server: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"mlflow ui exited with {server.returncode}")
        try:
            urllib.request.urlopen(f"{base}/health", timeout=2)
            return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"mlflow ui did not answer at {base} in {seconds:.0f} s")


def new_page(browser, base: str, size: tuple[int, int]):
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    page.goto(f"{base}/")
    # The assistant panel opens by itself on a first visit and would take a third of the width.
    page.evaluate("localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
                  "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true')")
    return page


def wait_until_shown(page, text: str, count: int) -> None:
    """Wait until `text` is on the page `count` times (a run's rows, its models), then let it settle."""
    page.wait_for_function("([text, count]) => document.body.innerText.split(text).length - 1 >= count",
                           arg=[text, count], timeout=LOAD_TIMEOUT_MS)
    page.wait_for_timeout(SETTLE_MS)


def shoot(base: str, experiment_id: str, parent: dict, children: list[dict], child: dict, chromium: str,
          out: Path) -> None:
    model_id = child["outputs"]["model_outputs"][0]["model_id"]
    model_name = api(base, f"logged-models/{model_id}")["model"]["info"]["name"]
    verdicts = sorted(k for k in tags(parent) if k.startswith("verdict."))
    widths = {**TABLE_COLUMNS, **{f"tags.`{k}`": VERDICT_WIDTH for k in verdicts}}
    state = {"selectedColumns": ["attributes.`Source`", "attributes.`Models`", "attributes.`Dataset`",
                                 *(c for c in widths if c.startswith(("metrics.", "tags.")))],
             "columnOrder": list(widths), "columnWidths": widths,
             "runsExpanded": {parent["info"]["run_id"]: True}}
    view = "?workflowType=machine_learning"  # the Model training view, not GenAI
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = new_page(browser, base, TABLE_VIEW)
            page.evaluate("([k, v]) => localStorage.setItem(k, v)",
                          [f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment_id}"]-ReactComponentState',
                           json.dumps(state)])
            page.goto(f"{base}/#/experiments/{experiment_id}/runs{view}")
            for run in children:
                wait_until_shown(page, tags(run)["mlflow.runName"], 1)
            wait_until_shown(page, model_name, len(children))
            page.screenshot(path=out / "mlflow_runs_table.png")

            page = new_page(browser, base, RUN_VIEW)
            page.goto(f"{base}/#/experiments/{experiment_id}/runs/{child['info']['run_id']}{view}")
            wait_until_shown(page, "Logged models (1)", 1)
            # The final metrics are the ones linked to the logged model (its Models column).
            page.get_by_placeholder("Search metrics").fill("final")
            wait_until_shown(page, model_name, 4)  # final_{val,test}_{loss,acc}
            page.screenshot(path=out / "mlflow_run_page.png",
                            clip={"x": 0, "y": 0, "width": RUN_VIEW[0], "height": RUN_CLIP_HEIGHT})
            print(f"chromium {browser.version}")
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path, help="paths.output_dir of the sweep (holds mlflow.db)")
    parser.add_argument("--experiment", default="batch-size-study")
    parser.add_argument("--schedule", default="increase_bs", help="the run whose page is shot")
    parser.add_argument("--mlflow", default=str(ROOT / ".venv/bin/mlflow"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    store = args.output_dir.resolve() / "mlflow.db"
    if not store.is_file():
        raise SystemExit(f"{store}: no MLflow store")
    print(subprocess.run([args.mlflow, "--version"], capture_output=True, text=True, check=True).stdout.strip())
    base = f"http://127.0.0.1:{free_port()}"
    server = subprocess.Popen([args.mlflow, "ui", "--backend-store-uri", f"sqlite:///{store}", "--host", "127.0.0.1",
                               "--port", base.rsplit(":", 1)[1]], start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(base, server)
        name = urllib.parse.quote(args.experiment)
        eid = api(base, f"experiments/get-by-name?experiment_name={name}")["experiment"]["experiment_id"]
        sweeps = search(base, eid, "tags.kind = 'sweep'")
        if not sweeps:
            raise SystemExit(f"{args.experiment}: no sweep (kind=sweep tag)")
        parent = sweeps[0]
        children = search(base, eid, f"tags.mlflow.parentRunId = '{parent['info']['run_id']}'")
        shown = [run for run in children if tags(run).get("schedule") == args.schedule
                 and run.get("outputs", {}).get("model_outputs")]
        if not shown:
            raise SystemExit(f"sweep {parent['info']['run_id']}: no {args.schedule} run with a logged model")
        shoot(base, eid, parent, children, shown[0], args.chromium, args.out)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    for name in ("mlflow_runs_table.png", "mlflow_run_page.png"):
        print(f"{args.out / name}: {(args.out / name).stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
