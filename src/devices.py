"""Where a job runs: which device, how many CPU threads. Pure rules, plus thin readers.

The rules are pure functions of numbers (tested on given device and core counts, no GPU
needed); `job_device` and `job_threads` read those numbers from the running Hydra job and
the machine, and `pick_device` adds the rule for the ranks of a DDP run: what src/train.py calls.

How many jobs of a sweep run at once on this machine (`parallel_jobs`), by launcher:
- basic (Hydra's default): one after the other -> 1.
- joblib: `hydra.launcher.n_jobs` (-1 = every core, -2 = all but one ..., as joblib counts).
- submitit_slurm: each job is its own allocation (its own CPUs, its own GPUs) -> 1.
- submitit_local: every job at once, how many is not known inside a job -> ALL_AT_ONCE
  (its jobs' threads are left to torch unless cpus_per_task is set).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from src.distributed import World

ALL_AT_ONCE = 1 << 30  # parallel_jobs for a launcher that starts every job of a sweep at once


def device_for_job(requested: str, job_number: int | None, n_devices: int, n_parallel: int) -> str:
    """The device for one job: the one-GPU-per-job rule.

    - An explicit device is respected as given: `cpu`, `mps`, `cuda:N`.
    - `auto` (and `cuda`, "a GPU") with `n_devices` visible CUDA devices:
      - 0 devices: `cpu` for auto; `cuda` stays `cuda` (pick_device then says there is none).
      - a single run (`job_number` None) or a sweep whose jobs run one at a time
        (`n_parallel` <= 1): `cuda:0`, the first visible GPU.
      - the jobs of a parallel sweep: job k takes `cuda:(k mod n_devices)`, so n_parallel <=
        n_devices jobs started together each get their own GPU, never all cuda:0.
    - A job that sees exactly one GPU (SLURM or submitit set CUDA_VISIBLE_DEVICES to its
      allocation) therefore uses `cuda:0`, which is that GPU.

    `n_devices` counts the devices the job can see (torch.cuda.device_count() honours
    CUDA_VISIBLE_DEVICES). The rule is static: with jobs of very different lengths, a job may
    start while job k - n_devices still runs and share its GPU (slower, never wrong).
    """
    if requested not in ("auto", "cuda"):
        return requested  # cpu, mps, cuda:N: the user chose
    if n_devices <= 0:
        return "cpu" if requested == "auto" else "cuda"
    if job_number is None or n_parallel <= 1:
        return "cuda:0"
    return f"cuda:{job_number % n_devices}"


def threads_per_job(cores: int, n_parallel: int) -> int:
    """CPU threads for each of `n_parallel` jobs sharing `cores` cores: cores // n_parallel,
    at least 1, so the jobs share the cores instead of fighting over them."""
    return max(1, cores // max(1, n_parallel))


def parallel_jobs(launcher: Mapping[str, Any] | None, cores: int) -> int:
    """How many jobs of a sweep the launcher config `launcher` (hydra.launcher) runs at once on
    one machine with `cores` cores; see the module docstring."""
    target = str((launcher or {}).get("_target_", ""))
    if "JoblibLauncher" in target:
        n_jobs = launcher.get("n_jobs", -1)
        if n_jobs is None:
            return 1
        n_jobs = int(n_jobs)
        return max(1, n_jobs if n_jobs > 0 else cores + 1 + n_jobs)  # joblib: -1 = all cores
    if target.endswith("submitit_launcher.LocalLauncher"):
        return ALL_AT_ONCE
    return 1  # basic launcher (sequential), submitit_slurm (one allocation per job)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity: taskset, cgroups, SLURM's allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _hydra_job() -> tuple[int | None, Mapping[str, Any] | None]:
    """(job number, launcher config) of the running Hydra multirun job; (None, None) for a
    single run or outside Hydra (tests calling train(cfg) directly)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None, None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None, None
    return hydra_cfg.job.num, hydra_cfg.launcher


def this_job() -> tuple[int | None, int]:
    """(the running job's number in its sweep, None for a single run; how many jobs of its sweep
    run at once on this machine, 1 for a single run)."""
    number, launcher = _hydra_job()
    return number, parallel_jobs(launcher, available_cores())


def jobs_in_turn() -> int | None:
    """How many jobs of the running sweep run at once, when its launcher starts them in their
    order on this machine (basic: 1; joblib: n_jobs), as a sweep's ETA needs; None for a single
    run and under submitit, whose jobs start as the cluster (or, locally, all at once) lets them."""
    number, launcher = _hydra_job()
    if number is None or "submitit" in str((launcher or {}).get("_target_", "")):
        return None
    return parallel_jobs(launcher, available_cores())


def job_device(requested: str) -> str:
    """device_for_job for the running job: its Hydra job number, the CUDA devices it sees,
    how many jobs its launcher runs at once."""
    if requested not in ("auto", "cuda"):
        return requested
    import torch

    number, parallel = this_job()
    return device_for_job(requested, number, torch.cuda.device_count(), parallel)


def pick_device(requested: str, world: World | None = None) -> torch.device:
    """The device of this process: under DDP (a world of several ranks) with `auto` or `cuda`,
    the rank's local GPU; otherwise job_device's one-GPU-per-job rule (CPU when there is no GPU).
    A device this machine does not have is a ConfigError naming trainer.device (torch would
    fail later, at the first tensor moved there, with a trace)."""
    import torch

    if requested in ("auto", "cuda") and world is not None and world.size > 1 and torch.cuda.is_available():
        device = torch.device("cuda", world.local_rank)
    else:
        device = torch.device(job_device(requested))
    _check_present(device, requested)
    return device


def _check_present(device: torch.device, requested: str) -> None:
    import torch

    from src.errors import ConfigError

    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count and (device.index is None or device.index < count):
            return
        if count:
            have = f"{count} CUDA device{'s' if count > 1 else ''} visible here (cuda:0..cuda:{count - 1})"
        elif torch.version.cuda is None:
            have = f"no CUDA here: this torch ({torch.__version__}) is built without it"
        else:
            have = "no CUDA device visible here (CUDA_VISIBLE_DEVICES, the driver)"
        raise ConfigError(f"trainer.device={requested}: {have}; use trainer.device=auto (a GPU when present) or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"trainer.device={requested}: MPS is not available here; use trainer.device=auto or cpu")


def job_threads(configured: int | None) -> int | None:
    """torch intra-op threads for the running job: `trainer.threads` when set; else, in a
    joblib sweep, threads_per_job(cores, n_jobs); in a submitit job with cpus_per_task, that;
    else None (torch's default: every core)."""
    if configured:
        return configured
    _, launcher = _hydra_job()
    if launcher is None:
        return None
    target = str(launcher.get("_target_", ""))
    cores = available_cores()
    if "JoblibLauncher" in target:
        return threads_per_job(cores, parallel_jobs(launcher, cores))
    if "submitit_launcher" in target and launcher.get("cpus_per_task"):
        return int(launcher["cpus_per_task"])
    return None
