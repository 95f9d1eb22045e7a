"""A sweeper for studies that run for hours: Hydra's basic sweep (the cartesian product of the
overrides), plus four things the basic one does not do.

1. Every job's config is composed and validated before anything is written: a typo in the 9th
   job stops the sweep at once with one line, and no folder, store or run is created. Then the
   preflight of every job (src.run.preflight: its folders, its MLflow store and experiment, each
   distinct one once), then the sweep's folder and its parent run (4.), then the jobs.
2. A failing job does not stop the others (the basic sweeper raises after its batch).
3. The sweep ends with a summary; its last line says how many of how many jobs failed, and the
   exit status is 1 when any did.
4. The sweep is one MLflow parent run, created here in the launching process once every job is
   valid; each job gets its id (tracking.parent_run_id) and a run name that tells it apart
   (tracking.run_name: the schedule, every override that varies in the sweep but the seed, then
   the seed), as overrides, which reach the job under any launcher. The parent ends FINISHED, or
   FAILED when a job failed, KILLED on Ctrl-C, with the summary line as its `result` tag.

Works with any launcher (basic, joblib, submitit): it only decides what runs, not where.
Hydra finds it because it lives in the hydra_plugins namespace package (conf/hydra/sweeper/study.yaml).
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, List

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from omegaconf import DictConfig, OmegaConf

SEED_KEY = "trainer.seed"  # last in a run's name
SCHEDULE_KEY = "schedule"  # first in a run's name, as the schedule's name


class StudySweeper(BasicSweeper):
    def sweep(self, arguments: List[str]) -> Any:
        from src.config import check_folder, validate
        from src.errors import one_line_error
        from src.run import preflight

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides(self._parse_config() + list(arguments))
        jobs = [job for batch in self.split_arguments(overrides, None) for job in batch]

        configs = []
        for number, job in enumerate(jobs):
            with self._refused(number, job):
                configs.append(self.hydra_context.config_loader.load_sweep_config(self.config, list(job)))
                validate(configs[-1])
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

        from src.tracking import end_sweep, start_sweep

        # The parent run, in the store and experiment of the first job (where, unless a sweep
        # varies them, every job logs), named by the overrides that sweep.
        tracking, varying = configs[0].tracking, _varying_keys(jobs)
        sweeping = [a for a in [*self._parse_config(), *arguments] if _key(a) in varying]
        with self._refused(None, ()):  # the store opened in the preflight; one line if it fails now
            parent = start_sweep(tracking, tracking.sweep_id or sweep_dir.name, f"{' '.join(sweeping) or 'sweep'}"
                                 f" ({len(jobs)} jobs)", len(jobs), shlex.join(sys.argv))
        launched = [[*job, *_tracking_overrides(job, cfg, varying, parent, tracking)] for job, cfg in zip(jobs, configs)]
        try:
            batch_size = self.max_batch_size or len(launched)
            results = []
            for start in range(0, len(launched), batch_size):
                results.extend(self.launcher.launch(launched[start : start + batch_size], initial_job_idx=start))
            failed, result = self._report(sweep_dir.name, results, jobs)
            status = "FAILED" if failed else "FINISHED"
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM where src.run turns it into one
            status, result = "KILLED", "interrupted"
            raise
        except BaseException as error:  # the launcher itself failed
            status, result = "FAILED", one_line_error(error)[0]
            raise
        finally:
            end_sweep(tracking, parent, status, result)
        if failed:
            sys.exit(1)
        return [results]

    @staticmethod
    @contextmanager
    def _refused(number: int | None, job) -> Iterator[None]:
        """Whatever fails in the block stops the sweep with one line naming the job, exit 2."""
        from src.errors import one_line_error

        try:
            yield
        except Exception as error:
            message, _ = one_line_error(error, list(job))
            which = "" if number is None else f"job {number} ({' '.join(job)}): "
            print(f"error: {which}{message}", file=sys.stderr)
            sys.exit(2)

    @staticmethod
    def _report(sweep_id: str, results, jobs: list[list[str]]) -> tuple[int, str]:
        """Print each failed job, by the overrides the user's command gave it (`jobs`), and the
        summary line; returns (failed jobs, the summary line)."""
        from src.errors import one_line_error

        outcomes: dict[str, int] = {}
        failed = 0
        for number, result in enumerate(results):
            if result.status == JobStatus.COMPLETED:
                outcome = result.return_value.get("outcome", "finished")
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
            else:
                failed += 1
                message, _ = one_line_error(result._return_value)
                print(f"sweep {sweep_id}: job {number} ({' '.join(jobs[number])}) failed: {message}", file=sys.stderr)
        done = ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items()))
        note = " - already FINISHED, nothing trained" if not failed and set(outcomes) == {"skipped"} else ""
        result = f"{failed} of {len(results)} jobs failed ({done or 'none done'}{note})"
        print(f"sweep {sweep_id}: {result}", file=sys.stderr)
        return failed, result


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
                        parent_tracking: DictConfig) -> list[str]:
    """What a job gets on top of its own overrides: its parent run (when the job logs to the
    parent's store and experiment) and, unless tracking.run_name is set, a run name: the
    schedule, the job's value of every other key the sweep varies, then the seed."""
    overrides = []
    if (cfg.tracking.uri, cfg.tracking.experiment) == (parent_tracking.uri, parent_tracking.experiment):
        overrides.append(f"tracking.parent_run_id={parent}")
    if cfg.tracking.run_name is None:
        varies = [o.lstrip("+~") for o in job if _key(o) in varying and _key(o) not in (SEED_KEY, SCHEDULE_KEY)]
        name = " ".join([cfg.schedule.name, *varies, f"seed={cfg.trainer.seed}"])
        overrides.append(f"tracking.run_name={_quoted(name)}")
    return overrides


def _quoted(text: str) -> str:
    """`text` as a quoted value of a Hydra override that composes back to `text`: a backslash is
    literal in Hydra's quoted strings except in a run before a quote or at the end (doubled
    here), quotes are escaped, and so are interpolations (OmegaConf's \\${...})."""
    text = re.sub(r"(\\+)(?='|$)", lambda run: run.group(1) * 2, text)
    return "'" + text.replace("'", "\\'").replace("${", "\\${") + "'"
