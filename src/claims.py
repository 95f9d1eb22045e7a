"""The verdict on each claim of the reproduction (conf/reproduction.yaml's claims; claim A's
ablation is src.ablation, the noise dial src.noise_dial):
what was measured, in the cells of docs/reproduction.md, from a study's runs.

Each arm and control of a claim is compared with the claim's baseline by src.verdict's rule;
more checks (a time ratio, a loss) read the per-seed ratio or difference with its interval; a
claim holds when every word is the one it expects, and a control that does not come out
"differs" makes the row "cannot tell here". A study with no runs is "not run", never "matched".
Markdown cells and tables only: src.reproduction_doc lays them out.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from src.groups import Curve, group_runs
from src.intervals import bounds_text, interval
from src.runs import RunData
from src.schema import (
    BATCH_SIZE, ERROR_TAG, FINAL_TEST_ACC, TOTAL_PARAM_UPDATES, TRAIN_TIME_S, VAL_LOSS, WALL_TIME_S,
)
from src.verdict import ReportRow, diverged_runs, format_reported, has_diverged, report_rows

NOT_RUN = "not run"
# The word a claim's expected word must not come out as: that one says the claim does not hold.
OPPOSITE = {"matched": "differs", "differs": "matched", "lower": "higher", "higher": "lower",
            "small loss": "larger loss"}


@dataclass
class Row:
    """One row of docs/reproduction.md (short: README's summary of measured)."""

    id: str
    claim: str
    reported: str
    measured: str
    verdict: str
    figures: list[str]  # paths relative to the report's folder
    short: str


def percent(confidence: float) -> str:
    """The level of an interval as a header writes it: 0.95 -> 95%."""
    return f"{100 * confidence:g}%"


def seeds_phrase(n: int) -> str:
    return f"{n} seed{'s' * (n != 1)}"


# A check of a claim (conf/reproduction.yaml's checks) that is not a logged metric: per seed, the
# training time (wall_time_s, the steps only) each run took to first reach the validation loss
# that both runs of the pair reached (the higher of their best), the arm's over the baseline's.
TIME_TO_VAL_LOSS = "time_to_val_loss"
RATIO_CHECKS = (TRAIN_TIME_S, TIME_TO_VAL_LOSS)  # read as ratios to the baseline's, on the log scale


def seconds_to_val_loss(run: RunData, target: float) -> float:
    """The training time (s) by the end of the first epoch whose validation loss is <= target."""
    return next(t for loss, t in zip(run.history[VAL_LOSS], run.history[WALL_TIME_S]) if loss <= target)


def paired_values(curve: Curve, base: Curve, metric: str) -> list[float]:
    """Per seed run by both: the arm's metric over the baseline's (RATIO_CHECKS: a ratio) or
    minus it (anything else: a difference)."""
    pairs = curve.paired_with(base)
    if metric == TIME_TO_VAL_LOSS:
        targets = [max(min(a.history[VAL_LOSS]), min(b.history[VAL_LOSS])) for a, b in pairs]
        return [seconds_to_val_loss(a, target) / seconds_to_val_loss(b, target)
                for (a, b), target in zip(pairs, targets)]
    if metric == TRAIN_TIME_S:
        return [a.reported(metric) / b.reported(metric) for a, b in pairs]
    return [a.reported(metric) - b.reported(metric) for a, b in pairs]


def direction_word(values: Sequence[float], reference: float, options: dict, ratio: bool) -> tuple:
    """(word, centre, low, high): lower / higher when the whole interval lies below / above
    `reference`, else inconclusive; fewer than options' min_seeds values: inconclusive (n seeds).
    Ratios on the log scale, so their interval stays above 0 and the centre is the geometric
    mean; differences as they are."""
    if not values:
        return NOT_RUN, None, None, None
    found = interval(values, "ratio" if ratio else "unbounded", options["confidence"])
    mean, low, high = found.centre, found.low, found.high
    if len(values) < options["min_seeds"] or low is None:
        return f"inconclusive ({seeds_phrase(len(values))})", mean, low, high
    if high < reference:
        return "lower", mean, low, high
    if low > reference:
        return "higher", mean, low, high
    return "inconclusive", mean, low, high


def time_ratio(curve: Curve, base: Curve, options: dict) -> tuple:
    """direction_word of the per-seed train_time_s ratios against 1."""
    return direction_word(paired_values(curve, base, TRAIN_TIME_S), 1.0, options, ratio=True)


def holds(words: list[tuple[str, str]], expect: str) -> str:
    """What the arms' (word, expected word) pairs say of a claim: holds, does not hold here, or
    undecided. A word's qualifier in brackets ("differs (1 of 3 seeds diverged)") is not read."""
    plain = [(word.split(" (")[0], expected) for word, expected in words]
    if all(word == expected for word, expected in plain):
        return "holds"
    if any(word == OPPOSITE.get(expected) for word, expected in plain):
        return "does not hold here"
    return "undecided"


def failures(curve: Curve) -> tuple[list[str], list[str]]:
    """(seeds whose loss diverged, one line per other failure) among a curve's seeds with no
    FINISHED run. A divergence is a result of the schedule; any other failure is not."""
    done, diverged = curve.by_seed, diverged_runs(curve)
    other = []
    for run in curve.runs:
        if run.finished or run.seed in done or has_diverged(run):
            continue
        error = run.tags.get(ERROR_TAG, "")
        if run.status == "RUNNING":
            other.append(f"seed {run.seed} still RUNNING")
        else:
            other.append(f"seed {run.seed} {run.status}: {' '.join(error.split())[:80] or 'no error logged'}")
    return sorted(diverged, key=int), other


def arm_word(verdict: str, curve: Curve) -> str:
    """The rule's word (compare counts a diverged seed at chance, so the word already reads
    it), with how many seeds diverged."""
    diverged, _ = failures(curve)
    if diverged:
        return f"{verdict} ({len(diverged)} of {len(diverged) + len(curve.by_seed)} seeds diverged)"
    return verdict


def small_loss_word(row: ReportRow, base_error_points: float, options: dict) -> str:
    """Claim 3b's word: "small loss" when the whole interval of the difference lies above
    -tolerance (conf/figures.yaml's small_loss_error_fraction of the baseline's error rate: a
    loss no larger than the paper's), "larger loss" when it lies wholly below, else inconclusive."""
    found = row.comparison
    if found.acc_diff_low is None or found.n_paired < options["min_seeds"]:
        return f"inconclusive ({found.n_paired} seeds)"
    tolerance = options["small_loss_error_fraction"] * base_error_points
    if found.acc_diff_low >= -tolerance:
        return f"small loss (within -{tolerance:.2f})"
    if found.acc_diff_high < -tolerance:
        return f"larger loss (beyond -{tolerance:.2f})"
    return "inconclusive"


def failure_note(curve: Curve) -> str:
    """'; seeds 1, 2 diverged (loss not finite); seed 3 FAILED: ...', or ''."""
    diverged, other = failures(curve)
    notes = [f"seed{'s' * (len(diverged) > 1)} {', '.join(diverged)} diverged (loss not finite)"] if diverged else []
    return "".join(f"; {note}" for note in notes + other)


def per_seed(curve: Curve) -> str:
    """A curve's final accuracies seed by seed (%), 'div.' for a seed whose loss diverged."""
    done = curve.by_seed
    diverged, _ = failures(curve)
    seeds = sorted(set(done) | set(diverged), key=int)
    return " / ".join(f"{100 * done[seed].metrics[FINAL_TEST_ACC]:.1f}" if seed in done else "div."
                      for seed in seeds) or "-"


@dataclass
class Arm:
    """One arm or control of a claim with paired seeds, in its group."""

    name: str  # the schedule
    row: ReportRow
    curve: Curve
    base: Curve  # the baseline's curve
    base_error: float  # the baseline's mean test error rate, points
    expect: str  # the word it should come out as
    checks: dict  # conf/reproduction.yaml's checks (none for a control)


def _measured_text(arm: Arm, ratio: tuple) -> str:
    """An arm's 'measured here' cell: accuracy and its difference, the gaps, updates, time."""
    row, found = arm.row, arm.row.comparison
    text = (f"{arm.name}: {format_reported(FINAL_TEST_ACC, row.numbers[FINAL_TEST_ACC].mean)}% "
            f"({found.acc_diff_points:+.2f}{bounds_text(found.acc_diff_low, found.acc_diff_high, '+.2f')} points"
            + (f", detectable {found.detectable_points:.2f}" if found.detectable_points is not None else "")
            + f"; per seed {per_seed(arm.curve)})")
    if found.max_gap_points is not None:
        text += (f", largest per-epoch gap {found.max_gap_points:+.2f}"
                 f"{bounds_text(found.max_gap_low, found.max_gap_high, '+.2f')} at epoch {found.max_gap_epoch}")
    if found.loss_gap is not None:
        text += (f", train-loss gap {found.loss_gap:+.3f}"
                 f"{bounds_text(found.loss_gap_low, found.loss_gap_high, '+.3f')}"
                 f" at epoch {found.loss_gap_epoch}")
    updates = row.numbers[TOTAL_PARAM_UPDATES]
    text += f", {format_reported(TOTAL_PARAM_UPDATES, updates.mean)} updates ({updates.ratio:.2f}x)"
    if ratio[1] is not None:
        text += f", train time {ratio[1]:.2f}x{bounds_text(ratio[2], ratio[3], '.2f')}"
    if found.n_diverged:
        text += (f"; {found.n_diverged} of {found.n_paired} seeds diverged "
                 f"[{100 * found.diverged_low:.0f}, {100 * found.diverged_high:.0f}]%, counted at chance")
    return text


def _arm_cells(arm: Arm, options: dict) -> tuple[str, str, str, list[tuple[str, str]]]:
    """(measured text, verdict text, short text, (word, expected) pairs) of one arm or control
    that has paired seeds."""
    found = arm.row.comparison
    ratio = time_ratio(arm.curve, arm.base, options)
    text = _measured_text(arm, ratio)
    word = small_loss_word(arm.row, arm.base_error, options) if arm.expect == "small loss" else found.verdict
    word = arm_word(word, arm.curve)
    verdict, words = f"{arm.name} **{word}**", [(word, arm.expect)]
    for metric, wanted in arm.checks.items():
        ratio_check = metric in RATIO_CHECKS
        neutral = 1.0 if ratio_check else 0.0  # a ratio, else a difference
        label = metric.removesuffix("_s").replace("_", " ")
        if isinstance(wanted, dict):  # {lower_than: 0.5}: against a stated value, not the baseline's
            [(direction, reference)] = wanted.items()
            wanted = direction.removesuffix("_than")
            label += f" vs {reference:g}x" if ratio_check else f" vs {reference:+g}"
        else:
            reference = neutral
        check, mean, low, high = direction_word(paired_values(arm.curve, arm.base, metric), reference, options,
                                                ratio=ratio_check)
        if metric == TIME_TO_VAL_LOSS:
            text += (f", time to the validation loss both reached {mean:.2f}x{bounds_text(low, high, '.2f')} "
                     f"(the blog's 'about 2x faster' is 0.5x)")
        elif metric != TRAIN_TIME_S:
            text += f", {label} {mean:+.4f}{bounds_text(low, high, '+.4f')}"
        verdict += f"; {label} {check}"
        words.append((check, wanted))
    short = (f"{arm.name} {found.acc_diff_points:+.1f}{bounds_text(found.acc_diff_low, found.acc_diff_high, '+.1f')} "
             f"points, {arm.row.numbers[TOTAL_PARAM_UPDATES].ratio:.2f}x updates"
             + (f", {ratio[1]:.2f}x train time" if ratio[1] is not None else ""))
    return text + failure_note(arm.curve), verdict, short, words


@dataclass
class _Cells:
    """A claim's cells as they are gathered, group by group."""

    measured: list[str]
    verdicts: list[str]
    short: list[str]
    words: list[tuple[str, str]]  # (word, expected) of the arms
    control_words: list[tuple[str, str]]  # (word, "differs") of the controls

    def add(self, measured: str, verdict: str, short: str | None, word: tuple[str, str], control: bool) -> None:
        self.measured.append(measured)
        self.verdicts.append(verdict)
        if short is not None:
            self.short.append(short)
        (self.control_words if control else self.words).append(word)


def _baseline_text(prefix: str, baseline: str, row: ReportRow, curve: Curve, options: dict) -> str:
    base_acc = row.numbers[FINAL_TEST_ACC].mean
    margin = options["margin_error_fraction"] * (100 * (1 - base_acc))
    return (f"{prefix}{baseline}: {format_reported(FINAL_TEST_ACC, base_acc)}% test accuracy "
            f"(per seed {per_seed(curve)}; margin ±{margin:.2f} points), "
            f"{format_reported(TOTAL_PARAM_UPDATES, row.numbers[TOTAL_PARAM_UPDATES].mean)} updates, "
            f"train time {row.numbers[TRAIN_TIME_S].mean:.0f} s ({seeds_phrase(row.n_finished)})"
            + failure_note(curve))


def _add_arm(cells: _Cells, arm: Arm, prefix: str, control: bool, options: dict) -> None:
    """One arm's or control's cells, in a group whose baseline finished."""
    label = f"{prefix}{arm.name}" + (" (control)" if control else "")
    if arm.row is None:
        cells.add(f"{label}: {NOT_RUN}", f"{label} {NOT_RUN}", f"{label}: {NOT_RUN}", (NOT_RUN, arm.expect), control)
        return
    if not arm.row.comparison.n_paired:  # no run finished or diverged in a seed the baseline finished
        finished = arm.row.n_finished
        state = f"no seed finished in both {arm.name} and {arm.base.schedule}" if finished else "no run finished"
        word = arm_word(arm.row.comparison.verdict if finished else "no run finished", arm.curve)
        cells.add(f"{label}: {state}{failure_note(arm.curve)}", f"{label} **{word}**", f"{label}: {state}",
                  (word, arm.expect), control)
        return
    text, verdict, brief, words = _arm_cells(arm, options)
    cells.measured.append(prefix + text.replace(f"{arm.name}: ", f"{arm.name}{' (control)' * control}: ", 1))
    cells.verdicts.append(prefix + verdict.replace(f"{arm.name} ", f"{arm.name}{' (control)' * control} ", 1))
    if not control:
        cells.short.append(prefix + brief)
    (cells.control_words if control else cells.words).extend(words)


def evaluate_claim(claim: dict, runs: list[RunData], options: dict) -> tuple[str, str, str]:
    """(measured, verdict, short) cells for one claim from its study's runs; short: each arm's
    accuracy difference and update ratio, for README's summary. Controls (claim["controls"]) are
    compared as the arms are and must come out "differs": where one does not, the row says that
    the test cannot tell here, whatever the arms did."""
    if not runs:
        return NOT_RUN, f"**{NOT_RUN}**", NOT_RUN
    baseline, arms, controls = claim["baseline"], claim["arms"], claim.get("controls", [])
    expect = claim.get("expect", "none").replace("_", " ")
    cells = _Cells([], [], [], [], [])
    for group in group_runs(runs, [baseline]):
        prefix = f"{group.label}: " if group.label else ""
        rows = {row.schedule: row for row in report_rows(group, baseline if baseline in group.curves else None,
                                                         options)}
        base = rows.get(baseline)
        if base is None or not base.n_finished:
            state = NOT_RUN if base is None else "no run finished" + failure_note(group.curves[baseline])
            cells.measured.append(f"{prefix}{baseline}: {state}")
            cells.verdicts.append(f"{prefix}{baseline} (the baseline): {state}")
            cells.short.append(f"{prefix}{baseline}: {state}")
            cells.words += [(NOT_RUN, expect)] * len(arms)
            continue
        base_curve = group.curves[baseline]
        cells.measured.append(_baseline_text(prefix, baseline, base, base_curve, options))
        base_error = 100 * (1 - base.numbers[FINAL_TEST_ACC].mean)
        for name, control in [(a, False) for a in arms] + [(c, True) for c in controls]:
            arm = Arm(name, rows.get(name), group.curves.get(name), base_curve, base_error,
                      "differs" if control else expect, {} if control else claim.get("checks", {}))
            _add_arm(cells, arm, prefix, control, options)
        cap = claim.get("cap")
        if cap and cap["schedule"] in group.curves and cap["without"] in group.curves:
            text = prefix + cap_binding(group.curves[cap["schedule"]], group.curves[cap["without"]])
            cells.measured.append(text)
            cells.verdicts.append(text)
            cells.short.append(text)
    return "<br>".join(cells.measured), _verdict_cell(cells, expect, bool(controls)), "; ".join(cells.short)


def cap_binding(capped: Curve, uncapped: Curve) -> str:
    """Whether a schedule's cap on B (critical_bs's: the measured critical batch size) bound, seed
    by seed: it did in a seed where its batch size at some epoch fell below that of the same
    schedule without the cap (increase_bs, the same seed), from that epoch on."""
    pairs = capped.paired_with(uncapped)
    bound = []
    for run, other in pairs:
        ours, theirs = run.history[BATCH_SIZE], other.history[BATCH_SIZE]
        epoch = next((k for k, (a, b) in enumerate(zip(ours, theirs)) if a < b), None)
        if epoch is not None:
            bound.append(f"seed {run.seed}: B {ours[epoch]:,.0f} < {theirs[epoch]:,.0f} from epoch {epoch + 1}")
    if not pairs:
        return f"{capped.schedule}'s cap: no seed finished in both it and {uncapped.schedule}"
    if not bound:
        return (f"{capped.schedule}'s cap never bound ({seeds_phrase(len(pairs))}): the same decisions as "
                f"{uncapped.schedule}")
    return f"{capped.schedule}'s cap bound in {len(bound)} of {len(pairs)} seeds ({'; '.join(bound)})"


def _verdict_cell(cells: _Cells, expect: str, has_controls: bool) -> str:
    """Each arm's verdict, and what they say of the claim (none when it expects nothing)."""
    cell = "; ".join(cells.verdicts)
    if expect == "none":
        return cell
    outcome = holds(cells.words, expect)
    blind = [word for word, _ in cells.control_words if word.split(" (")[0] != "differs"]
    if not has_controls:
        outcome += " (no control ran beside it: the test's power is not shown)"
    elif blind:
        outcome = "cannot tell here: a control that must differ did not (" + "; ".join(blind) + ")"
    return f"{cell}: {outcome}"


def _study_table_line(schedule: str, row: ReportRow, curve: Curve, base: Curve | None, options: dict) -> str:
    """One schedule's line of study_table."""
    finished, (diverged, _) = curve.finished, failures(curve)
    seeds = f"{len(finished)}" + (f" (+{len(diverged)} diverged)" if diverged else "")
    if not finished:
        return f"| {schedule} | {seeds} | no run finished | - | - | - | - |"
    accs = [100 * r.metrics[FINAL_TEST_ACC] for r in finished]
    times = [r.metrics[TRAIN_TIME_S] for r in finished]
    acc, time_s = interval(accs, "percent", options["confidence"]), interval(times, "ratio", options["confidence"])
    updates = f"{row.numbers[TOTAL_PARAM_UPDATES].mean:,.0f}"
    found = row.comparison
    if base is None or schedule == base.schedule:
        diff = ratio = "-" if base is None else "(baseline)"
    else:
        diff = "-" if found.acc_diff_points is None else (
            f"{found.acc_diff_points:+.2f}{bounds_text(found.acc_diff_low, found.acc_diff_high, '+.2f')} "
            f"**{arm_word(found.verdict, curve)}**")
        updates += f" ({row.numbers[TOTAL_PARAM_UPDATES].ratio:.2f}x)"
        paired = time_ratio(curve, base, options)
        ratio = "-" if paired[1] is None else f"{paired[1]:.2f}x{bounds_text(paired[2], paired[3], '.2f')}"
    return (f"| {schedule} | {seeds} | {statistics.fmean(accs):.2f}{bounds_text(acc.low, acc.high, '.2f')} | "
            f"{diff} | {updates} | {statistics.fmean(times):.1f}{bounds_text(time_s.low, time_s.high, '.1f')} "
            f"| {ratio} |")


def study_table(runs: list[RunData], baseline: str, options: dict) -> list[str]:
    """A study's schedules side by side, as markdown lines: seeds; final test accuracy, mean with
    its interval over seeds (on the logit scale: within 0-100%); the paired difference from
    `baseline` with the verdict; mean parameter updates and their ratio; training time
    (train_time_s: the training steps), mean with its interval, and the per-seed ratio to the
    baseline's with its interval. One table per group of runs that differ in more than the
    schedule."""
    pct = percent(options["confidence"])
    lines = []
    for group in group_runs(runs, [baseline]):
        if group.label:
            lines += [f"{group.label}:", ""]
        lines += [f"| schedule | seeds | final test acc (%, mean [{pct} interval]) | minus {baseline} (points, paired) "
                  f"| parameter updates | train time (s, mean [{pct} interval]) | train time / {baseline}'s (paired) |",
                  "|---|---|---|---|---|---|---|"]
        base = baseline if baseline in group.curves else None
        rows = {row.schedule: row for row in report_rows(group, base, options)}
        for schedule, curve in group.curves.items():
            lines.append(_study_table_line(schedule, rows[schedule], curve, group.curves.get(base), options))
        lines.append("")
    return lines
