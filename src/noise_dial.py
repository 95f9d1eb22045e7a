"""The noise scale as the one dial (the paper's section 2, after Smith & Le 2018), read back from
logged runs: SGD's noise scale g = lr / (1 - m) (N / B - 1), not lr or B alone, should set where
training ends, so runs at equal g should end alike while B << N.

The `noise_scale` study (conf/reproduction.yaml) runs at a constant g with several (lr, B, m)
per g; here its runs become equal-g sets, each compared with its smallest B. (The factor sweep,
the other half of the dial, is an ordinary claim: src.figures draws any sweep over a number
across its values.) Every verdict is the study's one rule (src.verdict.compare: paired by
seed, test accuracy, the margin a fraction of the reference's error rate). The grid's table and
claim cells are written here; src.reproduction_doc lays them out, src.summary_plots draws them.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

from src.groups import Curve
from src.intervals import bounds_text, interval
from src.runs import RunData
from src.schema import FINAL_TEST_ACC, GNS_B_SIMPLE, NOISE_SCALE
from src.verdict import Comparison, compare, has_diverged

# The params that set a grid run's noise scale, as the runs log them (the flattened config).
LR_PARAM, BATCH_PARAM, MOMENTUM_PARAM = "schedule.lr", "schedule.batch_size", "optimizer.momentum"
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
        for arm in self.at_reference_momentum:
            if arm.verdict != "matched":
                break
            largest = arm.setting.batch_size
        return largest

    @property
    def breaks_at(self) -> int | None:
        """The smallest B at the reference's momentum whose runs came out different, if any."""
        return next((arm.setting.batch_size for arm in self.at_reference_momentum
                     if arm.verdict and arm.verdict.startswith("differs")), None)

    @property
    def at_reference_momentum(self) -> list[GridArm]:
        """The arms at the reference's momentum, B ascending."""
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
    matched at no B above its reference and differs at one, named), else undecided; cannot tell here when no pair of
    neighbouring g came out different (the test would not have seen a change of g either)."""
    if not sets:
        return "not run"
    if not any(c.verdict.startswith("differs") for _, _, c in controls):
        return "cannot tell here (no two neighbouring g came out different)"
    arms = [arm for s in sets for arm in s.arms]
    if arms and all(arm.verdict == "matched" for arm in arms):
        return "holds"
    broken = [s for s in sets if s.matched_up_to is None and s.breaks_at is not None]
    if broken:
        return "does not hold here (" + "; ".join(f"g {s.g:g}: differs from B {s.breaks_at:,}, matched at no larger B"
                                                  for s in broken) + ")"
    if all(s.breaks_at is not None or s.matched_up_to is not None for s in sets) and any(s.breaks_at for s in sets):
        first_break = min(s.breaks_at for s in sets if s.breaks_at)
        below = [s.matched_up_to for s in sets if s.matched_up_to is not None and s.matched_up_to < first_break]
        if below:
            return f"holds up to B = {max(below):,}"
    return "undecided"


def arm_accuracies(curve: Curve) -> list[float]:
    """Final test accuracies (0..1) of the curve's seeds, a seed that diverged at chance."""
    return ([run.metrics[FINAL_TEST_ACC] for run in curve.finished]
            + [run.chance for run in curve.runs if not run.finished and has_diverged(run)])


# --- the grid's table and claim cells ----------------------------------------------------------


def _accuracy_cell(curve: Curve, confidence: float) -> str:
    """Final test accuracy (%), the mean over seeds with its interval (logit scale: within 0-100)."""
    accs = [100 * acc for acc in arm_accuracies(curve)]
    if not accs:
        return "no run finished"
    found = interval(accs, "percent", confidence)
    return f"{statistics.fmean(accs):.2f}{bounds_text(found.low, found.high, '.2f')}"


def _diff_cell(arm: GridArm) -> str:
    found = arm.comparison
    if found is None:
        return "(reference)"
    if not found.n_paired:
        return "-"
    return f"{found.acc_diff_points:+.2f}{bounds_text(found.acc_diff_low, found.acc_diff_high, '+.2f')}"


def _set_summary(s: EqualGSet) -> str:
    """Where a set matched its reference and where it stopped, in words the table shows."""
    at_ref = s.at_reference_momentum
    if not at_ref:
        text = "no other B"
    elif s.matched_up_to == at_ref[-1].setting.batch_size:
        text = f"matched up to B {s.matched_up_to:,} (every B run)"
    else:
        text = (f"matched up to B {s.matched_up_to:,}" if s.matched_up_to else
                f"{at_ref[0].verdict} at B {at_ref[0].setting.batch_size:,}")
        if s.breaks_at is not None:
            arm = next(a for a in at_ref if a.setting.batch_size == s.breaks_at)
            text += f", differs from B {s.breaks_at:,}" + (
                f" (its final B_simple {arm.b_simple:,.0f})" if arm.b_simple is not None else "")
    others = [a for a in s.arms if a not in at_ref]
    return text + "".join(f"; m {a.setting.momentum:g}: {a.verdict}" for a in others)


def grid_table(sets: Sequence[EqualGSet], controls: Sequence[tuple[float, float, Comparison]],
               options: dict) -> list[str]:
    """Markdown lines: one table row per (lr, B, m), set by set (g descending, the reference
    first), each set's summary, then the neighbouring-g controls."""
    pct = f"{100 * options['confidence']:g}%"
    lines = [f"| g | lr | B | m | seeds | final test acc (%, mean [{pct} interval]) | minus the reference "
             f"(points, paired [{pct}]) | verdict | final B_simple (median) |", "|---" * 9 + "|"]
    for s in sets:
        for arm in [s.reference, *s.arms]:
            setting, curve = arm.setting, arm.curve
            b_simple = "-" if arm.b_simple is None else f"{arm.b_simple:,.0f}"
            lines.append(f"| {s.g:g} | {setting.lr:g} | {setting.batch_size:,} | {setting.momentum:g} | "
                         f"{len(arm_accuracies(curve))} | {_accuracy_cell(curve, options['confidence'])} | "
                         f"{_diff_cell(arm)} | {arm.verdict or '-'} | {b_simple} |")
    lines += ["", *(f"- g {s.g:g}: {_set_summary(s)}" for s in sets), ""]
    if controls:
        lines += ["Controls: each set's reference against the next smaller g's, at the same B (the theory "
                  "says they must end different; if none does, the grid cannot tell):", "",
                  f"| g | against g | difference (points, paired [{pct}]) | verdict |", "|---|---|---|---|"]
        for low, high, found in controls:
            diff = ("-" if not found.n_paired else
                    f"{found.acc_diff_points:+.2f}{bounds_text(found.acc_diff_low, found.acc_diff_high, '+.2f')}")
            lines.append(f"| {low:g} | {high:g} | {diff} | {found.verdict} |")
        lines.append("")
    return lines


def grid_cells(sets: Sequence[EqualGSet], controls: Sequence[tuple[float, float, Comparison]]) -> tuple[str, str, str]:
    """(measured, verdict, short) cells of the claim "the noise scale alone sets the final accuracy"."""
    if not sets:
        return "not run", "**not run**", "not run"
    differing = sum(c.verdict.startswith("differs") for _, _, c in controls)
    per_set = [f"g {s.g:g} (B {s.reference.setting.batch_size:,}-"
               f"{max(a.setting.batch_size for a in [s.reference, *s.arms]):,}): {_set_summary(s)}" for s in sets]
    measured = "<br>".join(per_set + [f"controls: {differing} of {len(controls)} neighbouring g differ"])
    verdict = f"**{grid_verdict(sets, controls)}** ([the grid](#the-noise-scale-as-the-one-dial))"
    short = "; ".join(f"g {s.g:.3g}: " + (f"matched to B {s.matched_up_to:,}" if s.matched_up_to else "not matched")
                      + (f", differs at {s.breaks_at:,}" if s.breaks_at else "") for s in sets)
    return measured, verdict, short
