"""Entry point: `python -m src.run [overrides]`, `python -m src.run -m <sweep>`.

A thin Hydra wrapper around src.train.train. torch and mlflow are imported only when a job
actually trains, or when a multirun creates its MLflow store before its jobs start, so
`python -m src.run --cfg job` answers in about a second and a single run with a bad config fails
as fast (`python -X importtime -m src.run --cfg job` lists neither). Errors end the
program with one line on stderr (`error: <key>=<value>: <what is allowed>`) and a non-zero
exit: 2 for a bad config or command line, 1 for a run that failed.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from src.config import validate
from src.errors import ConfigError, needs_traceback, one_line_error

log = logging.getLogger(__name__)


class PrepareTrackingStore(Callback):
    """Create the MLflow store and experiment once, in the launching process, before the jobs
    of a multirun start: parallel first writers of a fresh SQLite store crash MLflow's table
    creation. (A single run is the only writer; it creates them itself.)"""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from src.tracking import prepare_store

        prepare_store(config.tracking)


def sweep_id() -> str:
    """The name of the Hydra sweep folder (shared by every job of a multirun), or of the run
    folder for a single run: a timestamp, so sweeps sort by time."""
    hydra_cfg = HydraConfig.get()
    folder = hydra_cfg.sweep.dir if hydra_cfg.mode == RunMode.MULTIRUN else hydra_cfg.run.dir
    return Path(folder).name


def _terminated(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    try:
        validate(cfg)  # before src.train brings in torch and mlflow: a typo fails in a second
    except ConfigError as error:
        exit_with_one_line(error)
    from src.train import train

    if threading.current_thread() is threading.main_thread():
        # SIGTERM (kill, SLURM preemption) ends the run like Ctrl-C: marked KILLED, checkpoint kept.
        signal.signal(signal.SIGTERM, _terminated)
    if cfg.tracking.sweep_id is None:
        with open_dict(cfg):
            cfg.tracking.sweep_id = sweep_id()
    try:
        return train(cfg)
    except Exception as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            log.error("failed: %s", one_line_error(error)[0], exc_info=needs_traceback(error))
            raise  # the sweeper reports it and lets the other jobs run
        exit_with_one_line(error)


def exit_with_one_line(error: Exception) -> None:
    message, code = one_line_error(error)
    if needs_traceback(error):
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def cli() -> None:
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # let errors reach us instead of Hydra's printer
    try:
        main()
    except Exception as error:  # composition errors, before any job
        exit_with_one_line(error)


if __name__ == "__main__":
    cli()
