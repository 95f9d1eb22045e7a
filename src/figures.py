"""`python -m src.figures`: the paper's figures, a results table and a verdict from one sweep's runs.

Nothing is retrained: the runs are read back from the MLflow store. Writes PNG + SVG figures and
report.md / report.csv / report.json under <output-dir>/<sweep_id>/, and logs the same files as
artifacts (figures/) of the sweep's parent run (of the run itself, for a single run's sweep). Its
defaults (store, experiment, output folder) come from conf/config.yaml, composed as src.run
composes it, with the same KEY=VALUE overrides; the verdict's from conf/figures.yaml.

A thin command over four layers, so the numbers can be checked without images: src.runs (store
-> plain RunData), src.groups and src.verdict (RunData -> groups of curves -> one typed row of
numbers per curve), src.plots (-> figures) and src.report (-> report.md / .csv / .json).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from src.cli import one_line_error
from src.config import compose
from src.errors import ConfigError
from src.files import check_folder
from src.groups import folder_name, group_runs, numeric_axis, pick_baseline, schedule_order
from src.plots import DPI, paper_figure_links, save, styles_for, write_figures, write_optimizer_figures
from src.report import SweepReport, group_folder, verdict_lines, verdict_tags, write_report
from src.runs import RunData, StoreError, load_sweep, record_run
from src.stores import open_existing_store
from src.summary_plots import ACROSS, plot_across
from src.verdict import load_options, report_rows

FIGURES_ARTIFACTS = "figures"  # the artifact folder of the run the files are logged to


def write_all(folder: Path, sweep_id: str, experiment: str, runs: Sequence[RunData], baseline: str | None = None,
              options: dict | None = None) -> tuple[list[Path], SweepReport]:
    """Figures (one set per group, and the optimizer panels) and the report for one sweep's runs;
    returns the files and what the report says. `baseline` None: the first of options['baselines'] in each group; options
    not given come from conf/figures.yaml."""
    options = {**load_options(), **(options or {})}
    candidates = [baseline] if baseline else options["baselines"]
    groups = group_runs(runs, candidates)
    styles = styles_for(sorted({run.schedule for run in runs}, key=lambda s: schedule_order(s, candidates)))
    baselines = {group.label: pick_baseline(group, baseline, options["baselines"]) for group in groups}
    sections = {group.label: report_rows(group, baselines[group.label], options) for group in groups}
    figures = []
    for group in groups:
        title = f"sweep {sweep_id}" + (f"  [{group.label}]" if group.label else "")
        target = folder / folder_name(group.label) if group.label else folder
        figures += write_figures(target, group, sections[group.label], baselines[group.label], styles, title)
    panels = write_optimizer_figures(folder, groups, styles, f"sweep {sweep_id}")
    folder.mkdir(parents=True, exist_ok=True)
    axis = numeric_axis(groups)
    across = []  # a sweep over one number: each schedule against its baseline across the values
    if axis:
        across = save(plot_across(axis, groups, sections, styles, f"{ACROSS[1]} {axis}\nsweep {sweep_id}"), folder,
                      f"{ACROSS[0]}{axis}", DPI)
    drawn = {path.relative_to(folder).as_posix() for path in figures}
    links = {group.label: paper_figure_links(drawn, group_folder(group.label)) for group in groups}
    report = SweepReport(sweep_id, experiment, runs, groups, sections, baselines, links,
                         [path.relative_to(folder).as_posix() for path in panels if path.suffix == ".png"], axis)
    return figures + panels + across + write_report(folder, report, options), report


def record_verdict(client, run_id: str, report: SweepReport) -> None:
    """The sweep's answer on its run: the verdict table as the run's description (MLflow's note)
    and one verdict.<...> tag per compared schedule, so the runs table shows it."""
    from mlflow.entities import RunTag  # MLflow loads only when there is a run to write to
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

    note = "\n".join([f"**Verdict of sweep {report.sweep_id}** (`python -m src.figures`; figures and report.md under "
                      f"the artifacts' {FIGURES_ARTIFACTS}/)", "", *verdict_lines(report)])
    client.log_batch(run_id, tags=[RunTag(key, value) for key, value in
                                   {MLFLOW_RUN_NOTE: note, **verdict_tags(report)}.items()])


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

    folder = args.output_dir / folder_name(sweep_id)
    written, report = write_all(folder, sweep_id, args.experiment, runs, args.baseline,
                                {"margin_error_fraction": args.margin})
    record = record_run(client, client.get_experiment_by_name(args.experiment).experiment_id, sweep_id, runs)
    if record:
        for path in written:
            parent = path.parent.relative_to(folder)
            client.log_artifact(record, str(path), artifact_path=(Path(FIGURES_ARTIFACTS) / parent).as_posix())
        if not args.tag:  # the whole sweep, not a reading of some of its runs: its answer on its run
            record_verdict(client, record, report)
    where = f"logged to MLflow run {record} ({FIGURES_ARTIFACTS}/)" if record else "no sweep run in MLflow to log them to"
    print(f"{len(written)} files for sweep {sweep_id} ({len(runs)} runs) in {folder}; {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
