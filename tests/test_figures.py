"""`python -m src.figures` on real tiny sweeps in temp stores: the files, the numbers and the
verdicts (recomputed from MlflowClient), the environment block, grouping by the whole config, a
failed run, and the one-line errors. Plus the verdict rules on runs made up as plain data."""

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import run_cli
from helpers.configs import ROOT, TINY
from helpers.runs import fake_run
from helpers.store import client_for
from matplotlib.image import imread
from scipy import stats

from src import schema
from src.figures import write_all
from src.groups import Curve, group_runs, pick_baseline, sweep_axes
from src.plots import plot_totals, styles_for
from src.runs import is_training_run, load_sweep, metric_history, sweeps_of
from src.verdict import change_steps, compare, minus_one_spread, report_rows, series
from src.errors import ConfigError
from src.stores import open_existing_store
from src.tracking import tracked_run

# The tiny config with a model that learns digits in 3 epochs (~85%, not the 8% of the default
# bottleneck MLP): accuracies that differ between schedules and seeds.
LEARNS = [*TINY, "model.hidden=[128]", "model.dropout_after=[]"]
PAPER = ["fig1_lr_batch_size", "fig2a_train_loss_epochs", "fig2b_train_loss_updates", "fig3_test_acc_epochs",
         "fig5_test_acc_updates"]
EXTRA = ["noise_scale_epochs", "val_loss_wall_time", "totals_bars"]
REPORTS = ["report.md", "report.csv", "report.json"]
REPORTED = [schema.FINAL_TEST_ACC, schema.FINAL_TEST_LOSS, schema.FINAL_VAL_ACC, schema.FINAL_VAL_LOSS, "best_val_loss", schema.TOTAL_PARAM_UPDATES,
            schema.TOTAL_WALL_TIME_S, schema.TRAIN_TIME_S]
EXPERIMENT = schema.default_experiment()  # where the runs go by default, and what the command reads
T_975_2 = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom (from tables)
OPTIONS = {"margin_error_fraction": 0.1, "confidence": 0.95, "power": 0.8, "min_seeds": 3}


def run_figures(store, *args: str, output_dir=None) -> subprocess.CompletedProcess:
    """A real `python -m src.figures` reading the store in `store`, writing under store/figures."""
    return subprocess.run(
        [sys.executable, "-m", "src.figures", f"--tracking-uri=sqlite:///{store}/mlflow.db",
         f"--output-dir={output_dir or store / 'figures'}", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )


def read_csv(path) -> dict[str, dict[str, str]]:
    with open(path) as file:
        return {row["schedule"]: row for row in csv.DictReader(file)}


def runs_of(client, sweep_id: str, kind: str | None = None):
    """The runs of one sweep: training runs (kind None: those that list it in their sweeps tag,
    re-run sweeps' skipped runs included) or its parent run (kind schema.SWEEP_KIND)."""
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    if kind is None:
        return [run for run in client.search_runs([experiment]) if schema.KIND_TAG not in run.data.tags
                and sweep_id in sweeps_of(run.data.tags)]
    return [run for run in client.search_runs([experiment], f"tags.{schema.SWEEP_TAG} = '{sweep_id}'")
            if run.data.tags.get(schema.KIND_TAG) == kind]


def values_of(client, run, name: str) -> list[float]:
    return metric_history(client, run.info.run_id, name)


def recomputed(client, run, name: str) -> float:
    if name == "best_val_loss":
        return min(values_of(client, run, schema.VAL_LOSS))
    return run.data.metrics[name]


# The tests on the sweep below run with the slow tests (CI runs them too): its 9 runs and two
# figure commands take ~25 s on 2 idle cores, a tenth of the default suite's 5 minutes.
uses_the_sweep = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_dir):
    """One real tiny sweep (3 schedules x 3 seeds, digits, 3 epochs, milestones after epochs 1
    and 2), then the command on it with every default but the store and the output folder, and
    once more reading seed 0 only (--tag seed=0: what a 1-seed sweep gives it):
    (store folder, sweep_id, figures folder, 1-seed figures folder)."""
    store = tmp_path_factory.mktemp("sweep")
    result = run_cli("-m", "schedule=decay_lr,increase_bs,hybrid", "trainer.seed=0,1,2", *LEARNS,
                     output_dir=store, data_dir=data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    client = client_for(store)
    [sweep_id] = {run.data.tags[schema.SWEEP_TAG] for run in client.search_runs(
        [client.get_experiment_by_name(EXPERIMENT).experiment_id])}
    made = run_figures(store)
    assert made.returncode == 0, made.stderr[-3000:]
    one = run_figures(store, "--tag", "seed=0", output_dir=store / "one_seed")
    assert one.returncode == 0, one.stderr[-3000:]
    return store, sweep_id, store / "figures" / sweep_id, store / "one_seed" / sweep_id


@uses_the_sweep
def test_writes_the_paper_figures_and_the_extras(sweep):
    store, sweep_id, folder, _ = sweep
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{stem}.{ext}" for stem in PAPER + EXTRA for ext in ("png", "svg")] + REPORTS)
    for stem in PAPER + EXTRA:
        png = folder / f"{stem}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, stem
        height, width, _ = imread(png).shape
        assert width >= 500 and height >= 350, stem
        svg = (folder / f"{stem}.svg").read_text()  # text kept as text: the title can be read back
        assert sweep_id in svg and "increase_bs" in svg, stem
    client = client_for(store)
    updates = {run.data.tags[schema.SCHEDULE_TAG]: run.data.metrics[schema.TOTAL_PARAM_UPDATES]
               for run in runs_of(client, sweep_id)}
    for stem, axis in [("fig2a_train_loss_epochs", "training cross-entropy"), ("fig2b_train_loss_updates", "parameter updates"),
                       ("fig3_test_acc_epochs", "epochs trained"), ("fig5_test_acc_updates", "parameter updates")]:
        svg = (folder / f"{stem}.svg").read_text()
        assert axis in svg and "increase_bs (3 seeds)" in svg and "band: min to max" in svg, stem
        for schedule, total in updates.items():  # every curve's end is labelled with its updates
            assert f"{schedule}: {total:,.0f} updates" in svg, (stem, schedule)
    assert "milestone: lr, B or g changes" in (folder / "fig1_lr_batch_size.svg").read_text()
    # decay_lr and increase_bs have equal lr·N/(B(1-m)) but not equal g: the figure says why
    assert "the -1 in N/B - 1 does not scale with B" in (folder / "noise_scale_epochs.svg").read_text()


@uses_the_sweep
def test_report_numbers_are_the_stores(sweep):
    store, sweep_id, folder, _ = sweep
    client = client_for(store)
    rows = read_csv(folder / "report.csv")
    assert list(rows) == ["decay_lr", "hybrid", "increase_bs"]  # the baseline first
    runs = runs_of(client, sweep_id)
    means = {}
    for schedule, row in rows.items():
        mine = [run for run in runs if run.data.tags[schema.SCHEDULE_TAG] == schedule]
        assert (row["n_finished"], row["n_failed"], row["baseline"]) == ("3", "0", "decay_lr")
        for name in REPORTED:
            values = [recomputed(client, run, name) for run in mine]
            means[schedule, name] = statistics.fmean(values)
            assert float(row[f"{name}_mean"]) == pytest.approx(means[schedule, name], rel=1e-12), name
            assert float(row[f"{name}_std"]) == pytest.approx(statistics.stdev(values), rel=1e-9, abs=1e-15), name
    for schedule, row in rows.items():
        for name in REPORTED:
            ratio = means[schedule, name] / means["decay_lr", name]
            assert float(row[f"{name}_ratio"]) == pytest.approx(ratio, rel=1e-12), name
    report = json.loads((folder / "report.json").read_text())
    assert report["sweep_id"] == sweep_id and report["failed_runs"] == [] and report["axes"] == []
    assert [r["final_val_acc_mean"] for r in report["rows"]] == [float(r["final_val_acc_mean"]) for r in rows.values()]
    md = (folder / "report.md").read_text()
    assert f"# Sweep {sweep_id}" in md and "## Failed runs\n\nNone." in md


@uses_the_sweep
def test_verdicts_pair_seeds_with_a_t_interval_in_points(sweep):
    """Recomputed from the store: per seed, the final TEST accuracy difference to decay_lr in
    points; its mean, and the t interval on the atanh scale; the word from the interval against
    ± 0.1 of decay_lr's test error rate; the first milestone (epoch 2: milestones after epoch 1
    and 2)."""
    store, sweep_id, folder, _ = sweep
    client = client_for(store)
    by = {(r.data.tags[schema.SCHEDULE_TAG], r.data.tags[schema.SEED_TAG]): r for r in runs_of(client, sweep_id)}
    rows = read_csv(folder / "report.csv")
    assert rows["decay_lr"]["verdict"] == "baseline"
    md = (folder / "report.md").read_text()
    for schedule in ("hybrid", "increase_bs"):
        row = rows[schedule]
        diffs = np.array([100 * (by[schedule, s].data.metrics[schema.FINAL_TEST_ACC]
                                 - by["decay_lr", s].data.metrics[schema.FINAL_TEST_ACC]) for s in "012"])
        z = np.arctanh(diffs / 100)
        half = T_975_2 * z.std(ddof=1) / np.sqrt(3)
        low, high = 100 * np.tanh(z.mean() - half), 100 * np.tanh(z.mean() + half)
        margin = 0.1 * 100 * (1 - np.mean([by["decay_lr", s].data.metrics[schema.FINAL_TEST_ACC] for s in "012"]))
        assert row["n_paired"] == "3" and float(row["margin_points"]) == pytest.approx(margin)
        assert float(row["acc_diff_points"]) == pytest.approx(diffs.mean(), abs=1e-9)
        assert (float(row["acc_diff_low"]), float(row["acc_diff_high"])) == pytest.approx((low, high), abs=1e-9)
        word = "matched" if -margin <= low and high <= margin else "differs" if high < -margin or low > margin else (
            "inconclusive")
        # the whole curve decides with the end: a gap outside the margin can only move the word away from matched
        assert row["verdict"] in {"matched": (word, "inconclusive (matched at the end, not along the curve)"),
                                  "inconclusive": (word, "differs (along the curve)"), "differs": (word,)}[word]
        assert row["first_milestone_epoch"] == "2"
        gaps = np.mean([100 * (np.array(values_of(client, by[schedule, s], schema.TEST_ACC))
                               - np.array(values_of(client, by["decay_lr", s], schema.TEST_ACC))) for s in "012"],
                       axis=0)
        at = 1 + int(np.argmax(np.abs(gaps[1:])))  # epochs 2 and 3 (0-based 1 and 2)
        assert int(row["max_gap_epoch"]) == at + 1 and float(row["max_gap_points"]) == pytest.approx(gaps[at], abs=1e-9)
        assert (f"- **{schedule}**: {row['verdict']}. test accuracy {diffs.mean():+.2f} points (95% interval "
                f"[{low:+.2f}, {high:+.2f}], 3 paired seeds; margin ±{margin:.2f}") in md


@uses_the_sweep
def test_one_seed_writes_the_paper_figures_and_says_inconclusive(sweep):
    store, sweep_id, _, folder = sweep
    names = {p.name for p in folder.iterdir()}
    assert {f"{stem}.png" for stem in PAPER} <= names
    rows = read_csv(folder / "report.csv")
    assert {s: r["verdict"] for s, r in rows.items()} == {
        "decay_lr": "baseline", "hybrid": "inconclusive (1 seed)", "increase_bs": "inconclusive (1 seed)"}
    assert rows["hybrid"]["acc_diff_low"] == "" and rows["hybrid"]["n_finished"] == "1"
    assert "inconclusive (1 seed)" in (folder / "report.md").read_text()
    for stem in ("fig2a_train_loss_epochs", "fig3_test_acc_epochs", "fig5_test_acc_updates"):
        svg = (folder / f"{stem}.svg").read_text()
        assert "band" not in svg and "decay_lr (1 seed)" in svg, stem  # no band, no band legend


@uses_the_sweep
def test_report_opens_with_the_environment(sweep):
    store, sweep_id, folder, _ = sweep
    client = client_for(store)
    runs = runs_of(client, sweep_id)
    md = (folder / "report.md").read_text()
    head = md[:md.index("Experiment `")]
    commit = runs[0].data.tags["mlflow.source.git.commit"]
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert commit == git and f"- commit: `{commit}`" in head
    assert "- command: `python -m src.run -m schedule=decay_lr,increase_bs,hybrid trainer.seed=0,1,2 " in head
    assert f"- torch: {torch.__version__}\n" in head and "- device: cpu\n" in head
    assert "- threads: 1 per run" in head
    starts = [float(r.data.tags[names["1m"]]) for r in runs for names in (schema.LOAD_AVERAGE_START, schema.LOAD_AVERAGE_END)]
    assert f"1-minute {min(starts):.2f} to {max(starts):.2f}" in head
    assert json.loads((folder / "report.json").read_text())["environment"]["torch"] == torch.__version__


@uses_the_sweep
def test_totals_bars_use_the_training_time(sweep):
    """The bars' heights, read off the figure object: train_time_s (the training steps), not the
    whole job's wall time."""
    store, sweep_id, folder, _ = sweep
    client = client_for(store)
    runs = runs_of(client, sweep_id)
    train_time = {s: statistics.fmean(r.data.metrics[schema.TRAIN_TIME_S] for r in runs
                                      if r.data.tags[schema.SCHEDULE_TAG] == s)
                  for s in ("decay_lr", "hybrid", "increase_bs")}
    [group] = group_runs(load_sweep(client, EXPERIMENT, sweep_id)[1], ["decay_lr"])
    fig = plot_totals(report_rows(group, "decay_lr", OPTIONS), styles_for(list(group.curves)), "title", "decay_lr")
    heights = [bar.get_height() for bar in fig.axes[0].patches]
    assert heights == pytest.approx(list(train_time.values()), rel=1e-12)
    assert fig.axes[0].get_ylabel() == "training time per run (s)"
    assert "training time per run (s)" in (folder / "totals_bars.svg").read_text()


@uses_the_sweep
def test_files_are_artifacts_of_the_sweeps_parent_run_and_no_run_is_added(sweep):
    store, sweep_id, folder, _ = sweep
    client = client_for(store)
    [parent] = runs_of(client, sweep_id, kind=schema.SWEEP_KIND)
    logged = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert logged == {p.name for p in folder.iterdir()}
    # two readings of the sweep (all seeds, then seed 0) added no run: 9 training runs, 1 parent
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    assert len(client.search_runs([experiment])) == 10 and len(runs_of(client, sweep_id)) == 9


@uses_the_sweep
def test_runs_carry_their_schedules_colour_and_a_seed_free_curve_tag(sweep):
    """MLflow's UI reads like the figures: each run's colour is its schedule's (schema's palette,
    the figures' too), and "Group by" the curve tag gives the figures' curves: one value per
    schedule, shared by its three seeds."""
    store, sweep_id, _, _ = sweep
    runs = runs_of(client_for(store), sweep_id)
    curves = {}
    for run in runs:
        tags = run.data.tags
        assert tags[schema.RUN_COLOR_TAG] == schema.SCHEDULE_COLORS[tags[schema.SCHEDULE_TAG]]
        curves.setdefault(tags[schema.CURVE_TAG], set()).add((tags[schema.SCHEDULE_TAG], tags[schema.SEED_TAG]))
    assert sorted(sorted(members) for members in curves.values()) == [
        [(s, seed) for seed in "012"] for s in ("decay_lr", "hybrid", "increase_bs")]
    assert styles_for(["decay_lr", "mine", "increase_bs"])["mine"]["color"] not in schema.SCHEDULE_COLORS.values()


@uses_the_sweep
def test_the_sweeps_answer_is_its_runs_description_and_tags_and_reports_first_section(sweep):
    """The whole sweep's verdict (not the seed-0 reading made after it) on the parent run: the
    table as its description, a verdict tag per compared schedule; report.md opens with it."""
    store, sweep_id, folder, _ = sweep
    [parent] = runs_of(client_for(store), sweep_id, kind=schema.SWEEP_KIND)
    tags = parent.data.tags
    md = (folder / "report.md").read_text()
    table = md.split("## Verdict")[1].split("## Method and environment")[0]
    assert md.startswith(f"# Sweep {sweep_id}\n\n## Verdict (9 runs finished")
    rows = {line.split(" | ")[1]: line.split(" | ") for line in table.splitlines() if line.startswith("| - |")}
    assert set(rows) == {"decay_lr", "increase_bs", "hybrid"} and {r[2] for r in rows.values()} == {"3"}
    assert tags["mlflow.note.content"].startswith(f"**Verdict of sweep {sweep_id}**")
    assert "| - | increase_bs | 3 | " in tags["mlflow.note.content"]  # all seeds: the seed-0 reading wrote nothing
    assert {key: value for key, value in tags.items() if key.startswith("verdict.")} == {
        "verdict.increase_bs": rows["increase_bs"][5], "verdict.hybrid": rows["hybrid"][5]}


@pytest.mark.slow  # ~12 s on 2 idle cores: kept out of the default suite's 5 minutes
def test_a_failed_run_is_reported_and_left_out(sweep, make_cfg, data_dir):
    """A newer 1-seed sweep in the same store with one FAILED run: the default picks it (newest)."""
    store, _, _, _ = sweep
    result = run_cli("-m", "schedule=decay_lr,increase_bs", *LEARNS, "tracking.sweep_id=with-failure",
                     output_dir=store, data_dir=data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    cfg = make_cfg(*LEARNS, "schedule=increase_bs", "trainer.seed=1", output_dir=store)
    tags = {schema.SCHEDULE_TAG: "increase_bs", schema.SEED_TAG: "1", schema.SWEEP_TAG: "with-failure",
            schema.CONFIG_HASH_TAG: "with-failure"}
    with pytest.raises(MemoryError):
        with tracked_run(cfg, tags, run_name="increase_bs seed=1"):
            raise MemoryError("simulated out of memory")

    made = run_figures(store)
    assert made.returncode == 0, made.stderr[-3000:]
    folder = store / "figures" / "with-failure"
    assert {f"{stem}.png" for stem in PAPER} <= {p.name for p in folder.iterdir()}
    rows = read_csv(folder / "report.csv")
    assert (rows["increase_bs"]["n_finished"], rows["increase_bs"]["n_failed"]) == ("1", "1")
    assert rows["increase_bs"]["verdict"] == "inconclusive (1 seed)"
    [finished] = [r for r in runs_of(client_for(store), "with-failure")
                  if r.data.tags[schema.SCHEDULE_TAG] == "increase_bs" and r.info.status == "FINISHED"]
    assert float(rows["increase_bs"]["final_val_acc_mean"]) == finished.data.metrics[schema.FINAL_VAL_ACC]
    assert rows["increase_bs"]["final_val_acc_std"] == ""  # one finished run: no spread
    md = (folder / "report.md").read_text()
    failed_section = md[md.index("## Failed runs"):]
    assert "| increase_bs seed=1 | increase_bs | 1 | FAILED | MemoryError: simulated out of memory |" in failed_section
    assert "| increase_bs | 1 (+1 failed) |" in md
    assert "increase_bs (1 seed, 1 failed, left out)" in (folder / "fig3_test_acc_epochs.svg").read_text()
    [failed] = json.loads((folder / "report.json").read_text())["failed_runs"]
    assert failed["status"] == "FAILED" and failed["error"] == "MemoryError: simulated out of memory"


@pytest.mark.parametrize("args,message", [
    (["--sweep-id", "nope"], f"error: no runs with sweep_id 'nope' in experiment '{EXPERIMENT}' (known sweeps: "),
    # ~3.4 s each (a fresh process); the other two with the slow tests
    pytest.param(["--experiment", "nope"], "error: no experiment 'nope' (known experiments: ", marks=pytest.mark.slow),
    pytest.param(["--baseline", "nope"], "error: --baseline nope: no run of that schedule in sweep '",
                 marks=pytest.mark.slow),
], ids=["sweep", "experiment", "baseline"])
def test_unknown_sweep_experiment_or_baseline_is_one_line_and_exit_2(sweep, args, message):
    store, sweep_id, _, _ = sweep
    result = run_figures(store, *args, output_dir=store / "nope")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(message), result.stderr
    assert "Traceback" not in result.stderr
    assert not (store / "nope").exists()


def test_an_output_folder_that_cannot_be_written_is_one_line_and_logs_nothing(sweep, tmp_path):
    store, sweep_id, _, _ = sweep
    client = client_for(store)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    [parent] = runs_of(client, sweep_id, kind=schema.SWEEP_KIND)

    def recorded():  # every run of the experiment, and what the parent run holds
        return ({run.info.run_id for run in client.search_runs([experiment])},
                [a.path for a in client.list_artifacts(parent.info.run_id, "figures")])

    before = recorded()
    (tmp_path / "a_file").write_text("")
    result = run_figures(store, output_dir=tmp_path / "a_file" / "figures")
    assert result.returncode == 2
    assert result.stderr == (f"error: --output-dir={tmp_path}/a_file/figures: cannot create the folder "
                             f"{tmp_path}/a_file/figures (Not a directory)\n"), result.stderr
    assert recorded() == before  # no run added, nothing logged to the parent run


@pytest.mark.slow  # ~10 s on 2 idle cores: kept out of the default suite's 5 minutes
def test_an_optimizer_sweep_is_four_groups_of_one_seed(tmp_path, data_dir):
    """momentum and nesterov differ only in optimizer.nesterov, which momentum runs do not even
    log: the groups come from the whole config, not from a list of keys."""
    result = run_cli("-m", "optimizer=momentum,nesterov,sgd,adam", "schedule=decay_lr", *LEARNS,
                     output_dir=tmp_path, data_dir=data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    client = client_for(tmp_path)
    _, runs = load_sweep(client, EXPERIMENT)
    groups = group_runs(runs, ["decay_lr"])
    assert [g.label for g in groups] == ["optimizer=adam", "optimizer=momentum", "optimizer=nesterov", "optimizer=sgd"]
    for group in groups:
        [curve] = group.curves.values()
        assert curve.schedule == "decay_lr" and len(curve.finished) == 1
        [run] = curve.finished
        # each group holds the run of its optimizer, as MLflow logged it
        expected = {"adam": ("torch.optim.Adam", None), "momentum": ("torch.optim.SGD", None),
                    "nesterov": ("torch.optim.SGD", "True"), "sgd": ("torch.optim.SGD", None)}[group.label.split("=")[1]]
        assert (run.params["optimizer._target_"], run.params.get("optimizer.nesterov")) == expected
    assert "optimizer.nesterov" in sweep_axes(runs) and "trainer.threads" not in sweep_axes(runs)


@pytest.mark.slow
def test_an_optimizer_sweep_draws_figures_3_and_4_as_panels(tmp_path, data_dir):
    result = run_cli("-m", "optimizer=momentum,nesterov,sgd,adam", "schedule=decay_lr,increase_bs", *LEARNS,
                     output_dir=tmp_path, data_dir=data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    made = run_figures(tmp_path)
    assert made.returncode == 0, made.stderr[-3000:]
    [folder] = (tmp_path / "figures").iterdir()
    for stem, panels in [("fig3_test_acc_epochs_momentum_nesterov", ["(a) SGD with momentum", "(b) Nesterov momentum"]),
                         ("fig4_test_acc_epochs_sgd_adam", ["(a) vanilla SGD", "(b) Adam"])]:
        svg = (folder / f"{stem}.svg").read_text()
        assert all(panel in svg for panel in panels), stem
    for name in ("adam", "momentum", "nesterov", "sgd"):
        assert {f"{stem}.png" for stem in PAPER} <= {p.name for p in (folder / f"optimizer={name}").iterdir()}
    rows = list(csv.DictReader(open(folder / "report.csv")))
    assert sorted({row["group"] for row in rows}) == ["optimizer=adam", "optimizer=momentum", "optimizer=nesterov",
                                                     "optimizer=sgd"]
    assert all(row["n_finished"] == "1" for row in rows)
    assert {row["verdict"] for row in rows} == {"baseline", "inconclusive (1 seed)"}


# --- the rules, on runs made up as plain data ---------------------------------------------------


def rows_by_schedule(runs, baseline="decay_lr", margin=0.1, min_seeds=3):
    [group] = group_runs(runs, [baseline])
    options = {**OPTIONS, "margin_error_fraction": margin, "min_seeds": min_seeds}
    return {row.schedule: row for row in report_rows(group, baseline, options)}


@pytest.mark.parametrize("diffs,word", [
    ([0.1, 0.2, -0.1], "matched"),          # mean 0.067, interval [-0.31, +0.45]
    ([-3.0, -2.8, -3.2], "differs"),        # [-3.50, -2.50]
    ([-0.5, -1.5, -1.0], "inconclusive"),   # [-2.24, +0.24]: crosses -1.5 (0.1 of a 15% error rate)
])
def test_verdict_from_the_paired_t_interval(diffs, word):
    """Differences of a few points: the atanh scale keeps the plain t interval's numbers (to 0.01)."""
    base = [0.80, 0.85, 0.90]
    runs = [fake_run("decay_lr", s, a) for s, a in enumerate(base)]
    runs += [fake_run("increase_bs", s, a + d / 100, updates=100.0) for s, (a, d) in enumerate(zip(base, diffs))]
    row = rows_by_schedule(runs)["increase_bs"].comparison
    half = T_975_2 * statistics.stdev(diffs) / 3 ** 0.5
    assert row.acc_diff_points == pytest.approx(statistics.fmean(diffs))
    assert (row.acc_diff_low, row.acc_diff_high) == pytest.approx((statistics.fmean(diffs) - half,
                                                                         statistics.fmean(diffs) + half), abs=0.01)
    assert row.margin_points == pytest.approx(1.5)
    assert row.verdict == word and row.n_paired == 3
    assert "3.0x fewer parameter updates" in row.verdict_detail
    assert rows_by_schedule(runs, margin=0.5)["increase_bs"].comparison.verdict == "matched"  # the margin is used
    assert rows_by_schedule(runs, margin=0.0)["increase_bs"].comparison.verdict in ("differs", "inconclusive")


def test_fewer_than_three_paired_seeds_is_always_inconclusive():
    runs = [fake_run("decay_lr", s, 0.8) for s in (0, 1, 2)]
    runs += [fake_run("increase_bs", s, 0.8) for s in (0, 1)]  # identical accuracy, but 2 seeds
    runs += [fake_run("increase_bs", 7, 0.1)]  # seed 7 has no decay_lr partner: left out of the pairs
    row = rows_by_schedule(runs)["increase_bs"].comparison
    assert row.n_paired == 2 and row.acc_diff_points == 0 and row.verdict == "inconclusive (2 seeds)"
    # identical pairs and no other arm to pool from: no interval, never a zero-width one
    row = rows_by_schedule(runs, min_seeds=2)["increase_bs"].comparison
    assert row.acc_diff_low is None and row.verdict == "inconclusive (no spread to build an interval from)"


def test_seeds_pair_by_seed_with_the_newest_finished_run_of_each():
    base = Curve("decay_lr", [fake_run("decay_lr", s, 0.8) for s in (0, 1, 2)])
    again = fake_run("increase_bs", 1, 0.7)
    again.start_time = 10  # seed 1 ran twice: the newer run counts
    failed = fake_run("increase_bs", 2, 0.7)
    failed.status = "FAILED"
    curve = Curve("increase_bs", [fake_run("increase_bs", s, 0.8) for s in (0, 1, 7)] + [again, failed])
    assert [(run.run_id, run.start_time, other.run_id) for run, other in curve.paired_with(base)] == [
        ("increase_bs-0", 0, "decay_lr-0"), ("increase_bs-1", 10, "decay_lr-1")]  # seed 7: no partner
    assert compare(curve, base, OPTIONS).n_paired == 2


def test_training_runs_are_those_with_no_kind_and_not_superseded():
    assert is_training_run({schema.SWEEP_TAG: "s", schema.SCHEDULE_TAG: "decay_lr"})
    assert not is_training_run({schema.KIND_TAG: schema.SWEEP_KIND})  # a sweep's parent
    assert not is_training_run({schema.SUPERSEDED_BY_TAG: "run id"})  # trained again


def test_a_store_file_that_does_not_exist_is_not_created_but_one_line(tmp_path):
    missing = tmp_path / "mlflow.db"
    with pytest.raises(ConfigError, match=f"^no MLflow store at {missing}$"):
        open_existing_store(f"sqlite:///{missing}")
    with pytest.raises(ConfigError, match=rf"^no MLflow store at {missing} \(run it first\)$"):
        open_existing_store(f"sqlite:///{missing}", hint="run it first")
    assert not missing.exists()
    result = subprocess.run([sys.executable, "-m", "src.figures", f"--tracking-uri=sqlite:///{missing}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr == f"error: no MLflow store at {missing}\n", result.stderr
    assert not missing.exists()


def test_largest_gap_counts_from_the_first_milestone():
    """The lr changes at the third epoch: the gaps of epochs 1-2 (same schedule so far) do not count."""
    def run(schedule, seed, curve):
        made = fake_run(schedule, seed, curve[-1])
        made.history[schema.TEST_ACC] = curve
        return made
    base = run("decay_lr", 0, [0.5, 0.6, 0.7])
    other = run("increase_bs", 0, [0.1, 0.6, 0.69])  # 40 points behind at epoch 1, 1 point at epoch 3
    row = compare(Curve("increase_bs", [other]), Curve("decay_lr", [base]), OPTIONS)
    assert change_steps(base) == [2] and row.first_milestone_epoch == 3
    assert row.max_gap_epoch == 3 and row.max_gap_points == pytest.approx(-1.0)
    assert series([base], schema.TEST_ACC)["x"].tolist() == [1, 2, 3]  # epochs are 1-based


def test_grouping_uses_the_whole_config_minus_seed_and_execution_keys():
    runs = [fake_run(schedule, seed, 0.8, **{"optimizer._target_": "torch.optim.SGD", "optimizer.momentum": m,
                                             "paths.output_dir": f"/out/{seed}",
                                             "trainer.threads": str(seed + 1), "schedule.batch_size": size})
            for schedule, size in (("decay_lr", "64"), ("increase_bs", "32"))
            for m in ("0.9", "0.0") for seed in (0, 1)]
    # batch_size changes with the schedule only: part of the schedule; paths and threads: execution only
    assert sweep_axes(runs) == ["optimizer.momentum"]
    groups = group_runs(runs, ["decay_lr"])
    assert [g.label for g in groups] == ["optimizer=momentum", "optimizer=sgd"]
    assert all(len(curve.finished) == 2 for g in groups for curve in g.curves.values())
    runs.append(fake_run("decay_lr", 0, 0.8, **{"optimizer._target_": "torch.optim.SGD", "optimizer.momentum": "0.9",
                                                 "model.width": "2",
                                                 "schedule.batch_size": "64"}))
    assert "model.width" in sweep_axes(runs)  # set in one run only: a difference, never averaged over


def test_baseline_is_decay_lr_else_plateau_decay_lr_else_none():
    def group(*schedules):
        [made] = group_runs([fake_run(s, 0, 0.8) for s in schedules])
        return made
    candidates = ["decay_lr", "plateau_decay_lr"]
    assert pick_baseline(group("decay_lr", "plateau_decay_lr", "increase_bs"), None, candidates) == "decay_lr"
    assert pick_baseline(group("plateau_increase_bs", "plateau_decay_lr"), None, candidates) == "plateau_decay_lr"
    assert pick_baseline(group("increase_bs", "hybrid"), None, candidates) is None
    assert pick_baseline(group("increase_bs", "hybrid"), "hybrid", candidates) == "hybrid"
    rows = {r.schedule: r for r in report_rows(group("increase_bs", "hybrid"), None, OPTIONS)}
    assert rows["hybrid"].comparison.verdict == "no baseline"
    assert rows["hybrid"].numbers[schema.TOTAL_PARAM_UPDATES].ratio is None


def test_minus_one_spread_only_for_equal_approximate_noise_scales():
    n = 1000
    def run(schedule, lr, batch):
        made = fake_run(schedule, 0, 0.8)
        made.history.update({schema.LR: [lr], schema.BATCH_SIZE: [batch], schema.MOMENTUM: [0.9],
                             schema.NOISE_SCALE: [lr / 0.1 * (n / batch - 1)]})
        return made
    # lr/B equal: g differs by the -1 only, (1000/64 - 1) / (1000/320 - 1) / 5 - 1 = 37.6%
    spread = minus_one_spread({"decay_lr": [run("decay_lr", 0.02, 64)], "increase_bs": [run("increase_bs", 0.1, 320)]})
    assert spread == pytest.approx((n / 64 - 1) / 5 / (n / 320 - 1) - 1)
    assert minus_one_spread({"a": [run("a", 0.02, 64)], "b": [run("b", 0.1, 64)]}) is None  # different by design


def test_write_all_without_a_store(tmp_path):
    runs = [fake_run(s, seed, 0.8, **{"schedule.factor": f}) for s in ("decay_lr", "increase_bs")
            for f in ("2", "5") for seed in (0, 1)]
    write_all(tmp_path, "fake-sweep", EXPERIMENT, runs)
    for value in ("2", "5"):
        assert {f"{stem}.png" for stem in PAPER} <= {p.name for p in (tmp_path / f"schedule.factor={value}").iterdir()}
    md = (tmp_path / "report.md").read_text()
    assert "## schedule.factor=2" in md and "## schedule.factor=5" in md
    assert "- commit: not logged" in md and "load: not logged" in md  # runs from before these were logged
    with open(tmp_path / "report.csv") as file:
        groups = [(row["group"], row["schedule"]) for row in csv.DictReader(file)]
    assert groups == [("schedule.factor=2", "decay_lr"), ("schedule.factor=2", "increase_bs"),
                      ("schedule.factor=5", "decay_lr"), ("schedule.factor=5", "increase_bs")]
    assert stats.t.ppf(0.975, 2) == pytest.approx(T_975_2)  # the table value the tests use
