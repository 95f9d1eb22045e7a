"""One sweep's written report: report.md / report.csv / report.json, and the environment every
wall time is read in (also the reproduction's: src.reproduction_doc). Text only: the numbers
come from src.verdict, the figures from src.plots (this module links them by path).

report.md, report.csv and report.json hold the same numbers, one row per (group, schedule);
report.md opens with the sweep's verdict, then the method and the environment.
"""

from __future__ import annotations

import csv
import json
import re
import shlex
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

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
GIT_COMMIT_TAG = "mlflow.source.git.commit"  # MLflow's own: the commit a run's code was at
LOAD_SPANS_SHOWN = ("1m", "15m")  # of the load averages the runs logged: the report's context


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
