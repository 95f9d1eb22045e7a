"""A sweeper for studies that run for hours: Hydra's basic sweep (the cartesian product of the
overrides), plus three things the basic one does not do.

1. Every job's config is composed and validated before anything is written: a typo in the 9th
   job stops the sweep at once with one line, and no folder, store or run is created. Then the
   preflight of every job (src.run.preflight: its folders, its MLflow store and experiment, each
   distinct one once), then the sweep's folder, then the jobs.
2. A failing job does not stop the others (the basic sweeper raises after its batch).
3. The sweep ends with a summary; its last line says how many of how many jobs failed, and the
   exit status is 1 when any did.

Works with any launcher (basic, joblib, submitit): it only decides what runs, not where.
Hydra finds it because it lives in the hydra_plugins namespace package (conf/hydra/sweeper/study.yaml).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, List

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from omegaconf import OmegaConf


class StudySweeper(BasicSweeper):
    def sweep(self, arguments: List[str]) -> Any:
        from src.config import check_folder, validate
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

        batch_size = self.max_batch_size or len(jobs)
        results = []
        for start in range(0, len(jobs), batch_size):
            results.extend(self.launcher.launch(jobs[start : start + batch_size], initial_job_idx=start))
        self._report(sweep_dir.name, results)
        return [results]

    @staticmethod
    @contextmanager
    def _refused(number: int | None, job) -> Iterator[None]:
        """Whatever fails in the block stops the sweep with one line naming the job, exit 2."""
        from src.errors import one_line_error

        try:
            yield
        except Exception as error:
            message, _ = one_line_error(error)
            which = "" if number is None else f"job {number} ({' '.join(job)}): "
            print(f"error: {which}{message}", file=sys.stderr)
            sys.exit(2)

    @staticmethod
    def _report(sweep_id: str, results) -> None:
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
                print(f"sweep {sweep_id}: job {number} ({' '.join(result.overrides)}) failed: {message}", file=sys.stderr)
        done = ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items()))
        note = " - already FINISHED, nothing trained" if not failed and set(outcomes) == {"skipped"} else ""
        print(f"sweep {sweep_id}: {failed} of {len(results)} jobs failed ({done or 'none done'}{note})", file=sys.stderr)
        if failed:
            sys.exit(1)
