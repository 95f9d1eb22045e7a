"""The noise scale as the one dial (the paper's section 2, after Smith & Le 2018), read back from
logged runs: SGD's noise scale g = lr / (1 - m) (N / B - 1), not lr or B alone, should set where
training ends, so runs at equal g should end alike while B << N, and a schedule's factor is free.

Two studies test it (conf/reproduction.yaml): `noise_scale`, runs at a constant g with several
(lr, B, m) per g, and `factor_sweep`, the step schedules at several factors, each against
decay_lr at its own factor. Every verdict is the study's one rule (src.figures.compare: paired by
seed, test accuracy, the margin a fraction of the reference's error rate).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

from src.groups import Curve
from src.runs import RunData
from src.verdict import Comparison, compare, has_diverged
from src.schema import BATCH_SIZE, FINAL_TEST_ACC, GNS_B_SIMPLE, NOISE_SCALE, TOTAL_PARAM_UPDATES

# The params that set a grid run's noise scale, as the runs log them (the flattened config).
LR_PARAM, BATCH_PARAM, MOMENTUM_PARAM = "schedule.lr", "schedule.batch_size", "optimizer.momentum"
FACTOR_PARAM, CAP_PARAM = "schedule.factor", "schedule.max_batch_size"
G_DIGITS = 3  # g is grouped at 3 significant digits: the grid's lr are given to 4


@dataclass(frozen=True)
class Setting:
    """One (lr, B, m) of the equal-g grid."""

    lr: float
    batch_size: int
    momentum: float

    @classmethod
    def of(cls, run: RunData) -> Setting:
        params = run.params
        return cls(float(params[LR_PARAM]), int(params[BATCH_PARAM]), float(params[MOMENTUM_PARAM]))

    def noise_scale(self, n_train: int) -> float:
        return self.lr / (1 - self.momentum) * (n_train / self.batch_size - 1)

    @property
    def label(self) -> str:
        return f"lr {self.lr:g}, B {self.batch_size}, m {self.momentum:g}"


@dataclass
class GridArm:
    setting: Setting
    curve: Curve
    comparison: Comparison | None  # compare() against its set's reference; None for the reference itself
    b_simple: float | None  # the median over seeds of the final smoothed B_simple (src.gns)

    @property
    def verdict(self) -> str | None:
        return None if self.comparison is None else self.comparison.verdict


@dataclass
class EqualGSet:
    """The grid's runs at one g: the reference (the smallest B at the study's usual momentum, where
    B << N holds best) and the arms compared with it, B ascending, other momenta last."""

    g: float
    reference: GridArm
    arms: list[GridArm]

    @property
    def matched_up_to(self) -> int | None:
        """The largest B up to which every arm at the reference's momentum matched (None: the
        first did not)."""
        largest = None
        for arm in self._at_reference_momentum():
            if arm.verdict != "matched":
                break
            largest = arm.setting.batch_size
        return largest

    @property
    def breaks_at(self) -> int | None:
        """The smallest B at the reference's momentum whose runs came out different, if any."""
        return next((arm.setting.batch_size for arm in self._at_reference_momentum()
                     if arm.verdict and arm.verdict.startswith("differs")), None)

    def _at_reference_momentum(self) -> list[GridArm]:
        return [arm for arm in self.arms if arm.setting.momentum == self.reference.setting.momentum]


def _study_n_train(runs: Sequence[RunData]) -> int:
    """N, the training samples, from a run that logged its noise scale (g = lr / (1 - m) (N / B - 1)
    solved for N): every run of a study trains on the same data."""
    for run in runs:
        logged = run.history.get(NOISE_SCALE)
        if logged:
            setting = Setting.of(run)
            return round(setting.batch_size * (logged[0] * (1 - setting.momentum) / setting.lr + 1))
    raise ValueError("no run logged its noise scale: N cannot be read back")


def _rounded(value: float) -> float:
    return float(f"{value:.{G_DIGITS}g}")


def _final_b_simple(curve: Curve) -> float | None:
    values = [run.history[GNS_B_SIMPLE][-1] for run in curve.finished
              if run.history.get(GNS_B_SIMPLE) and run.history[GNS_B_SIMPLE][-1] == run.history[GNS_B_SIMPLE][-1]]
    return statistics.median(values) if values else None


def _curves_by(runs: Sequence[RunData], key) -> dict:
    """Runs that finished or diverged (an outcome, counted at chance), by key(run), as Curves."""
    grouped = defaultdict(list)
    for run in runs:
        if run.finished or has_diverged(run):
            grouped[key(run)].append(run)
    return {k: Curve(schedule=str(k), runs=v) for k, v in grouped.items()}


def equal_g_sets(runs: Sequence[RunData], options: dict) -> list[EqualGSet]:
    """The grid's runs grouped by g (G_DIGITS significant digits), g descending; in each set the
    reference is the smallest B at the most common momentum, and every other setting is compared
    with it by the study's rule (the spread pooled over the set's arms where one's own is zero)."""
    n_train = _study_n_train(runs)
    curves = _curves_by(runs, Setting.of)
    by_g = defaultdict(list)
    for setting, curve in curves.items():
        by_g[_rounded(setting.noise_scale(n_train))].append((setting, curve))
    usual = statistics.mode(setting.momentum for setting in curves)
    sets = []
    for g, members in sorted(by_g.items(), reverse=True):
        members.sort(key=lambda pair: (pair[0].momentum != usual, pair[0].batch_size))
        (ref_setting, ref_curve), others = members[0], members[1:]
        arms = [GridArm(setting, curve, compare(curve, ref_curve, options), _final_b_simple(curve))
                for setting, curve in others]
        sets.append(EqualGSet(g, GridArm(ref_setting, ref_curve, None, _final_b_simple(ref_curve)), arms))
    return sets


def g_controls(sets: Sequence[EqualGSet], options: dict) -> list[tuple[float, float, Comparison]]:
    """(g, the next smaller g, compare()) of each set's reference against the next set's: the same
    B at a different g, which the theory says must end different (else the grid cannot tell)."""
    return [(low.g, high.g, compare(low.reference.curve, high.reference.curve, options))
            for high, low in zip(sets, sets[1:])]


def grid_verdict(sets: Sequence[EqualGSet], controls: Sequence[tuple[float, float, Comparison]]) -> str:
    """The claim "the noise scale alone sets the final accuracy", from the sets' verdicts:
    holds (every arm matched its reference), holds up to B = ... (below some B every set matched,
    and each set that stopped matching came out different there), does not hold here (some set
    differed at its second-smallest B), else undecided; cannot tell here when no pair of
    neighbouring g came out different (the test would not have seen a change of g either)."""
    if not sets:
        return "not run"
    if not any(c.verdict.startswith("differs") for _, _, c in controls):
        return "cannot tell here (no two neighbouring g came out different)"
    arms = [arm for s in sets for arm in s.arms]
    if arms and all(arm.verdict == "matched" for arm in arms):
        return "holds"
    if any(s.matched_up_to is None and s.breaks_at is not None for s in sets):
        return "does not hold here"
    if all(s.breaks_at is not None or s.matched_up_to is not None for s in sets) and any(s.breaks_at for s in sets):
        first_break = min(s.breaks_at for s in sets if s.breaks_at)
        below = [s.matched_up_to for s in sets if s.matched_up_to is not None and s.matched_up_to < first_break]
        if below:
            return f"holds up to B = {max(below):,}"
    return "undecided"


@dataclass
class FactorRow:
    """One schedule at one factor against decay_lr at the same factor."""

    factor: float
    schedule: str
    comparison: Comparison
    update_ratio: float | None  # mean total updates over decay_lr's
    reached_cap: bool  # B reached schedule.max_batch_size, so lr decay took the rest of the anneal


def factor_rows(runs: Sequence[RunData], options: dict, baseline: str = "decay_lr") -> list[FactorRow]:
    """Every schedule of the factor sweep against `baseline` at its own factor, factors ascending
    (numerically: 2 before 10)."""
    by_factor = defaultdict(list)
    for run in runs:
        by_factor[float(run.params[FACTOR_PARAM])].append(run)
    rows = []
    for factor in sorted(by_factor):
        curves = _curves_by(by_factor[factor], lambda run: run.schedule)
        base = curves.get(baseline)
        if base is None:
            continue
        base_updates = [run.metrics[TOTAL_PARAM_UPDATES] for run in base.finished]
        for schedule, curve in sorted(curves.items()):
            if schedule == baseline:
                continue
            updates = [run.metrics[TOTAL_PARAM_UPDATES] for run in curve.finished]
            ratio = statistics.fmean(updates) / statistics.fmean(base_updates) if updates and base_updates else None
            reached = any(max(run.history.get(BATCH_SIZE, [0])) >= int(run.params[CAP_PARAM]) for run in curve.finished)
            rows.append(FactorRow(factor, schedule, compare(curve, base, options), ratio, reached))
    return rows


def arm_accuracies(curve: Curve) -> list[float]:
    """Final test accuracies (0..1) of the curve's seeds, a seed that diverged at chance."""
    return ([run.metrics[FINAL_TEST_ACC] for run in curve.finished]
            + [run.chance for run in curve.runs if not run.finished and has_diverged(run)])
