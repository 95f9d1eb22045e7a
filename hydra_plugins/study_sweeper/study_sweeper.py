"""A sweeper for studies that run for hours: the cartesian product of the overrides, as Hydra's
basic sweeper makes it, plus what the basic one does not do.

1. Every job's config is composed and validated before anything is written: a typo in the 9th
   job stops the sweep at once with one line, and no folder, store or run is created. So are the
   sweeper's and the launcher's own settings (hydra.sweeper.max_batch_size, joblib's n_jobs,
   prefer ...). Then the preflight of every job (src.cli.preflight: its folders, its MLflow store
   and experiment, each distinct one once), then the sweep's folder and its parent run (4.), then
   the jobs. Validation says how far it has got every few seconds (a 200-job sweep takes ~30 s).
2. A failing job does not stop the others (the basic sweeper raises after its batch).
3. The sweep ends with its answer so far: a table of its jobs (run name, outcome, final test
   accuracy, parameter updates, training time, from the final metrics each job returns; a failed
   job's error), its parent run's page, the next command (src.figures on this sweep, and the seeds
   to add where a curve has fewer than a verdict needs), the same table as the parent run's
   description (until src.figures writes the verdict there); its last line says how many of how
   many jobs failed, and the exit status is 1 when any did.
4. The sweep is one MLflow parent run, created here in the launching process once every job is
   valid; each job gets its id (tracking.parent_run_id), the sweep's id (tracking.sweep_id: the
   sweep folder's name, with a suffix when an earlier sweep of the experiment used that folder)
   and a run name that tells it apart (tracking.run_name: the schedule, every override that varies
   in the sweep but the seed, then the seed), as overrides, which reach the job under any
   launcher; Hydra's launch line for each job leaves them out. The parent ends FINISHED, or
   FAILED when a job failed, KILLED on Ctrl-C or SIGTERM, with the summary line as its `result`
   tag.
5. A sweep that stops (SIGTERM, Ctrl-C, a worker process killed: kill -9, out of memory) stops
   its launcher's workers, closes every run its dead processes left RUNNING as KILLED
   (src.processes.close_dead_runs) and ends with one line; re-running the same command resumes
   them from their checkpoints and skips the FINISHED ones. Jobs watch this process
   (src.cli.SWEEP_PROCESS_ENV, src/run.py): when it dies, kill -9 included, they stop as on SIGTERM.

Works with any launcher (basic, joblib, submitit): it only decides what runs, not where.
Hydra finds it because it lives in the hydra_plugins namespace package (conf/hydra/sweeper/study.yaml).
It is a hydra.plugins.sweeper.Sweeper, Hydra's public plugin interface; the product of the
overrides is made here from the public Override API (Hydra's BasicSweeper is internal).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import shlex
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from src.schema import SEED_PARAM as SEED_KEY  # last in a run's name

SCHEDULE_KEY = "schedule"  # first in a run's name, as the schedule's name


class StudySweeper(Sweeper):
    def __init__(self, news_every_s: float, max_batch_size: Optional[int] = None,
                 params: Optional[Dict[str, str]] = None) -> None:
        self.max_batch_size = max_batch_size
        self.news_every_s = news_every_s
        self.params = params or {}
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        from src.cli import hydra_config_of

        # ${hydra:...} in the config (paths.output_dir=${hydra:runtime.cwd}/out) resolves here as
        # in a job: Hydra sets its runtime config only once a job starts
        with hydra_config_of(self.config):
            return self._sweep(arguments)

    def _sweep(self, arguments: List[str]) -> Any:
        from src.cli import preflight
        from src.files import check_folder

        given = [*(f"{k}={v}" for k, v in self.params.items()), *arguments]
        with self._refused(None, ()):
            _check_batch_size(self.max_batch_size)
            _check_news_every_s(self.news_every_s)
            _check_launcher(self.launcher)
            parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
            jobs = _product(parser.parse_overrides(given))
        configs = self._validated(jobs)
        prepared = set()
        for number, (job, cfg) in enumerate(zip(jobs, configs)):
            tracking = cfg.tracking
            where = (cfg.paths.output_dir, cfg.paths.data_dir, tracking.uri, tracking.experiment, tracking.artifact_root)
            if where not in prepared:
                prepared.add(where)
                with self._refused(number, job):
                    preflight(cfg)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        with self._refused(None, ()):
            check_folder("hydra.sweep.dir", sweep_dir)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        from src.sweep_record import end_sweep, start_sweep
        from src.tracking import run_url

        # The parent run, in the store and experiment of the first job (where, unless a sweep
        # varies them, every job logs), named by the overrides that sweep.
        tracking, varying = configs[0].tracking, _varying_keys(jobs)
        sweeping = [a for a in given if _key(a) in varying]
        with self._refused(None, ()):  # the store opened in the preflight; one line if it fails now
            parent, sweep_id, experiment = start_sweep(tracking, tracking.sweep_id or sweep_dir.name,
                                                       f"{' '.join(sweeping) or 'sweep'} ({len(jobs)} jobs)",
                                                       len(jobs), shlex.join(sys.argv))
        added = [_tracking_overrides(job, cfg, varying, parent, tracking, sweep_id) for job, cfg in zip(jobs, configs)]
        launched = [[*job, *extra] for job, extra in zip(jobs, added)]
        again = "run the same command again to resume them from their checkpoints"
        try:
            with _stopped_by_sigterm(), _watched_by_jobs(), _launch_lines_without(added):
                results = []
                batch_size = self.max_batch_size or len(launched)
                for start in range(0, len(launched), batch_size):
                    results.extend(self.launcher.launch(launched[start : start + batch_size], initial_job_idx=start))
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (_stopped_by_sigterm)
            from src.errors import Stopped

            signum = getattr(stop, "signal", signal.SIGINT)
            closed = end_sweep(tracking, parent, "KILLED", f"stopped by {signum.name}")
            raise Stopped(signum, f"sweep {sweep_id} stopped, its workers too; {len(closed)} run(s) they left "
                                  f"RUNNING closed as KILLED; {again}") from None
        except Exception as error:  # the launcher itself failed: a worker process killed, for one
            result = _launcher_failure(error)
            closed = end_sweep(tracking, parent, "FAILED", result)
            print(f"error: sweep {sweep_id} stopped: {result}; {len(closed)} run(s) left RUNNING closed as KILLED; "
                  f"{again}, FINISHED ones are skipped", file=sys.stderr)
            sys.exit(1)
        errors = self._report(sweep_id, results, jobs)
        names = [_run_name(job, cfg, varying) for job, cfg in zip(jobs, configs)]
        table = _results_table(names, results, errors)
        print(_answer(table, sweep_id, run_url(tracking, experiment, parent), tracking, jobs, configs, results,
                      arguments))
        failed = sum(error is not None for error in errors)
        result = _summary(results, failed)
        note = f"{tracking.note}\n\n" if tracking.note else ""
        end_sweep(tracking, parent, "FAILED" if failed else "FINISHED", result,
                  description=f"{note}**Sweep {sweep_id}**: its jobs as they ended (`python -m src.figures` puts "
                              f"the sweep's verdict here)\n\n{_markdown(table)}")
        print(f"sweep {sweep_id}: {result}", file=sys.stderr)
        if failed:
            sys.exit(1)
        return [results]

    def _validated(self, jobs: list[list[str]]) -> list[DictConfig]:
        """Every job composed and validated, in order; the first bad one ends the sweep (exit 2).
        A long sweep says how far validation has got every hydra.sweeper.news_every_s seconds."""
        from src.cli import check_config

        configs, news = [], time.monotonic() + self.news_every_s
        for number, job in enumerate(jobs):
            with self._refused(number, job):
                configs.append(self.hydra_context.config_loader.load_sweep_config(self.config, list(job)))
                check_config(configs[-1])
            if time.monotonic() > news:
                print(f"sweep: validated {number + 1} of {len(jobs)} jobs before starting any", file=sys.stderr)
                news = time.monotonic() + self.news_every_s
        return configs

    @staticmethod
    @contextmanager
    def _refused(number: int | None, job) -> Iterator[None]:
        """Whatever fails in the block stops the sweep with one line naming the job, exit 2."""
        from src.cli import one_line_error

        try:
            yield
        except Exception as error:
            message, _ = one_line_error(error, list(job))
            which = "" if number is None else f"job {number} ({_shown(job)}): "
            print(f"error: {which}{message}", file=sys.stderr)
            sys.exit(2)

    @staticmethod
    def _report(sweep_id: str, results, jobs: list[list[str]]) -> list[str | None]:
        """Print each failed job, by the overrides the user's command gave it (`jobs`); returns
        each job's failure in one line, None for a job that completed."""
        from src.cli import one_line_error

        errors = []
        for number, result in enumerate(results):
            if result.status == JobStatus.COMPLETED:
                errors.append(None)
                continue
            try:
                result.return_value  # JobReturn's public way to the job's exception: it raises it
            except BaseException as error:  # noqa: BLE001 - reported, not handled
                message, _ = one_line_error(error)
            errors.append(message)
            print(f"sweep {sweep_id}: job {number} ({_shown(jobs[number])}) failed: {message}", file=sys.stderr)
        return errors


def _summary(results, failed: int) -> str:
    """The sweep's last line: how many of its jobs failed, and what the others did."""
    outcomes: dict[str, int] = {}
    for result in results:
        if result.status == JobStatus.COMPLETED:
            outcome = result.return_value.get("outcome", "finished")
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    done = ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items()))
    note = " - already FINISHED, nothing trained" if not failed and set(outcomes) == {"skipped"} else ""
    return f"{failed} of {len(results)} jobs failed ({done or 'none done'}{note})"


TABLE_HEADER = ("run", "outcome", "final test acc", "updates", "train time")
ERROR_WIDTH = 100  # characters of a failed job's error shown in the table (its run's error tag holds it whole)


def _results_table(names: list[str], results, errors: list[str | None]) -> list[tuple[str, ...]]:
    """One row per job: its run's name, what it did (finished, resumed, skipped: FINISHED before,
    or FAILED) and, from the final metrics its job returned (src.train), its final test
    accuracy, parameter updates and seconds in training steps; a failed job's error instead."""
    from src.schema import FINAL_TEST_ACC, TOTAL_PARAM_UPDATES, TRAIN_TIME_S

    rows = []
    for name, result, error in zip(names, results, errors):
        if error is not None:
            rows.append((name, "FAILED", error[:ERROR_WIDTH], "", ""))
            continue
        final = result.return_value
        rows.append((name, final.get("outcome", "finished"), f"{100 * final[FINAL_TEST_ACC]:.2f}%",
                     f"{final[TOTAL_PARAM_UPDATES]:,.0f}", f"{final[TRAIN_TIME_S]:,.1f} s"))
    return rows


def _markdown(rows: list[tuple[str, ...]]) -> str:
    """The table in markdown (MLflow shows a run's description as markdown)."""
    lines = [TABLE_HEADER, ("---",) * len(TABLE_HEADER), *rows]
    return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines)


def _answer(rows: list[tuple[str, ...]], sweep_id: str, page: str, tracking: DictConfig, jobs: list[list[str]],
            configs: list[DictConfig], results, arguments: list[str]) -> str:
    """What the sweep's console ends with: the table, the parent run's page (and the command that
    serves a local store), then the next command: src.figures on this sweep and, where a
    schedule has fewer seeds than a verdict needs (conf/figures.yaml's min_seeds), the command
    that adds them."""
    from src.tracking import ui_command
    from src.verdict import load_options

    widths = [max(len(row[column]) for row in [TABLE_HEADER, *rows]) for column in range(len(TABLE_HEADER))]
    lines = [f"sweep {sweep_id}:"]
    lines += ["  " + "  ".join(cell.ljust(width) if column in (0, 1) else cell.rjust(width)
                               for column, (cell, width) in enumerate(zip(row, widths))).rstrip()
              for row in [TABLE_HEADER, *rows]]
    serve = ui_command(tracking)
    lines.append(f"MLflow: {page}" + (f"  (serve the UI: {serve})" if serve else ""))
    where = [_as_typed(o) for o in jobs[0] if _key(o) in STORE_KEYS]
    lines.append("next: " + shlex.join(["python", "-m", "src.figures", "--sweep-id", sweep_id, *where]))
    seeds = _seeds_for_a_verdict(jobs, configs, results, load_options()["min_seeds"])
    if seeds:
        have, wanted = seeds
        command = [_as_typed(a) for a in arguments if _key(a) != SEED_KEY]
        lines.append(f"a verdict needs {len(wanted)} seeds per schedule (conf/figures.yaml: min_seeds), this sweep "
                     f"has {have}: " + shlex.join(["python", "-m", "src.run", "-m", *command,
                                                    f"{SEED_KEY}={','.join(map(str, wanted))}"])
                     + " (its FINISHED runs are skipped)")
    return "\n".join(lines)


STORE_KEYS = ("experiment", "paths.output_dir", "tracking.uri", "tracking.experiment")  # where src.figures finds the runs


def _seeds_for_a_verdict(jobs: list[list[str]], configs: list[DictConfig], results,
                         min_seeds: int) -> tuple[int, list[int]] | None:
    """(the fewest seeds a curve of the sweep has among its completed jobs, the seeds that make
    min_seeds: the sweep's and the smallest others), where that is fewer than min_seeds; else
    None. A curve: the jobs that differ in their seed only."""
    curves: dict[tuple[str, ...], set[int]] = {}
    for job, cfg, result in zip(jobs, configs, results):
        if result.status == JobStatus.COMPLETED:
            curves.setdefault(tuple(o for o in job if _key(o) != SEED_KEY), set()).add(cfg.trainer.seed)
    have = min((len(seeds) for seeds in curves.values()), default=0)
    if not curves or have >= min_seeds:
        return None
    wanted = set().union(*curves.values())
    more = max(0, min_seeds - len(wanted))
    wanted |= set(itertools.islice((seed for seed in itertools.count() if seed not in wanted), more))
    return have, sorted(wanted)


def _product(overrides: list[Override]) -> list[list[str]]:
    """The jobs of a sweep: the cartesian product of every key's values (`a=1,2 b=x,y`: four
    jobs), in the order the basic sweeper makes them; a key given twice keeps its last value. A
    sweep of no value (range(0,0)) or a sampled one (interval()) is refused, not run as no job."""
    from src.errors import ConfigError

    values: dict[str, list[str]] = {}
    for override in overrides:
        key = override.get_key_element()
        if not override.is_sweep_override():
            values[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():  # a,b,c, choice(...), range(...)
            values[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
            if not values[key]:  # range(0,0), range(5,1): a product of no job, a sweep that would run nothing
                raise ConfigError(f"{override.input_line}: sweeps over no value, so the sweep would run no job")
        else:  # interval(...)
            raise ConfigError(f"{override.input_line}: {override.value_type.name.lower().removesuffix('_sweep')}() "
                              "needs a sweeper that samples (Optuna, Nevergrad); this one runs lists, choice() and "
                              "range()")
    return [list(job) for job in itertools.product(*values.values())]


def _check_batch_size(max_batch_size: int | None) -> None:
    from src.errors import ConfigError

    if max_batch_size is not None and (isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int)
                                       or max_batch_size < 1):
        raise ConfigError(f"hydra.sweeper.max_batch_size={max_batch_size!r}: must be an integer >= 1 (jobs handed to "
                          "the launcher at once), or null (all at once)")


def _check_news_every_s(news_every_s) -> None:
    from src.errors import ConfigError

    if isinstance(news_every_s, bool) or not isinstance(news_every_s, (int, float)) or not news_every_s >= 0:
        raise ConfigError(f"hydra.sweeper.news_every_s={news_every_s!r}: must be a number of seconds >= 0 (0: a "
                          "line per validated job)")


def _check_launcher(launcher) -> None:
    """The launcher's settings, checked the way it will use them, before anything is written.
    joblib's (hydra/launcher=joblib): joblib.Parallel built with them, as the launcher builds it,
    refuses n_jobs=0, an unknown prefer, require or backend. Other launchers check their own
    settings where they start (submitit: the sbatch parameters)."""
    from src.errors import ConfigError

    settings = getattr(launcher, "joblib", None)
    if settings is None:
        return
    from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg
    from joblib import Parallel

    settings = OmegaConf.to_container(settings) if isinstance(settings, DictConfig) else dict(settings)
    process_joblib_cfg(settings)
    try:
        Parallel(**{**settings, "backend": "loky"})._effective_n_jobs()  # the launcher forces loky
    except (TypeError, ValueError) as error:
        named = {k: re.search(rf"\b{k}\b", str(error)) for k in settings}  # the key named first is the culprit
        key = min((k for k in named if named[k]), key=lambda k: named[k].start(), default=None)
        told = f"hydra.launcher.{key}={settings[key]!r}" if key else "hydra.launcher"
        raise ConfigError(f"{told}: {error}") from None


@contextmanager
def _stopped_by_sigterm() -> Iterator[None]:
    """SIGTERM (kill, a scheduler stopping the sweep) ends the launch as Ctrl-C does: the
    launcher stops its workers and the finally blocks close the runs. Without it the process
    dies at once, its parent run RUNNING and its workers orphaned."""
    from src.errors import Stopped

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Stopped(signal.Signals(signum))

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _watched_by_jobs() -> Iterator[None]:
    """Tell the jobs this process's host and pid, in the environment they inherit."""
    from src.cli import SWEEP_PROCESS_ENV

    saved = os.environ.get(SWEEP_PROCESS_ENV)
    os.environ[SWEEP_PROCESS_ENV] = f"{socket.gethostname()}:{os.getpid()}"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(SWEEP_PROCESS_ENV, None)
        else:
            os.environ[SWEEP_PROCESS_ENV] = saved


@contextmanager
def _launch_lines_without(added: list[list[str]]) -> Iterator[None]:
    """Hydra's launchers log a line per job in this process (`#k : <its overrides>`): without
    what the sweeper `added` to job k (tracking.sweep_id, parent_run_id, run_name: bookkeeping,
    which the jobs still get), which Hydra appends last. Done where the launcher's log records
    are made (the record factory): the launchers configure logging's handlers anew as they go,
    so a filter set on one would be dropped."""
    previous = logging.getLogRecordFactory()

    def without_added(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        line = _LAUNCH_LINE.match(record.msg) if isinstance(record.msg, str) and not record.args else None
        if line and int(line.group(1)) < len(added) and added[int(line.group(1))]:
            record.msg = record.msg.removesuffix(" " + " ".join(added[int(line.group(1))]))
        return record

    logging.setLogRecordFactory(without_added)
    try:
        yield
    finally:
        logging.setLogRecordFactory(previous)


_LAUNCH_LINE = re.compile(r"\t#(\d+) : ")  # basic, joblib and submitit launchers: "\t#<job number> : <overrides>"


def _launcher_failure(error: Exception) -> str:
    """One line for a launcher that failed. joblib's loky raises TerminatedWorkerError when a
    worker process dies (kill -9, the kernel's out-of-memory killer) and kills the other workers
    with it; its own message is a paragraph."""
    from src.cli import one_line_error

    if type(error).__name__ == "TerminatedWorkerError":
        codes = re.search(r"exit codes of the workers are (\{[^}]*\})", str(error))
        return (f"a worker process died{f' (exit codes {codes.group(1)})' if codes else ''}: killed (kill -9) or out "
                "of memory; joblib stopped the other workers with it")
    return one_line_error(error)[0]


def _key(override: str) -> str:
    """The key of an override 'key=value' ('+key=value' adds it: the same key)."""
    return override.split("=", 1)[0].lstrip("+~")


def _varying_keys(jobs: list[list[str]]) -> set[str]:
    """The keys whose value is not the same in every job: what the sweep varies."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        for override in job:
            values.setdefault(_key(override), set()).add(override)
    return {key for key, seen in values.items()
            if len(seen) > 1 or sum(any(_key(o) == key for o in job) for job in jobs) < len(jobs)}


def _tracking_overrides(job: list[str], cfg: DictConfig, varying: set[str], parent: str,
                        parent_tracking: DictConfig, sweep_id: str) -> list[str]:
    """What a job gets on top of its own overrides: its sweep's id, its parent run (when the job
    logs to the parent's store and experiment) and, unless tracking.run_name is set, a run name:
    the schedule, the job's value of every other key the sweep varies, then the seed."""
    overrides = [f"tracking.sweep_id={_quoted(sweep_id)}"]
    if (cfg.tracking.uri, cfg.tracking.experiment) == (parent_tracking.uri, parent_tracking.experiment):
        overrides.append(f"tracking.parent_run_id={parent}")
    if cfg.tracking.run_name is None:
        overrides.append(f"tracking.run_name={_quoted(_run_name(job, cfg, varying))}")
    return overrides


def _run_name(job: list[str], cfg: DictConfig, varying: set[str]) -> str:
    """The job's run name: tracking.run_name where the user set it, else the schedule, the job's
    value of every other key the sweep varies, then the seed."""
    if cfg.tracking.run_name is not None:
        return cfg.tracking.run_name
    varies = [_as_typed(o).lstrip("+~") for o in job if _key(o) in varying and _key(o) not in (SEED_KEY, SCHEDULE_KEY)]
    return " ".join([cfg.schedule.name, *varies, f"seed={cfg.trainer.seed}"])


def _as_typed(override: str) -> str:
    """A job's override as the user typed it: Hydra hands the sweeper each value re-escaped for
    its own parser (\\${a} comes back as \\\\$\\{a\\}); a string value is shown parsed back."""
    parsed = OverridesParser.create().parse_override(override)
    value = parsed.value()
    return f"{override.split('=', 1)[0]}={value}" if isinstance(value, str) else override


def _shown(job: list[str]) -> str:
    """A job's overrides as messages show them."""
    return " ".join(map(_as_typed, job))


def _quoted(text: str) -> str:
    """`text` as a quoted value of a Hydra override that composes back to `text`: a backslash is
    literal in Hydra's quoted strings except in a run before a quote or at the end (doubled
    here), quotes are escaped, and so are interpolations (OmegaConf's \\${...}, after doubling the
    backslashes that stand before one, which OmegaConf would otherwise read as escapes)."""
    text = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)
    text = re.sub(r"(\\+)(?='|$)", lambda run: run.group(1) * 2, text)
    return "'" + text.replace("'", "\\'") + "'"
