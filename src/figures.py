"""`python -m src.figures`: the paper's figures, a results table and a verdict from one sweep's runs.

Nothing is retrained: the runs are read back from the MLflow store. Writes PNG + SVG figures and
report.md / report.csv / report.json under <output-dir>/<sweep_id>/, and logs the same files as
artifacts (figures/) of the sweep's parent run (of the run itself, for a single run's sweep). Its
defaults (store, experiment, output folder) come from conf/config.yaml, composed as src.run
composes it, with the same KEY=VALUE overrides.

A sweep's runs are the training runs that list it in their `sweeps` tag: the runs it trained and
those a re-run of it skipped or resumed (which keep the sweep_id of the sweep that trained them).

Three layers, so the numbers can be checked without images: load_sweep (store -> plain RunData),
group_runs and report_rows (RunData -> groups of curves -> one row of numbers per curve) and the
plot_* functions (-> figures).

Grouping. A curve is the runs that differ in nothing but the seed: the same resolved config (the
logged params) once the seed and the execution-only keys (src.tracking.NOT_IDENTITY: paths,
tracking, threads, ...) are left out. A key that takes more than one value among the runs of one
schedule is an axis of the sweep (the optimizer, schedule.factor, the model ...): each value of
the axes is a group with its own figures and report section, and in a group the curves differ
only by the schedule (and what comes with it). No fixed list of keys: a key the sweep varies can
never be averaged over.

The paper's figures (Smith, Kindermans, Ying & Le, ICLR 2018, arXiv 1711.00489), their captions:
  1  "Schedules for the learning rate (a) and batch size (b), as a function of training epochs."
  2  "Wide ResNet on CIFAR10. Training set cross-entropy, evaluated as a function of the number of
     training epochs (a), or the number of parameter updates (b). The three learning curves are
     identical, but increasing the batch size reduces the number of parameter updates required."
  3  "Wide ResNet on CIFAR10. Test accuracy during training, for SGD with momentum (a) and
     Nesterov momentum (b). In both cases all three schedules track each other extremely closely."
  4  "Wide ResNet on CIFAR10. Test set accuracy during training, for vanilla SGD (a) and Adam (b).
     Once again, all three schedules result in equivalent test set performance."
  5  "Wide ResNet on CIFAR10. Test accuracy as a function of the number of parameter updates.
     "Increasing batch size" replaces learning rate decay by batch size increases. "Increased
     initial learning rate" additionally increases the initial learning rate from 0.1 to 0.5.
     Finally "Increased momentum coefficient" also increases the momentum coefficient from 0.9
     to 0.98."
Per group: fig1_lr_batch_size, fig2a_train_loss_epochs, fig2b_train_loss_updates,
fig3_test_acc_epochs (figure 3a's axes for any optimizer) and fig5_test_acc_updates; when the sweep
varies the optimizer, figures 3 and 4 with one panel per optimizer. Figures 3-5 and the verdict
read the held-out test split, as the paper's figures do; validation (what the plateau schedules
and the best validation loss read) is never what decides. Extra figures keep their own names.

Epochs are 1-based on every axis: the x axis counts epochs trained, a per-epoch value (accuracy,
loss) is drawn at the end of its epoch (epoch k at x = k) and a setting (lr, B, g) of epoch k as
a step over [k - 1, k]; a milestone (the first epoch k whose lr, B or g differs from epoch k - 1's)
is marked at x = k - 1, where the step is.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import shlex
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from src.schema import (
    BATCH_SIZE, COMMAND_TAG, CONF_DIR, CPUS_TAG, DEVICE_TAG, ERROR_TAG, FINAL_TEST_ACC, FINAL_TEST_LOSS,
    FINAL_VAL_ACC, FINAL_VAL_LOSS, KIND_TAG, LOAD_AVERAGE_END, LOAD_AVERAGE_START, LR, MOMENTUM, NOISE_SCALE,
    PARAM_UPDATES, RUN_NAME_TAG, SCHEDULE_TAG, SEED_TAG, SUPERSEDED_BY_TAG, SWEEP_KIND, SWEEP_TAG, SWEEPS_TAG,
    TEST_ACC, TEST_LOSS, THREADS_TAG, TORCH_VERSION_TAG, TOTAL_PARAM_UPDATES, TOTAL_WALL_TIME_S, TRAIN_LOSS,
    TRAIN_TIME_S, VAL_ACC, VAL_LOSS, WALL_TIME_S,
)
from src.cli import one_line_error
from src.config import compose
from src.errors import ConfigError, Diverged
from src.files import check_folder
from src.intervals import Interval, binomial_interval, bounds_text, detectable_difference, interval, pooled_spread
from src.stores import open_existing_store
from src.tracking import NOT_IDENTITY

DEFAULTS = CONF_DIR / "figures.yaml"
FIGURES_ARTIFACTS = "figures"  # the artifact folder of the run the files are logged to
# Per-epoch metrics the figures and the report read (step = the 0-based epoch).
HISTORIES = (TRAIN_LOSS, VAL_LOSS, VAL_ACC, TEST_LOSS, TEST_ACC, LR, BATCH_SIZE, MOMENTUM, NOISE_SCALE, PARAM_UPDATES,
             WALL_TIME_S)
# A schedule's phase changes when one of these differs from the epoch before: a milestone.
PHASE_METRICS = (LR, BATCH_SIZE, NOISE_SCALE)
SEED_PARAM = "trainer.seed"  # the one config key the runs of a curve may differ in
BEST_VAL_LOSS = "best_val_loss"  # not logged: the lowest val_loss of any epoch, read from the history
# Per run, the report's numbers: name -> heading in report.md; all but BEST_VAL_LOSS are logged
# once per run.
REPORTED = {
    FINAL_TEST_ACC: "final test acc (%)",
    FINAL_TEST_LOSS: "final test loss",
    FINAL_VAL_ACC: "final val acc (%)",
    FINAL_VAL_LOSS: "final val loss",
    BEST_VAL_LOSS: "best val loss",
    TOTAL_PARAM_UPDATES: "param updates",
    TRAIN_TIME_S: "train time (s)",
    TOTAL_WALL_TIME_S: "total wall time (s)",
}
# report.csv's columns (report.json's rows have the same keys). Ratios are of the means.
COLUMNS = ["group", "schedule", "baseline", "n_finished", "n_failed",
           *(f"{name}_{stat}" for name in REPORTED for stat in ("mean", "std", "ratio")),
           "n_paired", "n_diverged", "diverged_low", "diverged_high", "margin_points", "acc_diff_points",
           "acc_diff_low", "acc_diff_high", "detectable_points", "first_milestone_epoch", "max_gap_points",
           "max_gap_low", "max_gap_high", "max_gap_epoch", "loss_gap", "loss_gap_low", "loss_gap_high",
           "loss_gap_epoch", "verdict", "verdict_detail"]
COMPARISON = COLUMNS[COLUMNS.index("n_paired"):COLUMNS.index("verdict")]  # compare()'s numbers
# The optimizer panels of figures 3 and 4: optimizer (optimizer_name) -> panel title.
OPTIMIZER_FIGURES = {
    "fig3_test_acc_epochs_momentum_nesterov": ("Fig. 3: test accuracy vs epochs",
                                               {"momentum": "SGD with momentum", "nesterov": "Nesterov momentum"}),
    "fig4_test_acc_epochs_sgd_adam": ("Fig. 4: test accuracy vs epochs",
                                      {"sgd": "vanilla SGD", "adam": "Adam"}),
}
LINESTYLES = ("-", "--", ":", "-.")  # with colours, so curves that lie on each other stay visible
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")  # each curve's end, in every figure
DPI = 100


class StoreError(Exception):
    """Nothing to report, in one line (main prints it and exits 2)."""


@dataclass
class RunData:
    """One training run, as plain data."""

    run_id: str
    status: str  # FINISHED, FAILED, KILLED, RUNNING
    start_time: int  # ms since the epoch
    end_time: int | None  # ms since the epoch; None while running
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]  # the last value of every metric: the once-per-run ones are finals
    history: dict[str, list[float]]  # per-epoch metric -> values at steps 0, 1, 2 ...
    n_classes: int | None = None  # from the run's dataset input (its profile); None: not logged

    @property
    def chance(self) -> float:
        """The accuracy of guessing, 0..1: what a seed whose loss diverged is counted at (0 when
        the number of classes was not logged)."""
        return 1 / self.n_classes if self.n_classes else 0.0

    @property
    def schedule(self) -> str:
        return self.tags.get(SCHEDULE_TAG, "?")

    @property
    def seed(self) -> str:
        return self.tags.get(SEED_TAG, "?")

    @property
    def finished(self) -> bool:
        return self.status == "FINISHED"

    def reported(self, name: str) -> float:
        if name == BEST_VAL_LOSS:
            return min(self.history[VAL_LOSS])
        return self.metrics[name]


@dataclass
class Curve:
    """The runs of one schedule in one group: they differ in nothing but the seed."""

    schedule: str
    runs: list[RunData]

    @property
    def by_seed(self) -> dict[str, RunData]:
        """seed -> its finished run (the newest, if a seed ran twice: the same config and seed
        give the same numbers on CPU, so a second run is a repeat, not a second sample)."""
        newest = {}
        for run in sorted((r for r in self.runs if r.finished), key=lambda r: r.start_time):
            newest[run.seed] = run
        return dict(sorted(newest.items()))

    @property
    def finished(self) -> list[RunData]:
        return list(self.by_seed.values())

    @property
    def n_failed(self) -> int:
        return sum(not run.finished for run in self.runs)

    def paired_with(self, base: Curve) -> list[tuple[RunData, RunData]]:
        """(this curve's run, the base's run) for each seed both finished, by seed: the same seed,
        the same initial weights."""
        theirs = base.by_seed
        return [(run, theirs[seed]) for seed, run in self.by_seed.items() if seed in theirs]


@dataclass
class Group:
    """Curves that share every config value but the schedule's (and the seed)."""

    label: str  # what sets it apart from the sweep's other groups; '' when it is the only one
    setting: dict[str, str | None]  # axis key -> its value in this group
    curves: dict[str, Curve] = field(default_factory=dict)  # schedule -> curve

    @property
    def runs(self) -> list[RunData]:
        return [run for curve in self.curves.values() for run in curve.runs]


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
    return RunData(run.info.run_id, run.info.status, run.info.start_time, run.info.end_time,
                   dict(run.data.tags), dict(run.data.params), dict(run.data.metrics), history, _n_classes(run))


def _n_classes(run) -> int | None:
    """The number of classes from the run's dataset input (src.tracking logs it in the profile)."""
    for dataset_input in getattr(run.inputs, "dataset_inputs", None) or []:
        profile = json.loads(dataset_input.dataset.profile or "{}")
        if "n_classes" in profile:
            return int(profile["n_classes"])
    return None


def is_training_run(tags: dict[str, str]) -> bool:
    """A training run by its tags: not one with a kind (a sweep's parent; the summary runs of
    older versions), not one superseded by a retrained run (killed before its first checkpoint)."""
    return KIND_TAG not in tags and SUPERSEDED_BY_TAG not in tags


def sweeps_of(tags: dict[str, str]) -> list[str]:
    """The sweeps a training run belongs to: its SWEEPS_TAG; its sweep_id for a run logged
    before runs had one."""
    return tags.get(SWEEPS_TAG, tags[SWEEP_TAG]).split()


def load_sweep(client: MlflowClient, experiment: str, sweep_id: str | None = None,
               tags: dict[str, str] | None = None) -> tuple[str, list[RunData]]:
    """(sweep_id, its training runs): the given sweep, or the newest (the latest start of its
    parent run or of a run it trained) among the runs whose tags match `tags`. Runs with a kind
    (a sweep's parent; the summary runs of older versions) and runs superseded by a retrained one
    are never read."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        known = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise StoreError(f"no experiment '{experiment}' (known experiments: {known})")
    tags = tags or {}
    matching = " with tags " + ", ".join(f"{k}={v}" for k, v in tags.items()) if tags else ""
    every_run = _all_runs(client, found.experiment_id)
    runs = [
        run for run in every_run
        if SWEEP_TAG in run.data.tags and is_training_run(run.data.tags)
        and all(run.data.tags.get(key) == value for key, value in tags.items())
    ]
    started: dict[str, int] = {}
    for run in runs:
        for sweep in sweeps_of(run.data.tags):
            started[sweep] = max(started.get(sweep, 0), run.info.start_time)
    for parent in every_run:  # a re-run sweep that only skipped runs is as new as its parent
        sweep = parent.data.tags.get(SWEEP_TAG)
        if parent.data.tags.get(KIND_TAG) == SWEEP_KIND and sweep in started:
            started[sweep] = max(started[sweep], parent.info.start_time)
    if sweep_id is None:
        if not started:
            raise StoreError(f"no runs{matching} in experiment '{experiment}'")
        sweep_id = max(started, key=started.get)
    elif sweep_id not in started:
        newest = sorted(started, key=started.get, reverse=True)
        known = ", ".join(newest[:10]) + (f" ... {len(newest)} in all" if len(newest) > 10 else "")
        raise StoreError(f"no runs with sweep_id '{sweep_id}'{matching} in experiment '{experiment}'"
                         f" (known sweeps: {known or 'none'})")
    chosen = [_run_data(client, run) for run in runs if sweep_id in sweeps_of(run.data.tags)]
    return sweep_id, sorted(chosen, key=lambda r: (r.schedule, r.seed, r.start_time))


# --- grouping ----------------------------------------------------------------------------------


def _execution_only(key: str) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in NOT_IDENTITY)


def identity(params: dict[str, str]) -> dict[str, str]:
    """What a run computes: its logged config without the seed and the execution-only keys."""
    return {key: value for key, value in params.items() if key != SEED_PARAM and not _execution_only(key)}


def sweep_axes(runs: Sequence[RunData]) -> list[str]:
    """The config keys that take more than one value among the runs of one schedule (a key a run
    does not log counts as the value None). A key that changes only with the schedule is part of
    what the schedule is."""
    configs = [(run.schedule, identity(run.params)) for run in runs]
    keys = sorted(set().union(*(config for _, config in configs)))
    axes = []
    for key in keys:
        values: dict[str, set] = {}
        for schedule, config in configs:
            values.setdefault(schedule, set()).add(config.get(key))
        if any(len(v) > 1 for v in values.values()):
            axes.append(key)
    return axes


def optimizer_name(params: dict[str, str]) -> str:
    """momentum, nesterov, sgd (no momentum) or adam, as conf/optimizer/ names them; else the
    class name."""
    target = params.get("optimizer._target_", "?").rsplit(".", 1)[-1]
    if target == "SGD":
        if params.get("optimizer.nesterov") == "True":
            return "nesterov"
        return "sgd" if float(params.get("optimizer.momentum", 0)) == 0 else "momentum"
    return target.lower()


def _short(value: str | None) -> str:
    """A value for a label: a class path by its class name."""
    if value is None:
        return "unset"
    return value.rsplit(".", 1)[-1] if re.fullmatch(r"[A-Za-z_][\w.]*\.[A-Z]\w*", value) else value


def _labels(settings: list[dict[str, str | None]], runs: list[RunData]) -> list[str]:
    """One label per group: the optimizer by its name when the sweep varies it, other axes as
    key=value; every key=value when the short labels would not tell two groups apart."""
    if not settings or not settings[0]:
        return [""] * len(settings)
    short = []
    for setting, run in zip(settings, runs):
        parts = [f"{key}={_short(value)}" for key, value in setting.items() if not key.startswith("optimizer.")]
        if any(key.startswith("optimizer.") for key in setting):
            parts.insert(0, f"optimizer={optimizer_name(run.params)}")
        short.append(",".join(parts))
    if len(set(short)) == len(short):
        return short
    return [",".join(f"{key}={value}" for key, value in setting.items()) for setting in settings]


def group_runs(runs: Sequence[RunData], baselines: Sequence[str] = ()) -> list[Group]:
    """The sweep's groups (sorted by label), each with one curve per schedule: the first of
    `baselines` that ran first, then the others by name."""
    axes = sweep_axes(runs)
    members: dict[tuple, list[RunData]] = {}
    for run in runs:
        config = identity(run.params)
        members.setdefault(tuple(config.get(key) for key in axes), []).append(run)
    settings = [dict(zip(axes, values)) for values in members]
    labels = _labels(settings, [group[0] for group in members.values()])
    groups = []
    for label, setting, group_runs_ in zip(labels, settings, members.values()):
        group = Group(label, setting)
        for run in sorted(group_runs_, key=lambda r: _schedule_order(r.schedule, baselines)):
            group.curves.setdefault(run.schedule, Curve(run.schedule, [])).runs.append(run)
        groups.append(group)
    return sorted(groups, key=lambda g: g.label)


def _schedule_order(schedule: str, baselines: Sequence[str]) -> tuple:
    return (baselines.index(schedule) if schedule in baselines else len(baselines), schedule)


def pick_baseline(group: Group, requested: str | None, candidates: Sequence[str]) -> str | None:
    """`requested` if given, else the first of `candidates` that ran in the group; None if it
    did not run."""
    for schedule in [requested] if requested else candidates:
        if schedule in group.curves:
            return schedule
    return None


# --- numbers -----------------------------------------------------------------------------------


def change_steps(run: RunData) -> list[int]:
    """The 0-based epochs whose lr, batch size or noise scale differs from the epoch before's:
    the first epoch of each new phase of the schedule."""
    steps = set()
    for name in PHASE_METRICS:
        values = run.history.get(name, [])
        steps.update(e for e in range(1, len(values)) if not math.isclose(values[e], values[e - 1], rel_tol=1e-9))
    return sorted(steps)


def margin_points(base: Curve, options: dict) -> float | None:
    """The margin of "matched", in accuracy points: conf/figures.yaml's margin_error_fraction of
    the baseline's mean test error rate (so it tightens as the baseline nears its ceiling)."""
    accs = [run.metrics[FINAL_TEST_ACC] for run in base.finished]
    return 100 * options["margin_error_fraction"] * (1 - statistics.fmean(accs)) if accs else None


def paired_accuracy(curve: Curve, base: Curve) -> tuple[list[str], list[float], list[float], list[str]]:
    """(seeds, the curve's final test accuracies, the baseline's, the seeds of the curve that
    diverged) over every seed the baseline finished and the curve either finished or diverged
    in: a diverged seed is an outcome, counted at chance (RunData.chance), not left out."""
    theirs, mine = base.by_seed, curve.by_seed
    diverged = {run.seed: run for run in curve.runs if run.seed not in mine and has_diverged(run)}
    seeds, arm, baseline = [], [], []
    for seed, other in theirs.items():
        if seed in mine:
            value = mine[seed].metrics[FINAL_TEST_ACC]
        elif seed in diverged:
            value = diverged[seed].chance
        else:
            continue
        seeds.append(seed)
        arm.append(value)
        baseline.append(other.metrics[FINAL_TEST_ACC])
    return seeds, arm, baseline, sorted(diverged, key=int)


def accuracy_differences(curve: Curve, base: Curve) -> list[float]:
    """Per paired seed (paired_accuracy), the curve's final test accuracy minus the baseline's, points."""
    _, arm, baseline, _ = paired_accuracy(curve, base)
    return [100 * (a - b) for a, b in zip(arm, baseline)]


def verdict_word(n_paired: int, found: Interval, margin: float | None, min_seeds: int) -> str:
    """matched: the whole interval within ± margin; differs: wholly outside it; else inconclusive.
    Fewer than min_seeds paired seeds, or no interval: inconclusive whatever the values."""
    if n_paired < min_seeds or margin is None:
        return f"inconclusive ({n_paired} seed{'s' * (n_paired != 1)})"
    if found.low is None:  # every pair alike and no other arm to pool a spread from
        return "inconclusive (no spread to build an interval from)"
    if -margin <= found.low and found.high <= margin:
        return "matched"
    if found.high < -margin or found.low > margin:
        return "differs"
    return "inconclusive"


def _largest_gap(pairs: list[tuple[RunData, RunData]], metric: str, start: int, scale: str, y_scale: float,
                 confidence: float, pooled_sd: float | None = None) -> tuple[int, float, Interval] | None:
    """(1-based epoch, mean, interval) of the largest mean paired gap of a per-epoch metric from the
    0-based epoch `start` on, over the pairs that both logged it. The epoch is picked as the
    largest of several, so its interval is at the Bonferroni level over the epochs searched
    (1 - (1 - confidence) / epochs): picking the worst epoch does not by itself make a difference."""
    logged = [(a.history.get(metric, []), b.history.get(metric, [])) for a, b in pairs]
    length = min((min(len(a), len(b)) for a, b in logged), default=0)
    if not logged or length <= start:
        return None
    gaps = [[y_scale * (a[e] - b[e]) for a, b in logged] for e in range(start, length)]
    at = max(range(len(gaps)), key=lambda i: abs(statistics.fmean(gaps[i])))
    return (start + at + 1, statistics.fmean(gaps[at]),
            interval(gaps[at], scale, 1 - (1 - confidence) / len(gaps), pooled_sd))


def compare(curve: Curve, base: Curve, options: dict, pooled_sd: float | None = None) -> dict:
    """The curve against the baseline, paired by seed (the same seed: the same initial weights),
    on the held-out test split: the final accuracy difference in points with its bounded
    interval (src.intervals, the difference scale; the spread pooled over the group's other arms
    where this one's is zero or unmeasurable), seeds that diverged counted at chance with their
    share's exact interval, the smallest difference these seeds could detect, the largest
    per-epoch gaps of test accuracy and of training loss from the first milestone on, and the
    verdict: matched needs the final difference and the largest test-accuracy gap within the margin,
    differs needs either wholly outside it."""
    confidence, min_seeds = options["confidence"], options["min_seeds"]
    seeds, arm, baseline, diverged = paired_accuracy(curve, base)
    margin = margin_points(base, options)
    row = dict.fromkeys(COMPARISON)
    row.update(n_paired=len(seeds), n_diverged=len(diverged), margin_points=margin)
    if not seeds:
        row["verdict"] = verdict_word(0, Interval(0.0, None, None, 0), margin, min_seeds)
        row["verdict_detail"] = f"no seed finished in both this schedule and {base.schedule}"
        return row
    diffs = [100 * (a - b) for a, b in zip(arm, baseline)]
    found = interval(diffs, "difference", confidence, pooled_sd)
    # The point is the plain mean; the interval comes from the bounded scale (src.intervals).
    row.update(acc_diff_points=statistics.fmean(diffs), acc_diff_low=found.low, acc_diff_high=found.high)
    own_sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    sd_points = own_sd if own_sd > 0 else (100 * pooled_sd if pooled_sd else None)
    row["detectable_points"] = detectable_difference(sd_points, len(diffs), confidence, options["power"])
    if diverged:
        row["diverged_low"], row["diverged_high"] = binomial_interval(len(diverged), len(seeds), confidence)
    # Before the first milestone both schedules are the same; the gap that matters starts there.
    pairs = curve.paired_with(base)
    firsts = [steps[0] for run in (r for pair in pairs for r in pair) if (steps := change_steps(run))]
    start = min(firsts, default=0)
    if firsts:
        row["first_milestone_epoch"] = start + 1
    largest = _largest_gap(pairs, TEST_ACC, start, "difference", 100, confidence, pooled_sd)
    gap = None
    if largest is not None:
        row["max_gap_epoch"], row["max_gap_points"], gap = largest
        row.update(max_gap_low=gap.low, max_gap_high=gap.high)
    loss = _largest_gap(pairs, TRAIN_LOSS, start, "unbounded", 1, confidence)
    if loss is not None:
        row["loss_gap_epoch"], row["loss_gap"], loss_gap = loss
        row.update(loss_gap_low=loss_gap.low, loss_gap_high=loss_gap.high)
    # The whole curve decides with the end: matched needs both within the margin, and a
    # difference either at the end or at some epoch is a difference.
    word = verdict_word(len(seeds), found, margin, min_seeds)
    along = verdict_word(len(pairs), gap, margin, min_seeds) if gap is not None else word
    if word == "matched" and along != "matched":
        word = "inconclusive (matched at the end, not along the curve)"
    elif word.startswith("inconclusive") and along == "differs":
        word = "differs (along the curve)"
    row["verdict"] = word
    row["verdict_detail"] = _comparison_detail(row, found, gap, len(seeds), confidence)
    return row


def _comparison_detail(row: dict, found: Interval, gap: Interval | None, n: int, confidence: float) -> str:
    """compare()'s numbers as one sentence."""
    pooled = ", spread pooled over the group's arms" if found.pooled else ""
    interval_text = (f"{100 * confidence:g}% interval{bounds_text(found.low, found.high, '+.2f')}{pooled}"
                     if found.low is not None else "no interval: too few seeds")
    detail = (f"test accuracy {row['acc_diff_points']:+.2f} points ({interval_text}, {n} paired seed{'s' * (n != 1)}; "
              f"margin ±{row['margin_points']:.2f}")
    if row["detectable_points"] is not None:
        detail += f", detectable {row['detectable_points']:.2f}"
    detail += ")"
    if row["n_diverged"]:
        detail += (f"; {row['n_diverged']} of {n} seeds diverged ({100 * row['diverged_low']:.0f}-"
                   f"{100 * row['diverged_high']:.0f}%), counted at chance")
    if gap is not None:
        since = (f"from epoch {row['first_milestone_epoch']}, the first milestone" if row["first_milestone_epoch"]
                 else "no milestone: every epoch")
        detail += (f"; largest per-epoch test-accuracy gap {row['max_gap_points']:+.2f}"
                   f"{bounds_text(gap.low, gap.high, '+.2f')} "
                   f"points at epoch {row['max_gap_epoch']} ({since}; interval at the Bonferroni level over "
                   "those epochs)")
    if row["loss_gap"] is not None:
        detail += (f"; largest training-loss gap {row['loss_gap']:+.4f}"
                   f"{bounds_text(row['loss_gap_low'], row['loss_gap_high'], '+.4f')} at epoch {row['loss_gap_epoch']}")
    return detail


def has_diverged(run: RunData) -> bool:
    """Whether a run ended because its loss stopped being finite: src.errors.Diverged, by the error
    tag src.tracking writes (`<exception class>: <message>`)."""
    return run.tags.get(ERROR_TAG, "").startswith(Diverged.__name__)


def report_rows(group: Group, baseline: str | None, options: dict) -> list[dict]:
    """One row per curve of the group: run counts; mean, std (over seeds, finished runs only)
    and ratio of mean to the baseline's mean for each REPORTED number; the comparison with the
    baseline (compare, with the spread of the group's paired differences pooled for an arm whose
    own is zero). std needs two seeds. `options`: conf/figures.yaml's (load_options)."""
    rows = []
    base_curve = group.curves.get(baseline) if baseline else None
    pooled = None if base_curve is None else pooled_spread(
        [accuracy_differences(curve, base_curve) for name, curve in group.curves.items() if name != baseline],
        "difference")
    for schedule, curve in group.curves.items():
        finished = curve.finished
        row = {"group": group.label, "schedule": schedule, "baseline": baseline or "",
               "n_finished": len(finished), "n_failed": curve.n_failed}
        for name in REPORTED:
            values = [run.reported(name) for run in finished]
            row[f"{name}_mean"] = statistics.fmean(values) if values else None
            row[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else None
        rows.append(row)
    base = next((row for row in rows if row["schedule"] == baseline), None)
    for row in rows:
        for name in REPORTED:
            base_mean = base[f"{name}_mean"] if base else None
            mean = row[f"{name}_mean"]
            row[f"{name}_ratio"] = None if mean is None or not base_mean else mean / base_mean
        if row["schedule"] == baseline:
            row.update(dict.fromkeys(COMPARISON), verdict="baseline", verdict_detail="")
        elif baseline is None:
            row.update(dict.fromkeys(COMPARISON), verdict="no baseline",
                       verdict_detail="no baseline schedule ran in this group (choose one with --baseline)")
        else:
            row.update(compare(group.curves[row["schedule"]], base_curve, options, pooled))
            if row["n_paired"] and row["total_param_updates_ratio"]:
                row["verdict_detail"] += f"; {_updates_phrase(row['total_param_updates_ratio'])}"
    return [{column: row[column] for column in COLUMNS} for row in rows]


def _updates_phrase(ratio: float) -> str:
    if ratio < 1:
        return f"{1 / ratio:.1f}x fewer parameter updates"
    return f"{ratio:.1f}x as many parameter updates"


def series(runs: Sequence[RunData], y: str, x: str | None = None, y_scale: float = 1.0) -> dict[str, np.ndarray]:
    """A curve's numbers: x (1-based epochs, or the mean of metric x), the mean of y over the
    runs and its min and max (histories cut to the shortest)."""
    n = min(len(run.history[y]) for run in runs)
    values = y_scale * np.array([run.history[y][:n] for run in runs])
    xs = np.arange(1, n + 1) if x is None else np.mean([run.history[x][:n] for run in runs], axis=0)
    return {"x": xs, "mean": values.mean(0), "low": values.min(0), "high": values.max(0)}


def minus_one_spread(curves: dict[str, list[RunData]]) -> float | None:
    """When every epoch's lr·N/(B(1-m)) is the same for all curves (the paper's equal-g
    schedules), the largest relative spread of the exact g = lr/(1-m)·(N/B - 1) at any epoch:
    the '-1' does not scale with B. None when the curves' approximate g differ by design."""
    exact = [series(runs, NOISE_SCALE)["mean"] for runs in curves.values()]
    approx = [g + series(runs, LR)["mean"] / (1 - series(runs, MOMENTUM)["mean"])
              for g, runs in zip(exact, curves.values())]  # g + lr/(1-m) = lr·N/(B(1-m))
    n = min(len(values) for values in exact)
    if len(exact) < 2 or n == 0:
        return None
    approx_at = np.array([values[:n] for values in approx])
    if not np.allclose(approx_at.min(0), approx_at.max(0), rtol=1e-6, atol=0):
        return None
    exact_at = np.array([values[:n] for values in exact])
    return float((exact_at.max(0) / exact_at.min(0) - 1).max())


# --- figures -----------------------------------------------------------------------------------


def styles_for(schedules: Sequence[str]) -> dict[str, dict]:
    """schedule -> colour, line style and end marker, the same in every figure of a sweep."""
    return {s: {"color": f"C{i % 10}", "linestyle": LINESTYLES[i % len(LINESTYLES)], "marker": MARKERS[i % len(MARKERS)]}
            for i, s in enumerate(schedules)}


def _label(curve: Curve) -> str:
    n = len(curve.finished)
    text = f"{curve.schedule} ({n} seed{'s' * (n != 1)}"
    return text + (f", {curve.n_failed} failed, left out)" if curve.n_failed else ")")


def _figure(title: str, ncols: int = 1) -> tuple[Figure, list]:
    fig, axes = plt.subplots(1, ncols, figsize=(6.4 * ncols, 4.8), squeeze=False, layout="constrained")
    fig.suptitle(title)
    return fig, list(axes[0])


def _legend(fig: Figure, curves: Sequence[Curve], styles: dict, extra: Sequence[tuple] = (),
            bands: bool = False) -> None:
    """One legend under the axes (it never covers a curve); the band is explained only when the
    figure draws one (`bands`, and a curve with more than one seed)."""
    handles = [Line2D([], [], color=styles[c.schedule]["color"], linestyle=styles[c.schedule]["linestyle"],
                      marker=styles[c.schedule]["marker"]) for c in curves]
    labels = [_label(c) for c in curves]
    for handle, label in extra:
        handles.append(handle)
        labels.append(label)
    if bands and any(len(c.finished) > 1 for c in curves):
        handles.append(Patch(color="grey", alpha=0.25))
        labels.append("line: mean over seeds; band: min to max")
    columns = 2 if len(fig.axes) == 1 else 4  # what fits under one panel, or two
    fig.legend(handles, labels, loc="outside lower center", ncols=min(columns, len(handles)), fontsize="small",
               frameon=False)


def _milestone_steps(curves: Sequence[Curve]) -> list[int]:
    return sorted({step for curve in curves for run in curve.finished for step in change_steps(run)})


MILESTONE_STYLE = {"color": "0.45", "linestyle": (0, (1, 3)), "linewidth": 1.0}
MILESTONE_HANDLE = (Line2D([], [], **MILESTONE_STYLE), "milestone: lr, B or g changes")
MILESTONE_POINT = {"marker": "|", "markersize": 11, "markeredgewidth": 1.6, "linestyle": "none"}
MILESTONE_TICK_HANDLE = (Line2D([], [], color="0.3", **MILESTONE_POINT), "milestone (the point before it)")


def _mark_milestones_epochs(ax, curves: Sequence[Curve]) -> bool:
    """Dotted lines where a phase starts: x = epochs trained before it."""
    steps = _milestone_steps(curves)
    for step in steps:
        ax.axvline(step, **MILESTONE_STYLE, zorder=0)
    return bool(steps)


def _epoch_axis(ax, curves: Sequence[Curve]) -> None:
    ax.set_xlabel("epochs trained (epoch k ends at k)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    n = max(len(run.history[TRAIN_LOSS]) for c in curves for run in c.finished)
    ax.set_xlim(0, n)


def _label_ends(ax, ends: list[tuple[float, float, str, str]]) -> None:
    """Each curve's end point labelled in the right margin, labels pushed apart so none hides
    another; a thin leader line joins label and point."""
    ax.autoscale_view()
    to_axes = ax.transAxes.inverted()
    placed = sorted((to_axes.transform(ax.transData.transform((x, y)))[1], x, y, text, color)
                    for x, y, text, color in ends)
    gap = 0.075  # axes fraction between label centres (small font on a ~4 inch axes)
    positions = []
    for fraction, *_ in placed:
        positions.append(max(fraction, positions[-1] + gap) if positions else fraction)
    overflow = positions[-1] - 1.0 if positions else 0
    if overflow > 0:  # shift down, never below 0
        positions = [p - overflow for p in positions]
        for i in range(1, len(positions)):
            positions[i] = max(positions[i], positions[i - 1] + gap)
    for position, (_, x, y, text, color) in zip(positions, placed):
        ax.annotate(text, xy=(x, y), xycoords="data", xytext=(1.03, position), textcoords="axes fraction",
                    va="center", fontsize="small", color=color, annotation_clip=False,
                    arrowprops={"arrowstyle": "-", "color": color, "linewidth": 0.6, "alpha": 0.5,
                                "linestyle": (0, (2, 2)), "shrinkA": 0, "shrinkB": 4})


def _curves(ax, curves: Sequence[Curve], styles: dict, y: str, x: str | None = None, y_scale: float = 1.0) -> None:
    """Mean over seeds of y against epochs trained (x None) or against the mean of metric x; a
    min-max band when a curve has more than one seed; each end marked and labelled with the
    curve's total updates; on an updates axis, each curve's milestones as ticks on it."""
    ends = []
    for curve in curves:
        runs, style = curve.finished, styles[curve.schedule]
        numbers = series(runs, y, x, y_scale)
        ax.plot(numbers["x"], numbers["mean"], color=style["color"], linestyle=style["linestyle"], linewidth=1.6)
        if len(runs) > 1:
            ax.fill_between(numbers["x"], numbers["low"], numbers["high"], color=style["color"], alpha=0.2, linewidth=0)
        ax.plot(numbers["x"][-1], numbers["mean"][-1], marker=style["marker"], color=style["color"], markersize=7,
                linestyle="none", markeredgecolor="white", zorder=5)
        updates = statistics.fmean(run.metrics[TOTAL_PARAM_UPDATES] for run in runs)
        ends.append((numbers["x"][-1], numbers["mean"][-1], f"{curve.schedule}: {updates:,.0f} updates", style["color"]))
        if x is not None:  # milestones of this curve: the last point before each change
            steps = sorted({s for run in runs for s in change_steps(run)})
            at = [s - 1 for s in steps if 0 < s <= len(numbers["x"])]
            ax.plot(numbers["x"][at], numbers["mean"][at], color=style["color"], **MILESTONE_POINT, zorder=4)
    ax.grid(alpha=0.3)
    _label_ends(ax, ends)


def _plain_log(axis) -> None:
    """A log axis with plain numbers at 1, 2 and 5 x 10^k: a sweep's values often span less
    than a decade, where the default labels 10^k only (or 9x10^1)."""
    axis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 100 else f"{value:.3g}"))
    axis.set_minor_formatter(NullFormatter())


def _updates_axis(ax) -> None:
    ax.set(xscale="log", xlabel="parameter updates (optimizer steps, log scale)")
    _plain_log(ax.xaxis)


def _steps(ax, curves: Sequence[Curve], styles: dict, name: str) -> None:
    """A per-epoch setting (lr, B, g) as a step function, one per run (seeds of a step schedule
    coincide; a plateau schedule's differ): epoch k's value over [k - 1, k]."""
    for curve in curves:
        style = styles[curve.schedule]
        for run in curve.finished:
            values = run.history[name]
            ax.step(np.arange(len(values) + 1), np.append(values, values[-1]), where="post",
                    color=style["color"], linestyle=style["linestyle"], linewidth=1.6)
            ax.plot(len(values), values[-1], marker=style["marker"], color=style["color"], markersize=7,
                    linestyle="none", markeredgecolor="white", zorder=5, clip_on=False)
    _mark_milestones_epochs(ax, curves)
    _epoch_axis(ax, curves)
    ax.grid(alpha=0.3)


def plot_schedules(curves: Sequence[Curve], styles: dict, title: str) -> Figure:
    """Figure 1: learning rate (a) and batch size (b) against epochs, both log."""
    fig, (lr, batch) = _figure(title, ncols=2)
    _steps(lr, curves, styles, LR)
    lr.set(yscale="log", ylabel="learning rate (log scale)", title="(a) learning rate")
    _steps(batch, curves, styles, BATCH_SIZE)
    batch.set(yscale="log", ylabel="batch size (samples, log scale)", title="(b) batch size")
    _plain_log(lr.yaxis)
    _plain_log(batch.yaxis)
    _legend(fig, curves, styles, [MILESTONE_HANDLE])
    return fig


def _loss_axis(ax, curves: Sequence[Curve]) -> None:
    """Training cross-entropy on a log axis when it falls by more than 10x, else linear (less
    than a decade on a log axis shows little but the tick labels)."""
    values = [v for c in curves for run in c.finished for v in run.history[TRAIN_LOSS] if v > 0]
    if values and max(values) > 10 * min(values):
        ax.set(yscale="log", ylabel="training cross-entropy (nats, log scale)")
        _plain_log(ax.yaxis)
    else:
        ax.set_ylabel("training cross-entropy (nats)")


def plot_train_loss_epochs(curves: Sequence[Curve], styles: dict, title: str) -> Figure:
    """Figure 2a: training cross-entropy against epochs."""
    fig, (ax,) = _figure(title)
    _mark_milestones_epochs(ax, curves)
    _epoch_axis(ax, curves)
    _loss_axis(ax, curves)
    _curves(ax, curves, styles, TRAIN_LOSS)
    _legend(fig, curves, styles, [MILESTONE_HANDLE], bands=True)
    return fig


def plot_train_loss_updates(curves: Sequence[Curve], styles: dict, title: str) -> Figure:
    """Figure 2b: training cross-entropy against parameter updates."""
    fig, (ax,) = _figure(title)
    _updates_axis(ax)
    _loss_axis(ax, curves)
    _curves(ax, curves, styles, TRAIN_LOSS, x=PARAM_UPDATES)
    _legend(fig, curves, styles, [MILESTONE_TICK_HANDLE], bands=True)
    return fig


def _test_acc_epochs(ax, curves: Sequence[Curve], styles: dict) -> None:
    _mark_milestones_epochs(ax, curves)
    _epoch_axis(ax, curves)
    ax.set_ylabel("test accuracy (%)")
    _curves(ax, curves, styles, TEST_ACC, y_scale=100)


def plot_test_acc_epochs(curves: Sequence[Curve], styles: dict, title: str) -> Figure:
    """Figure 3 (one panel): test accuracy against epochs."""
    fig, (ax,) = _figure(title)
    _test_acc_epochs(ax, curves, styles)
    _legend(fig, curves, styles, [MILESTONE_HANDLE], bands=True)
    return fig


def plot_test_acc_updates(curves: Sequence[Curve], styles: dict, title: str) -> Figure:
    """Figure 5: test accuracy against parameter updates."""
    fig, (ax,) = _figure(title)
    _updates_axis(ax)
    ax.set_ylabel("test accuracy (%)")
    _curves(ax, curves, styles, TEST_ACC, x=PARAM_UPDATES, y_scale=100)
    _legend(fig, curves, styles, [MILESTONE_TICK_HANDLE], bands=True)
    return fig


def plot_noise_scale(curves: Sequence[Curve], styles: dict, title: str) -> Figure:
    """The noise scale g = lr/(1-m)·(N/B - 1) per epoch, and why equal-g schedules differ when
    they do."""
    fig, (ax,) = _figure(title)
    _steps(ax, curves, styles, NOISE_SCALE)
    ax.set(yscale="log", ylabel="noise scale g = lr/(1-m)·(N/B - 1)  (log scale)")
    _plain_log(ax.yaxis)
    spread = minus_one_spread({c.schedule: c.finished for c in curves})
    if spread is not None and spread > 1e-6:
        ax.set_title(f"lr·N/(B(1-m)) is equal for every curve at every epoch, yet g differs by up to "
                     f"{100 * spread:.1f}%:\nthe -1 in N/B - 1 does not scale with B, so a larger B gets a "
                     f"slightly smaller g", fontsize="small")
    _legend(fig, curves, styles, [MILESTONE_HANDLE])
    return fig


def plot_val_loss_wall_time(curves: Sequence[Curve], styles: dict, title: str) -> Figure:
    fig, (ax,) = _figure(title)
    ax.set(xlabel="training time (s, cumulative; validation excluded)", ylabel="validation cross-entropy (nats)")
    _curves(ax, curves, styles, VAL_LOSS, x=WALL_TIME_S)
    _legend(fig, curves, styles, [MILESTONE_TICK_HANDLE], bands=True)
    return fig


def plot_totals(rows: list[dict], styles: dict, title: str, baseline: str | None) -> Figure:
    """Bars of mean training time (train_time_s: the training steps, not the whole job) and
    parameter updates per run (std over seeds as error bars), each bar labelled with its ratio
    to the baseline."""
    fig, axes = _figure(title, ncols=2)
    rows = [row for row in rows if row["n_finished"]]
    names = [row["schedule"] for row in rows]
    for ax, name, label in zip(axes, (TRAIN_TIME_S, TOTAL_PARAM_UPDATES),
                               ("training time per run (s)", "parameter updates per run")):
        bars = ax.bar(names, [row[f"{name}_mean"] for row in rows],
                      yerr=[row[f"{name}_std"] or 0 for row in rows], capsize=4,
                      color=[styles[s]["color"] for s in names])
        ratios = [row[f"{name}_ratio"] for row in rows]
        ax.bar_label(bars, ["" if r is None else f"{r:.2f}x" for r in ratios], label_type="center")
        ax.set(ylabel=label, xlabel="schedule" + (f" (in the bar: ratio to {baseline})" if baseline else ""))
        ax.grid(axis="y", alpha=0.3)
    return fig


# stem -> (heading, plot function of the group's curves with a finished run); plot_totals reads the rows.
FIGURES = {
    "fig1_lr_batch_size": ("Fig. 1: learning rate and batch size vs epochs", plot_schedules),
    "fig2a_train_loss_epochs": ("Fig. 2a: training cross-entropy vs epochs", plot_train_loss_epochs),
    "fig2b_train_loss_updates": ("Fig. 2b: training cross-entropy vs parameter updates", plot_train_loss_updates),
    "fig3_test_acc_epochs": ("Fig. 3: test accuracy vs epochs", plot_test_acc_epochs),
    "fig5_test_acc_updates": ("Fig. 5: test accuracy vs parameter updates", plot_test_acc_updates),
    "noise_scale_epochs": ("Noise scale vs epochs (equal-g schedules overlap)", plot_noise_scale),
    "val_loss_wall_time": ("Validation loss vs training time", plot_val_loss_wall_time),
}
TOTALS = ("totals_bars", "Training time and parameter updates per run (mean ± std over seeds)")


def _save(fig: Figure, folder: Path, stem: str, dpi: int) -> list[Path]:
    written = []
    with plt.rc_context({"svg.fonttype": "none"}):  # SVG text stays text: searchable, editable
        for suffix in (".png", ".svg"):
            fig.savefig(folder / f"{stem}{suffix}", dpi=dpi)
            written.append(folder / f"{stem}{suffix}")
    plt.close(fig)
    return written


def write_figures(folder: Path, group: Group, rows: list[dict], baseline: str | None, styles: dict,
                  title: str, dpi: int = DPI) -> list[Path]:
    """Every figure of one group, as PNG and SVG; returns the files written."""
    curves = [curve for curve in group.curves.values() if curve.finished]
    if not curves:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, (heading, plot) in FIGURES.items():
        written += _save(plot(curves, styles, f"{heading}\n{title}"), folder, stem, dpi)
    written += _save(plot_totals(rows, styles, f"{TOTALS[1]}\n{title}", baseline), folder, TOTALS[0], dpi)
    return written


def plot_optimizer_panels(panels: list[tuple[str, Group]], styles: dict, title: str) -> Figure:
    """Figures 3 and 4: test accuracy against epochs, one panel per optimizer."""
    fig, axes = _figure(title, ncols=len(panels))
    shown: dict[str, Curve] = {}
    for letter, ax, (panel_title, group) in zip("abcd", axes, panels):
        curves = [curve for curve in group.curves.values() if curve.finished]
        _test_acc_epochs(ax, curves, styles)
        ax.set_title(f"({letter}) {panel_title}")
        for curve in curves:
            shown.setdefault(curve.schedule, curve)
    _legend(fig, list(shown.values()), styles, [MILESTONE_HANDLE], bands=True)
    return fig


def write_optimizer_figures(folder: Path, groups: list[Group], styles: dict, title: str,
                            dpi: int = DPI) -> list[Path]:
    """When the sweep varies the optimizer: figures 3 and 4 for each setting of the other axes
    (in that setting's folder), with the optimizers that ran."""
    if not any(key.startswith("optimizer.") for group in groups for key in group.setting):
        return []
    by_rest: dict[tuple, list[Group]] = {}
    for group in groups:
        rest = tuple((k, v) for k, v in group.setting.items() if not k.startswith("optimizer."))
        by_rest.setdefault(rest, []).append(group)
    written = []
    for rest, members in by_rest.items():
        named = {optimizer_name(g.runs[0].params): g for g in members}
        if len(named) < len(members):  # two groups with one optimizer name: the panels would be ambiguous
            continue
        named = {name: g for name, g in named.items() if any(c.finished for c in g.curves.values())}
        label = ",".join(f"{key}={_short(value)}" for key, value in rest)
        target = folder / _folder_name(label) if label else folder
        target.mkdir(parents=True, exist_ok=True)
        for stem, (heading, panels) in OPTIMIZER_FIGURES.items():
            chosen = [(panel, named[name]) for name, panel in panels.items() if name in named]
            if chosen:
                heading_title = f"{heading}\n{title}" + (f"  [{label}]" if label else "")
                written += _save(plot_optimizer_panels(chosen, styles, heading_title), target, stem, dpi)
    return written


# --- report ------------------------------------------------------------------------------------


def _fmt(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    if name in (FINAL_TEST_ACC, FINAL_VAL_ACC):
        return f"{100 * value:.2f}"
    if name == TOTAL_PARAM_UPDATES:
        return f"{value:,.0f}"
    if name.endswith("_s"):
        return f"{value:.1f}"
    return f"{value:.4f}"


def _distinct(values: list[str | None]) -> str:
    """One value, or each with its number of runs; runs that did not log it are counted."""
    present = Counter(v for v in values if v)
    missing = sum(not v for v in values)
    if not present:
        return "not logged"
    text = "; ".join(value if len(present) == 1 else f"{value} ({n} runs)" for value, n in present.most_common())
    return text + (f"; not logged by {missing} run{'s' * (missing != 1)}" if missing else "")


def _command(text: str | None) -> str | None:
    """The logged command line, with the entry point as the user typed it."""
    if not text:
        return None
    words = shlex.split(text)
    if words and words[0].endswith(("src/run.py", "src\\run.py")):
        words[:1] = ["python", "-m", "src.run"]
    return shlex.join(words)


def logged_commands(runs: Sequence[RunData]) -> str:
    """The command lines the runs logged, as typed: one, or each with its number of runs."""
    return _distinct([_command(run.tags.get(COMMAND_TAG)) for run in runs])


def _utc(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if ms else "?"


def environment(runs: Sequence[RunData]) -> dict[str, str]:
    """Where and how the runs ran, and how busy the machine was: the context every wall time in
    the report needs."""
    def tag(name: str) -> str:
        return _distinct([run.tags.get(name) for run in runs])

    env = {
        "commit": tag("mlflow.source.git.commit"),
        "command": logged_commands(runs),
        "torch": tag(TORCH_VERSION_TAG),
        "device": tag(DEVICE_TAG),
        "threads": tag(THREADS_TAG),
    }
    if env["threads"] != "not logged":
        env["threads"] += f" per run (torch intra-op), on a machine with {tag(CPUS_TAG)} CPUs"
    loads = []
    for span in ("1m", "15m"):
        names = (LOAD_AVERAGE_START[span], LOAD_AVERAGE_END[span])
        # tags; metrics in stores written before the load averages became tags
        values = [float(run.tags.get(name, run.metrics.get(name))) for run in runs for name in names
                  if name in run.tags or name in run.metrics]
        if values:
            loads.append(f"{span[:-1]}-minute {min(values):.2f} to {max(values):.2f}")
    env["load"] = ("load average at the runs' starts and ends: " + ", ".join(loads)) if loads else "not logged"
    starts = [run.start_time for run in runs]
    ends = [run.end_time for run in runs if run.end_time]
    env["time"] = f"{_utc(min(starts))} to {_utc(max(ends) if ends else None)} UTC"
    return env


def _markdown_section(rows: list[dict], baseline: str | None, figure_folder: str,
                      drawn: Sequence[str]) -> list[str]:
    """One group's tables, verdicts and links to its paper figures: those of `drawn` (the files
    written, relative to the report) only."""
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
    if baseline:
        lines += ["", f"Ratio of each mean to {baseline}'s:", "",
                  "| schedule | " + " | ".join(REPORTED.values()) + " |",
                  "|---" * (len(REPORTED) + 1) + "|"]
        for row in rows:
            ratios = ["-" if row[f"{n}_ratio"] is None else f"{row[f'{n}_ratio']:.2f}x" for n in REPORTED]
            lines.append(f"| {row['schedule']} | " + " | ".join(ratios) + " |")
    lines += ["", f"Verdict against {baseline or 'no baseline'}:", ""]
    lines += [f"- **{row['schedule']}**: {row['verdict']}" + (f". {row['verdict_detail']}" if row["verdict_detail"] else "")
              for row in rows]
    links = [f"| {heading} | [{stem}.png]({figure_folder}{stem}.png) |"
             for stem, (heading, _) in list(FIGURES.items())[:5] if f"{figure_folder}{stem}.png" in drawn]
    if links:
        lines += ["", "| figure | file |", "|---|---|", *links]
    else:
        lines += ["", "No figures: no run of this group finished."]
    return lines + [""]


def write_report(folder: Path, sweep_id: str, experiment: str, groups: list[Group], sections: dict[str, list[dict]],
                 baselines: dict[str, str | None], runs: Sequence[RunData], options: dict,
                 optimizer_figures: Sequence[Path] = (), figures: Sequence[Path] = ()) -> list[Path]:
    """report.md, report.csv and report.json: the same numbers, one row per (group, schedule);
    report.md links each group's paper figures that were written (`figures`, write_figures')
    and the optimizer panels."""
    failed = [run for run in runs if not run.finished]
    env = environment(runs)
    fraction, confidence, min_seeds = options["margin_error_fraction"], options["confidence"], options["min_seeds"]
    md = [f"# Sweep {sweep_id}", "", "Environment (what every time below depends on):", ""]
    md += [f"- {name}: " + (f"`{value}`" if name in ("commit", "command") and value != "not logged" else value)
           for name, value in env.items()]
    md += [
        "",
        f"Experiment `{experiment}`: {len(runs)} runs, {len(failed)} of them not finished (FAILED, KILLED "
        "or still RUNNING: listed under Failed runs, left out of every number). A curve is the runs that "
        "differ only in the seed; mean ± std over its seeds; accuracy in %, times in seconds (train "
        "time: the training steps only; total wall time: the whole job).",
        "",
        f"Verdict: each schedule's final TEST accuracy (the held-out split no decision reads) minus the "
        f"baseline's, in accuracy points, paired by seed (the same seed: the same initial weights), a seed "
        f"whose loss diverged counted at chance, with a {100 * confidence:g}% t interval over the paired "
        f"seeds computed on the atanh scale so that it stays within ±100 points (src/intervals.py). The "
        f"margin is {fraction:g} of the baseline's test error rate, in points. **matched**: the whole "
        f"interval lies within ± the margin, and so does the largest per-epoch test-accuracy gap from the "
        f"first milestone on (the first epoch whose lr, B or noise scale differs from the epoch before's; "
        f"its interval at the Bonferroni level over the epochs searched); **differs**: either lies wholly "
        f"outside; otherwise **inconclusive**; with fewer than "
        f"{min_seeds} paired seeds always **inconclusive (n seeds)**. 'detectable': the smallest true "
        f"difference these seeds would detect with {100 * options['power']:g}% power, from their paired spread.",
        "",
    ]
    if not any(run.finished for run in runs):
        md += ["**No run finished**: no numbers, no figures; the failed runs below say why.", ""]
    drawn = {path.relative_to(folder).as_posix() for path in figures}
    for group in groups:
        label = group.label
        if label:
            md += [f"## {label}", ""]
        md += _markdown_section(sections[label], baselines[label], f"{_folder_name(label)}/" if label else "", drawn)
    panels = [path.relative_to(folder).as_posix() for path in optimizer_figures if path.suffix == ".png"]
    if panels:
        md += ["## Figures 3 and 4: one panel per optimizer", ""]
        md += [f"- [{name}]({name})" for name in panels] + [""]
    md += ["## Failed runs", ""]
    if failed:
        md += ["| run | schedule | seed | status | error |", "|---|---|---|---|---|"]
        md += [f"| {r.tags.get(RUN_NAME_TAG, r.run_id)} | {r.schedule} | {r.seed} | "
               f"{r.status} | {_cell(r.tags.get(ERROR_TAG, '-'))} |" for r in failed]
    else:
        md.append("None.")
    (folder / "report.md").write_text("\n".join(md) + "\n")

    flat = [row for rows in sections.values() for row in rows]
    with open(folder / "report.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(flat)
    summary = {
        "sweep_id": sweep_id, "experiment": experiment, "environment": env,
        "margin_error_fraction": fraction, "confidence": confidence,
        "interval": "t over paired seeds on the atanh scale (src.intervals)",
        "min_seeds": min_seeds, "axes": sweep_axes(runs), "baselines": baselines, "rows": flat,
        "failed_runs": [{"run_id": r.run_id, "name": r.tags.get(RUN_NAME_TAG), "schedule": r.schedule,
                         "seed": r.tags.get(SEED_TAG), "status": r.status, "error": r.tags.get(ERROR_TAG)}
                        for r in failed],
    }
    (folder / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    return [folder / name for name in ("report.md", "report.csv", "report.json")]


def _cell(text: str) -> str:
    """Text as one markdown table cell: an error message may hold newlines or pipes."""
    return " ".join(text.split()).replace("|", "\\|")


def _folder_name(label: str) -> str:
    return re.sub(r"[^\w.=,+-]", "_", label)


def load_options(path: Path = DEFAULTS) -> dict:
    """conf/figures.yaml: the defaults of the verdict and the baseline."""
    return OmegaConf.to_container(OmegaConf.load(path))


def write_all(folder: Path, sweep_id: str, experiment: str, runs: Sequence[RunData], baseline: str | None = None,
              options: dict | None = None) -> list[Path]:
    """Figures (one set per group, and the optimizer panels) and the report for one sweep's runs;
    returns the files. `baseline` None: the first of options['baselines'] in each group; options
    not given come from conf/figures.yaml."""
    options = {**load_options(), **(options or {})}
    candidates = options["baselines"]
    groups = group_runs(runs, [baseline] if baseline else candidates)
    schedules = sorted({run.schedule for run in runs}, key=lambda s: _schedule_order(s, [baseline] if baseline else candidates))
    styles = styles_for(schedules)
    baselines = {group.label: pick_baseline(group, baseline, candidates) for group in groups}
    sections = {group.label: report_rows(group, baselines[group.label], options) for group in groups}
    figures = []
    for group in groups:
        title = f"sweep {sweep_id}" + (f"  [{group.label}]" if group.label else "")
        target = folder / _folder_name(group.label) if group.label else folder
        figures += write_figures(target, group, sections[group.label], baselines[group.label], styles, title)
    panels = write_optimizer_figures(folder, groups, styles, f"sweep {sweep_id}")
    folder.mkdir(parents=True, exist_ok=True)
    return figures + panels + write_report(folder, sweep_id, experiment, groups, sections, baselines, runs, options,
                                           panels, figures)


# --- command line ------------------------------------------------------------------------------


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    return key, value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction of the error rate in 0..1, got '{text}'")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    options = load_options()
    parser = argparse.ArgumentParser(
        prog="python -m src.figures",
        description="Figures, a results table and a verdict for one sweep, read from the MLflow store. "
                    "The store, the experiment and the output folder default to those of conf/config.yaml, "
                    "with the same KEY=VALUE overrides as src.run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="overrides of conf/config.yaml, as given to src.run (paths.output_dir=..., "
                             "tracking.experiment=..., experiment=smoke): where the runs were logged")
    parser.add_argument("--tracking-uri", help="the MLflow store (default: tracking.uri)")
    parser.add_argument("--experiment", help="the MLflow experiment (default: tracking.experiment)")
    parser.add_argument("--sweep-id", help="the sweep to report; none: the newest (latest run start)")
    parser.add_argument("--tag", type=_tag, action="append", default=[], metavar="KEY=VALUE",
                        help="read only runs with this tag (repeatable)")
    parser.add_argument("--baseline", help="the schedule the others are compared with; none: the first of "
                        f"{', '.join(options['baselines'])} that ran (conf/figures.yaml)")
    parser.add_argument("--margin", "--tolerance", dest="margin", type=_fraction,
                        default=options["margin_error_fraction"],
                        help="matched = the whole interval of the accuracy difference within ± this fraction of "
                             "the baseline's test error rate")
    parser.add_argument("--output-dir", type=Path,
                        help=f"files go to OUTPUT_DIR/<sweep_id>/ (default: paths.output_dir/{options['folder']})")
    args = parser.parse_args(argv)
    try:
        cfg = compose(*args.overrides)
    except Exception as error:  # a key, option or value Hydra cannot compose: one line, exit 2
        parser.error(one_line_error(error)[0])
    args.tracking_uri = args.tracking_uri or cfg.tracking.uri
    args.experiment = args.experiment or cfg.tracking.experiment
    args.output_dir = args.output_dir or Path(cfg.paths.output_dir) / options["folder"]
    return args


def record_run(client: MlflowClient, experiment_id: str, sweep_id: str, runs: Sequence[RunData]) -> str | None:
    """The run the files are logged to: the sweep's parent run; for the sweep of a single run
    (python -m src.run without -m), that run; None when there is neither (a sweep_id given by
    hand to separate runs)."""
    query = f"tags.{KIND_TAG} = '{SWEEP_KIND}' and tags.{SWEEP_TAG} = '{sweep_id}'"
    parents = client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"])
    if parents:
        return parents[0].info.run_id
    trained_here = [run for run in runs if run.tags[SWEEP_TAG] == sweep_id]
    return trained_here[0].run_id if len(runs) == 1 and trained_here else None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        client = open_existing_store(args.tracking_uri, "--tracking-uri")
        sweep_id, runs = load_sweep(client, args.experiment, args.sweep_id, dict(args.tag))
        if args.baseline and args.baseline not in {run.schedule for run in runs}:
            ran = ", ".join(sorted({run.schedule for run in runs}))
            raise StoreError(f"--baseline {args.baseline}: no run of that schedule in sweep '{sweep_id}' (schedules: {ran})")
        check_folder("--output-dir", args.output_dir)  # before anything is written or logged
    except (StoreError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    folder = args.output_dir / _folder_name(sweep_id)
    written = write_all(folder, sweep_id, args.experiment, runs, args.baseline, {"margin_error_fraction": args.margin})
    record = record_run(client, client.get_experiment_by_name(args.experiment).experiment_id, sweep_id, runs)
    if record:
        for path in written:
            parent = path.parent.relative_to(folder)
            client.log_artifact(record, str(path), artifact_path=(Path(FIGURES_ARTIFACTS) / parent).as_posix())
    where = f"logged to MLflow run {record} ({FIGURES_ARTIFACTS}/)" if record else "no sweep run in MLflow to log them to"
    print(f"{len(written)} files for sweep {sweep_id} ({len(runs)} runs) in {folder}; {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
