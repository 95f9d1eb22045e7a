"""`python -m src.reproduce`: the whole offline reproduction, run and reported.

    python -m src.reproduce run                  # every study of the reproduction (conf/reproduction.yaml)
    python -m src.reproduce run ablation         # the ablation of claim A; or study names
    python -m src.reproduce run --dry-run        # the commands and the expected time, nothing run
    python -m src.reproduce report               # docs/reproduction.md and its figures, from the runs

`run` starts one real `python -m src.run -m ...` per sweep of each study (conf/reproduction.yaml),
all seeds at once, into the MLflow experiment `<prefix>/<study>`; joblib runs 2 jobs of 1 thread.
It is resumable as every sweep is: a run already FINISHED with the same config is skipped, an
interrupted one resumes from its checkpoint, so running the same command again continues.

`report` reads the runs back from the store alone: each study's experiment, the runs whose
`preset` tag is the study's, the newest FINISHED run per config hash (a re-run never counts
twice). It draws each study's figures with src.figures (into <output-dir>/reproduction/<study>/),
copies those the claims name under docs/, and writes one row per claim: what the paper or the
blog reports, what was measured here (paired-seed statistics of src.figures), the verdict by the
report's rule and the figure. A study with no runs is "not run", never "matched".
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from src import schema
from src.intervals import bounds_text, interval, pooled_spread

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "conf" / "reproduction.yaml"
RUN_LISTS = ("reproduction", "ablation")
NOT_RUN = "not run"
# The keys of conf/reproduction.yaml that `run` and `report` read at its top level.
PLAN_KEYS = ("seeds", "experiment_prefix", "jobs", "studies", "tables", "claims", "ablation")
OUTPUT_DIR = Path("outputs")  # the reproduction's runs (paths.output_dir of conf/config.yaml); its store in it
DOC = Path("docs") / "reproduction.md"  # the committed report, under the repository
OTHER_STORE_REPORT = "report"  # the report of another store goes in <its --output-dir>/report/


@dataclass(frozen=True)
class Study:
    name: str
    preset: str  # the `preset` tag its runs carry
    about: str
    sweeps: tuple[tuple[str, ...], ...]  # overrides of one `src.run -m` command each
    minutes: float  # expected minutes per seed, 2 CPU cores, 2 jobs of 1 thread
    lists: tuple[str, ...]
    seeds: tuple[int, ...]


def load_plan(path: Path = CONFIG) -> dict:
    """conf/reproduction.yaml as plain data, with the studies as Study objects."""
    plan = OmegaConf.to_container(OmegaConf.load(path))
    plan["studies"] = {
        name: Study(name, spec["preset"], " ".join(spec["about"].split()),
                    tuple(tuple(shlex.split(sweep)) for sweep in spec["sweeps"]), float(spec["minutes"]),
                    tuple(spec["lists"]), tuple(spec.get("seeds", plan["seeds"])))
        for name, spec in plan["studies"].items()
    }
    return plan


def experiment_name(prefix: str, study: str) -> str:
    return f"{prefix}/{study}"


# --- run ---------------------------------------------------------------------------------------


def select_studies(plan: dict, names: Sequence[str]) -> list[Study]:
    """Studies by list name (reproduction, ablation) or by study name, in conf order, once each."""
    studies = plan["studies"]
    chosen: list[str] = []
    for name in names:
        if name in RUN_LISTS:
            chosen += [s.name for s in studies.values() if name in s.lists]
        elif name in studies:
            chosen.append(name)
        else:
            raise ValueError(f"unknown study or list '{name}' (lists: {', '.join(RUN_LISTS)}; "
                             f"studies: {', '.join(studies)})")
    return [studies[name] for name in dict.fromkeys(chosen)]


def sweep_command(study: Study, sweep: Sequence[str], prefix: str, seeds: Sequence[int], jobs: int,
                  output_dir: str | None, overrides: Sequence[str]) -> list[str]:
    """One real multirun of a study's sweep, every seed, into the study's experiment."""
    launcher = (["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}", "trainer.threads=1"]
                if jobs > 1 else [])
    paths = [f"paths.output_dir={output_dir}"] if output_dir else []
    return [sys.executable, "-m", "src.run", "-m", *sweep, f"trainer.seed={','.join(map(str, seeds))}",
            f"tracking.experiment={experiment_name(prefix, study.name)}", *launcher, *paths, *overrides]


def run(args: argparse.Namespace, plan: dict) -> int:
    try:
        studies = select_studies(plan, args.names or ["reproduction"])
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    overrides = list(args.override) + ([f"trainer.epochs={args.epochs}"] if args.epochs else [])
    total = 0.0
    commands = []
    for study in studies:
        seeds = args.seeds if args.seeds is not None else study.seeds
        minutes = study.minutes * len(seeds)
        total += minutes
        for sweep in study.sweeps:
            commands.append((study, sweep_command(study, sweep, plan["experiment_prefix"], seeds, args.jobs,
                                                  args.output_dir, overrides)))
        print(f"{study.name}: {len(seeds)} seed(s), ~{minutes:.0f} min on 2 CPU cores"
              + (" at its full epochs" if args.epochs else ""))
    print(f"{len(studies)} studies, {len(commands)} sweeps, ~{total:.0f} min expected on 2 CPU cores")
    if args.dry_run:
        for _, command in commands:
            print(shlex.join(["python", *command[1:]]))
        return 0
    failed = []
    for study, command in commands:
        print(f"[{study.name}] {shlex.join(['python', *command[1:]])}", flush=True)
        started = time.perf_counter()
        try:
            code = subprocess.run(command, cwd=ROOT).returncode
        except KeyboardInterrupt:  # the sweep got it too: its run is KILLED, its checkpoint kept
            print("interrupted: the same command continues where this stopped", file=sys.stderr)
            return 130
        print(f"[{study.name}] exit {code} after {(time.perf_counter() - started) / 60:.1f} min", flush=True)
        if code:
            failed.append(f"{study.name} (exit {code})")
    if failed:
        print(f"error: {len(failed)} of {len(commands)} sweeps failed: {', '.join(failed)}; run the same command "
              "again to retry them (finished runs are skipped)", file=sys.stderr)
        return 1
    print("done: `python -m src.reproduce report` writes docs/reproduction.md")
    return 0


# --- reading the runs --------------------------------------------------------------------------


def load_study(client, experiment: str, preset: str) -> list:
    """The study's runs as src.figures.RunData: in `experiment`, tagged preset=`preset`, per
    config hash the newest FINISHED run (else the newest, which then counts as failed)."""
    from src.figures import _all_runs, _run_data, is_training_run

    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    chosen: dict[str, object] = {}
    rank = lambda run: (run.info.status == "FINISHED", run.info.start_time)  # noqa: E731
    for run in _all_runs(client, found.experiment_id):
        tags = run.data.tags
        if not is_training_run(tags) or tags.get(schema.PRESET_TAG) != preset:
            continue
        key = tags.get(schema.CONFIG_HASH_TAG, run.info.run_id)
        if key not in chosen or rank(run) > rank(chosen[key]):
            chosen[key] = run
    return [_run_data(client, run) for run in sorted(chosen.values(), key=lambda r: r.info.start_time)]


# --- statistics over paired seeds --------------------------------------------------------------


def paired_values(curve, base, metric: str) -> list[float]:
    """Per seed run by both: the arm's metric over the baseline's (train_time_s: a ratio) or
    minus it (anything else: a difference)."""
    pairs = curve.paired_with(base)
    if metric == schema.TRAIN_TIME_S:
        return [a.reported(metric) / b.reported(metric) for a, b in pairs]
    return [a.reported(metric) - b.reported(metric) for a, b in pairs]


def direction_word(values: Sequence[float], reference: float, confidence: float, min_seeds: int,
                   ratio: bool) -> tuple:
    """(word, centre, low, high): lower / higher when the whole interval lies below / above
    `reference`, else inconclusive; fewer than min_seeds values: inconclusive (n seeds). Ratios
    on the log scale, so their interval stays above 0 and the centre is the geometric mean;
    differences as they are."""
    if not values:
        return NOT_RUN, None, None, None
    found = interval(values, "ratio" if ratio else "unbounded", confidence)
    mean, low, high = found.centre, found.low, found.high
    if len(values) < min_seeds or low is None:
        return f"inconclusive ({len(values)} seed{'s' * (len(values) != 1)})", mean, low, high
    if high < reference:
        return "lower", mean, low, high
    if low > reference:
        return "higher", mean, low, high
    return "inconclusive", mean, low, high


def _percent(confidence: float) -> str:
    """The level of an interval as a header writes it: 0.95 -> 95%."""
    return f"{100 * confidence:g}%"


# --- claims ------------------------------------------------------------------------------------


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


def _holds(words: list[tuple[str, str]], expect: str) -> str:
    """What the arms' (word, expected word) pairs say of a claim: holds, does not hold here, or
    undecided. A word's qualifier in brackets ("differs (1 of 3 seeds diverged)") is not read."""
    opposite = {"matched": "differs", "differs": "matched", "lower": "higher", "higher": "lower",
                "small loss": "larger loss"}
    plain = [(word.split(" (")[0], expected) for word, expected in words]
    if all(word == expected for word, expected in plain):
        return "holds"
    if any(word == opposite.get(expected) for word, expected in plain):
        return "does not hold here"
    return "undecided"


def failures(curve) -> tuple[list[str], list[str]]:
    """(seeds whose loss diverged, one line per other failure) among a curve's seeds with no
    FINISHED run. A divergence is a result of the schedule; any other failure is not."""
    from src.figures import has_diverged

    done = curve.by_seed
    diverged, other = set(), []
    for run in curve.runs:
        if run.finished or run.seed in done:
            continue
        error = run.tags.get(schema.ERROR_TAG, "")
        if has_diverged(run):
            diverged.add(run.seed)
        elif run.status == "RUNNING":
            other.append(f"seed {run.seed} still RUNNING")
        else:
            other.append(f"seed {run.seed} {run.status}: {' '.join(error.split())[:80] or 'no error logged'}")
    return sorted(diverged, key=int), other


def arm_word(verdict: str, curve) -> str:
    """The rule's word (compare counts a diverged seed at chance, so the word already reads
    it), with how many seeds diverged."""
    diverged, _ = failures(curve)
    if diverged:
        return f"{verdict} ({len(diverged)} of {len(diverged) + len(curve.by_seed)} seeds diverged)"
    return verdict


def small_loss_word(row: dict, base_error_points: float, options: dict) -> str:
    """Claim 3b's word: "small loss" when the whole interval of the difference lies above
    -tolerance (conf/figures.yaml's small_loss_error_fraction of the baseline's error rate: a
    loss no larger than the paper's), "larger loss" when it lies wholly below, else inconclusive."""
    if row["acc_diff_low"] is None or row["n_paired"] < options["min_seeds"]:
        return f"inconclusive ({row['n_paired']} seeds)"
    tolerance = options["small_loss_error_fraction"] * base_error_points
    if row["acc_diff_low"] >= -tolerance:
        return f"small loss (within -{tolerance:.2f})"
    if row["acc_diff_high"] < -tolerance:
        return f"larger loss (beyond -{tolerance:.2f})"
    return "inconclusive"


def _failure_note(curve) -> str:
    diverged, other = failures(curve)
    notes = [f"seed{'s' * (len(diverged) > 1)} {', '.join(diverged)} diverged (loss not finite)"] if diverged else []
    return "".join(f"; {note}" for note in notes + other)


def _arm_cells(arm: str, row: dict, curve, base_curve, base_error: float, expect: str, options: dict,
               checks: dict) -> tuple[str, str, str, list[tuple[str, str]]]:
    """(measured text, verdict text, short text, (word, expected) pairs) of one arm or control
    that has paired seeds."""
    from src.figures import _fmt

    confidence, min_seeds = options["confidence"], options["min_seeds"]
    text = (f"{arm}: {_fmt(schema.FINAL_TEST_ACC, row[f'{schema.FINAL_TEST_ACC}_mean'])}% "
            f"({row['acc_diff_points']:+.2f}{bounds_text(row['acc_diff_low'], row['acc_diff_high'], '+.2f')} points"
            + (f", detectable {row['detectable_points']:.2f}" if row["detectable_points"] is not None else "")
            + f"; per seed {_per_seed(curve)})")
    if row["max_gap_points"] is not None:
        text += (f", largest per-epoch gap {row['max_gap_points']:+.2f}"
                 f"{bounds_text(row['max_gap_low'], row['max_gap_high'], '+.2f')} at epoch {row['max_gap_epoch']}")
    if row["loss_gap"] is not None:
        text += (f", train-loss gap {row['loss_gap']:+.3f}"
                 f"{bounds_text(row['loss_gap_low'], row['loss_gap_high'], '+.3f')}"
                 f" at epoch {row['loss_gap_epoch']}")
    text += (f", {_fmt('total_param_updates', row['total_param_updates_mean'])} updates "
             f"({row['total_param_updates_ratio']:.2f}x)")
    ratio = direction_word(paired_values(curve, base_curve, schema.TRAIN_TIME_S), 1.0, confidence, min_seeds,
                           ratio=True)
    if ratio[1] is not None:
        text += f", train time {ratio[1]:.2f}x{bounds_text(ratio[2], ratio[3], '.2f')}"
    if row["n_diverged"]:
        text += (f"; {row['n_diverged']} of {row['n_paired']} seeds diverged "
                 f"[{100 * row['diverged_low']:.0f}, {100 * row['diverged_high']:.0f}]%, counted at chance")
    word = arm_word(small_loss_word(row, base_error, options) if expect == "small loss" else row["verdict"], curve)
    verdict = f"{arm} **{word}**"
    words = [(word, expect)]
    for metric, wanted in checks.items():
        neutral = 1.0 if metric == schema.TRAIN_TIME_S else 0.0  # a ratio, else a difference
        label = metric.removesuffix("_s").replace("_", " ")
        if isinstance(wanted, dict):  # {lower_than: 0.5}: against a stated value, not the baseline's
            [(direction, reference)] = wanted.items()
            wanted = direction.removesuffix("_than")
            label += f" vs {reference:g}x" if metric == schema.TRAIN_TIME_S else f" vs {reference:+g}"
        else:
            reference = neutral
        check, mean, low, high = direction_word(paired_values(curve, base_curve, metric), reference, confidence,
                                                min_seeds, ratio=metric == schema.TRAIN_TIME_S)
        if metric != schema.TRAIN_TIME_S:
            text += f", {label} {mean:+.4f}{bounds_text(low, high, '+.4f')}"
        verdict += f"; {label} {check}"
        words.append((check, wanted))
    short = (f"{arm} {row['acc_diff_points']:+.1f}{bounds_text(row['acc_diff_low'], row['acc_diff_high'], '+.1f')} "
             f"points, {row['total_param_updates_ratio']:.2f}x updates"
             + (f", {ratio[1]:.2f}x train time" if ratio[1] is not None else ""))
    return text + _failure_note(curve), verdict, short, words


def evaluate_claim(claim: dict, runs: list, options: dict) -> tuple[str, str, str]:
    """(measured, verdict, short) cells for one claim from its study's runs; short: each arm's
    accuracy difference and update ratio, for README's summary. Controls (claim["controls"]) are
    compared as the arms are and must come out "differs": where one does not, the row says that
    the test cannot tell here, whatever the arms did."""
    from src.figures import _fmt, group_runs, report_rows

    if not runs:
        return NOT_RUN, f"**{NOT_RUN}**", NOT_RUN
    baseline, arms, controls = claim["baseline"], claim["arms"], claim.get("controls", [])
    expect = claim.get("expect", "none").replace("_", " ")
    checks = claim.get("checks", {})
    measured, words, control_words, verdicts, short = [], [], [], [], []
    for group in group_runs(runs, [baseline]):
        prefix = f"{group.label}: " if group.label else ""
        rows = {row["schedule"]: row for row in report_rows(group, baseline if baseline in group.curves else None,
                                                            options)}
        base = rows.get(baseline)
        if base is None or not base["n_finished"]:
            state = NOT_RUN if base is None else "no run finished" + _failure_note(group.curves[baseline])
            measured.append(f"{prefix}{baseline}: {state}")
            verdicts.append(f"{prefix}{baseline} (the baseline): {state}")
            short.append(f"{prefix}{baseline}: {state}")
            words += [(NOT_RUN, expect)] * len(arms)
            continue
        base_acc = base[f"{schema.FINAL_TEST_ACC}_mean"]
        base_error = 100 * (1 - base_acc)
        margin = options["margin_error_fraction"] * base_error
        measured.append(f"{prefix}{baseline}: {_fmt(schema.FINAL_TEST_ACC, base_acc)}% test accuracy "
                        f"(per seed {_per_seed(group.curves[baseline])}; margin ±{margin:.2f} points), "
                        f"{_fmt('total_param_updates', base['total_param_updates_mean'])} updates, "
                        f"train time {base['train_time_s_mean']:.0f} s ({_seeds_phrase(base['n_finished'])})"
                        + _failure_note(group.curves[baseline]))
        for arm, is_control in [(a, False) for a in arms] + [(c, True) for c in controls]:
            row, label = rows.get(arm), f"{prefix}{arm}" + (" (control)" if is_control else "")
            wanted = "differs" if is_control else expect
            found = words if not is_control else control_words
            if row is None:
                measured.append(f"{label}: {NOT_RUN}")
                verdicts.append(f"{label} {NOT_RUN}")
                short.append(f"{label}: {NOT_RUN}")
                found.append((NOT_RUN, wanted))
                continue
            curve, base_curve = group.curves[arm], group.curves[baseline]
            if not row["n_paired"]:  # no run finished or diverged in a seed the baseline finished
                state = f"no seed finished in both {arm} and {baseline}" if row["n_finished"] else "no run finished"
                word = arm_word(row["verdict"] if row["n_finished"] else "no run finished", curve)
                measured.append(f"{label}: {state}{_failure_note(curve)}")
                short.append(f"{label}: {state}")
                verdicts.append(f"{label} **{word}**")
                found.append((word, wanted))
                continue
            text, verdict, brief, arm_words = _arm_cells(arm, row, curve, base_curve, base_error,
                                                         wanted, options, {} if is_control else checks)
            measured.append(prefix + text.replace(f"{arm}: ", f"{arm}{' (control)' * is_control}: ", 1))
            verdicts.append(prefix + verdict.replace(f"{arm} ", f"{arm}{' (control)' * is_control} ", 1))
            if not is_control:
                short.append(prefix + brief)
            found += arm_words
    cell = "; ".join(verdicts)
    if expect != "none":
        outcome = _holds(words, expect)
        blind = [word for word, _ in control_words if word.split(" (")[0] != "differs"]
        if not controls:
            outcome += " (no control ran beside it: the test's power is not shown)"
        elif blind:
            outcome = "cannot tell here: a control that must differ did not (" + "; ".join(blind) + ")"
        cell += f": {outcome}"
    return "<br>".join(measured), cell, "; ".join(short)


def _seeds_phrase(n: int) -> str:
    return f"{n} seed{'s' * (n != 1)}"


def _per_seed(curve) -> str:
    """A curve's final accuracies seed by seed (%), 'div.' for a seed whose loss diverged."""
    done = curve.by_seed
    diverged, _ = failures(curve)
    seeds = sorted(set(done) | set(diverged), key=int)
    return " / ".join(f"{100 * done[seed].metrics[schema.FINAL_TEST_ACC]:.1f}" if seed in done else "div."
                      for seed in seeds) or "-"


def ablation_table(plan: dict, runs_by_study: dict, options: dict) -> tuple[list[str], str, str]:
    """(markdown lines, measured cell, verdict cell) of claim A: every ablation study's final
    accuracies seed by seed, and each arm against the baseline paired by seed: the study's own
    baseline where it ran it (the same model and epochs), else the reference study's. Seeds that
    diverged count at chance, as in the claims; a comparison with no spread of its own takes the
    spread pooled over the table's comparisons."""
    from src.figures import Curve, accuracy_differences, compare

    spec = plan["ablation"]
    studies = [s for s in plan["studies"].values() if "ablation" in s.lists]
    reference = runs_by_study.get(spec["reference"], [])
    schedules = list(dict.fromkeys([spec["baseline"], "increase_bs", *spec["arms"]]))
    lines = ["| study | what it changes | " + " | ".join(f"{s} (%, per seed)" for s in schedules) + " | "
             + " | ".join(f"{arm} - {spec['baseline']} (points)" for arm in spec["arms"]) + " |",
             "|---" * (2 + len(schedules) + len(spec["arms"])) + "|"]
    words: dict[str, dict[str, str]] = {arm: {} for arm in spec["arms"]}  # arm -> study -> word

    def baseline_of(runs: list) -> tuple[Curve, Curve]:
        """(the study's own baseline curve, the one its arms are compared with)."""
        own = Curve(spec["baseline"], [r for r in runs if r.schedule == spec["baseline"]])
        return own, own if own.finished else Curve(spec["baseline"],
                                                   [r for r in reference if r.schedule == spec["baseline"]])

    def arm_curve(runs: list, arm: str) -> Curve:
        return Curve(arm, [r for r in runs if r.schedule == arm])

    pooled = pooled_spread([accuracy_differences(arm_curve(runs, arm), baseline_of(runs)[1])
                            for runs in (runs_by_study.get(study.name, []) for study in studies)
                            for arm in spec["arms"]], "difference")
    for study in studies:
        runs = runs_by_study.get(study.name, [])
        cells = [_per_seed(arm_curve(runs, schedule)) for schedule in schedules]
        own, base = baseline_of(runs)
        for arm in spec["arms"]:
            curve = arm_curve(runs, arm)
            if not runs or not base.finished:
                cells.append(NOT_RUN)
                continue
            if not curve.runs:
                cells.append("-")
                continue
            if curve.finished or failures(curve)[0]:
                row = compare(curve, base, options, pooled)
                word = arm_word(row["verdict"], curve)
                diff = (f"{row['acc_diff_points']:+.2f}{bounds_text(row['acc_diff_low'], row['acc_diff_high'], '+.2f')}"
                        if row["n_paired"] else f"no seed finished in both {arm} and {spec['baseline']}")
                cells.append(f"{diff} **{word}**"
                             + ("" if own.finished or study.name == spec["reference"] else " (reference's)"))
            else:
                word = arm_word("no run finished", curve)
                cells.append(f"**{word}**")
            words[arm][study.name] = word
        about = "the preset as it is (the reference)" if study.name == spec["reference"] else study.about
        lines.append(f"| {study.name} | {about} | " + " | ".join(cells) + " |")
    if not reference:
        return lines, NOT_RUN, f"**{NOT_RUN}** (the reference, {spec['reference']})"
    measured, verdict = [], []
    for arm, by_study in words.items():
        as_is = by_study.get(spec["reference"], NOT_RUN)
        recovered = [name for name, word in by_study.items() if word == "matched" and name != spec["reference"]]
        tried = [name for name in by_study if name != spec["reference"]]
        measured.append(f"{arm}: the preset as it is **{as_is}**; within {options['margin_error_fraction']:g} "
                        f"of {spec['baseline']}'s error rate with {', '.join(recovered) or 'none of the changes'}"
                        f" ({len(tried)} tried)")
        verdict.append(f"{arm}: {'recovered by ' + ', '.join(recovered) if recovered else 'not recovered'}")
    return lines, "<br>".join(measured), "; ".join(verdict) + " ([the ablation](#claim-a-the-ablation))"


def study_table(runs: list, baseline: str, options: dict) -> list[str]:
    """A study's schedules side by side, as markdown lines: seeds; final test accuracy, mean with
    its interval over seeds (on the logit scale: within 0-100%); the paired difference from `baseline` with the verdict;
    mean parameter updates and their ratio; training time (train_time_s: the training steps),
    mean with its interval, and the per-seed ratio to the baseline's with its interval. One
    table per group of runs that differ in more than the schedule."""
    from src.figures import group_runs, report_rows

    confidence, min_seeds = options["confidence"], options["min_seeds"]
    pct = _percent(confidence)
    lines = []
    for group in group_runs(runs, [baseline]):
        if group.label:
            lines += [f"{group.label}:", ""]
        lines += [f"| schedule | seeds | final test acc (%, mean [{pct} interval]) | minus {baseline} (points, paired) "
                  f"| parameter updates | train time (s, mean [{pct} interval]) | train time / {baseline}'s (paired) |",
                  "|---|---|---|---|---|---|---|"]
        base = baseline if baseline in group.curves else None
        rows = {row["schedule"]: row for row in report_rows(group, base, options)}
        for schedule, curve in group.curves.items():
            row, finished = rows[schedule], curve.finished
            diverged, _ = failures(curve)
            seeds = f"{len(finished)}" + (f" (+{len(diverged)} diverged)" if diverged else "")
            if not finished:
                lines.append(f"| {schedule} | {seeds} | no run finished | - | - | - | - |")
                continue
            accs = [100 * r.metrics[schema.FINAL_TEST_ACC] for r in finished]
            times = [r.metrics[schema.TRAIN_TIME_S] for r in finished]
            acc, time_s = interval(accs, "percent", confidence), interval(times, "ratio", confidence)
            updates = f"{row['total_param_updates_mean']:,.0f}"
            if schedule == base or base is None:
                diff = ratio = "-" if base is None else "(baseline)"
            else:
                diff = "-" if row["acc_diff_points"] is None else (
                    f"{row['acc_diff_points']:+.2f}{bounds_text(row['acc_diff_low'], row['acc_diff_high'], '+.2f')} "
                    f"**{arm_word(row['verdict'], curve)}**")
                updates += f" ({row['total_param_updates_ratio']:.2f}x)"
                paired = direction_word(paired_values(curve, group.curves[base], schema.TRAIN_TIME_S), 1.0,
                                        confidence, min_seeds, ratio=True)
                ratio = "-" if paired[1] is None else f"{paired[1]:.2f}x{bounds_text(paired[2], paired[3], '.2f')}"
            lines.append(f"| {schedule} | {seeds} | {statistics.fmean(accs):.2f}"
                         f"{bounds_text(acc.low, acc.high, '.2f')} | "
                         f"{diff} | {updates} | {statistics.fmean(times):.1f}{bounds_text(time_s.low, time_s.high, '.1f')} "
                         f"| {ratio} |")
        lines.append("")
    return lines


# --- the report --------------------------------------------------------------------------------


def _git_head() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def plot_ablation(plan: dict, runs_by_study: dict, path: Path) -> bool:
    """Final test accuracy per ablation study and schedule: bars the mean over the seeds
    that finished, dots each seed, crosses at 0 the seeds whose loss diverged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from src.figures import Curve

    spec = plan["ablation"]
    studies = [s.name for s in plan["studies"].values() if "ablation" in s.lists and runs_by_study.get(s.name)]
    if not studies:
        return False
    schedules = list(dict.fromkeys([spec["baseline"], "increase_bs", *spec["arms"]]))
    fig, ax = plt.subplots(figsize=(10, 5), layout="constrained")
    width = 0.8 / len(schedules)
    for i, schedule in enumerate(schedules):
        for j, study in enumerate(studies):
            curve = Curve(schedule, [r for r in runs_by_study[study] if r.schedule == schedule])
            x = j + (i - (len(schedules) - 1) / 2) * width
            values = [100 * r.metrics[schema.FINAL_TEST_ACC] for r in curve.finished]
            if values:
                ax.bar(x, statistics.fmean(values), width, color=f"C{i}")
                ax.plot([x] * len(values), values, "k.", markersize=5)
            diverged, _ = failures(curve)
            ax.plot([x] * len(diverged), [0] * len(diverged), "kx", markersize=7, clip_on=False)
    names = ["reference" if s == spec["reference"] else s.removeprefix("ablation_") for s in studies]
    ax.set_xticks(range(len(studies)), names, rotation=20, ha="right")
    ax.set(ylabel="final test accuracy (%)", ylim=(0, 100))
    fig.suptitle(f"Claim A: what recovers {' and '.join(spec['arms'])}\n({spec['reference']}, one change per study)")
    handles = [Patch(color=f"C{i}", label=schedule) for i, schedule in enumerate(schedules)]
    handles += [Line2D([], [], color="k", marker=".", linestyle="none", label="a seed (bar: the mean)"),
                Line2D([], [], color="k", marker="x", linestyle="none", label="a seed that diverged")]
    fig.legend(handles=handles, loc="outside right upper", fontsize="small", frameon=False)
    ax.grid(axis="y", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def claim_rows(plan: dict, runs_by_study: dict, options: dict, study_root: Path,
               doc: Path) -> tuple[list[Row], list[str]]:
    """The report's rows, one per claim then claim A's, with their figures copied beside the
    report (under <doc's folder>/<doc's stem>/); and the ablation table's lines."""
    from src.figures import _folder_name

    figure_root = doc.parent / doc.stem
    rows = []
    for claim in plan["claims"]:
        runs = runs_by_study.get(claim["study"], [])
        measured, verdict, short = evaluate_claim(claim, runs, options)
        source_folder = study_root / _folder_name(claim["study"])
        figures = []
        for figure in claim.get("figures", []):
            for source in sorted(source_folder.glob(f"**/{figure}")) if runs else []:
                target = figure_root / claim["study"] / source.relative_to(source_folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                figures.append(target.relative_to(doc.parent).as_posix())
        rows.append(Row(str(claim["id"]), claim["claim"], " ".join(claim["reported"].split()), measured, verdict,
                        figures, short))
    spec = plan["ablation"]
    lines, measured, verdict = ablation_table(plan, runs_by_study, options)
    figure = figure_root / spec["figure"]
    figures = [figure.relative_to(doc.parent).as_posix()] if plot_ablation(plan, runs_by_study, figure) else []
    rows.append(Row(str(spec["id"]), spec["claim"], spec["reported"], measured, verdict, figures, measured))
    return rows, lines


def provisional_reason(runs_by_study: dict, min_seeds: int, given: str | None) -> str | None:
    """Why the report is not the study's result: as given, else the studies with fewer than
    min_seeds seeds or none at all; None when every study ran them."""
    from src.figures import has_diverged

    if given:
        return given

    def seeds(runs: list) -> int:  # with a result: FINISHED, or diverged (also a result)
        return len({r.seed for r in runs if r.finished or has_diverged(r)})

    short = [f"{name} ({seeds(runs)})" for name, runs in runs_by_study.items() if seeds(runs) < min_seeds]
    return f"fewer than {min_seeds} seeds in " + ", ".join(short) if short else None


def render(plan: dict, runs_by_study: dict, rows: list[Row], ablation_lines: list[str], options: dict,
           provisional: str | None, tables: dict[str, list[str]]) -> str:
    """docs/reproduction.md; `tables`: the side-by-side table (study_table) of each study of
    conf/reproduction.yaml's `tables` that ran."""
    from src.figures import environment, logged_commands

    every_run = [run for runs in runs_by_study.values() for run in runs]
    env = environment(every_run) if every_run else {}
    spec = plan["ablation"]
    md = ["# The reproduction, measured", ""]
    if provisional:
        md += [f"> **Provisional**: {provisional}. Its numbers and verdicts are not the study's result; "
               "`python -m src.reproduce run` then `python -m src.reproduce report` give it.", ""]
    md += [
        "Written by `python -m src.reproduce report` from the runs that `python -m src.reproduce run` logged "
        f"(studies and claims: conf/reproduction.yaml; the report's code at commit `{_git_head()[:12]}`).", "",
        f"- runs made at commit: {env.get('commit', NOT_RUN)}",
        f"- torch: {env.get('torch', '-')}; device: {env.get('device', '-')}; threads: {env.get('threads', '-')}",
        f"- {env.get('load', 'load: -')}; {env.get('time', '')}",
        "",
        f"Verdict (the rule of `python -m src.figures`, conf/figures.yaml): each arm's final accuracy on the "
        f"held-out TEST split (no decision of the study reads it) minus the baseline's, paired by seed, a seed "
        f"whose loss diverged counted at chance (1 / classes), with a {_percent(options['confidence'])} t "
        f"interval on the atanh scale (it stays within ±100 points; where the arm's own spread is zero, the "
        f"spread pooled over the study's arms), in points. The margin is "
        f"{options['margin_error_fraction']:g} of the baseline's test error rate (conf/figures.yaml says why). "
        "**matched**: the final interval within ± the margin, and so is the interval of the largest "
        "per-epoch test-accuracy gap from the first milestone on (at the Bonferroni level over the epochs "
        "searched); **differs**: either wholly outside it; else "
        f"**inconclusive**, and always with fewer than {options['min_seeds']} seeds. 'detectable': the "
        f"smallest true difference the seeds would detect with {100 * options['power']:g}% power, from their "
        "paired spread. Claim 3b expects a **small loss**: the whole interval above "
        f"-{options['small_loss_error_fraction']:g} x the baseline's error rate (the paper's -1.0 point at "
        "5.7% error). Times: the per-seed ratio of `train_time_s` (training steps only), its interval on "
        "the log scale; losses: the per-seed difference; **lower** / **higher** when the whole interval lies "
        "below / above 1 (losses: 0). Each claim runs controls beside its arms, schedules the paper's theory "
        "says must end different (anneal_once: decay_lr's first milestone only, g annealed x5 not x125; "
        "no_anneal: no milestone); a control that does not come out **differs** makes the row **cannot tell "
        "here**. Otherwise a claim **holds** when every verdict is the one it expects, **does not hold here** "
        "when one is the opposite, else it is **undecided**; extensions expect nothing.",
        "",
        "## Does each claim hold?",
        "",
        f"| # | claim | the paper / blog reports | measured here (mean [{_percent(options['confidence'])} interval] "
        "over seeds) | verdict | figure |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        links = ", ".join(f"[{Path(f).stem}]({f})" for f in row.figures) or "-"
        md.append(f"| {row.id} | {row.claim} | {row.reported} | {row.measured} | {row.verdict} | {links} |")
    side_by_side = plan["tables"]["studies"]
    behind = ", ".join(str(claim["id"]) for claim in plan["claims"] if claim["study"] in side_by_side)
    md += ["", "## The studies side by side", "",
           f"Every schedule of {', '.join(side_by_side)}, against {plan['tables']['baseline']}: the numbers behind "
           f"claims {behind}, with the interval of each mean over seeds. Training time counts "
           "the training steps (train_time_s); parallel jobs shared the machine, so the paired ratio is the "
           "number to read.", ""]
    for name in side_by_side:
        runs = runs_by_study.get(name, [])
        md += [f"### {name}", "", plan["studies"][name].about, ""]
        if not runs:
            md += [f"{NOT_RUN}: `python -m src.reproduce run {name}`", ""]
            continue
        md += [f"`{logged_commands(runs)}`", ""]
        md += tables[name]
    md += ["## Claim A: the ablation", "",
           f"{spec['claim'][0].upper()}{spec['claim'][1:]}? Each study below changes one thing of "
           f"{spec['reference']} (`python -m src.reproduce run ablation`; commands below). Accuracy only "
           "(deterministic per seed on a CPU; times from these runs are not results). Accuracies are listed seed "
           f"by seed (div.: the loss diverged); the last columns compare each arm with {spec['baseline']}, paired "
           f"by seed, by the rule above: the study's own {spec['baseline']} where it ran one (the same model and "
           "epochs), else the reference's (marked).", ""]
    md += ablation_lines + [""]
    if spec.get("reading"):
        md += [f"**Reading** (written from the runs of commit {spec['reading_commit']}; the table above is "
               f"regenerated from the runs, this paragraph is not): {' '.join(spec['reading'].split())}", ""]
    ablation = next(row for row in rows if row.id == str(spec["id"]))
    if ablation.figures:
        md += [f"![Claim A: final accuracy per ablation]({ablation.figures[0]})", ""]
    md += ["## Studies: where their values come from, how they ran", "",
           "| study | values (fixed before any run of this report) | seeds | runs | expected on 2 CPU cores |",
           "|---|---|---|---|---|"]
    for name, study in plan["studies"].items():
        runs = runs_by_study[name]
        finished = sum(r.finished for r in runs)
        state = (f"{finished} finished" + (f", {len(runs) - finished} not" if len(runs) > finished else "")
                 if runs else NOT_RUN)
        md.append(f"| {name} | {study.about} | {len({r.seed for r in runs if r.finished})} | {state} | "
                  f"~{study.minutes * len(study.seeds):.0f} min |")
    md += ["", "Each study's sweep commands, as its runs logged them:", ""]
    for name, runs in runs_by_study.items():
        md.append(f"- {name}: `{logged_commands(runs)}`" if runs
                  else f"- {name}: {NOT_RUN}")
    return "\n".join(md + ["", *cannot_show()]) + "\n"


# README.md's blocks that `report --write-readme` fills: the claims' summary, and the side-by-side
# table of the first study of conf/reproduction.yaml's `tables`.
README_SUMMARY = "reproduction:summary"
README_TABLE = "reproduction:table"


def readme_summary(rows: list[Row], provisional: str | None, doc: str, confidence: float) -> str:
    """README's "Does the claim hold?" table: each claim's verdict and, in short, its numbers."""
    lines = [f"*Provisional: {provisional}.*", ""] if provisional else []
    lines += [f"| # | claim | measured here: accuracy minus baseline (points, {_percent(confidence)} interval), "
              "updates, time | verdict |",
              "|---|---|---|---|"]
    lines += [f"| {row.id} | {row.claim} | {row.short} | {row.verdict.replace('(#', f'({doc}#')} |" for row in rows]
    lines += ["", f"The paper's and the blog's numbers beside these, the figures and the ablation: [{doc}]({doc})."]
    return "\n".join(lines)


def readme_table(plan: dict, runs_by_study: dict, tables: dict[str, list[str]]) -> str:
    """README's side-by-side tables: those of conf/reproduction.yaml's `tables` (`tables`: each
    study's that ran, as render gets them), each with the command that made it."""
    from src.figures import environment, logged_commands

    lines = []
    for name in plan["tables"]["studies"]:
        runs = runs_by_study.get(name, [])
        lines += [f"**{name}**: {NOT_RUN} (`python -m src.reproduce run {name}`)", ""] if not runs else [
            f"**{name}** (`{logged_commands(runs)}`):", "", *tables[name]]
    every_run = [run for name in plan["tables"]["studies"] for run in runs_by_study.get(name, [])]
    if every_run:
        env = environment(every_run)
        lines.append(f"Runs made at commit {env['commit'][:12]}; torch {env['torch']}; device: {env['device']}; "
                     f"threads: {env['threads']}; {env['time']}.")
    return "\n".join(lines).rstrip()


def write_readme(readme: Path, blocks: dict[str, str]) -> None:
    """Replace each `<!-- name -->` ... `<!-- /name -->` block of README.md with its text."""
    text = readme.read_text()
    for name, body in blocks.items():
        begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
        if begin not in text or end not in text:
            raise SystemExit(f"error: {readme} has no {begin} ... {end} block to fill")
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{begin}\n{body}\n{end}{tail}"
    readme.write_text(text)


def studies_with_runs(doc: Path, plan: dict) -> set[str]:
    """The studies of `plan` an earlier report at `doc` has runs of: those its list of sweep
    commands does not give as `- <study>: not run` (render's last list). None there: empty."""
    if not doc.is_file():
        return set()
    found = set()
    for line in doc.read_text(errors="replace").splitlines():
        name, sep, rest = line.removeprefix("- ").partition(": ")
        if line.startswith("- ") and sep and name in plan["studies"] and rest != NOT_RUN:
            found.add(name)
    return found


def _is_default_store(uri: str) -> bool:
    """Whether `uri` is the reproduction's own store, <OUTPUT_DIR>/mlflow.db, whose report is the
    committed one."""
    from src.stores import SQLITE_PREFIX

    return uri.startswith(SQLITE_PREFIX) and (Path(uri[len(SQLITE_PREFIX):]).resolve()
                                              == (OUTPUT_DIR / "mlflow.db").resolve())


def report_target(args: argparse.Namespace, uri: str, output_dir: Path) -> tuple[Path | None, str | None]:
    """(where the report goes, None) or (None, why it may not be written there, in one line).
    By default the committed docs/reproduction.md for the reproduction's own store, and
    <output-dir>/report/reproduction.md for any other: another store's runs never replace the
    committed report unless --output names it. README's tables go with the committed report."""
    committed = ROOT / DOC
    if args.output:
        doc = Path(args.output)
    else:
        doc = committed if _is_default_store(uri) else output_dir / OTHER_STORE_REPORT / DOC.name
    if (doc.parent / doc.stem).resolve() == (output_dir / "reproduction").resolve():
        return None, (f"--output {doc}: its figures would go in {output_dir / 'reproduction'}, where each study's "
                      "src.figures output is written; choose another file")
    if args.write_readme and doc.resolve() != committed.resolve():
        return None, (f"--write-readme: README.md's tables go with {committed}, not {doc}; give --output "
                      f"{committed} (or leave out --write-readme)")
    return doc, None


def report(args: argparse.Namespace, plan: dict) -> int:
    from src.errors import ConfigError
    from src.figures import _folder_name, load_options, write_all
    from src.stores import SQLITE_PREFIX, open_existing_store

    output_dir = Path(args.output_dir) if args.output_dir else OUTPUT_DIR
    uri = args.tracking_uri or f"{SQLITE_PREFIX}{output_dir / 'mlflow.db'}"
    doc, refusal = report_target(args, uri, output_dir)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    try:  # read-only: a store that is not there or not MLflow's is refused, never created
        client = open_existing_store(uri, "--tracking-uri", "run `python -m src.reproduce run` first")
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    options = load_options()
    prefix = plan["experiment_prefix"]
    runs_by_study = {name: load_study(client, experiment_name(prefix, name), study.preset)
                     for name, study in plan["studies"].items()}
    had, has = studies_with_runs(doc, plan), {name for name, runs in runs_by_study.items() if runs}
    if had - has and not args.allow_fewer:  # before anything is removed or written
        lacking = sorted(had - has)
        print(f"error: {doc} has runs of {len(had)} studies, {uri} of {len(has)} of them (not "
              f"{', '.join(lacking[:4])}{' ...' if len(lacking) > 4 else ''}): not replaced; --allow-fewer "
              "replaces it, --output PATH writes elsewhere", file=sys.stderr)
        return 2
    for name in plan["studies"]:  # no figure left over from an earlier report (and nothing else removed)
        shutil.rmtree(doc.parent / doc.stem / name, ignore_errors=True)
    (doc.parent / doc.stem / plan["ablation"]["figure"]).unlink(missing_ok=True)
    study_root = output_dir / "reproduction"  # each study's src.figures output, in full
    for name, runs in runs_by_study.items():
        shutil.rmtree(study_root / _folder_name(name), ignore_errors=True)  # no group left from an earlier report
        if runs:
            write_all(study_root / _folder_name(name), name, experiment_name(prefix, name), runs, options=options)
    rows, ablation_lines = claim_rows(plan, runs_by_study, options, study_root, doc)
    provisional = provisional_reason(runs_by_study, options["min_seeds"], args.provisional)
    doc.parent.mkdir(parents=True, exist_ok=True)
    tables = {name: study_table(runs_by_study[name], plan["tables"]["baseline"], options)
              for name in plan["tables"]["studies"] if runs_by_study.get(name)}
    doc.write_text(render(plan, runs_by_study, rows, ablation_lines, options, provisional, tables))
    if args.write_readme:
        write_readme(ROOT / "README.md", {
            README_SUMMARY: readme_summary(rows, provisional, os.path.relpath(doc, ROOT), options["confidence"]),
            README_TABLE: readme_table(plan, runs_by_study, tables)})
    print(f"wrote {doc} ({len(rows)} rows; figures under {doc.parent / doc.stem}; every study's figures and "
          f"report.md under {study_root})" + ("; README.md's summary and table" if args.write_readme else ""))
    return 0


def cannot_show() -> list[str]:
    """What an offline CPU stand-in cannot show, and the commands and projected GPU time of the
    presets that would."""
    return [
        "## What this offline stand-in cannot show",
        "",
        "MNIST-1D on a CPU keeps the paper's proportions (B0 and B_max as fractions of N, milestones as "
        "fractions of the run, factor 5), not its setting. It cannot show: CIFAR-10 test accuracy (the "
        "paper's 94.3 / 94.4 / 94.5 / 93.3% of figure 5), the wide ResNet (WRN-16-4, 2.7M parameters) and "
        "its ghost batch norm (statistics per 128 samples at any B: cnn1d and the MLP have no batch norm, "
        "which claim A studies), augmentation (random crops and flips), 200 epochs, or GPU speed (on "
        "this CPU the time per sample stops falling past B ~ 800, so fewer updates save less time than on a "
        "GPU; the blog's 2x was on a GPU). The full presets need CIFAR-10 (`data/cifar-10-batches-py/`) and a "
        "GPU; covertype needs `fetch_covtype`'s download:",
        "",
        "| preset | command (3 seeds) | GPU time per seed (projection) |",
        "|---|---|---|",
        "| smith2018_cifar10 (figures 1-3) | `python -m src.run -m experiment=smith2018_cifar10 trainer.seed=0,1,2` "
        "| decay_lr ~25 min, hybrid ~11-25 min, increase_bs ~11-17 min: ~47-67 min |",
        "| smith2018_optimizers (figures 3-4) | `python -m src.run -m experiment=smith2018_optimizers "
        "trainer.seed=0,1,2` | 4 optimizers x the above: ~3-4.5 h |",
        "| smith2018_effective_lr (figure 5) | `python -m src.run -m experiment=smith2018_effective_lr "
        "trainer.seed=0,1,2` | decay_lr ~25, increase_bs ~11-17, increase_lr ~5-11, increase_momentum ~5 min: "
        "~45-60 min |",
        "| blog_covtype (the blog) | `python -m src.run -m experiment=blog_covtype trainer.seed=0,1,2` "
        "| a few minutes per arm; a CPU will do |",
        "",
        "Then `python -m src.figures` draws each sweep's figures and verdicts. The GPU times are projections "
        "from images per second, not measurements of these presets: WRN-16-4 training steps measured on one "
        "H200 under bf16 took 66 ms at B = 2,048 and 499 ms at B = 16,000 with ghost batch norm (~31,000 "
        "images/s; benchmarks/README.md, GPU), so every epoch at B >= 2,048 takes ~1.6 s; the rate at B = 128 "
        "was not measured: ~6,700 images/s is the smith2018_cifar10 header's estimate (~25 min for decay_lr's "
        "10 million images), and B = 640 lies between the two rates, hence the ranges. Validation and test "
        "(5,000 and 10,000 images per epoch) add about a minute and a half per run.",
    ]


# --- command line ------------------------------------------------------------------------------


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m src.reproduce", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="train the studies (resumable)")
    run_parser.add_argument("names", nargs="*", metavar="LIST_OR_STUDY",
                            help=f"lists ({', '.join(RUN_LISTS)}) or study names; default: reproduction")
    run_parser.add_argument("--seeds", type=_seeds, help="e.g. 0,1,2; default: each study's (conf/reproduction.yaml)")
    run_parser.add_argument("--jobs", type=int, help="parallel jobs of 1 thread (1: one at a time, all threads)")
    run_parser.add_argument("--epochs", type=int, help="smoke runs: trainer.epochs for every study (>= 4)")
    run_parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                            help="a Hydra override added to every sweep (repeatable), e.g. dataset.n_samples=3000")
    run_parser.add_argument("--output-dir", help="paths.output_dir of every run (the store is <dir>/mlflow.db)")
    run_parser.add_argument("--dry-run", action="store_true", help="print the commands and times, run nothing")
    report_parser = commands.add_parser("report", help="write docs/reproduction.md from the logged runs")
    report_parser.add_argument("--output", help=f"the report; figures go beside it (default: {DOC} for the "
                               f"reproduction's store, {OUTPUT_DIR}/mlflow.db; for another store "
                               f"<output-dir>/{OTHER_STORE_REPORT}/{DOC.name})")
    report_parser.add_argument("--output-dir", help=f"where the runs were logged (<dir>/mlflow.db; default: "
                               f"{OUTPUT_DIR}); each study's figures go in <dir>/reproduction/")
    report_parser.add_argument("--tracking-uri", help="the MLflow store, if not <output-dir>/mlflow.db")
    report_parser.add_argument("--allow-fewer", action="store_true",
                               help="replace a report that has runs of studies this store has none of "
                               "(refused by default: a report never replaces results with less by accident)")
    report_parser.add_argument("--provisional", metavar="WHY", help="mark the report provisional, saying why "
                               "(it is, unaided, when a study has fewer than 3 seeds)")
    report_parser.add_argument("--write-readme", action="store_true",
                               help="also fill README.md's 'Does the claim hold?' table and the default study's "
                               f"side-by-side table (with the committed report, {DOC}, only)")
    for sub in (run_parser, report_parser):
        sub.add_argument("--config", type=Path, default=CONFIG, help="the studies and claims")
    return parser.parse_args(argv)


def read_plan(path: Path) -> dict:
    """load_plan, whatever stops it told in one line naming the file (a ConfigError): a file that
    cannot be read, is not valid YAML, or lacks what a plan holds."""
    import yaml
    from omegaconf.errors import OmegaConfBaseException

    from src.cli import one_line_error
    from src.errors import ConfigError

    try:
        plan = load_plan(path)
    except OSError as error:
        raise ConfigError(f"--config {path}: cannot read it ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"--config {one_line_error(error)[0]}") from None
    except (KeyError, TypeError, ValueError, AttributeError, OmegaConfBaseException) as error:
        raise ConfigError(f"--config {path}: not a reproduction plan like conf/reproduction.yaml "
                          f"({type(error).__name__}: {error})") from None
    missing = [key for key in PLAN_KEYS if key not in plan]
    if missing:
        raise ConfigError(f"--config {path}: not a reproduction plan like conf/reproduction.yaml (no "
                          f"{', '.join(missing)})")
    return plan


def main(argv: Sequence[str] | None = None) -> int:
    from src.errors import ConfigError

    args = parse_args(argv)
    try:
        plan = read_plan(args.config)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.command == "run":
        if args.jobs is None:
            args.jobs = plan["jobs"]
        if args.epochs is not None and args.epochs < 4:
            print(f"error: --epochs {args.epochs}: at least 4 (milestones at 30/60/80% of the epochs)", file=sys.stderr)
            return 2
        return run(args, plan)
    return report(args, plan)


if __name__ == "__main__":
    sys.exit(main())
