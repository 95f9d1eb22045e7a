"""The console while a run trains: how far it has got, and where to see it.

- When the run opens: one line with its page in the UI (the page's address holds the run id).
- After each epoch: the epoch's numbers, the training throughput (samples/s) and an estimate of
  the time left (ETA: the epochs left times the last epoch's seconds, so it follows a batch size
  that grows).
- Within an epoch: its steps so far and the running mean of its training loss, redrawn in place
  every refresh_s from its first step when the console is a terminal that this job has to
  itself (never written to a log or a file); otherwise (a pipe, a log file, jobs of a parallel
  sweep sharing one terminal), once the epoch has run tracking.progress.after_s, a plain log
  line every log_every_s.

Every line starts with the run's label: "[job 2/6 decay_lr optimizer=nesterov seed=0]" in a
sweep, "[decay_lr seed=0]" on its own. Once a job of its sweep has ended, a job's lines add the
sweep's ETA ("[job 3/6 decay_lr seed=0, sweep ETA 4m10s]", SweepPace).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    import torch

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
    return f"job {job_number + 1}/{jobs} {run_name}" if jobs and job_number is not None else run_name


@dataclass(frozen=True)
class SweepPace:
    """What a job knows of its sweep's pace when it starts, for the sweep's ETA: `job_s`, the
    seconds each job of the sweep that has ended took (its MLflow run's start to end: jobs that
    trained in this sweep; skipped and resumed jobs are not among them), `jobs_after` (the jobs
    numbered after this one) and `at_once` (how many of them run at once on this machine)."""

    job_s: Sequence[float]
    jobs_after: int
    at_once: int

    def eta(self, this_job_left_s: float | None) -> float | None:
        """Seconds until the sweep ends: this job's time left (`this_job_left_s`; None: the mean
        job's) plus the jobs after it at the mean job's pace, `at_once` at a time. None until a
        job has ended: there is nothing to estimate from."""
        if not self.job_s:
            return None
        mean = sum(self.job_s) / len(self.job_s)
        return (mean if this_job_left_s is None else this_job_left_s) + mean * self.jobs_after / self.at_once


class ConsoleFormatter(logging.Formatter):
    """The console handler's log format (conf/config.yaml, hydra.job_logging): `terminal_format`
    (and its `terminal_datefmt`) when stdout is a terminal, where a person reads the lines as they
    come and the date, logger and level are noise; `other_format` otherwise (a pipe, a file),
    where a line may be read days later."""

    def __init__(self, terminal_format: str, terminal_datefmt: str, other_format: str):
        on_terminal = sys.stdout.isatty()
        super().__init__(terminal_format if on_terminal else other_format, terminal_datefmt if on_terminal else None)


class EpochProgress:
    """One epoch's progress, told by train_epoch: start(steps), step(...) after every optimizer
    step, done() at its end. In place (`in_place`, a terminal): drawn from the first step, then
    every refresh_s. Otherwise: nothing until the epoch has run `after_s`, then a log line every
    `log_every_s`. `prefix` gives the line's label as it stands now (Console.prefix). done()
    clears the in-place line before the epoch's own line is logged."""

    def __init__(self, prefix: Callable[[], str], epoch: int, epochs: int, settings, in_place: bool,
                 stream: TextIO, on_step: Callable[[], None] | None = None):
        self.prefix, self.epoch, self.epochs, self.in_place, self.stream = prefix, epoch, epochs, in_place, stream
        self.on_step = on_step  # called after every step: the profiler's (src.profiling), if any
        self.after_s = 0.0 if in_place else settings.after_s
        self.every_s = settings.refresh_s if in_place else settings.log_every_s
        self.drawn = False
        self.steps = 0
        self.started = self.next_report = 0.0

    def start(self, steps: int) -> None:
        self.steps = steps
        self.started = time.perf_counter()
        self.next_report = self.started + self.after_s

    def step(self, done: int, samples: int, loss_sum: torch.Tensor, loss_samples: int) -> None:
        """After optimizer step `done` of the epoch, `samples` trained so far; the running loss
        is loss_sum / loss_samples (this process's share: read, a device sync, only when shown)."""
        if self.on_step is not None:
            self.on_step()
        now = time.perf_counter()
        if now < self.next_report:
            return
        self.next_report = now + self.every_s
        elapsed = max(now - self.started, 1e-9)
        text = (f"[{self.prefix()}] epoch {self.epoch + 1}/{self.epochs}: step {done}/{self.steps} "
                f"({100 * done / self.steps:.0f}%)  train_loss {float(loss_sum) / loss_samples:.4f}  "
                f"{samples / elapsed:,.0f} samples/s  epoch ETA {duration(elapsed * (self.steps - done) / done)}")
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
    after every training step (src.profiling's profiler); `pace`: its sweep's, for the sweep's
    ETA (None: not in a sweep, or no ETA to tell)."""

    def __init__(self, label: str, epochs: int, settings, parallel_jobs: int = 1, stream: TextIO | None = None,
                 on_step: Callable[[], None] | None = None, pace: SweepPace | None = None):
        self.label, self.epochs, self.settings, self.on_step, self.pace = label, epochs, settings, on_step, pace
        self.stream = stream or sys.stdout
        # in place only on a terminal that no other job of the sweep writes to at the same time
        self.in_place = parallel_jobs <= 1 and self.stream.isatty()
        self.ends_at: float | None = None  # perf_counter when this run should end, once an epoch has told

    def prefix(self) -> str:
        """The label, with the sweep's ETA once there is one: this run's time left (its last
        epoch's pace; before that, the mean job's) and the jobs after it."""
        eta = None
        if self.pace is not None:
            eta = self.pace.eta(None if self.ends_at is None else max(0.0, self.ends_at - time.perf_counter()))
        return self.label if eta is None else f"{self.label}, sweep ETA {duration(eta)}"

    def opened(self, run_id: str, url: str, ui_command: str | None, resumed_at: int | None = None) -> None:
        """The run's start line: its page (and, when given, the command that serves the UI); a
        resumed run's says so, by its id and its first epoch."""
        what = f"resuming MLflow run {run_id} from epoch {resumed_at + 1} of {self.epochs}:" if resumed_at is not None \
            else "MLflow run"
        log.info("[%s] %s %s%s", self.prefix(), what, url, f"  (serve the UI: {ui_command})" if ui_command else "")

    def epoch(self, epoch: int) -> EpochProgress:
        return EpochProgress(self.prefix, epoch, self.epochs, self.settings, self.in_place, self.stream, self.on_step)

    def epoch_done(self, epoch: int, numbers: str, samples_per_s: float, epoch_s: float) -> None:
        """The epoch's line: its numbers, the throughput, and the time left at this epoch's pace."""
        left_s = epoch_s * (self.epochs - epoch - 1)
        self.ends_at = time.perf_counter() + left_s
        log.info("[%s] epoch %d/%d  %s  %s samples/s  ETA %s", self.prefix(), epoch + 1, self.epochs, numbers,
                 f"{samples_per_s:,.0f}", duration(left_s))
