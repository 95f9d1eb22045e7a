"""`python -m src.figures`: the paper's figures and a results table from the runs of one sweep.

Nothing is retrained: the runs are read back from the MLflow store. Writes PNG + SVG figures and
report.md / report.csv / report.json under <output-dir>/<sweep_id>/, and logs the same files as
artifacts of a summary run (tag kind=summary) in the same experiment.

Three layers, so the numbers can be checked without images: load_sweep (store -> plain RunData),
report_rows (RunData -> one row of numbers per schedule) and the plot_* functions (-> figures).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
from mlflow.tracking import MlflowClient

from src.tracking import SQLITE_PREFIX

# Per-epoch metrics the figures and the report read (step = the 0-based epoch).
HISTORIES = ("train_loss", "val_loss", "val_acc", "lr", "batch_size", "noise_scale",
             "param_updates", "wall_time_s")
# Per run, the report's numbers: name -> heading in report.md. best_val_loss is the lowest
# val_loss of any epoch; the others are logged once per run.
REPORTED = {
    "final_val_acc": "final val acc (%)",
    "final_val_loss": "final val loss",
    "best_val_loss": "best val loss",
    "total_param_updates": "param updates",
    "total_wall_time_s": "total wall time (s)",
    "train_time_s": "train time (s)",
}
# report.csv's columns (report.json's rows have the same keys). Ratios are of the means.
COLUMNS = ["group", "schedule", "n_finished", "n_failed",
           *(f"{name}_{stat}" for name in REPORTED for stat in ("mean", "std", "ratio")),
           "matched", "verdict"]
# Params a sweep may vary besides the schedule: one figure set and report section per value.
GROUP_KEYS = ("schedule.factor", "optimizer._target_", "optimizer.momentum", "model._target_",
              "dataset._target_", "trainer.epochs", "schedule.lr", "schedule.batch_size")
LINESTYLES = ("-", "--", ":", "-.")  # with colours, so curves that lie on each other stay visible
DPI = 100


class StoreError(Exception):
    """Nothing to report, in one line (main prints it and exits 2)."""


@dataclass
class RunData:
    """One training run, as plain data."""

    run_id: str
    status: str  # FINISHED, FAILED, KILLED, RUNNING
    start_time: int  # ms since the epoch
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]  # the last value of every metric: the once-per-run ones are finals
    history: dict[str, list[float]]  # per-epoch metric -> values at steps 0, 1, 2 ...

    @property
    def schedule(self) -> str:
        return self.tags.get("schedule", "?")

    @property
    def finished(self) -> bool:
        return self.status == "FINISHED"

    def reported(self, name: str) -> float:
        if name == "best_val_loss":
            return min(self.history["val_loss"])
        return self.metrics[name]


BySchedule = dict[str, list[RunData]]  # schedule -> its runs


# --- loading -----------------------------------------------------------------------------------


def _all_runs(client: MlflowClient, experiment_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _run_data(client: MlflowClient, run) -> RunData:
    history = {}
    for name in HISTORIES:
        by_step = {}  # an epoch logged twice (a resumed run) keeps its last value
        for point in sorted(client.get_metric_history(run.info.run_id, name), key=lambda m: m.timestamp):
            by_step[point.step] = point.value
        history[name] = [by_step[step] for step in sorted(by_step)]
    return RunData(run.info.run_id, run.info.status, run.info.start_time, dict(run.data.tags),
                   dict(run.data.params), dict(run.data.metrics), history)


def load_sweep(client: MlflowClient, experiment: str, sweep_id: str | None = None,
               tags: dict[str, str] | None = None) -> tuple[str, list[RunData]]:
    """(sweep_id, its training runs): the given sweep, or the newest (the greatest run start time)
    among the runs whose tags match `tags`. Summary runs (tag kind=summary) and runs superseded
    by a retrained one are never read."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        known = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise StoreError(f"no experiment '{experiment}' (known experiments: {known})")
    tags = tags or {}
    matching = " with tags " + ", ".join(f"{k}={v}" for k, v in tags.items()) if tags else ""
    runs = [
        run for run in _all_runs(client, found.experiment_id)
        if "sweep_id" in run.data.tags and run.data.tags.get("kind") != "summary"
        and "superseded_by" not in run.data.tags  # killed before its first checkpoint, retrained
        and all(run.data.tags.get(key) == value for key, value in tags.items())
    ]
    started: dict[str, int] = {}
    for run in runs:
        sweep = run.data.tags["sweep_id"]
        started[sweep] = max(started.get(sweep, 0), run.info.start_time)
    if sweep_id is None:
        if not started:
            raise StoreError(f"no runs{matching} in experiment '{experiment}'")
        sweep_id = max(started, key=started.get)
    elif sweep_id not in started:
        newest = sorted(started, key=started.get, reverse=True)
        known = ", ".join(newest[:10]) + (f" ... {len(newest)} in all" if len(newest) > 10 else "")
        raise StoreError(f"no runs with sweep_id '{sweep_id}'{matching} in experiment '{experiment}'"
                         f" (known sweeps: {known or 'none'})")
    chosen = [_run_data(client, run) for run in runs if run.data.tags["sweep_id"] == sweep_id]
    return sweep_id, sorted(chosen, key=lambda r: (r.schedule, r.tags.get("seed", ""), r.start_time))


# --- grouping and numbers ----------------------------------------------------------------------


def group_keys(runs: Sequence[RunData]) -> list[str]:
    """The GROUP_KEYS that take more than one value within one schedule: the sweep's other axes.
    A key that changes only with the schedule is part of what the schedule is."""
    keys = []
    for key in GROUP_KEYS:
        values = defaultdict(set)
        for run in runs:
            values[run.schedule].add(run.params.get(key))
        if any(len(v) > 1 for v in values.values()):
            keys.append(key)
    return keys


def group_runs(runs: Sequence[RunData]) -> dict[str, list[RunData]]:
    """label ('schedule.factor=2,model._target_=...', or '' when nothing else varies) -> runs."""
    keys = group_keys(runs)
    groups = defaultdict(list)
    for run in runs:
        groups[",".join(f"{key}={run.params.get(key)}" for key in keys)].append(run)
    return dict(sorted(groups.items()))


def by_schedule(runs: Sequence[RunData], baseline: str) -> BySchedule:
    """schedule -> runs, the baseline first (so it gets the first colour and the first row)."""
    grouped = defaultdict(list)
    for run in runs:
        grouped[run.schedule].append(run)
    return dict(sorted(grouped.items(), key=lambda item: (item[0] != baseline, item[0])))


def _ratio(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else value / base


def _updates_phrase(ratio: float) -> str:
    if ratio < 1:
        return f"{1 / ratio:.1f}x fewer parameter updates"
    return f"{ratio:.1f}x as many parameter updates"


def _verdict(row: dict, base: dict | None, baseline: str, tolerance: float) -> tuple[bool | None, str]:
    """(matched, one line). Matched = mean final accuracy no more than `tolerance` points below
    the baseline's."""
    if row["schedule"] == baseline:
        return None, "baseline"
    if not row["n_finished"]:
        return False, "no finished run"
    if base is None or not base["n_finished"]:
        return None, f"no finished {baseline} run to compare with"
    acc, base_acc = row["final_val_acc_mean"], base["final_val_acc_mean"]
    gap = 100 * (acc - base_acc)  # accuracy points
    updates = _updates_phrase(row["total_param_updates_ratio"])
    if gap >= -tolerance:
        return True, (f"matched {baseline}'s final accuracy within {tolerance:g} point(s) "
                      f"({acc:.2%} vs {base_acc:.2%}) with {updates}")
    return False, (f"did not match {baseline}'s final accuracy: {acc:.2%} vs {base_acc:.2%} "
                   f"({gap:+.2f} points, tolerance {tolerance:g}), with {updates}")


def report_rows(runs: Sequence[RunData], baseline: str = "decay_lr", tolerance: float = 1.0) -> list[dict]:
    """One row per schedule: run counts; mean, std (over seeds, finished runs only) and ratio of
    mean to the baseline's mean for each REPORTED number; the verdict. std needs two runs."""
    rows = []
    for schedule, runs_of in by_schedule(runs, baseline).items():
        finished = [run for run in runs_of if run.finished]
        row = {"schedule": schedule, "n_finished": len(finished), "n_failed": len(runs_of) - len(finished)}
        for name in REPORTED:
            values = [run.reported(name) for run in finished]
            row[f"{name}_mean"] = statistics.fmean(values) if values else None
            row[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else None
        rows.append(row)
    base = next((row for row in rows if row["schedule"] == baseline), None)
    for row in rows:
        for name in REPORTED:
            row[f"{name}_ratio"] = _ratio(row[f"{name}_mean"], base[f"{name}_mean"] if base else None)
        row["matched"], row["verdict"] = _verdict(row, base, baseline, tolerance)
    return [{column: row[column] for column in COLUMNS[1:]} for row in rows]


# --- figures -----------------------------------------------------------------------------------


def _styles(groups: BySchedule) -> dict[str, dict]:
    """schedule -> line style and legend label (with the number of seeds behind the curve)."""
    styles = {}
    for i, (schedule, runs) in enumerate(groups.items()):
        n_finished = sum(run.finished for run in runs)
        failed = len(runs) - n_finished
        label = f"{schedule} ({n_finished} seed{'s' * (n_finished != 1)}"
        label += f", {failed} failed, left out)" if failed else ")"
        styles[schedule] = {"color": f"C{i}", "linestyle": LINESTYLES[i % len(LINESTYLES)], "label": label}
    return styles


def _figure(title: str, ncols: int = 1) -> tuple[Figure, list]:
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4.2), squeeze=False, layout="constrained")
    fig.suptitle(title)
    return fig, list(axes[0])


def _seed_band(runs: Sequence[RunData], name: str, scale: float = 1.0):
    """Mean, min and max over runs of a per-epoch metric (cut to the shortest history)."""
    n = min(len(run.history[name]) for run in runs)
    values = scale * np.array([run.history[name][:n] for run in runs])
    return values.mean(0), values.min(0), values.max(0)


def _curves(ax, finished: BySchedule, styles: dict, y: str, x: str | None = None,
            y_scale: float = 1.0) -> None:
    """Mean over seeds of y against epochs trained (x None) or against the mean of metric x,
    with a min-max band over seeds."""
    for schedule, runs in finished.items():
        mean, low, high = _seed_band(runs, y, y_scale)
        xs = np.arange(1, len(mean) + 1) if x is None else _seed_band(runs, x)[0][: len(mean)]
        ax.plot(xs, mean, **styles[schedule])
        ax.fill_between(xs, low, high, color=styles[schedule]["color"], alpha=0.2, linewidth=0)
    ax.grid(alpha=0.3)
    ax.legend(title="mean over seeds, band: min to max", title_fontsize="small")


def _epoch_axis(ax) -> None:
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _steps(ax, finished: BySchedule, styles: dict, name: str) -> None:
    """A per-epoch setting (lr, B, g) as a step function: the value of step e holds over
    epochs [e, e + 1)."""
    for schedule, runs in finished.items():
        values = _seed_band(runs, name)[0]
        ax.step(np.arange(len(values) + 1), np.append(values, values[-1]), where="post", **styles[schedule])
    _epoch_axis(ax)
    ax.grid(alpha=0.3)
    ax.legend()


def plot_schedules(finished: BySchedule, styles: dict, title: str) -> Figure:
    """The paper's figure 1: learning rate and batch size against epochs."""
    fig, (lr, batch) = _figure(title, ncols=2)
    _steps(lr, finished, styles, "lr")
    lr.set_ylabel("learning rate")
    _steps(batch, finished, styles, "batch_size")
    batch.set_yscale("log")
    batch.set_ylabel("batch size (samples)")
    return fig


def plot_val_acc_epochs(finished: BySchedule, styles: dict, title: str) -> Figure:
    fig, (ax,) = _figure(title)
    _curves(ax, finished, styles, "val_acc", y_scale=100)
    _epoch_axis(ax)
    ax.set_ylabel("validation accuracy (%)")
    return fig


def plot_val_acc_updates(finished: BySchedule, styles: dict, title: str) -> Figure:
    fig, (ax,) = _figure(title)
    _curves(ax, finished, styles, "val_acc", x="param_updates", y_scale=100)
    ax.set(xscale="log", xlabel="parameter updates (optimizer steps, log scale)",
           ylabel="validation accuracy (%)")
    # plain numbers at 1, 2 and 5 x 10^k: a sweep often spans less than one decade
    ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    return fig


def plot_train_loss(finished: BySchedule, styles: dict, title: str) -> Figure:
    fig, (ax,) = _figure(title)
    _curves(ax, finished, styles, "train_loss")
    _epoch_axis(ax)
    ax.set_ylabel("training loss (cross-entropy, nats)")
    return fig


def plot_noise_scale(finished: BySchedule, styles: dict, title: str) -> Figure:
    fig, (ax,) = _figure(title)
    _steps(ax, finished, styles, "noise_scale")
    ax.set(yscale="log", ylabel="noise scale g = lr/(1-m) (N/B - 1)  (log scale)")
    return fig


def plot_val_loss_wall_time(finished: BySchedule, styles: dict, title: str) -> Figure:
    fig, (ax,) = _figure(title)
    _curves(ax, finished, styles, "val_loss", x="wall_time_s")
    ax.set(xlabel="training wall time (s)", ylabel="validation loss (cross-entropy, nats)")
    return fig


def plot_totals(rows: list[dict], styles: dict, title: str, baseline: str) -> Figure:
    """Bars of mean total wall time and parameter updates (std as error bars), each bar labelled
    with its ratio to the baseline."""
    fig, axes = _figure(title, ncols=2)
    rows = [row for row in rows if row["n_finished"]]
    names = [row["schedule"] for row in rows]
    for ax, name, label in zip(axes, ("total_wall_time_s", "total_param_updates"),
                               ("total wall time per run (s)", "parameter updates per run")):
        bars = ax.bar(names, [row[f"{name}_mean"] for row in rows],
                      yerr=[row[f"{name}_std"] or 0 for row in rows], capsize=4,
                      color=[styles[s]["color"] for s in names])
        ratios = [row[f"{name}_ratio"] for row in rows]
        ax.bar_label(bars, ["" if r is None else f"{r:.2f}x" for r in ratios], label_type="center")
        ax.set(ylabel=label, xlabel=f"schedule (in the bar: ratio to {baseline})")
        ax.grid(axis="y", alpha=0.3)
    return fig


# stem -> (heading, plot function of the finished runs by schedule); plot_totals reads the rows.
FIGURES = {
    "fig1_lr_batch_size": ("Fig. 1: learning rate and batch size", plot_schedules),
    "fig2a_val_acc_epochs": ("Fig. 2a: validation accuracy vs epochs", plot_val_acc_epochs),
    "fig2b_val_acc_updates": ("Fig. 2b: validation accuracy vs parameter updates", plot_val_acc_updates),
    "fig3_train_loss_epochs": ("Fig. 3: training loss vs epochs", plot_train_loss),
    "noise_scale_epochs": ("Noise scale vs epochs (equal g: the curves should overlap)", plot_noise_scale),
    "val_loss_wall_time": ("Validation loss vs wall time", plot_val_loss_wall_time),
}
TOTALS = ("totals_bars", "Total wall time and parameter updates (mean ± std over seeds)")


def write_figures(folder: Path, runs: Sequence[RunData], rows: list[dict], baseline: str,
                  title: str, dpi: int = DPI) -> list[Path]:
    """Every figure of one group, as PNG and SVG; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    groups = by_schedule(runs, baseline)
    styles = _styles(groups)
    finished = {s: [r for r in rs if r.finished] for s, rs in groups.items() if any(r.finished for r in rs)}
    figures = {stem: plot(finished, styles, f"{heading}\n{title}") for stem, (heading, plot) in FIGURES.items()}
    figures[TOTALS[0]] = plot_totals(rows, styles, f"{TOTALS[1]}\n{title}", baseline)
    written = []
    with plt.rc_context({"svg.fonttype": "none"}):  # SVG text stays text: searchable, editable
        for stem, fig in figures.items():
            for suffix in (".png", ".svg"):
                fig.savefig(folder / f"{stem}{suffix}", dpi=dpi)
                written.append(folder / f"{stem}{suffix}")
            plt.close(fig)
    return written


# --- report ------------------------------------------------------------------------------------


def _fmt(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    if name == "final_val_acc":
        return f"{100 * value:.2f}"
    if name == "total_param_updates":
        return f"{value:,.0f}"
    if name.endswith("_s"):
        return f"{value:.1f}"
    return f"{value:.4f}"


def _markdown_section(rows: list[dict], baseline: str, figure_folder: str) -> list[str]:
    lines = [
        "| schedule | runs | " + " | ".join(REPORTED.values()) + " |",
        "|---" * (len(REPORTED) + 2) + "|",
    ]
    for row in rows:
        runs = f"{row['n_finished']}" + (f" (+{row['n_failed']} failed)" if row["n_failed"] else "")
        cells = []
        for name in REPORTED:
            cell = _fmt(name, row[f"{name}_mean"])
            if row[f"{name}_std"] is not None:
                cell += f" ± {_fmt(name, row[f'{name}_std'])}"
            cells.append(cell)
        lines.append(f"| {row['schedule']} | {runs} | " + " | ".join(cells) + " |")
    lines += ["", f"Ratio of each mean to {baseline}'s:", "",
              "| schedule | " + " | ".join(REPORTED.values()) + " |",
              "|---" * (len(REPORTED) + 1) + "|"]
    for row in rows:
        ratios = ["-" if row[f"{n}_ratio"] is None else f"{row[f'{n}_ratio']:.2f}x" for n in REPORTED]
        lines.append(f"| {row['schedule']} | " + " | ".join(ratios) + " |")
    lines += ["", "Verdict:", ""]
    lines += [f"- **{row['schedule']}**: {row['verdict']}" for row in rows]
    lines += ["", f"![validation accuracy vs parameter updates]({figure_folder}fig2b_val_acc_updates.png)",
              f"![validation accuracy vs epochs]({figure_folder}fig2a_val_acc_epochs.png)", ""]
    return lines


def write_report(folder: Path, sweep_id: str, experiment: str, sections: dict[str, list[dict]],
                 failed: list[RunData], keys: list[str], baseline: str, tolerance: float) -> list[Path]:
    """report.md, report.csv and report.json: the same numbers, one row per (group, schedule)."""
    n_runs = sum(row["n_finished"] + row["n_failed"] for rows in sections.values() for row in rows)
    md = [
        f"# Sweep {sweep_id}",
        "",
        f"Experiment `{experiment}`: {n_runs} runs, {len(failed)} of them not finished (FAILED, KILLED "
        f"or still RUNNING: listed under Failed runs, left out of every mean). Mean ± std over seeds of the finished runs; accuracy in %, times "
        f"in seconds (wall time: the whole job; train time: the training steps only). Verdict: "
        f"matched = mean final validation accuracy at most {tolerance:g} point(s) below {baseline}'s.",
        "",
    ]
    for label, rows in sections.items():
        if label:
            md += [f"## {label}", ""]
        md += _markdown_section(rows, baseline, f"{_folder_name(label)}/" if label else "")
    md += ["## Failed runs", ""]
    if failed:
        md += ["| run | schedule | seed | status | error |", "|---|---|---|---|---|"]
        md += [f"| {r.tags.get('mlflow.runName', r.run_id)} | {r.schedule} | {r.tags.get('seed', '?')} | "
               f"{r.status} | {_cell(r.tags.get('error', '-'))} |" for r in failed]
    else:
        md.append("None.")
    (folder / "report.md").write_text("\n".join(md) + "\n")

    flat = [{"group": label, **row} for label, rows in sections.items() for row in rows]
    with open(folder / "report.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(flat)
    summary = {
        "sweep_id": sweep_id, "experiment": experiment, "baseline": baseline,
        "tolerance_points": tolerance, "group_keys": keys, "rows": flat,
        "failed_runs": [{"run_id": r.run_id, "name": r.tags.get("mlflow.runName"), "schedule": r.schedule,
                         "seed": r.tags.get("seed"), "status": r.status, "error": r.tags.get("error")}
                        for r in failed],
    }
    (folder / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    return [folder / name for name in ("report.md", "report.csv", "report.json")]


def _cell(text: str) -> str:
    """Text as one markdown table cell: an error message may hold newlines or pipes."""
    return " ".join(text.split()).replace("|", "\\|")


def _folder_name(label: str) -> str:
    return re.sub(r"[^\w.=,+-]", "_", label)


def write_all(folder: Path, sweep_id: str, experiment: str, runs: Sequence[RunData],
              baseline: str = "decay_lr", tolerance: float = 1.0) -> list[Path]:
    """Figures (one set per group) and the report for one sweep's runs; returns the files."""
    groups = group_runs(runs)
    sections = {label: report_rows(group, baseline, tolerance) for label, group in groups.items()}
    written = []
    for label, group in groups.items():
        title = f"sweep {sweep_id}" + (f"  [{label}]" if label else "")
        written += write_figures(folder / _folder_name(label), group, sections[label], baseline, title)
    failed = [run for run in runs if not run.finished]
    written += write_report(folder, sweep_id, experiment, sections, failed, group_keys(runs), baseline, tolerance)
    return written


# --- command line ------------------------------------------------------------------------------


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    return key, value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m src.figures",
        description="Figures and a results table for one sweep, read from the MLflow store.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--tracking-uri", default="sqlite:///outputs/mlflow.db", help="the MLflow store")
    parser.add_argument("--experiment", default="batch-size-study", help="the MLflow experiment")
    parser.add_argument("--sweep-id", help="the sweep to report; none: the newest (latest run start)")
    parser.add_argument("--tag", type=_tag, action="append", default=[], metavar="KEY=VALUE",
                        help="read only runs with this tag (repeatable)")
    parser.add_argument("--baseline", default="decay_lr", help="the schedule ratios are taken to")
    parser.add_argument("--tolerance", type=float, default=1.0,
                        help="accuracy points below the baseline that still count as matched")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/figures"),
                        help="files go to OUTPUT_DIR/<sweep_id>/")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    uri = args.tracking_uri
    try:
        if uri.startswith(SQLITE_PREFIX) and not Path(uri[len(SQLITE_PREFIX):]).exists():
            raise StoreError(f"no MLflow store at {uri[len(SQLITE_PREFIX):]}")  # MLflow would create one
        client = MlflowClient(uri)
        sweep_id, runs = load_sweep(client, args.experiment, args.sweep_id, dict(args.tag))
    except StoreError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    folder = args.output_dir / _folder_name(sweep_id)
    experiment_id = client.get_experiment_by_name(args.experiment).experiment_id
    summary = client.create_run(experiment_id, tags={
        "sweep_id": sweep_id, "kind": "summary", "mlflow.runName": f"figures {sweep_id}"}).info.run_id
    status = "FAILED"
    try:
        written = write_all(folder, sweep_id, args.experiment, runs, args.baseline, args.tolerance)
        for path in written:
            parent = path.parent.relative_to(folder).as_posix()
            client.log_artifact(summary, str(path), artifact_path=None if parent == "." else parent)
        status = "FINISHED"
    finally:
        client.set_terminated(summary, status)
    print(f"{len(written)} files for sweep {sweep_id} ({len(runs)} runs) in {folder}; "
          f"logged to MLflow run {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
