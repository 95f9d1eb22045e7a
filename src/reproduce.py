"""`python -m src.reproduce`: the whole offline reproduction, run and reported.

    python -m src.reproduce run                  # every study of the reproduction (conf/reproduction.yaml)
    python -m src.reproduce run ablation         # the ablation of claim A; or study names
    python -m src.reproduce run --dry-run        # the commands and the expected time, nothing run
    python -m src.reproduce report               # docs/reproduction.md and its figures, from the runs

`run` starts one real `python -m src.run -m ...` per sweep of each study (src.studies), all seeds
at once, into the MLflow experiment `<prefix>/<study>`; joblib runs 2 jobs of 1 thread. It is
resumable: running the same command again continues.

`report` reads the runs back from the store alone: each study's experiment, the runs whose
`preset` tag is the study's, the newest FINISHED run per config hash (a re-run never counts
twice). It draws each study's figures with src.figures (into <output-dir>/reproduction/<study>/),
copies those the claims name under docs/, and writes one row per claim: what the paper or the
blog reports, what was measured here (src.claims), the verdict by the report's rule and the
figure. A study with no runs is "not run", never "matched".
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from src.ablation import ablation_schedules, ablation_table
from src.claims import NOT_RUN, Row, evaluate_claim, study_table
from src.config import compose
from src.errors import ConfigError
from src.figures import write_all
from src.groups import folder_name
from src.noise_dial import equal_g_sets, g_controls, grid_cells, grid_table
from src.summary_plots import plot_ablation, plot_accuracy_against_g, plot_equal_g_losses
from src.reproduction_doc import (
    README_SUMMARY, README_TABLE, Reproduction, readme_summary, readme_table, render, write_readme,
)
from src.runs import RunData, load_study
from src.stores import SQLITE_PREFIX, open_existing_store
from src.studies import CONFIG, REPOSITORY, RUN_LISTS, experiment_name, read_reproduction, run
from src.verdict import has_diverged, load_options

ROOT = REPOSITORY  # README.md and the committed report are under it
DOC = Path("docs") / "reproduction.md"  # the committed report, under ROOT
OTHER_STORE_REPORT = "report"  # the report of another store goes in <its --output-dir>/report/
STUDY_FIGURES = "reproduction"  # each study's src.figures output goes in <output-dir>/reproduction/<study>/


def noise_dial_row(spec: dict, runs: list[RunData], options: dict, figure_root: Path, doc: Path) -> tuple[Row, list[str]]:
    """The claim "the noise scale alone sets the final accuracy" (conf/reproduction.yaml's
    noise_dial) from its study's runs: its row, its figures drawn under figure_root, and the
    grid's table lines (none when the study did not run)."""
    if not runs:
        return Row(str(spec["id"]), spec["claim"], " ".join(spec["reported"].split()), NOT_RUN, f"**{NOT_RUN}**", [],
                   NOT_RUN), []
    sets = equal_g_sets(runs, options)
    controls = g_controls(sets, options)
    accuracy, losses = (figure_root / name for name in spec["figures"])
    plot_accuracy_against_g(sets, accuracy, options["confidence"])
    plot_equal_g_losses(sets, losses)
    measured, verdict, short = grid_cells(sets, controls)
    figures = [path.relative_to(doc.parent).as_posix() for path in (accuracy, losses)]
    return (Row(str(spec["id"]), spec["claim"], " ".join(spec["reported"].split()), measured, verdict, figures, short),
            grid_table(sets, controls, options))


def claim_rows(reproduction: dict, runs_by_study: dict[str, list[RunData]], options: dict, study_root: Path,
               doc: Path) -> tuple[list[Row], list[str], list[str]]:
    """The report's rows, one per claim, the noise dial's, then claim A's, with their figures
    copied or drawn beside the report (under <doc's folder>/<doc's stem>/); the ablation table's
    lines and the equal-g grid's."""
    figure_root = doc.parent / doc.stem
    rows = []
    for claim in reproduction["claims"]:
        runs = runs_by_study.get(claim["study"], [])
        measured, verdict, short = evaluate_claim(claim, runs, options)
        source_folder = study_root / folder_name(claim["study"])
        figures = []
        for figure in claim.get("figures", []):
            for source in sorted(source_folder.glob(f"**/{figure}")) if runs else []:
                target = figure_root / claim["study"] / source.relative_to(source_folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                figures.append(target.relative_to(doc.parent).as_posix())
        rows.append(Row(str(claim["id"]), claim["claim"], " ".join(claim["reported"].split()), measured, verdict,
                        figures, short))
    dial = reproduction["noise_dial"]
    row, grid_lines = noise_dial_row(dial, runs_by_study.get(dial["study"], []), options, figure_root, doc)
    rows.append(row)
    spec = reproduction["ablation"]
    lines, measured, verdict = ablation_table(reproduction, runs_by_study, options)
    figure = figure_root / spec["figure"]
    ablation_runs = {s.name: runs_by_study.get(s.name, []) for s in reproduction["studies"].values()
                     if "ablation" in s.lists}
    drawn = plot_ablation(spec, ablation_schedules(spec), ablation_runs, figure)
    figures = [figure.relative_to(doc.parent).as_posix()] if drawn else []
    rows.append(Row(str(spec["id"]), spec["claim"], spec["reported"], measured, verdict, figures, measured))
    return rows, lines, grid_lines


def provisional_reason(runs_by_study: dict[str, list[RunData]], min_seeds: int, given: str | None) -> str | None:
    """Why the report is not the study's result: as given, else the studies with fewer than
    min_seeds seeds or none at all; None when every study ran them."""
    if given:
        return given

    def seeds(runs: list) -> int:  # with a result: FINISHED, or diverged (also a result)
        return len({r.seed for r in runs if r.finished or has_diverged(r)})

    short = [f"{name} ({seeds(runs)})" for name, runs in runs_by_study.items() if seeds(runs) < min_seeds]
    return f"fewer than {min_seeds} seeds in " + ", ".join(short) if short else None


def studies_with_runs(doc: Path, reproduction: dict) -> set[str]:
    """The studies an earlier report at `doc` has runs of: those its list of sweep commands does
    not give as `- <study>: not run` (the report's last list). None there: empty."""
    if not doc.is_file():
        return set()
    found = set()
    for line in doc.read_text(errors="replace").splitlines():
        name, sep, rest = line.removeprefix("- ").partition(": ")
        if line.startswith("- ") and sep and name in reproduction["studies"] and rest != NOT_RUN:
            found.add(name)
    return found


def store_of(output_dir: Path | None) -> tuple[Path, str]:
    """(the runs' folder, their store): conf/config.yaml's paths.output_dir and tracking.uri, as
    `python -m src.run paths.output_dir=<output_dir>` composes them (output_dir None: as it is)."""
    cfg = compose()
    if output_dir is not None:
        cfg.paths.output_dir = str(output_dir)
    return Path(cfg.paths.output_dir), cfg.tracking.uri


def _same_store(uri: str, other: str) -> bool:
    if uri.startswith(SQLITE_PREFIX) and other.startswith(SQLITE_PREFIX):
        return Path(uri[len(SQLITE_PREFIX):]).resolve() == Path(other[len(SQLITE_PREFIX):]).resolve()
    return uri == other


def report_target(args: argparse.Namespace, uri: str, output_dir: Path) -> tuple[Path | None, str | None]:
    """(where the report goes, None) or (None, why it may not be written there, in one line).
    By default the committed docs/reproduction.md for the reproduction's own store (conf's), and
    <output-dir>/report/reproduction.md for any other: another store's runs never replace the
    committed report unless --output names it. README's tables go with the committed report."""
    committed = ROOT / DOC
    if args.output:
        doc = Path(args.output)
    else:
        doc = committed if _same_store(uri, store_of(None)[1]) else output_dir / OTHER_STORE_REPORT / DOC.name
    if (doc.parent / doc.stem).resolve() == (output_dir / STUDY_FIGURES).resolve():
        return None, (f"--output {doc}: its figures would go in {output_dir / STUDY_FIGURES}, where each study's "
                      "src.figures output is written; choose another file")
    if args.write_readme and doc.resolve() != committed.resolve():
        return None, (f"--write-readme: README.md's tables go with {committed}, not {doc}; give --output "
                      f"{committed} (or leave out --write-readme)")
    return doc, None


def _draw_studies(reproduction: dict, runs_by_study: dict[str, list[RunData]], doc: Path, study_root: Path,
                  options: dict) -> None:
    """Each study's src.figures output under study_root, with nothing left from an earlier report."""
    for name in reproduction["studies"]:  # no figure left over from an earlier report (and nothing else removed)
        shutil.rmtree(doc.parent / doc.stem / name, ignore_errors=True)
    for name in [reproduction["ablation"]["figure"], *reproduction["noise_dial"]["figures"]]:
        (doc.parent / doc.stem / name).unlink(missing_ok=True)
    for name, runs in runs_by_study.items():
        shutil.rmtree(study_root / folder_name(name), ignore_errors=True)  # no group left from an earlier report
        if runs:
            write_all(study_root / folder_name(name), name, experiment_name(reproduction["experiment_prefix"], name),
                      runs, options=options)


def report(args: argparse.Namespace, reproduction: dict) -> int:
    """`python -m src.reproduce report`: 0 when written, 2 when refused (nothing written)."""
    output_dir, uri = store_of(Path(args.output_dir) if args.output_dir else None)
    uri = args.tracking_uri or uri
    doc, refusal = report_target(args, uri, output_dir)
    try:  # read-only: a store that is not there or not MLflow's is refused, never created
        if refusal:
            raise ConfigError(refusal)
        client = open_existing_store(uri, "--tracking-uri", "run `python -m src.reproduce run` first")
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    options, prefix = load_options(), reproduction["experiment_prefix"]
    runs_by_study = {name: load_study(client, experiment_name(prefix, name), study.preset)
                     for name, study in reproduction["studies"].items()}
    had, has = studies_with_runs(doc, reproduction), {name for name, runs in runs_by_study.items() if runs}
    if had - has and not args.allow_fewer:  # before anything is removed or written
        lacking = sorted(had - has)
        print(f"error: {doc} has runs of {len(had)} studies, {uri} of {len(has)} of them (not "
              f"{', '.join(lacking[:4])}{' ...' if len(lacking) > 4 else ''}): not replaced; --allow-fewer "
              "replaces it, --output PATH writes elsewhere", file=sys.stderr)
        return 2
    study_root = output_dir / STUDY_FIGURES  # each study's src.figures output, in full
    _draw_studies(reproduction, runs_by_study, doc, study_root, options)
    rows, ablation_lines, grid_lines = claim_rows(reproduction, runs_by_study, options, study_root, doc)
    tables = {name: study_table(runs_by_study[name], reproduction["tables"]["baseline"], options)
              for name in reproduction["tables"]["studies"] if runs_by_study.get(name)}
    written = Reproduction(reproduction, runs_by_study, rows, ablation_lines, grid_lines, tables,
                           provisional_reason(runs_by_study, options["min_seeds"], args.provisional))
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(render(written, options))
    if args.write_readme:
        write_readme(ROOT / "README.md", {
            README_SUMMARY: readme_summary(rows, written.provisional, os.path.relpath(doc, ROOT), options["confidence"]),
            README_TABLE: readme_table(written)})
    print(f"wrote {doc} ({len(rows)} rows; figures under {doc.parent / doc.stem}; every study's figures and "
          f"report.md under {study_root})" + ("; README.md's summary and table" if args.write_readme else ""))
    return 0


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
                               "reproduction's store, tracking.uri of conf/config.yaml; for another store "
                               f"<output-dir>/{OTHER_STORE_REPORT}/{DOC.name})")
    report_parser.add_argument("--output-dir", help="where the runs were logged (default: paths.output_dir of "
                               f"conf/config.yaml); each study's figures go in <dir>/{STUDY_FIGURES}/")
    report_parser.add_argument("--tracking-uri", help="the MLflow store, if not tracking.uri with this output dir "
                               "(<output-dir>/mlflow.db)")
    report_parser.add_argument("--allow-fewer", action="store_true",
                               help="replace a report that has runs of studies this store has none of "
                               "(refused by default: a report never replaces results with less by accident)")
    report_parser.add_argument("--provisional", metavar="WHY", help="mark the report provisional, saying why "
                               "(it is, unaided, when a study has fewer than conf/figures.yaml's min_seeds seeds)")
    report_parser.add_argument("--write-readme", action="store_true",
                               help="also fill README.md's 'Does the claim hold?' table and the default study's "
                               f"side-by-side table (with the committed report, {DOC}, only)")
    for sub in (run_parser, report_parser):
        sub.add_argument("--config", type=Path, default=CONFIG, help="the studies and claims")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        reproduction = read_reproduction(args.config)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.command == "run":
        if args.jobs is None:
            args.jobs = reproduction["jobs"]
        if args.epochs is not None and args.epochs < 4:
            print(f"error: --epochs {args.epochs}: at least 4 (milestones at 30/60/80% of the epochs)", file=sys.stderr)
            return 2
        return run(args, reproduction)
    return report(args, reproduction)


if __name__ == "__main__":
    sys.exit(main())
