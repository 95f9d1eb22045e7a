"""Where a job runs (src/devices.py): the one-GPU-per-job rule, CPU threads per job, how many
jobs each launcher runs at once, read from the real launcher configs and the running job."""

from __future__ import annotations

import pytest
import torch
from helpers.configs import multirun_job_config
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from src.devices import (
    ALL_AT_ONCE,
    available_cores,
    device_for_job,
    job_device,
    job_threads,
    parallel_jobs,
    pick_device,
    threads_per_job,
)
from src.errors import ConfigError
from src.distributed import World

# ---------------------------------------------------------------- one GPU per job (pure rule)


@pytest.mark.parametrize(
    "requested, job, n_devices, n_parallel, expected",
    [
        # no GPU: CPU for auto, whatever the sweep; an explicit request stands
        ("auto", None, 0, 1, "cpu"),
        ("auto", 3, 0, 4, "cpu"),
        ("cuda", 3, 0, 4, "cuda"),
        ("cpu", 1, 8, 8, "cpu"),
        ("mps", None, 0, 1, "mps"),
        # one GPU (a laptop, or a SLURM job whose CUDA_VISIBLE_DEVICES is its one GPU): cuda:0
        ("auto", None, 1, 1, "cuda:0"),
        ("auto", 5, 1, 4, "cuda:0"),
        ("cuda", 7, 1, 256, "cuda:0"),
        # a single run and a sequential sweep use the first GPU
        ("auto", None, 8, 1, "cuda:0"),
        ("auto", 5, 8, 1, "cuda:0"),
        ("auto", None, 8, 8, "cuda:0"),
        # an explicit cuda:N is respected, even in a parallel sweep
        ("cuda:3", 0, 8, 8, "cuda:3"),
        ("cuda:1", None, 2, 1, "cuda:1"),
        # parallel sweeps: job k -> cuda:(k mod n_devices)
        ("auto", 1, 2, 2, "cuda:1"),
        ("auto", 2, 2, 2, "cuda:0"),
        ("cuda", 3, 2, 4, "cuda:1"),
        ("auto", 7, 8, 8, "cuda:7"),
        ("auto", 9, 8, 2, "cuda:1"),
    ],
)
def test_device_for_job(requested, job, n_devices, n_parallel, expected):
    assert device_for_job(requested, job, n_devices, n_parallel) == expected


@pytest.mark.parametrize("n_devices", [0, 1, 2, 8])
@pytest.mark.parametrize("n_jobs", [1, 2, 4, 8, 12])
def test_jobs_started_together_never_share_a_gpu_they_need_not(n_devices, n_jobs):
    """A parallel sweep of n_jobs jobs, n_jobs at a time: with at least as many GPUs as jobs,
    every job has its own GPU; with fewer, the jobs are spread evenly over all of them."""
    devices = [device_for_job("auto", k, n_devices, n_parallel=n_jobs) for k in range(n_jobs)]
    if n_devices == 0:
        assert devices == ["cpu"] * n_jobs
        return
    if n_jobs == 1:
        assert devices == ["cuda:0"]
        return
    assert set(devices) == {f"cuda:{i}" for i in range(min(n_jobs, n_devices))}
    per_gpu = [devices.count(d) for d in set(devices)]
    assert max(per_gpu) - min(per_gpu) <= 1
    if n_jobs <= n_devices:
        assert len(set(devices)) == n_jobs


@pytest.mark.parametrize(
    "cores, n_parallel, threads",
    [(2, 1, 2), (2, 2, 1), (2, 4, 1), (16, 4, 4), (7, 2, 3), (1, 1, 1), (8, 0, 8)],
)
def test_threads_per_job(cores, n_parallel, threads):
    assert threads_per_job(cores, n_parallel) == threads


def test_parallel_jobs_reads_the_real_launcher_configs():
    cores = 6
    launcher = lambda *o: OmegaConf.to_container(multirun_job_config(*o).hydra.launcher)  # noqa: E731
    assert parallel_jobs(launcher(), cores) == 1  # basic: one after the other
    assert parallel_jobs(launcher("hydra/launcher=joblib", "hydra.launcher.n_jobs=2"), cores) == 2
    assert parallel_jobs(launcher("hydra/launcher=joblib"), cores) == 6  # n_jobs -1: every core
    assert parallel_jobs(launcher("hydra/launcher=joblib", "hydra.launcher.n_jobs=-2"), cores) == 5
    assert parallel_jobs(launcher("hydra/launcher=submitit_slurm"), cores) == 1  # own allocation
    assert parallel_jobs(launcher("hydra/launcher=slurm"), cores) == 1
    assert parallel_jobs(launcher("hydra/launcher=submitit_local"), cores) == ALL_AT_ONCE


@pytest.fixture
def as_hydra_job():
    """Make HydraConfig.get() answer like a running job; restored afterwards."""
    instance = HydraConfig.instance()
    saved = instance.cfg

    def enter(*overrides: str, job_num: int = 0):
        cfg = multirun_job_config(*overrides)
        with open_dict(cfg):
            cfg.hydra.job.num = job_num
        instance.set_config(cfg)

    yield enter
    instance.cfg = saved


def test_job_threads_and_device_read_the_running_job(as_hydra_job):
    assert job_threads(None) is None  # outside Hydra: torch's default
    assert job_threads(3) == 3
    as_hydra_job("hydra/launcher=joblib", "hydra.launcher.n_jobs=2", job_num=1)
    assert job_threads(None) == threads_per_job(available_cores(), 2)
    assert job_threads(5) == 5  # trainer.threads set: it wins
    assert job_device("auto") == "cpu"  # no GPU here
    assert job_device("cuda:1") == "cuda:1"
    as_hydra_job("hydra/launcher=slurm", job_num=4)
    assert job_threads(None) == 8  # the config's cpus_per_task
    as_hydra_job(job_num=2)  # basic launcher, sequential
    assert job_threads(None) is None


def test_pick_device_takes_the_ranks_gpu_only_under_ddp():
    assert pick_device("cpu") == torch.device("cpu")
    if torch.cuda.device_count() > 3:
        assert pick_device("cuda:3", World(1, 2, 1)) == torch.device("cuda:3")  # the user chose
    else:  # the user chose, a GPU this machine does not have: one line, not the rank's GPU
        with pytest.raises(ConfigError, match=r"^trainer.device=cuda:3: "):
            pick_device("cuda:3", World(1, 2, 1))
    # no GPU here: auto is the CPU for a single process and for every rank alike
    assert pick_device("auto") == pick_device("auto", World(1, 2, 1)) == torch.device("cpu")
