"""The numbers of a group of curves and the verdict on each schedule: typed report rows.

Each curve (src.groups) against the group's baseline, paired by seed (the same seed: the same
initial weights), on the held-out test split: the final accuracy difference with its bounded
interval (src.intervals), seeds that diverged counted at chance, the smallest difference the seeds
could detect, the largest per-epoch gaps from the first milestone on, and the word: matched,
differs or inconclusive, by conf/figures.yaml's margin, confidence and min_seeds. No matplotlib
and no MLflow calls: src.plots and src.report show what this computes.

Epochs are 1-based wherever a number names one (epoch k is the k-th epoch trained); a milestone
is the first epoch whose lr, B or g differs from the epoch before's.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from src.errors import Diverged
from src.groups import Curve, Group
from src.intervals import Interval, binomial_interval, bounds_text, detectable_difference, interval, pooled_spread
from src.runs import BEST_VAL_LOSS, RunData
from src.schema import (
    BATCH_SIZE, CONF_DIR, ERROR_TAG, FINAL_TEST_ACC, FINAL_TEST_LOSS, FINAL_VAL_ACC, FINAL_VAL_LOSS, LR, MOMENTUM,
    NOISE_SCALE, TEST_ACC, TOTAL_PARAM_UPDATES, TOTAL_WALL_TIME_S, TRAIN_LOSS, TRAIN_TIME_S,
)

OPTIONS_FILE = CONF_DIR / "figures.yaml"  # the verdict's margin, confidence, power, min_seeds and baselines
# A schedule's phase changes when one of these differs from the epoch before: a milestone.
PHASE_METRICS = (LR, BATCH_SIZE, NOISE_SCALE)
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


def load_options(path: Path = OPTIONS_FILE) -> dict:
    """conf/figures.yaml: the defaults of the verdict and the baseline."""
    return OmegaConf.to_container(OmegaConf.load(path))


@dataclass
class Summary:
    """One REPORTED number of a curve, over its finished seeds."""

    mean: float | None
    std: float | None  # needs two seeds
    ratio: float | None = None  # the mean over the baseline's mean


@dataclass
class Comparison:
    """A curve against the baseline (compare); None where a number does not apply. Accuracies in
    points (percentage points), epochs 1-based, diverged shares 0..1."""

    n_paired: int | None = None  # seeds the baseline finished and the curve finished or diverged in
    n_diverged: int | None = None
    diverged_low: float | None = None  # the diverged share's exact interval
    diverged_high: float | None = None
    margin_points: float | None = None  # of "matched"
    acc_diff_points: float | None = None  # final test accuracy minus the baseline's, mean over pairs
    acc_diff_low: float | None = None
    acc_diff_high: float | None = None
    detectable_points: float | None = None  # the smallest difference the seeds would detect
    first_milestone_epoch: int | None = None
    max_gap_points: float | None = None  # the largest mean per-epoch test-accuracy gap
    max_gap_low: float | None = None
    max_gap_high: float | None = None
    max_gap_epoch: int | None = None
    loss_gap: float | None = None  # the largest mean per-epoch training-loss gap (nats)
    loss_gap_low: float | None = None
    loss_gap_high: float | None = None
    loss_gap_epoch: int | None = None
    verdict: str = ""
    verdict_detail: str = ""


@dataclass
class ReportRow:
    """One curve of a group in the report: run counts, each REPORTED number, the comparison."""

    group: str
    schedule: str
    baseline: str  # '' when no baseline ran in the group
    n_finished: int
    n_failed: int
    numbers: dict[str, Summary]  # REPORTED name -> its summary
    comparison: Comparison = field(default_factory=Comparison)

    def record(self) -> dict:
        """The row as report.csv's and report.json's flat record, in COLUMNS' order."""
        flat = {"group": self.group, "schedule": self.schedule, "baseline": self.baseline,
                "n_finished": self.n_finished, "n_failed": self.n_failed}
        for name, summary in self.numbers.items():
            flat.update({f"{name}_mean": summary.mean, f"{name}_std": summary.std, f"{name}_ratio": summary.ratio})
        return {**flat, **asdict(self.comparison)}


# report.csv's columns (report.json's rows have the same keys). Ratios are of the means.
COLUMNS = ["group", "schedule", "baseline", "n_finished", "n_failed",
           *(f"{name}_{stat}" for name in REPORTED for stat in ("mean", "std", "ratio")),
           *(f.name for f in fields(Comparison))]


def format_reported(name: str, value: float | None) -> str:
    """A REPORTED number as the tables write it: accuracies in %, updates whole, seconds to 0.1."""
    if value is None:
        return "-"
    if name in (FINAL_TEST_ACC, FINAL_VAL_ACC):
        return f"{100 * value:.2f}"
    if name == TOTAL_PARAM_UPDATES:
        return f"{value:,.0f}"
    if name.endswith("_s"):
        return f"{value:.1f}"
    return f"{value:.4f}"


def change_steps(run: RunData) -> list[int]:
    """The 0-based epochs whose lr, batch size or noise scale differs from the epoch before's:
    the first epoch of each new phase of the schedule."""
    steps = set()
    for name in PHASE_METRICS:
        values = run.history.get(name, [])
        steps.update(e for e in range(1, len(values)) if not math.isclose(values[e], values[e - 1], rel_tol=1e-9))
    return sorted(steps)


def has_diverged(run: RunData) -> bool:
    """Whether a run ended because its loss stopped being finite: src.errors.Diverged, by the error
    tag src.tracking writes (`<exception class>: <message>`)."""
    return run.tags.get(ERROR_TAG, "").startswith(Diverged.__name__)


def diverged_runs(curve: Curve) -> dict[str, RunData]:
    """seed -> the curve's run whose loss diverged, for each seed with no FINISHED run."""
    done = curve.by_seed
    return {run.seed: run for run in curve.runs if run.seed not in done and has_diverged(run)}


def margin_points(base: Curve, options: dict) -> float | None:
    """The margin of "matched", in accuracy points: conf/figures.yaml's margin_error_fraction of
    the baseline's mean test error rate (so it tightens as the baseline nears its ceiling)."""
    accs = [run.metrics[FINAL_TEST_ACC] for run in base.finished]
    return 100 * options["margin_error_fraction"] * (1 - statistics.fmean(accs)) if accs else None


def paired_accuracy(curve: Curve, base: Curve) -> tuple[list[str], list[float], list[float], list[str]]:
    """(seeds, the curve's final test accuracies, the baseline's, the seeds of the curve that
    diverged) over every seed the baseline finished and the curve either finished or diverged
    in: a diverged seed is an outcome, counted at chance (RunData.chance), not left out."""
    theirs, mine, diverged = base.by_seed, curve.by_seed, diverged_runs(curve)
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


@dataclass
class _Gap:
    """The largest mean paired gap of a per-epoch metric: its 1-based epoch, mean and interval."""

    epoch: int
    mean: float
    found: Interval


def _largest_gap(pairs: list[tuple[RunData, RunData]], metric: str, start: int, scale: str, y_scale: float,
                 confidence: float, pooled_sd: float | None = None) -> _Gap | None:  # 7 numbers it reads, no fewer
    """The largest mean paired gap of a per-epoch metric from the 0-based epoch `start` on, over
    the pairs that both logged it. The epoch is picked as the largest of several, so its interval
    is at the Bonferroni level over the epochs searched (1 - (1 - confidence) / epochs): picking
    the worst epoch does not by itself make a difference."""
    logged = [(a.history.get(metric, []), b.history.get(metric, [])) for a, b in pairs]
    length = min((min(len(a), len(b)) for a, b in logged), default=0)
    if not logged or length <= start:
        return None
    gaps = [[y_scale * (a[e] - b[e]) for a, b in logged] for e in range(start, length)]
    at = max(range(len(gaps)), key=lambda i: abs(statistics.fmean(gaps[i])))
    return _Gap(start + at + 1, statistics.fmean(gaps[at]),
                interval(gaps[at], scale, 1 - (1 - confidence) / len(gaps), pooled_sd))


def _final_difference(row: Comparison, diffs: list[float], options: dict, pooled_sd: float | None) -> Interval:
    """Fill the final accuracy difference, its interval and the detectable difference; return the interval."""
    confidence = options["confidence"]
    found = interval(diffs, "difference", confidence, pooled_sd)
    # The point is the plain mean; the interval comes from the bounded scale (src.intervals).
    row.acc_diff_points, row.acc_diff_low, row.acc_diff_high = statistics.fmean(diffs), found.low, found.high
    own_sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    sd_points = own_sd if own_sd > 0 else (100 * pooled_sd if pooled_sd else None)
    row.detectable_points = detectable_difference(sd_points, len(diffs), confidence, options["power"])
    return found


def _gaps_along(row: Comparison, pairs: list, confidence: float, pooled_sd: float | None) -> Interval | None:
    """Fill the first milestone and the largest per-epoch gaps of test accuracy and training loss
    from it on; return the test-accuracy gap's interval (None: no epoch to compare)."""
    # Before the first milestone both schedules are the same; the gap that matters starts there.
    firsts = [steps[0] for run in (r for pair in pairs for r in pair) if (steps := change_steps(run))]
    start = min(firsts, default=0)
    if firsts:
        row.first_milestone_epoch = start + 1
    gap = _largest_gap(pairs, TEST_ACC, start, "difference", 100, confidence, pooled_sd)
    if gap is not None:
        row.max_gap_epoch, row.max_gap_points = gap.epoch, gap.mean
        row.max_gap_low, row.max_gap_high = gap.found.low, gap.found.high
    loss = _largest_gap(pairs, TRAIN_LOSS, start, "unbounded", 1, confidence)
    if loss is not None:
        row.loss_gap_epoch, row.loss_gap = loss.epoch, loss.mean
        row.loss_gap_low, row.loss_gap_high = loss.found.low, loss.found.high
    return gap.found if gap is not None else None


def compare(curve: Curve, base: Curve, options: dict, pooled_sd: float | None = None) -> Comparison:
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
    row = Comparison(n_paired=len(seeds), n_diverged=len(diverged), margin_points=margin)
    if not seeds:
        row.verdict = verdict_word(0, Interval(0.0, None, None, 0), margin, min_seeds)
        row.verdict_detail = f"no seed finished in both this schedule and {base.schedule}"
        return row
    found = _final_difference(row, [100 * (a - b) for a, b in zip(arm, baseline)], options, pooled_sd)
    if diverged:
        row.diverged_low, row.diverged_high = binomial_interval(len(diverged), len(seeds), confidence)
    pairs = curve.paired_with(base)
    gap = _gaps_along(row, pairs, confidence, pooled_sd)
    # The whole curve decides with the end: matched needs both within the margin, and a
    # difference either at the end or at some epoch is a difference.
    word = verdict_word(len(seeds), found, margin, min_seeds)
    along = verdict_word(len(pairs), gap, margin, min_seeds) if gap is not None else word
    if word == "matched" and along != "matched":
        word = "inconclusive (matched at the end, not along the curve)"
    elif word.startswith("inconclusive") and along == "differs":
        word = "differs (along the curve)"
    row.verdict = word
    row.verdict_detail = _comparison_detail(row, found, gap, len(seeds), confidence)
    return row


def _comparison_detail(row: Comparison, found: Interval, gap: Interval | None, n: int, confidence: float) -> str:
    """compare()'s numbers as one sentence."""
    pooled = ", spread pooled over the group's arms" if found.pooled else ""
    interval_text = (f"{100 * confidence:g}% interval{bounds_text(found.low, found.high, '+.2f')}{pooled}"
                     if found.low is not None else "no interval: too few seeds")
    detail = (f"test accuracy {row.acc_diff_points:+.2f} points ({interval_text}, {n} paired seed{'s' * (n != 1)}; "
              f"margin ±{row.margin_points:.2f}")
    if row.detectable_points is not None:
        detail += f", detectable {row.detectable_points:.2f}"
    detail += ")"
    if row.n_diverged:
        detail += (f"; {row.n_diverged} of {n} seeds diverged ({100 * row.diverged_low:.0f}-"
                   f"{100 * row.diverged_high:.0f}%), counted at chance")
    if gap is not None:
        since = (f"from epoch {row.first_milestone_epoch}, the first milestone" if row.first_milestone_epoch
                 else "no milestone: every epoch")
        detail += (f"; largest per-epoch test-accuracy gap {row.max_gap_points:+.2f}"
                   f"{bounds_text(gap.low, gap.high, '+.2f')} "
                   f"points at epoch {row.max_gap_epoch} ({since}; interval at the Bonferroni level over "
                   "those epochs)")
    if row.loss_gap is not None:
        detail += (f"; largest training-loss gap {row.loss_gap:+.4f}"
                   f"{bounds_text(row.loss_gap_low, row.loss_gap_high, '+.4f')} at epoch {row.loss_gap_epoch}")
    return detail


def _summaries(runs: list[RunData]) -> dict[str, Summary]:
    numbers = {}
    for name in REPORTED:
        values = [run.reported(name) for run in runs]
        numbers[name] = Summary(statistics.fmean(values) if values else None,
                                statistics.stdev(values) if len(values) > 1 else None)
    return numbers


def report_rows(group: Group, baseline: str | None, options: dict) -> list[ReportRow]:
    """One row per curve of the group: run counts; mean, std (over seeds, finished runs only)
    and ratio of mean to the baseline's mean for each REPORTED number; the comparison with the
    baseline (compare, with the spread of the group's paired differences pooled for an arm whose
    own is zero). std needs two seeds. `options`: conf/figures.yaml's (load_options)."""
    base_curve = group.curves.get(baseline) if baseline else None
    pooled = None if base_curve is None else pooled_spread(
        [accuracy_differences(curve, base_curve) for name, curve in group.curves.items() if name != baseline],
        "difference")
    rows = [ReportRow(group.label, schedule, baseline or "", len(curve.finished), curve.n_failed,
                      _summaries(curve.finished)) for schedule, curve in group.curves.items()]
    base = next((row for row in rows if row.schedule == baseline), None)
    for row in rows:
        for name, summary in row.numbers.items():
            base_mean = base.numbers[name].mean if base else None
            summary.ratio = None if summary.mean is None or not base_mean else summary.mean / base_mean
        if row.schedule == baseline:
            row.comparison = Comparison(verdict="baseline")
        elif baseline is None:
            row.comparison = Comparison(
                verdict="no baseline", verdict_detail="no baseline schedule ran in this group (choose one with --baseline)")
        else:
            row.comparison = compare(group.curves[row.schedule], base_curve, options, pooled)
            ratio = row.numbers[TOTAL_PARAM_UPDATES].ratio
            if row.comparison.n_paired and ratio:
                row.comparison.verdict_detail += f"; {_updates_phrase(ratio)}"
    return rows


def _updates_phrase(ratio: float) -> str:
    if ratio < 1:
        return f"{1 / ratio:.1f}x fewer parameter updates"
    return f"{ratio:.1f}x as many parameter updates"


# --- a curve's numbers per epoch, as the figures draw them -------------------------------------


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
