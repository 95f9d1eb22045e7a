"""A remote tracking server: a real `mlflow server` on 127.0.0.1 receives a sweep from two
processes, read back over its REST API, and keeps the runs' artifacts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from helpers.cli import only_sweep_folder, run_cli
from helpers.configs import TINY

from src import schema

# ---------------------------------------------------------------- a remote MLflow server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rest(base: str, path: str, body: dict | None = None) -> dict:
    """GET (body None) or POST JSON to the server's REST API."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}{path}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, proxied artifacts), stopped by its
    PID when the module's tests are done."""
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    log = open(root / "server.log", "w")
    server = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{root}/server.db",
            "--artifacts-destination", str(root / "artifacts"), "--workers", "1",
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # ~20 s here
        while True:
            assert server.poll() is None, (root / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        yield {"uri": base, "root": root}
    finally:
        os.kill(server.pid, signal.SIGTERM)  # the server stops its uvicorn and job-runner children
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)  # its session: the server and its children
            server.wait(timeout=10)
        log.close()
    with pytest.raises(OSError):  # nothing listens any more
        urllib.request.urlopen(f"{base}/health", timeout=2)


@pytest.fixture(scope="module")
def server_sweep(mlflow_server, tmp_path_factory, data_dir):
    """A tiny joblib sweep logged into the server: two processes writing to one store."""
    output_dir = tmp_path_factory.mktemp("client")
    result = run_cli(
        "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "schedule=decay_lr,increase_bs", *TINY,
        f"tracking.uri={mlflow_server['uri']}", output_dir=output_dir, data_dir=data_dir, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {"output_dir": output_dir, "sweep_id": only_sweep_folder(output_dir).name}


@pytest.mark.slow
def test_server_receives_a_sweep_read_back_over_rest(mlflow_server, server_sweep):
    base = mlflow_server["uri"]
    experiment = rest(base, f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={schema.default_experiment()}")["experiment"]
    found = rest(base, "/api/2.0/mlflow/runs/search", {
        "experiment_ids": [experiment["experiment_id"]],
        "filter": f"tags.{schema.SWEEP_TAG} = '{server_sweep['sweep_id']}'",
    })
    def tags_of(run):
        return {t["key"]: t["value"] for t in run["data"]["tags"]}

    # The sweep is one parent run (kind=sweep) and a child run per job.
    parents = [run for run in found["runs"] if tags_of(run).get(schema.KIND_TAG) == schema.SWEEP_KIND]
    runs = [run for run in found["runs"] if schema.KIND_TAG not in tags_of(run)]
    assert [parent["info"]["status"] for parent in parents] == ["FINISHED"]
    tags = [tags_of(run) for run in runs]
    assert sorted(t[schema.SCHEDULE_TAG] for t in tags) == ["decay_lr", "increase_bs"]
    assert {t["mlflow.parentRunId"] for t in tags} == {parents[0]["info"]["run_id"]}
    assert [run["info"]["status"] for run in runs] == ["FINISHED", "FINISHED"]
    for run in runs:
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        assert {schema.FINAL_VAL_ACC, schema.TOTAL_PARAM_UPDATES, schema.VAL_LOSS} <= metrics.keys()
        history_ = rest(base, f"/api/2.0/mlflow/metrics/get-history?run_id={run['info']['run_id']}&metric_key={schema.VAL_LOSS}")
        assert sorted(m["step"] for m in history_["metrics"]) == [0, 1, 2]
    assert not (server_sweep["output_dir"] / "mlflow.db").exists()  # nothing went to a local store


@pytest.mark.slow
def test_server_keeps_the_artifacts(mlflow_server, server_sweep):
    """With a server, a run's artifacts (config.yaml) go through the server's artifact proxy to
    its --artifacts-destination, so every machine's runs keep them in one place."""
    base = mlflow_server["uri"]
    experiment = rest(base, f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={schema.default_experiment()}")["experiment"]
    assert experiment["artifact_location"].startswith("mlflow-artifacts:")
    stored = list((mlflow_server["root"] / "artifacts").rglob(schema.CONFIG_ARTIFACT))
    assert len(stored) == 2
    assert not (server_sweep["output_dir"] / "mlartifacts").exists()
