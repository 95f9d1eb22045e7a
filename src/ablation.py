"""Claim A, the ablation: what recovers the arms that fall short (increase_lr, increase_momentum)
on the paper-proportion stand-in. Each ablation study (conf/reproduction.yaml, list `ablation`)
changes one thing of the reference study; its arms are compared with its own baseline where it
ran one (the same model and epochs), else the reference's, by the claims' rule (src.verdict),
and the reading is written from those verdicts alone. Markdown cells and lines only: src.reproduction_doc
lays them out, src.summary_plots draws the bars.
"""

from __future__ import annotations

from dataclasses import dataclass

from src.claims import NOT_RUN, arm_word, failures, per_seed
from src.groups import Curve
from src.intervals import bounds_text, pooled_spread
from src.runs import RunData
from src.verdict import accuracy_differences, compare


def schedule_curve(runs: list[RunData], schedule: str) -> Curve:
    return Curve(schedule, [run for run in runs if run.schedule == schedule])


def ablation_schedules(spec: dict) -> list[str]:
    """Claim A's columns of accuracies: the baseline, conf's also_shown, then the arms."""
    return list(dict.fromkeys([spec["baseline"], *spec["also_shown"], *spec["arms"]]))


@dataclass
class _Ablation:
    """Claim A's comparisons: each arm of an ablation study against its baseline."""

    spec: dict  # conf/reproduction.yaml's ablation
    reference: list[RunData]  # the reference study's runs
    options: dict
    pooled: float | None = None  # the spread pooled over the table's comparisons

    def baselines(self, runs: list[RunData]) -> tuple[Curve, Curve]:
        """(the study's own baseline curve, the one its arms are compared with: its own where it
        finished a run, the same model and epochs; else the reference study's)."""
        own = schedule_curve(runs, self.spec["baseline"])
        return own, own if own.finished else schedule_curve(self.reference, self.spec["baseline"])

    def cell(self, study: str, runs: list[RunData], arm: str) -> tuple[str, str | None]:
        """(the table's cell of one arm of one study, the arm's word; None: no word)."""
        own, base = self.baselines(runs)
        curve = schedule_curve(runs, arm)
        if not runs or not base.finished:
            return NOT_RUN, None
        if not curve.runs:
            return "-", None
        if not curve.finished and not failures(curve)[0]:
            word = arm_word("no run finished", curve)
            return f"**{word}**", word
        row = compare(curve, base, self.options, self.pooled)
        word = arm_word(row.verdict, curve)
        diff = (f"{row.acc_diff_points:+.2f}{bounds_text(row.acc_diff_low, row.acc_diff_high, '+.2f')}"
                if row.n_paired else f"no seed finished in both {arm} and {self.spec['baseline']}")
        borrowed = "" if own.finished or study == self.spec["reference"] else " (reference's)"
        return f"{diff} **{word}**{borrowed}", word


def ablation_table(reproduction: dict, runs_by_study: dict[str, list[RunData]], options: dict) -> tuple[list[str], str, str]:
    """(markdown lines, measured cell, verdict cell) of claim A: every ablation study's final
    accuracies seed by seed, and each arm against the baseline paired by seed: the study's own
    baseline where it ran it (the same model and epochs), else the reference study's. Seeds that
    diverged count at chance, as in the claims; a comparison with no spread of its own takes the
    spread pooled over the table's comparisons."""
    spec = reproduction["ablation"]
    studies = [s for s in reproduction["studies"].values() if "ablation" in s.lists]
    ablation = _Ablation(spec, runs_by_study.get(spec["reference"], []), options)
    schedules = ablation_schedules(spec)
    lines = ["| study | what it changes | " + " | ".join(f"{s} (%, per seed)" for s in schedules) + " | "
             + " | ".join(f"{arm} - {spec['baseline']} (points)" for arm in spec["arms"]) + " |",
             "|---" * (2 + len(schedules) + len(spec["arms"])) + "|"]
    ablation.pooled = pooled_spread([accuracy_differences(schedule_curve(runs, arm), ablation.baselines(runs)[1])
                                     for runs in (runs_by_study.get(study.name, []) for study in studies)
                                     for arm in spec["arms"]], "difference")
    words: dict[str, dict[str, str]] = {arm: {} for arm in spec["arms"]}  # arm -> study -> word
    for study in studies:
        runs = runs_by_study.get(study.name, [])
        cells = [per_seed(schedule_curve(runs, schedule)) for schedule in schedules]
        for arm in spec["arms"]:
            cell, word = ablation.cell(study.name, runs, arm)
            cells.append(cell)
            if word is not None:
                words[arm][study.name] = word
        about = "the preset as it is (the reference)" if study.name == spec["reference"] else study.about
        lines.append(f"| {study.name} | {about} | " + " | ".join(cells) + " |")
    if not ablation.reference:
        return lines, NOT_RUN, f"**{NOT_RUN}** (the reference, {spec['reference']})"
    lines += ["", ablation_reading(spec, words)]
    return (lines, *_ablation_summary(spec, words, options))


def ablation_reading(spec: dict, words: dict[str, dict[str, str]]) -> str:
    """Claim A's reading, written from the table's words and nothing else: per arm, which
    one-thing changes brought it within the margin of the baseline (sufficient here), which came
    out different (not sufficient), which the seeds could not decide. No word of cause: a change
    that recovers an arm shows that it suffices at these seeds, not why the arm fell short."""
    sentences = []
    for arm, by_study in words.items():
        as_is = by_study.get(spec["reference"], NOT_RUN)
        changes = {name: word for name, word in by_study.items() if name != spec["reference"]}
        said = [f"**{arm}** as the preset is: {as_is} against {spec['baseline']}."]
        for label, test in (("Sufficient here to recover it (matched)", lambda w: w == "matched"),
                            ("Not sufficient (differs)", lambda w: w.startswith("differs")),
                            ("Not decided at these seeds", lambda w: w != "matched" and not w.startswith("differs"))):
            chosen = [f"{name} ({word})" if label.startswith("Not decided") else name
                      for name, word in changes.items() if test(word)]
            if chosen:
                said.append(f"{label}: {', '.join(chosen)}.")
        sentences.append(" ".join(said))
    return ("**Reading** (generated from the verdicts above): " + " ".join(sentences) + " Each study changes one "
            "thing; that a change recovers an arm says it suffices here, at these seeds: the table does not say "
            "what made the arm fall short, nor that no other change would recover it.")


def _ablation_summary(spec: dict, words: dict[str, dict[str, str]], options: dict) -> tuple[str, str]:
    """(measured, verdict) cells of claim A: per arm, its word as the preset is and the changes
    that recover the baseline's accuracy."""
    measured, verdict = [], []
    for arm, by_study in words.items():
        as_is = by_study.get(spec["reference"], NOT_RUN)
        recovered = [name for name, word in by_study.items() if word == "matched" and name != spec["reference"]]
        tried = [name for name in by_study if name != spec["reference"]]
        measured.append(f"{arm}: the preset as it is **{as_is}**; within {options['margin_error_fraction']:g} "
                        f"of {spec['baseline']}'s error rate with {', '.join(recovered) or 'none of the changes'}"
                        f" ({len(tried)} tried)")
        verdict.append(f"{arm}: {'recovered by ' + ', '.join(recovered) if recovered else 'not recovered'}")
    return "<br>".join(measured), "; ".join(verdict) + " ([the ablation](#claim-a-the-ablation))"
