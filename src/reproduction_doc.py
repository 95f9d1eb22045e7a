"""The reproduction's written report: docs/reproduction.md (the claims, the side-by-side
tables, the noise dial, the ablation, the studies, then docs/cannot_show.md as it is) and
README.md's two blocks. Text only: the cells come from src.claims, src.noise_dial and
src.ablation, the figures from src.summary_plots and src.figures (linked by path).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from src.claims import NOT_RUN, Row, percent
from src.report import REPOSITORY, environment, logged_commands
from src.runs import RunData
from src.studies import about_minutes

CANNOT_SHOW = REPOSITORY / "docs" / "cannot_show.md"  # the report's last section, as it is
# README.md's blocks that `python -m src.reproduce report --write-readme` fills: the claims'
# summary, and the side-by-side tables of conf/reproduction.yaml's `tables`.
README_SUMMARY = "reproduction:summary"
README_TABLE = "reproduction:table"


@dataclass
class Reproduction:
    """What docs/reproduction.md says: the reproduction's config, its runs, and what src.claims made of them."""

    config: dict  # conf/reproduction.yaml (src.studies.load_reproduction)
    runs_by_study: dict[str, list[RunData]]
    rows: list[Row]  # one per claim, then claim A's
    ablation_lines: list[str]  # claim A's table and reading (src.ablation.ablation_table)
    grid_lines: list[str]  # the equal-g grid's table (src.noise_dial.grid_table); none when it did not run
    tables: dict[str, list[str]]  # the side-by-side table of each study of the config's `tables` that ran
    provisional: str | None  # why the report is not the study's result; None: it is


def git_head() -> str:
    """The commit the report's code is at ('unknown' outside a git checkout)."""
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPOSITORY)
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def _doc_intro(doc: Reproduction, options: dict) -> list[str]:
    every_run = [run for runs in doc.runs_by_study.values() for run in runs]
    env = environment(every_run) if every_run else {}
    md = ["# The reproduction, measured", ""]
    if doc.provisional:
        md += [f"> **Provisional**: {doc.provisional}. Its numbers and verdicts are not the study's result; "
               "`python -m src.reproduce run` then `python -m src.reproduce report` give it.", ""]
    return md + [
        "Written by `python -m src.reproduce report` from the runs that `python -m src.reproduce run` logged "
        f"(studies and claims: conf/reproduction.yaml; the report's code at commit `{git_head()[:12]}`).", "",
        f"- runs made at commit: {env.get('commit', NOT_RUN)}",
        f"- torch: {env.get('torch', '-')}; device: {env.get('device', '-')}; threads: {env.get('threads', '-')}",
        f"- {env.get('load', 'load: -')}; {env.get('time', '')}",
        "",
        f"Verdict (the rule of `python -m src.figures`, conf/figures.yaml): each arm's final accuracy on the "
        f"held-out TEST split (no decision of the study reads it) minus the baseline's, paired by seed, a seed "
        f"whose loss diverged counted at chance (1 / classes), with a {percent(options['confidence'])} t "
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
    ]


def _claims_section(doc: Reproduction, options: dict) -> list[str]:
    md = ["## Does each claim hold?", "",
          f"| # | claim | the paper / blog reports | measured here (mean [{percent(options['confidence'])} interval] "
          "over seeds) | verdict | figure |",
          "|---|---|---|---|---|---|"]
    for row in doc.rows:
        links = ", ".join(f"[{Path(f).stem}]({f})" for f in row.figures) or "-"
        md.append(f"| {row.id} | {row.claim} | {row.reported} | {row.measured} | {row.verdict} | {links} |")
    side_by_side = doc.config["tables"]["studies"]
    behind = ", ".join(str(claim["id"]) for claim in doc.config["claims"] if claim["study"] in side_by_side)
    md += ["", "## The studies side by side", "",
           f"Every schedule of {', '.join(side_by_side)}, against {doc.config['tables']['baseline']}: the numbers "
           f"behind claims {behind}, with the interval of each mean over seeds. Training time counts "
           "the training steps (train_time_s); parallel jobs shared the machine, so the paired ratio is the "
           "number to read.", ""]
    for name in side_by_side:
        runs = doc.runs_by_study.get(name, [])
        md += [f"### {name}", "", doc.config["studies"][name].about, ""]
        if not runs:
            md += [f"{NOT_RUN}: `python -m src.reproduce run {name}`", ""]
            continue
        md += [f"`{logged_commands(runs)}`", ""]
        md += doc.tables[name]
    return md


def _ablation_section(doc: Reproduction) -> list[str]:
    spec = doc.config["ablation"]
    md = ["## Claim A: the ablation", "",
          f"{spec['claim'][0].upper()}{spec['claim'][1:]}? Each study below changes one thing of "
          f"{spec['reference']} (`python -m src.reproduce run ablation`; commands below). Accuracy only "
          "(deterministic per seed on a CPU; times from these runs are not results). Accuracies are listed seed "
          f"by seed (div.: the loss diverged); the last columns compare each arm with {spec['baseline']}, paired "
          f"by seed, by the rule above: the study's own {spec['baseline']} where it ran one (the same model and "
          "epochs), else the reference's (marked).", ""]
    md += doc.ablation_lines + [""]
    ablation = next(row for row in doc.rows if row.id == str(spec["id"]))
    if ablation.figures:
        md += [f"![Claim A: final accuracy per ablation]({ablation.figures[0]})", ""]
    return md


def _noise_dial_section(doc: Reproduction) -> list[str]:
    spec = doc.config["noise_dial"]
    study = doc.config["studies"][spec["study"]]
    md = ["## The noise scale as the one dial", "",
          f"Claim {spec['id']}: {spec['claim']}. {study.about} Each (lr, B, m) is compared with its set's smallest B "
          "(at the usual momentum) by the rule above, paired by seed; each set's reference with the next smaller "
          f"g's as the control. `python -m src.reproduce run {spec['study']}`.", ""]
    if not doc.grid_lines:
        return md + [f"{NOT_RUN}.", ""]
    md += ["Its commands, as the runs logged them: [Studies](#studies-where-their-values-come-from-how-they-ran).", ""]
    md += doc.grid_lines
    row = next(row for row in doc.rows if row.id == str(spec["id"]))
    md += [f"Verdict: {row.verdict}", ""]
    return md + [f"![{Path(f).stem}]({f})" for f in row.figures] + [""]


def _studies_section(doc: Reproduction) -> list[str]:
    md = ["## Studies: where their values come from, how they ran", "",
          "| study | values (fixed before any run of this report) | seeds | runs | expected on 2 CPU cores |",
          "|---|---|---|---|---|"]
    for name, study in doc.config["studies"].items():
        runs = doc.runs_by_study[name]
        finished = sum(r.finished for r in runs)
        state = (f"{finished} finished" + (f", {len(runs) - finished} not" if len(runs) > finished else "")
                 if runs else NOT_RUN)
        md.append(f"| {name} | {study.about} | {len({r.seed for r in runs if r.finished})} | {state} | "
                  f"{about_minutes(study.minutes * len(study.seeds))} |")
    md += ["", "Each study's sweep commands, as its runs logged them:", ""]
    for name, runs in doc.runs_by_study.items():
        md.append(f"- {name}: `{logged_commands(runs)}`" if runs else f"- {name}: {NOT_RUN}")
    return md


def render(doc: Reproduction, options: dict) -> str:
    """docs/reproduction.md, ending with docs/cannot_show.md as it is."""
    md = (_doc_intro(doc, options) + _claims_section(doc, options) + _noise_dial_section(doc) + _ablation_section(doc)
          + _studies_section(doc))
    return "\n".join(md + ["", CANNOT_SHOW.read_text().rstrip("\n")]) + "\n"


def readme_summary(rows: list[Row], provisional: str | None, doc: str, confidence: float) -> str:
    """README's "Does the claim hold?" table: each claim's verdict and, in short, its numbers."""
    lines = [f"*Provisional: {provisional}.*", ""] if provisional else []
    lines += [f"| # | claim | measured here: accuracy minus baseline (points, {percent(confidence)} interval), "
              "updates, time | verdict |",
              "|---|---|---|---|"]
    lines += [f"| {row.id} | {row.claim} | {row.short} | {row.verdict.replace('(#', f'({doc}#')} |" for row in rows]
    lines += ["", f"The paper's and the blog's numbers beside these, the figures and the ablation: [{doc}]({doc})."]
    return "\n".join(lines)


def readme_table(doc: Reproduction) -> str:
    """README's side-by-side tables: those of conf/reproduction.yaml's `tables` (each study's that
    ran, as render writes them), each with the command that made it."""
    lines = []
    studies = doc.config["tables"]["studies"]
    for name in studies:
        runs = doc.runs_by_study.get(name, [])
        lines += [f"**{name}**: {NOT_RUN} (`python -m src.reproduce run {name}`)", ""] if not runs else [
            f"**{name}** (`{logged_commands(runs)}`):", "", *doc.tables[name]]
    every_run = [run for name in studies for run in doc.runs_by_study.get(name, [])]
    if every_run:
        env = environment(every_run)
        commits = re.sub(r"\b([0-9a-f]{12})[0-9a-f]{28}\b", r"\1", env["commit"])  # each commit, short
        lines.append(f"Runs made at commit {commits}; torch {env['torch']}; device: {env['device']}; "
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
