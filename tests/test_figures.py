"""`python -m src.figures` on a real tiny sweep in a temp store: the files, the numbers (recomputed
from MlflowClient), a failed run, grouping, and the one-line errors."""

import csv
import json
import statistics
import subprocess
import sys

import pytest
from conftest import ROOT, TINY, client_for, run_cli
from matplotlib.image import imread

from src.figures import HISTORIES, RunData, group_keys, report_rows, write_all
from src.tracking import tracked_run

FIGURES = ["fig1_lr_batch_size", "fig2a_val_acc_epochs", "fig2b_val_acc_updates", "fig3_train_loss_epochs",
           "noise_scale_epochs", "val_loss_wall_time", "totals_bars"]
REPORTS = ["report.md", "report.csv", "report.json"]
REPORTED = ["final_val_acc", "final_val_loss", "best_val_loss", "total_param_updates", "total_wall_time_s",
            "train_time_s"]


def run_figures(store, *args: str) -> subprocess.CompletedProcess:
    """A real `python -m src.figures` reading the store in `store`, writing under store/figures."""
    return subprocess.run(
        [sys.executable, "-m", "src.figures", f"--tracking-uri=sqlite:///{store}/mlflow.db",
         f"--output-dir={store}/figures", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )


def read_csv(path) -> dict[str, dict[str, str]]:
    with open(path) as file:
        return {row["schedule"]: row for row in csv.DictReader(file)}


def runs_of(client, sweep_id: str, kind: str | None = None):
    """The runs of one sweep: training runs (kind None) or summary runs (kind 'summary')."""
    experiment = client.get_experiment_by_name("batch-size-study").experiment_id
    return [run for run in client.search_runs([experiment], f"tags.sweep_id = '{sweep_id}'")
            if run.data.tags.get("kind") == kind]


def recomputed(client, run, name: str) -> float:
    if name == "best_val_loss":
        return min(m.value for m in client.get_metric_history(run.info.run_id, "val_loss"))
    return run.data.metrics[name]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_dir):
    """One real tiny sweep (3 schedules x 2 seeds, digits, 3 epochs), then the command on it with
    every default but the store and the output folder: (store folder, sweep_id, figures folder)."""
    store = tmp_path_factory.mktemp("sweep")
    result = run_cli("-m", "schedule=decay_lr,increase_bs,hybrid", "trainer.seed=0,1", *TINY, "trainer.epochs=3",
                     output_dir=store, data_dir=data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    client = client_for(store)
    [sweep_id] = {run.data.tags["sweep_id"] for run in client.search_runs(
        [client.get_experiment_by_name("batch-size-study").experiment_id])}
    made = run_figures(store)
    assert made.returncode == 0, made.stderr[-3000:]
    return store, sweep_id, store / "figures" / sweep_id


def test_writes_every_file_with_readable_figures(sweep):
    store, sweep_id, folder = sweep
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{stem}.{ext}" for stem in FIGURES for ext in ("png", "svg")] + REPORTS)
    for stem in FIGURES:
        png = folder / f"{stem}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, stem
        height, width, _ = imread(png).shape
        assert width >= 500 and height >= 350, stem
        svg = (folder / f"{stem}.svg").read_text()  # text kept as text: the title can be read back
        assert sweep_id in svg and "increase_bs" in svg, stem
    fig2b = (folder / "fig2b_val_acc_updates.svg").read_text()
    assert "parameter updates (optimizer steps, log scale)" in fig2b and "increase_bs (2 seeds)" in fig2b


def test_report_numbers_are_the_stores(sweep):
    store, sweep_id, folder = sweep
    client = client_for(store)
    rows = read_csv(folder / "report.csv")
    assert list(rows) == ["decay_lr", "hybrid", "increase_bs"]  # the baseline first
    runs = runs_of(client, sweep_id)
    means = {}
    for schedule, row in rows.items():
        mine = [run for run in runs if run.data.tags["schedule"] == schedule]
        assert (row["n_finished"], row["n_failed"]) == ("2", "0")
        for name in REPORTED:
            values = [recomputed(client, run, name) for run in mine]
            means[schedule, name] = statistics.fmean(values)
            assert float(row[f"{name}_mean"]) == pytest.approx(means[schedule, name], rel=1e-12), name
            assert float(row[f"{name}_std"]) == pytest.approx(statistics.stdev(values), rel=1e-9, abs=1e-15), name
    for schedule, row in rows.items():
        for name in REPORTED:
            ratio = means[schedule, name] / means["decay_lr", name]
            assert float(row[f"{name}_ratio"]) == pytest.approx(ratio, rel=1e-12), name
        gap = 100 * (means[schedule, "final_val_acc"] - means["decay_lr", "final_val_acc"])
        expected = "" if schedule == "decay_lr" else str(gap >= -1.0)
        assert row["matched"] == expected
        assert "fewer parameter updates" in row["verdict"] or schedule == "decay_lr"
    report = json.loads((folder / "report.json").read_text())
    assert report["sweep_id"] == sweep_id and report["failed_runs"] == []
    assert [r["final_val_acc_mean"] for r in report["rows"]] == [float(r["final_val_acc_mean"]) for r in rows.values()]
    md = (folder / "report.md").read_text()
    assert f"# Sweep {sweep_id}" in md and "## Failed runs\n\nNone." in md


def test_files_are_artifacts_of_a_summary_run_never_read_back(sweep):
    store, sweep_id, folder = sweep
    client = client_for(store)
    [summary] = runs_of(client, sweep_id, kind="summary")
    assert summary.info.status == "FINISHED"
    logged = {a.path for a in client.list_artifacts(summary.info.run_id)}
    assert logged == {p.name for p in folder.iterdir()}
    assert len(runs_of(client, sweep_id)) == 6  # the summary run is not a training run


def test_a_failed_run_is_reported_and_left_out(sweep, make_cfg, data_dir):
    """A newer sweep in the same store with one FAILED run: the default picks it (newest)."""
    store, _, _ = sweep
    result = run_cli("-m", "schedule=decay_lr,increase_bs", *TINY, "tracking.sweep_id=with-failure",
                     output_dir=store, data_dir=data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    cfg = make_cfg(*TINY, "schedule=increase_bs", "trainer.seed=1", output_dir=store)
    with pytest.raises(MemoryError):
        with tracked_run(cfg, {"schedule": "increase_bs", "seed": "1", "sweep_id": "with-failure"},
                         run_name="increase_bs seed=1"):
            raise MemoryError("simulated out of memory")

    made = run_figures(store)
    assert made.returncode == 0, made.stderr[-3000:]
    folder = store / "figures" / "with-failure"
    rows = read_csv(folder / "report.csv")
    assert (rows["increase_bs"]["n_finished"], rows["increase_bs"]["n_failed"]) == ("1", "1")
    [finished] = [r for r in runs_of(client_for(store), "with-failure")
                  if r.data.tags["schedule"] == "increase_bs" and r.info.status == "FINISHED"]
    assert float(rows["increase_bs"]["final_val_acc_mean"]) == finished.data.metrics["final_val_acc"]
    assert rows["increase_bs"]["final_val_acc_std"] == ""  # one finished run: no spread
    md = (folder / "report.md").read_text()
    failed_section = md[md.index("## Failed runs"):]
    assert "| increase_bs seed=1 | increase_bs | 1 | FAILED | MemoryError: simulated out of memory |" in failed_section
    assert "| increase_bs | 1 (+1 failed) |" in md
    assert "increase_bs (1 seed, 1 failed, left out)" in (folder / "fig2a_val_acc_epochs.svg").read_text()
    [failed] = json.loads((folder / "report.json").read_text())["failed_runs"]
    assert failed["status"] == "FAILED" and failed["error"] == "MemoryError: simulated out of memory"


@pytest.mark.parametrize("args,message", [
    (["--sweep-id", "nope"], "error: no runs with sweep_id 'nope' in experiment 'batch-size-study' (known sweeps: "),
    (["--experiment", "nope"], "error: no experiment 'nope' (known experiments: "),
], ids=["sweep", "experiment"])
def test_unknown_sweep_or_experiment_is_one_line_and_exit_2(sweep, args, message):
    store, sweep_id, _ = sweep
    result = run_figures(store, *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(message), result.stderr
    assert "Traceback" not in result.stderr
    assert not (store / "figures" / "nope").exists()


def fake_run(schedule: str, seed: int, acc: float, updates: float, **params: str) -> RunData:
    """A finished 3-epoch run as plain data: no store, no training."""
    history = {name: [3.0, 2.0, 1.0] for name in HISTORIES}
    history.update(val_acc=[acc / 2, acc * 0.9, acc], param_updates=[updates / 3, updates * 2 / 3, updates])
    metrics = {"final_val_acc": acc, "final_val_loss": 1.0, "total_param_updates": updates,
               "total_wall_time_s": 2.0, "train_time_s": 1.5}
    return RunData(f"{schedule}-{seed}", "FINISHED", seed, {"schedule": schedule, "seed": str(seed)},
                   params, metrics, history)


def test_verdict_uses_the_tolerance_in_accuracy_points():
    runs = [fake_run("decay_lr", 0, 0.850, 600), fake_run("increase_bs", 0, 0.842, 200),
            fake_run("hybrid", 0, 0.838, 300)]
    rows = {row["schedule"]: row for row in report_rows(runs, baseline="decay_lr", tolerance=1.0)}
    assert rows["decay_lr"]["matched"] is None and rows["decay_lr"]["verdict"] == "baseline"
    assert rows["increase_bs"]["matched"] is True
    assert rows["increase_bs"]["verdict"].endswith("with 3.0x fewer parameter updates")
    assert rows["hybrid"]["matched"] is False and "-1.20 points" in rows["hybrid"]["verdict"]
    rows = {row["schedule"]: row for row in report_rows(runs, baseline="hybrid", tolerance=1.0)}
    assert rows["decay_lr"]["total_param_updates_ratio"] == 2.0
    assert rows["decay_lr"]["verdict"].endswith("with 2.0x as many parameter updates")


def test_a_second_swept_key_gives_one_figure_set_per_value(tmp_path):
    # schedule.batch_size changes with the schedule only: part of the schedule, not a sweep axis
    runs = [fake_run(schedule, seed, 0.8, 100.0, **{"schedule.factor": factor, "schedule.batch_size": size})
            for schedule, size in (("decay_lr", "64"), ("increase_bs", "32"))
            for factor in ("2", "5") for seed in (0, 1)]
    assert group_keys(runs) == ["schedule.factor"]
    write_all(tmp_path, "fake-sweep", "batch-size-study", runs)
    for value in ("2", "5"):
        assert (tmp_path / f"schedule.factor={value}" / "fig2b_val_acc_updates.png").stat().st_size > 10_000
    md = (tmp_path / "report.md").read_text()
    assert "## schedule.factor=2" in md and "## schedule.factor=5" in md
    with open(tmp_path / "report.csv") as file:
        groups = [(row["group"], row["schedule"]) for row in csv.DictReader(file)]
    assert groups == [("schedule.factor=2", "decay_lr"), ("schedule.factor=2", "increase_bs"),
                      ("schedule.factor=5", "decay_lr"), ("schedule.factor=5", "increase_bs")]
