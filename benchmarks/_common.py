"""Shared by the benchmark scripts: the machine, timing, medians, tables, and the one adapter
through which every benchmark calls the project's training loop.

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


# --- the project's loop, through one adapter -------------------------------------------------

def project_train_epoch(model, optimizer, data, order, batch_size: int, last_batch: str = "keep"):
    """src.train.train_epoch as a benchmark calls it: (mean loss, updates, samples).

    The ONLY call site of train_epoch in benchmarks/: when its signature changes (micro-batches,
    an augmentation generator ...), this is the one line to adapt."""
    from src.train import train_epoch

    return train_epoch(model, optimizer, data, order, batch_size, last_batch)


# --- configs ---------------------------------------------------------------------------------

def compose(overrides: Sequence[str] = (), output_dir: str | Path | None = None):
    """The project's real composed config (conf/), data cached in the repo's data/ and, when
    given, everything written under output_dir."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    base = [f"paths.data_dir={REPO / 'data'}"]
    if output_dir is not None:
        base.append(f"paths.output_dir={output_dir}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=[*base, *overrides])


def build(cfg, device):
    """(data on device, model, optimizer, schedule) exactly as src.train.train builds them."""
    from hydra.utils import instantiate

    from src.train import build_optimizer, seed_everything

    seed_everything(cfg.trainer.seed)
    data = instantiate(cfg.dataset).to(device)
    model = instantiate(cfg.model, input_shape=data.input_shape, n_classes=data.n_classes).to(device)
    momentum = cfg.optimizer.get("momentum", 0.0)
    schedule = instantiate(cfg.schedule, n_train=data.n_train, epochs=cfg.trainer.epochs, momentum=momentum)
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), schedule(0).lr)
    return data, model, optimizer, schedule


def device_from(name: str):
    from src.train import pick_device

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


def interleaved(arms: dict[str, Callable[[], object]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each arm, `reps` times, the arms' order rotated every repetition (so
    none always runs first or last). `warmup` untimed rounds first."""
    names = list(arms)
    for _ in range(warmup):
        for name in names:
            arms[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        order = names[shift:] + names[:shift]
        if rep % 2:
            order.reverse()
        for name in order:
            times[name].append(timed(arms[name]))
    return times


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
    print(f"## {title}\n")
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
