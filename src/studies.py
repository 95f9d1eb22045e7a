"""The reproduction's studies (conf/reproduction.yaml) and `python -m src.reproduce run`: one real
`python -m src.run -m ...` per sweep of each study, all seeds at once, into the MLflow experiment
`<prefix>/<study>`.

It is resumable as every sweep is: a run already FINISHED with the same config is skipped, an
interrupted one resumes from its checkpoint, so running the same command again continues.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from src.cli import one_line_error
from src.errors import ConfigError
from src.schema import CONF_DIR, SEED_PARAM

REPOSITORY = CONF_DIR.parent  # where `python -m src.run` runs
CONFIG = CONF_DIR / "reproduction.yaml"
RUN_LISTS = ("reproduction", "ablation", "noise_dial")
# The keys of conf/reproduction.yaml that `run` and `report` read at its top level.
REPRODUCTION_KEYS = ("seeds", "experiment_prefix", "jobs", "studies", "tables", "claims", "ablation", "noise_dial")


@dataclass(frozen=True)
class Study:
    name: str
    preset: str  # the `preset` tag its runs carry
    about: str
    sweeps: tuple[tuple[str, ...], ...]  # overrides of one `src.run -m` command each
    minutes: float  # expected minutes per seed, 2 CPU cores, 2 jobs of 1 thread
    lists: tuple[str, ...]
    seeds: tuple[int, ...]
    jobs: int | None = None  # its own jobs at once (1: each run alone, timed); None: `run`'s --jobs


def about_minutes(minutes: float) -> str:
    """An expected time as the dry run and the report print it: whole minutes, never "~0 min"."""
    return f"~{minutes:.0f} min" if minutes >= 0.5 else "under 1 min"


def load_reproduction(path: Path = CONFIG) -> dict:
    """conf/reproduction.yaml as plain data, with the studies as Study objects."""
    reproduction = OmegaConf.to_container(OmegaConf.load(path))
    reproduction["studies"] = {
        name: Study(name, spec["preset"], " ".join(spec["about"].split()),
                    tuple(tuple(shlex.split(sweep)) for sweep in spec["sweeps"]), float(spec["minutes"]),
                    tuple(spec["lists"]), tuple(spec.get("seeds", reproduction["seeds"])), spec.get("jobs"))
        for name, spec in reproduction["studies"].items()
    }
    return reproduction


def read_reproduction(path: Path) -> dict:
    """load_reproduction, whatever stops it told in one line naming the file (a ConfigError): a
    file that cannot be read, is not valid YAML, or lacks what conf/reproduction.yaml holds."""
    try:
        reproduction = load_reproduction(path)
    except OSError as error:
        raise ConfigError(f"--config {path}: cannot read it ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"--config {one_line_error(error)[0]}") from None
    except (KeyError, TypeError, ValueError, AttributeError, OmegaConfBaseException) as error:
        raise ConfigError(f"--config {path}: not a reproduction plan like conf/reproduction.yaml "
                          f"({type(error).__name__}: {error})") from None
    missing = [key for key in REPRODUCTION_KEYS if key not in reproduction]
    if missing:
        raise ConfigError(f"--config {path}: not a reproduction plan like conf/reproduction.yaml (no "
                          f"{', '.join(missing)})")
    for study in reproduction["studies"].values():
        unknown = set(study.lists) - set(RUN_LISTS)
        if unknown:
            raise ConfigError(f"--config {path}: studies.{study.name}.lists: unknown list "
                              f"{', '.join(sorted(unknown))} (lists: {', '.join(RUN_LISTS)})")
    return reproduction


def experiment_name(prefix: str, study: str) -> str:
    return f"{prefix}/{study}"


def select_studies(reproduction: dict, names: Sequence[str]) -> list[Study]:
    """Studies by list name (RUN_LISTS) or by study name, in conf order, once each."""
    studies = reproduction["studies"]
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


def sweep_command(study: Study, sweep: Sequence[str], prefix: str, seeds: Sequence[int],
                  args: argparse.Namespace) -> list[str]:
    """One real multirun of a study's sweep, every seed, into the study's experiment; `args`:
    `run`'s jobs (unless the study gives its own), output_dir and overrides (with --epochs as
    trainer.epochs)."""
    jobs = study.jobs or args.jobs
    launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}", "trainer.threads=1"] if jobs > 1 else []
    paths = [f"paths.output_dir={args.output_dir}"] if args.output_dir else []
    overrides = list(args.override) + ([f"trainer.epochs={args.epochs}"] if args.epochs else [])
    return [sys.executable, "-m", "src.run", "-m", *sweep, f"{SEED_PARAM}={','.join(map(str, seeds))}",
            f"tracking.experiment={experiment_name(prefix, study.name)}", *launcher, *paths, *overrides]


def _commands(studies: list[Study], reproduction: dict, args: argparse.Namespace) -> list[tuple[Study, list[str]]]:
    """Every sweep's command, each study's expected time printed as it goes."""
    total, commands = 0.0, []
    for study in studies:
        seeds = args.seeds if args.seeds is not None else study.seeds
        minutes = study.minutes * len(seeds)
        total += minutes
        commands += [(study, sweep_command(study, sweep, reproduction["experiment_prefix"], seeds, args))
                     for sweep in study.sweeps]
        print(f"{study.name}: {len(seeds)} seed(s), {about_minutes(minutes)} on 2 CPU cores"
              + (" at its full epochs" if args.epochs else ""))
    print(f"{len(studies)} studies, {len(commands)} sweeps, {about_minutes(total)} expected on 2 CPU cores")
    return commands


def run(args: argparse.Namespace, reproduction: dict) -> int:
    """`python -m src.reproduce run`: the studies' sweeps one after another; 2 when a name is
    unknown, 1 when a sweep failed, 130 on Ctrl-C (the same command continues)."""
    try:
        studies = select_studies(reproduction, args.names or ["reproduction"])
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    commands = _commands(studies, reproduction, args)
    if args.dry_run:
        for _, command in commands:
            print(shlex.join(["python", *command[1:]]))
        return 0
    failed = []
    for study, command in commands:
        print(f"[{study.name}] {shlex.join(['python', *command[1:]])}", flush=True)
        started = time.perf_counter()
        try:
            code = subprocess.run(command, cwd=REPOSITORY).returncode
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
