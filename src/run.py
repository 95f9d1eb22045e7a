"""Entry point: `python -m src.run [overrides]`, `python -m src.run -m <sweep>`.

A thin Hydra wrapper around src.train.train. torch and mlflow are imported only once the
config is valid (mlflow to open the store, torch when a job trains), so
`python -m src.run --cfg job` answers in about a second and a single run with a bad config fails
as fast (`python -X importtime -m src.run --cfg job` lists neither). Errors end the
program with one line on stderr (`error: <key>=<value>: <what is allowed>`) and a non-zero
exit: 2 for a bad config or command line, or a folder, store or device it names that cannot be
used (refused before any MLflow run exists); 1 for a run that failed. A run stopped by SIGTERM
or Ctrl-C ends KILLED with one line saying where its checkpoint is, exit 128 + the signal's
number (143, 130), as shells report a process a signal ended. A job of a study sweep running in
another process (a joblib worker) stops the same way when the sweep's process is gone.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from src.cli import SWEEP_PROCESS_ENV, exit_with_one_line, needs_traceback, one_line_error
from src.errors import Stopped

log = logging.getLogger(__name__)


def sweep_id() -> str:
    """The name of the Hydra sweep folder (shared by every job of a multirun), or of the run
    folder for a single run: a timestamp, so sweeps sort by time."""
    hydra_cfg = HydraConfig.get()
    folder = hydra_cfg.sweep.dir if hydra_cfg.mode == RunMode.MULTIRUN else hydra_cfg.run.dir
    return Path(folder).name


def _terminated(signum, frame):
    raise Stopped(signal.Signals(signum))


SWEEP_CHECK_S = 1.0  # how often a job of a sweep checks that the sweep's process is alive, seconds
# How long a job whose sweep died may take to close its run after its own SIGTERM before it exits
# anyway, seconds: a launcher's worker would otherwise idle on (loky's for 5 minutes per job).
ORPHAN_GRACE_S = 60.0


@contextmanager
def _stops_with_its_sweep() -> Iterator[None]:
    """In a job that a study sweep launched in another process of this host (a joblib worker, a
    local submitit job), a thread that ends the job when the sweep's process is gone (kill -9 or
    SIGTERM of the sweep): SIGTERM to itself, so the run ends KILLED with its checkpoint kept as on
    any SIGTERM, then the process exits. Without it the orphaned workers train on unseen."""
    from src.processes import process_is_gone

    host, _, pid = os.environ.get(SWEEP_PROCESS_ENV, "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        yield  # a single run, a job in the sweep's own process, or on another host
        return
    done = threading.Event()

    def watch() -> None:
        while not done.wait(SWEEP_CHECK_S):
            if process_is_gone(int(pid)):
                log.warning("the sweep's process %s is gone: stopping this job", pid)
                os.kill(os.getpid(), signal.SIGTERM)
                done.wait(ORPHAN_GRACE_S)
                os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="sweep-watch", daemon=True).start()
    try:
        yield
    finally:
        done.set()


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
        with _stops_with_its_sweep():
            return train(cfg)
    except Exception as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            log.error("failed: %s", one_line_error(error)[0], exc_info=needs_traceback(error))
            raise  # the sweeper reports it and lets the other jobs run
        exit_with_one_line(error)


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
