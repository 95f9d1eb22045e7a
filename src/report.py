"""The written reports: one sweep's report.md / report.csv / report.json, the reproduction's
docs/reproduction.md and README.md's blocks. Text only: the numbers come from src.verdict and
src.claims, the figures from src.plots (this module links them by path).

report.md, report.csv and report.json hold the same numbers, one row per (group, schedule);
every wall time comes with where and how the runs ran (environment). docs/reproduction.md ends
with docs/cannot_show.md as it is: what the offline stand-in cannot show, and the presets and
the measured GPU timings that would.
"""

from __future__ import annotations

import csv
import json
import re
import shlex
import subprocess
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from src.claims import NOT_RUN, Row, percent
from src.groups import Group, folder_name, reached_cap, sweep_axes
from src.intervals import bounds_text
from src.runs import RunData
from src.schema import (
    COMMAND_TAG, CONF_DIR, CPUS_TAG, DEVICE_TAG, ERROR_TAG, FINAL_TEST_ACC, LOAD_AVERAGE_END, LOAD_AVERAGE_START,
    RUN_NAME_TAG, SEED_TAG, THREADS_TAG, TORCH_VERSION_TAG, TOTAL_PARAM_UPDATES, VERDICT_TAG_PREFIX,
)
from src.summary_plots import ACROSS
from src.verdict import COLUMNS, REPORTED, ReportRow, format_reported

REPOSITORY = CONF_DIR.parent
CANNOT_SHOW = REPOSITORY / "docs" / "cannot_show.md"  # the report's last section, as it is
GIT_COMMIT_TAG = "mlflow.source.git.commit"  # MLflow's own: the commit a run's code was at
LOAD_SPANS_SHOWN = ("1m", "15m")  # of the load averages the runs logged: the report's context
# README.md's blocks that `python -m src.reproduce report --write-readme` fills: the claims'
# summary, and the side-by-side tables of conf/reproduction.yaml's `tables`.
README_SUMMARY = "reproduction:summary"
README_TABLE = "reproduction:table"


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


def _load_average(run: RunData, name: str) -> float | None:
    """A load average the run logged: a tag; a metric in runs logged before it became a tag (the
    published reproduction's runs among them). None: not logged."""
    value = run.tags.get(name, run.metrics.get(name))
    return None if value is None else float(value)


def environment(runs: Sequence[RunData]) -> dict[str, str]:
    """Where and how the runs ran, and how busy the machine was: the context every wall time in
    the report needs."""
    def tag(name: str) -> str:
        return _distinct([run.tags.get(name) for run in runs])

    env = {
        "commit": tag(GIT_COMMIT_TAG),
        "command": logged_commands(runs),
        "torch": tag(TORCH_VERSION_TAG),
        "device": tag(DEVICE_TAG),
        "threads": tag(THREADS_TAG),
    }
    if env["threads"] != "not logged":
        env["threads"] += f" per run (torch intra-op), on a machine with {tag(CPUS_TAG)} CPUs"
    loads = []
    for span in LOAD_SPANS_SHOWN:
        names = (LOAD_AVERAGE_START[span], LOAD_AVERAGE_END[span])
        values = [value for run in runs for name in names if (value := _load_average(run, name)) is not None]
        if values:
            loads.append(f"{span[:-1]}-minute {min(values):.2f} to {max(values):.2f}")
    env["load"] = ("load average at the runs' starts and ends: " + ", ".join(loads)) if loads else "not logged"
    starts = [run.start_time for run in runs]
    ends = [run.end_time for run in runs if run.end_time]
    env["time"] = f"{_utc(min(starts))} to {_utc(max(ends) if ends else None)} UTC"
    return env


def _cell(text: str) -> str:
    """Text as one markdown table cell: an error message may hold newlines or pipes."""
    return " ".join(text.split()).replace("|", "\\|")


# --- one sweep's report ------------------------------------------------------------------------


@dataclass
class SweepReport:
    """What one sweep's report.md / .csv / .json say."""

    sweep_id: str
    experiment: str
    runs: Sequence[RunData]
    groups: list[Group]
    sections: dict[str, list[ReportRow]]  # group label -> its rows (src.verdict.report_rows)
    baselines: dict[str, str | None]  # group label -> its baseline schedule
    links: dict[str, list[tuple[str, str]]]  # group label -> (heading, path) of its paper figures drawn
    panels: list[str]  # the optimizer panels drawn (PNG paths relative to the report)
    axis: str | None = None  # the one number the groups differ in (src.groups.numeric_axis), if so


def _markdown_section(rows: list[ReportRow], baseline: str | None, links: list[tuple[str, str]]) -> list[str]:
    """One group's tables, verdicts and links to its paper figures."""
    lines = [
        "| schedule | runs | " + " | ".join(REPORTED.values()) + " |",
        "|---" * (len(REPORTED) + 2) + "|",
    ]
    for row in rows:
        runs = f"{row.n_finished}" + (f" (+{row.n_failed} failed)" if row.n_failed else "")
        cells = []
        for name, summary in row.numbers.items():
            cell = format_reported(name, summary.mean)
            if summary.std is not None:
                cell += f" ± {format_reported(name, summary.std)}"
            cells.append(cell)
        lines.append(f"| {row.schedule} | {runs} | " + " | ".join(cells) + " |")
    if baseline:
        lines += ["", f"Ratio of each mean to {baseline}'s:", "",
                  "| schedule | " + " | ".join(REPORTED.values()) + " |",
                  "|---" * (len(REPORTED) + 1) + "|"]
        for row in rows:
            ratios = ["-" if s.ratio is None else f"{s.ratio:.2f}x" for s in row.numbers.values()]
            lines.append(f"| {row.schedule} | " + " | ".join(ratios) + " |")
    lines += ["", f"Verdict against {baseline or 'no baseline'}:", ""]
    lines += [f"- **{row.schedule}**: {row.comparison.verdict}"
              + (f". {row.comparison.verdict_detail}" if row.comparison.verdict_detail else "") for row in rows]
    if links:
        lines += ["", "| figure | file |", "|---|---|", *(f"| {heading} | [{Path(path).name}]({path}) |"
                                                          for heading, path in links)]
    else:
        lines += ["", "No figures: no run of this group finished."]
    return lines + [""]


def verdict_lines(report: SweepReport) -> list[str]:
    """The sweep's answer, report.md's first section and its parent run's description: per group
    and schedule, seeds, final test accuracy, the paired difference from the baseline with its
    interval and the verdict, and the parameter updates over the baseline's."""
    lines = ["| group | schedule | seeds | final test acc (%) | minus the baseline (points, paired) | verdict | "
             "updates / the baseline's |", "|---" * 7 + "|"]
    for group in report.groups:
        for row in report.sections[group.label]:
            found, ratio = row.comparison, row.numbers[TOTAL_PARAM_UPDATES].ratio
            acc = row.numbers[FINAL_TEST_ACC].mean
            is_base = row.schedule == row.baseline
            diff = ("(baseline)" if is_base else "-" if found.acc_diff_points is None else
                    f"{found.acc_diff_points:+.2f}{bounds_text(found.acc_diff_low, found.acc_diff_high, '+.2f')}")
            lines.append(f"| {group.label or '-'} | {row.schedule} | {row.n_finished} | "
                         f"{'-' if acc is None else format_reported(FINAL_TEST_ACC, acc)} | {diff} | "
                         f"{'-' if is_base else found.verdict or '-'} | {'-' if ratio is None else f'{ratio:.2f}x'} |")
    return lines


TAG_KEY_REFUSED = re.compile(r"[^\w./ -]")  # characters MLflow refuses in a tag's key


def verdict_tags(report: SweepReport) -> dict[str, str]:
    """verdict.<schedule> (verdict.<group>.<schedule> when the sweep has groups) -> its verdict,
    for each schedule compared with a baseline: tags of the sweep's parent run, so that MLflow's
    runs table shows the answer. A group label's characters MLflow refuses in a key become '_'."""
    tags = {}
    for group in report.groups:
        prefix = f"{TAG_KEY_REFUSED.sub('_', group.label)}." if group.label else ""
        for row in report.sections[group.label]:
            if row.baseline and row.schedule != row.baseline:
                tags[f"{VERDICT_TAG_PREFIX}{prefix}{row.schedule}"] = row.comparison.verdict
    return tags


def _across_section(report: SweepReport) -> list[str]:
    """The groups of a sweep over one number side by side, the number ascending: each schedule
    against its group's baseline, and whether its batch reached its cap."""
    axis = report.axis
    md = [f"## Across {axis}", "", f"Each schedule against its baseline at the same {axis} (the verdicts above; "
          f"figure: [{ACROSS[0]}{axis}.png]({ACROSS[0]}{axis}.png)).", "",
          f"| {axis} | schedule | paired seeds | minus the baseline (points, paired) | verdict | updates / the "
          "baseline's | B reached its cap |", "|---" * 7 + "|"]
    for group in report.groups:
        for row in report.sections[group.label]:
            if not row.baseline or row.schedule == row.baseline:
                continue
            found, ratio = row.comparison, row.numbers[TOTAL_PARAM_UPDATES].ratio
            diff = ("-" if found.acc_diff_points is None else
                    f"{found.acc_diff_points:+.2f}{bounds_text(found.acc_diff_low, found.acc_diff_high, '+.2f')}")
            capped = reached_cap(group.curves[row.schedule])
            md.append(f"| {group.setting[axis]} | {row.schedule} | {found.n_paired} | {diff} | {found.verdict} | "
                      f"{'-' if ratio is None else f'{ratio:.2f}x'} | "
                      f"{'-' if capped is None else ('yes: lr decay took the rest' if capped else 'no')} |")
    return md + [""]


def _rule(options: dict) -> str:
    """The verdict's rule, as report.md states it."""
    fraction, confidence, min_seeds = options["margin_error_fraction"], options["confidence"], options["min_seeds"]
    return (
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
        f"difference these seeds would detect with {100 * options['power']:g}% power, from their paired spread.")


def _sweep_markdown(report: SweepReport, env: dict[str, str], options: dict) -> list[str]:
    """report.md's lines."""
    runs, failed = report.runs, [run for run in report.runs if not run.finished]
    md = [f"# Sweep {report.sweep_id}", "", f"## Verdict ({sum(r.finished for r in runs)} runs finished; the rule "
          "below)", "", *verdict_lines(report), "", "## Method and environment", "",
          "Environment (what every time below depends on):", ""]
    md += [f"- {name}: " + (f"`{value}`" if name in ("commit", "command") and value != "not logged" else value)
           for name, value in env.items()]
    md += [
        "",
        f"Experiment `{report.experiment}`: {len(runs)} runs, {len(failed)} of them not finished (FAILED, KILLED "
        "or still RUNNING: listed under Failed runs, left out of every number). A curve is the runs that "
        "differ only in the seed; mean ± std over its seeds; accuracy in %, times in seconds (train "
        "time: the training steps only; total wall time: the whole job).",
        "", _rule(options), "",
    ]
    if not any(run.finished for run in runs):
        md += ["**No run finished**: no numbers, no figures; the failed runs below say why.", ""]
    for group in report.groups:
        if group.label:
            md += [f"## {group.label}", ""]
        md += _markdown_section(report.sections[group.label], report.baselines[group.label],
                                report.links[group.label])
    if report.axis:
        md += _across_section(report)
    if report.panels:
        md += ["## Figures 3 and 4: one panel per optimizer", ""]
        md += [f"- [{name}]({name})" for name in report.panels] + [""]
    md += ["## Failed runs", ""]
    if failed:
        md += ["| run | schedule | seed | status | error |", "|---|---|---|---|---|"]
        md += [f"| {r.tags.get(RUN_NAME_TAG, r.run_id)} | {r.schedule} | {r.seed} | "
               f"{r.status} | {_cell(r.tags.get(ERROR_TAG, '-'))} |" for r in failed]
    else:
        md.append("None.")
    return md


def write_report(folder: Path, report: SweepReport, options: dict) -> list[Path]:
    """report.md, report.csv and report.json in `folder`: the same numbers, one row per (group,
    schedule). `options`: conf/figures.yaml's, as the rows were computed with."""
    env = environment(report.runs)
    (folder / "report.md").write_text("\n".join(_sweep_markdown(report, env, options)) + "\n")
    flat = [row.record() for rows in report.sections.values() for row in rows]
    with open(folder / "report.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(flat)
    summary = {
        "sweep_id": report.sweep_id, "experiment": report.experiment, "environment": env,
        "margin_error_fraction": options["margin_error_fraction"], "confidence": options["confidence"],
        "interval": "t over paired seeds on the atanh scale (src.intervals)",
        "min_seeds": options["min_seeds"], "axes": sweep_axes(report.runs), "baselines": report.baselines,
        "rows": flat,
        "failed_runs": [{"run_id": r.run_id, "name": r.tags.get(RUN_NAME_TAG), "schedule": r.schedule,
                         "seed": r.tags.get(SEED_TAG), "status": r.status, "error": r.tags.get(ERROR_TAG)}
                        for r in report.runs if not r.finished],
    }
    (folder / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    return [folder / name for name in ("report.md", "report.csv", "report.json")]


def group_folder(label: str) -> str:
    """A group's folder under its sweep's, as a report links it: '' for a sweep's only group."""
    return f"{folder_name(label)}/" if label else ""


# --- the reproduction: docs/reproduction.md and README's blocks ---------------------------------


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
                  f"~{study.minutes * len(study.seeds):.0f} min |")
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
