"""Shared by the benchmark scripts: the machine, timing, medians, tables, and composing and
building a run as src.train does (build: src.build.build_run) and training it an epoch at a time as
the loop does (run_epoch: src.step.train_epoch).

Every number a benchmark reports is a ratio (or a rate) measured side by side in one process,
with the arms interleaved (the order alternates each repetition) and reduced to a median, so a
machine whose load changes while it runs shifts both arms alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/x.py` puts benchmarks/, not the repo, on the path
    sys.path.insert(0, str(REPO))

PYTHON = sys.executable


def temp_dir(prefix: str) -> str:
    """A temporary folder (MLflow stores, checkpoints) removed when the benchmark exits."""
    import atexit
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, True)
    return path


# --- configs ---------------------------------------------------------------------------------

def compose(overrides: Sequence[str] = (), output_dir: str | Path | None = None):
    """The project's real composed config (conf/), data cached in the repo's data/ and, when
    given, everything written under output_dir."""
    from src.config import compose as compose_config

    base = [f"paths.data_dir={REPO / 'data'}"]
    if output_dir is not None:
        base.append(f"paths.output_dir={output_dir}")
    return compose_config(*base, *overrides)


def build(cfg, device, data=None):
    """src.build.build_run: the data on `device` (or `data`, already there: synthetic images),
    model, schedule, optimizer and the settings of each step (cfg.trainer's), exactly as a run of
    cfg has them. Imported here, not at the top: torch loads only when a benchmark builds."""
    from src.build import build_run

    return build_run(cfg, device, data=data)


def run_epoch(run, order, batch_size: int, **arm):
    """src.step.train_epoch over `order` in batches of batch_size, as the loop calls it: with the
    run's batch stream (trainer.last_batch), its CPU generator for the augmentation and its step
    settings (micro-batches, precision). `run` is a src.build.RunParts (build); `arm` replaces
    any of its Learner fields for this call (model, optimizer, data, noise ...: an arm's own
    copy). Returns what train_epoch returns."""
    from dataclasses import replace

    from src.step import train_epoch

    return train_epoch(replace(run, **arm), order, batch_size)


def device_from(name: str):
    from src.devices import pick_device

    return pick_device(name)


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- timing ----------------------------------------------------------------------------------

def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:9]]
    except OSError:
        return 0.0
    return (sum(values) - values[3] - values[4]) / _CLOCK_TICKS  # less idle and iowait


def _descendants_cpu_seconds() -> float:
    """CPU seconds of this process's live descendants (e.g. DataLoader workers)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry)] = fields
            children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0.0, list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        total += (int(stats[pid][11]) + int(stats[pid][12])) / _CLOCK_TICKS  # utime + stime
        todo.extend(children.get(pid, []))
    return total


def _own_cpu_seconds() -> float:
    t = os.times()  # this process's threads, and its children once waited for
    return t.user + t.system + t.children_user + t.children_system + _descendants_cpu_seconds()


class Contention:
    """`with Contention() as c: ...`; then c.others = the CPU other processes used during the
    block, in cores (0.5 = half of one core on average): the machine's busy time less this
    process tree's. A shared machine's load is the largest source of timing noise here."""

    def __enter__(self):
        self._busy, self._own, self._start = _machine_busy_seconds(), _own_cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self._start
        used = (_machine_busy_seconds() - self._busy) - (_own_cpu_seconds() - self._own)
        self.others = max(0.0, used) / max(wall, 1e-9)
        return False


# A round with other processes using more than this (in cores) is repeated when rounds remain.
QUIET = 0.25


class Rounds(dict):
    """{arm: [seconds per kept round]}, plus how the rounds went."""

    run: int = 0
    kept: list[int]  # indices of the kept rounds (0-based, warm-up rounds not counted)
    others: list[float]  # CPU of other processes (cores) in each kept round


ROUNDS_HEADER = "rounds kept/run, others' cores"
ROUNDS_NOTE = (f"A round (every arm once) during which other processes used more than {QUIET} cores is "
               "repeated (up to 3 more rounds; fewer for the longer benchmarks); the least disturbed rounds are kept "
               f"(column '{ROUNDS_HEADER}': the median CPU other processes used in the kept rounds).")


def rounds_cell(rounds: Rounds) -> str:
    return f"{len(rounds.kept)}/{rounds.run}, {median(rounds.others):.2f}"


def interleaved(arms: dict[str, Callable[[], object]], reps: int, warmup: int = 1,
                max_rounds: int | None = None) -> Rounds:
    """Seconds per call of each arm, `reps` rounds kept, the arms' order rotated every round (so
    none always runs first or last). `warmup` untimed rounds first.

    Contention-aware: a round during which other processes used more than QUIET cores is
    repeated, up to max_rounds (default reps + 3) in all; the `reps` least disturbed rounds are
    kept. Every round is a full set of arms, so kept ratios are always pairs measured together."""
    names = list(arms)
    max_rounds = max(reps, max_rounds or reps + 3)
    for _ in range(warmup):
        for name in names:
            arms[name]()
    rounds: list[tuple[float, dict[str, float]]] = []
    while len(rounds) < max_rounds:
        i = len(rounds)
        shift = i % len(names)
        order = names[shift:] + names[:shift]
        if i % 2:
            order.reverse()
        seconds = {}
        with Contention() as contention:
            for name in order:
                seconds[name] = timed(arms[name])
        rounds.append((contention.others, seconds))
        if len(rounds) >= reps and sum(others <= QUIET for others, _ in rounds) >= reps:
            break
    kept = sorted(range(len(rounds)), key=lambda i: rounds[i][0])[:reps]
    kept.sort()  # keep the time order
    result = Rounds({name: [rounds[i][1][name] for i in kept] for name in names})
    result.run = len(rounds)
    result.kept = kept
    result.others = [rounds[i][0] for i in kept]
    return result


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def median_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median of the per-repetition ratios (each pair measured back to back)."""
    return statistics.median(a / b for a, b in zip(num, den))


# --- the machine and tables ------------------------------------------------------------------

def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 2**20:.0f} GiB"
    except OSError:
        pass
    return "?"


def describe_machine(device=None) -> str:
    """One line: CPU, cores, memory, OS, Python, torch (threads), the accelerator if used."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [
        f"{_cpu_model()}, {cores} cores, {_memory_gib()}",
        f"{platform.system()} {platform.release()}",
        f"Python {platform.python_version()}",
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
    ]
    if device is not None and getattr(device, "type", "cpu") == "cuda":
        parts.append(f"GPU {torch.cuda.get_device_name(device)}")
    else:
        parts.append("device cpu")
    return "; ".join(parts)


def header(title: str, device=None) -> None:
    print(f"### {title}\n")
    print(f"Machine: {describe_machine(device)}\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


class Load:
    """`with Load(): print(table)` prints the load average before and after the block."""

    def __enter__(self):
        self.before = loadavg()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        print(f"\nLoad average (1/5/15 min) before {self.before}, after {loadavg()}; "
              f"{time.perf_counter() - self.start:.0f} s\n")
        return False


def verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1 ...")
    p.add_argument("--reps", type=int, default=5, help="repetitions per measurement (medians; at least 5)")
    return p


def fmt(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"
