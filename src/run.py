"""Entry point: `python -m src.run [overrides]`, `python -m src.run -m <sweep>`.

A thin Hydra wrapper around src.train.train. torch and mlflow are imported only once the
config is valid (mlflow to open the store, torch when a job trains), so
`python -m src.run --cfg job` answers in about a second and a single run with a bad config fails
as fast (`python -X importtime -m src.run --cfg job` lists neither). Errors end the
program with one line on stderr (`error: <key>=<value>: <what is allowed>`) and a non-zero
exit: 2 for a bad config or command line, or a folder, store or device it names that cannot be
used (refused before any MLflow run exists); 1 for a run that failed. A run stopped by SIGTERM
or Ctrl-C ends KILLED with one line saying where its checkpoint is, exit 128 + the signal's
number (143, 130), as shells report a process a signal ended.
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
from src.errors import Stopped, needs_traceback, one_line_error
from src.files import check_folder

log = logging.getLogger(__name__)


def preflight(cfg: DictConfig) -> None:
    """What a command makes sure of once, in the process that launches it, before anything is
    written: its folders can be created (paths.data_dir) and written (paths.output_dir), and its
    MLflow store opens, with its experiment (created if missing: parallel first writers of a fresh
    SQLite store would crash MLflow's table creation). Each failure is a ConfigError naming the
    key. A multirun calls it from the study sweeper once every job is validated."""
    check_folder("paths.output_dir", cfg.paths.output_dir)
    check_folder("paths.data_dir", cfg.paths.data_dir, writable=False)  # read-only data are fine
    from src.tracking import prepare_store

    prepare_store(cfg.tracking)


class Preflight(Callback):
    """A single run's config validated and its preflight done before Hydra creates the run's
    folder under paths.output_dir. Hydra turns an exception of a callback into a warning and
    goes on, so a refusal ends the command here (SystemExit passes). (Hydra calls
    on_multirun_start before the sweeper has composed the jobs, so a multirun's preflight is the
    study sweeper's.)"""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        try:
            validate(config)
            preflight(config)
            # The run folder's own name holds the time, resolved again when Hydra creates it:
            # its parent is what can be checked.
            run_dir = Path(config.hydra.run.dir)
            check_folder("hydra.run.dir", run_dir.parent, value=run_dir)
        except Exception as error:
            exit_with_one_line(error)


def sweep_id() -> str:
    """The name of the Hydra sweep folder (shared by every job of a multirun), or of the run
    folder for a single run: a timestamp, so sweeps sort by time."""
    hydra_cfg = HydraConfig.get()
    folder = hydra_cfg.sweep.dir if hydra_cfg.mode == RunMode.MULTIRUN else hydra_cfg.run.dir
    return Path(folder).name


def _terminated(signum, frame):
    raise Stopped(signal.Signals(signum))


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    # Validated already, before anything was written: by Preflight (a single run) or the study
    # sweeper (a multirun); train() validates again for any other caller.
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
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (_terminated): the run is KILLED
        stop = stop if isinstance(stop, Stopped) else Stopped(signal.SIGINT)
        print(f"stopped: {stop}", file=sys.stderr)
        sys.exit(128 + stop.signal)
    except Exception as error:  # composition errors, before any job; the preflight's
        exit_with_one_line(error)


if __name__ == "__main__":
    cli()
