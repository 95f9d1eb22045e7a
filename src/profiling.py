"""trainer.profile_steps (conf/debug/profile.yaml): torch.profiler over a few training steps of a
run. Their trace is logged as the run's artifact profile/trace.json (open it in Perfetto,
ui.perfetto.dev, or chrome://tracing) with the top operators by self time as
profile/top_operators.txt, which the console prints too. The profiler is stepped from the
console's per-step hook (src.progress.EpochProgress), so the training loop has no profiling code."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

log = logging.getLogger(__name__)

PROFILE_FOLDER = "profile"  # the run's artifact folder
TRACE_FILE = "trace.json"
TOP_OPERATORS_FILE = "top_operators.txt"
TOP_OPERATORS = 15  # rows of the table
# Steps before the recorded ones: the first step is skipped (one-off allocations, lazy
# initialisation), the second runs under the profiler unrecorded (its own start-up cost).
WAIT_STEPS, WARMUP_STEPS = 1, 1


@contextmanager
def profiled(steps: int, run, label: str) -> Iterator[Callable[[], None] | None]:
    """A profiler of `steps` training steps after WAIT_STEPS + WARMUP_STEPS, logging to `run`
    (src.tracking.TrackedRun) once they are recorded, or when the block ends before; yields what
    to call after every step (None when `steps` is 0: no profiler). A block that raises logs no trace."""
    if not steps:
        yield None
        return
    from torch.profiler import ProfilerActivity, profile, schedule

    def recorded(profiler: profile) -> None:
        table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=TOP_OPERATORS)
        with tempfile.TemporaryDirectory() as folder:
            trace, top = Path(folder) / TRACE_FILE, Path(folder) / TOP_OPERATORS_FILE
            profiler.export_chrome_trace(str(trace))
            top.write_text(table)
            for path in (trace, top):
                run.log_artifact(path, PROFILE_FOLDER)
        log.info("[%s] profiled training steps %d to %d: the run's artifacts %s/%s (ui.perfetto.dev) and %s/%s\n%s",
                 label, WAIT_STEPS + WARMUP_STEPS + 1, WAIT_STEPS + WARMUP_STEPS + steps, PROFILE_FOLDER, TRACE_FILE,
                 PROFILE_FOLDER, TOP_OPERATORS_FILE, table)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    profiler = profile(activities=activities, on_trace_ready=recorded,
                       schedule=schedule(wait=WAIT_STEPS, warmup=WARMUP_STEPS, active=steps, repeat=1))
    profiler.start()
    try:
        yield profiler.step
    except BaseException:
        profiler.on_trace_ready = None  # the run failed: its trace is not what was asked for
        raise
    finally:
        profiler.stop()
