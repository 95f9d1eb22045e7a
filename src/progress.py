"""The console while a run trains: how far it has got, and where to see it.

- When the run opens: one line with its MLflow run id and its page in the UI.
- After each epoch: the epoch's numbers, the training throughput (samples/s) and an estimate of
  the time left (ETA: the epochs left times the last epoch's seconds, so it follows a batch size
  that grows).
- Within an epoch that has run longer than tracking.progress.after_s: its steps so far, redrawn
  in place every refresh_s when the console is a terminal that this job has to itself; otherwise
  (a pipe, a log file, jobs of a parallel sweep sharing one terminal) a plain log line every
  log_every_s.

Every line starts with the run's label: "[job 2 of 6 decay_lr optimizer=nesterov seed=0]" in a
sweep, "[decay_lr seed=0]" on its own.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

log = logging.getLogger(__name__)

CLEAR_LINE = "\r\x1b[K"  # carriage return, then erase to the end of the line (ANSI)


def duration(seconds: float) -> str:
    """42s, 3m05s, 2h07m: the precision an ETA deserves."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def label(run_name: str, job_number: int | None, jobs: int | None) -> str:
    """What every line of a run starts with: its name, and in a sweep which job it is."""
    return f"job {job_number + 1} of {jobs} {run_name}" if jobs and job_number is not None else run_name


class ConsoleFormatter(logging.Formatter):
    """The console handler's log format (conf/config.yaml, hydra.job_logging): `terminal_format`
    (and its `terminal_datefmt`) when stdout is a terminal, where a person reads the lines as they
    come and the date, logger and level are noise; `other_format` otherwise (a pipe, a file),
    where a line may be read days later."""

    def __init__(self, terminal_format: str, terminal_datefmt: str, other_format: str):
        on_terminal = sys.stdout.isatty()
        super().__init__(terminal_format if on_terminal else other_format, terminal_datefmt if on_terminal else None)


class EpochProgress:
    """One epoch's progress, told by train_epoch: start(steps), step(done, samples) after every
    optimizer step, done() at its end. Says nothing until the epoch has run `after_s`, then shows
    how far it has got: in place on a terminal (`in_place`), as a log line every `log_every_s`
    otherwise. done() clears the in-place line before the epoch's own line is logged."""

    def __init__(self, label: str, epoch: int, epochs: int, settings, in_place: bool, stream: TextIO,
                 on_step: Callable[[], None] | None = None):
        self.label, self.epoch, self.epochs, self.in_place, self.stream = label, epoch, epochs, in_place, stream
        self.on_step = on_step  # called after every step: the profiler's (src.profiling), if any
        self.after_s = settings.after_s
        self.every_s = settings.refresh_s if in_place else settings.log_every_s
        self.drawn = False
        self.steps = 0
        self.started = self.next_report = 0.0

    def start(self, steps: int) -> None:
        self.steps = steps
        self.started = time.perf_counter()
        self.next_report = self.started + self.after_s

    def step(self, done: int, samples: int) -> None:
        if self.on_step is not None:
            self.on_step()
        now = time.perf_counter()
        if now < self.next_report:
            return
        self.next_report = now + self.every_s
        elapsed = now - self.started
        text = (f"[{self.label}] epoch {self.epoch + 1}/{self.epochs}: step {done}/{self.steps} "
                f"({100 * done / self.steps:.0f}%)  {samples / elapsed:,.0f} samples/s  "
                f"epoch ETA {duration(elapsed * (self.steps - done) / done)}")
        if self.in_place:
            self.stream.write(CLEAR_LINE + text)
            self.stream.flush()
            self.drawn = True
        else:
            log.info(text)

    def done(self) -> None:
        if self.drawn:
            self.stream.write(CLEAR_LINE)
            self.stream.flush()
            self.drawn = False


class Console:
    """What one run says while it trains (the module docstring): the loop calls opened() once,
    epoch() before and epoch_done() after each epoch. `settings`: tracking.progress;
    `parallel_jobs`: how many jobs of the sweep share this machine's console; `on_step`: called
    after every training step (src.profiling's profiler)."""

    def __init__(self, label: str, epochs: int, settings, parallel_jobs: int = 1, stream: TextIO | None = None,
                 on_step: Callable[[], None] | None = None):
        self.label, self.epochs, self.settings, self.on_step = label, epochs, settings, on_step
        self.stream = stream or sys.stdout
        # in place only on a terminal that no other job of the sweep writes to at the same time
        self.in_place = parallel_jobs <= 1 and self.stream.isatty()

    def opened(self, run_id: str, url: str, ui_command: str | None, resumed_at: int | None = None) -> None:
        """The run's start line: its id and page (and for a local store, the command that serves it)."""
        what = f"resuming MLflow run {run_id} from epoch {resumed_at + 1} of {self.epochs}" if resumed_at is not None \
            else f"MLflow run {run_id}"
        log.info("[%s] %s: %s%s", self.label, what, url, f"  (serve the UI: {ui_command})" if ui_command else "")

    def epoch(self, epoch: int) -> EpochProgress:
        return EpochProgress(self.label, epoch, self.epochs, self.settings, self.in_place, self.stream, self.on_step)

    def epoch_done(self, epoch: int, numbers: str, samples_per_s: float, epoch_s: float) -> None:
        """The epoch's line: its numbers, the throughput, and the time left at this epoch's pace."""
        left = duration(epoch_s * (self.epochs - epoch - 1))
        log.info("[%s] epoch %d/%d  %s  %s samples/s  ETA %s", self.label, epoch + 1, self.epochs, numbers,
                 f"{samples_per_s:,.0f}", left)
