"""Scaling a sweep out with existing launchers: the SLURM launcher config through submitit's
own checks, and real joblib and submitit sweeps into one store (one GPU per job by rule)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.cli import only_sweep_folder, run_cli
from helpers.configs import ROOT, TINY, multirun_job_config
from helpers.store import client_for, history, runs_in, sweep_runs_in
from omegaconf import OmegaConf

from src import schema
from src.devices import device_for_job, parallel_jobs

# ---------------------------------------------------------------- the SLURM launcher config


def test_slurm_config_makes_a_valid_sbatch_script(tmp_path, monkeypatch):
    """conf/hydra/launcher/slurm.yaml through submitit's own parameter checks (a misspelt key
    raises) to the sbatch script, the way Hydra's submitit launcher builds its executor."""
    import submitit
    from hydra.utils import instantiate
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\n")  # submitit refuses to build without srun
    (fake_bin / "srun").chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")

    cfg = multirun_job_config("hydra/launcher=slurm", "hydra.launcher.partition=gpu", f"paths.output_dir={tmp_path}")
    launcher = instantiate(cfg.hydra.launcher)
    params = dict(launcher.params)  # what SlurmLauncher.launch hands to submitit, split the same way
    executor = submitit.AutoExecutor(
        folder=tmp_path / "submitit", cluster="slurm", slurm_max_num_timeout=params.pop("max_num_timeout")
    )
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    params.pop("submitit_folder")
    executor.update_parameters(**{k if k in shared else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -m submitit.core._submit x", "uid")
    for line in [
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --time=240",
        "#SBATCH --signal=USR2@120",
        "#SBATCH --requeue",
        "export PYTHONUNBUFFERED=1",
    ]:
        assert line in script.splitlines(), line
    assert executor._executor.max_num_timeout == 3


# ---------------------------------------------------------------- real parallel sweeps


def finished_sweep(launcher: list[str], seeds: list[int], output_dir: Path, data_dir: Path, blank_store: Path):
    """Run a tiny sweep over `seeds` with `launcher`'s overrides into a copy of blank_store;
    check that every job ran and ended FINISHED in the one store, all with the sweep folder's
    name as sweep_id. Returns (the CompletedProcess, the runs, the sweep folder)."""
    shutil.copy(blank_store, output_dir / "mlflow.db")
    result = run_cli(
        "-m", *launcher, f"trainer.seed={','.join(map(str, seeds))}", *TINY,
        output_dir=output_dir, data_dir=data_dir, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    n = len(seeds)
    assert result.stderr.strip().splitlines()[-1].endswith(f"0 of {n} jobs failed ({n} finished)")
    runs = runs_in(output_dir)
    assert sorted(int(r.data.tags[schema.SEED_TAG]) for r in runs) == seeds
    assert [r.info.status for r in runs] == ["FINISHED"] * n
    sweep = only_sweep_folder(output_dir)
    assert {r.data.tags[schema.SWEEP_TAG] for r in runs} == {sweep.name}  # the same in every worker
    # one parent run, made in the launching process, with every worker's run as its child, and
    # the context tags it resolved there (a submitit worker's own sys.argv names submitit)
    [parent] = sweep_runs_in(output_dir)
    assert parent.info.status == "FINISHED" and parent.data.tags[schema.SWEEP_TAG] == sweep.name
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert {r.data.tags["mlflow.source.name"] for r in runs} == {str(ROOT / "src" / "run.py")}
    assert sorted(r.info.run_name for r in runs) == [f"decay_lr seed={seed}" for seed in seeds]
    # the launcher's line per job (logged in the launching process) shows the user's overrides only
    assert result.stdout.count(" : trainer.seed=") == n and "tracking.parent_run_id" not in result.stdout
    return result, runs, sweep


@pytest.mark.slow  # ~14 s on 2 idle cores: kept out of the default suite's 5 minutes
def test_joblib_sweep_of_four_jobs_two_at_a_time(tmp_path, data_dir, blank_store):
    result, runs, sweep = finished_sweep(
        ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], [0, 1, 2, 3], tmp_path, data_dir, blank_store
    )
    assert "Joblib.Parallel(n_jobs=2" in result.stdout  # really joblib, really 2 workers
    # the last job starts once a worker is free, so a job has ended: the sweep's ETA, 2 at a time
    assert re.search(r"\[job 4/4 decay_lr seed=3, sweep ETA \d+s\] MLflow run http", result.stdout)
    client = client_for(tmp_path)
    for run in runs:
        assert [s for s, _ in history(client, run.info.run_id, schema.VAL_LOSS)] == [0, 1, 2]

    # What each worker's HydraConfig held (Hydra saves it per job): the rule on those values
    # gives the 4 jobs GPUs 0, 1, 0, 1 on a two-GPU machine.
    jobs = [OmegaConf.load(sweep / str(k) / ".hydra" / "hydra.yaml").hydra for k in range(4)]
    assert [job.job.num for job in jobs] == [0, 1, 2, 3]
    n_parallel = [parallel_jobs(OmegaConf.to_container(job.launcher), cores=2) for job in jobs]
    assert n_parallel == [2, 2, 2, 2]
    assert [device_for_job("auto", j.job.num, 2, n) for j, n in zip(jobs, n_parallel)] == [
        "cuda:0", "cuda:1", "cuda:0", "cuda:1"
    ]


@pytest.mark.slow  # ~20 s: two job processes, each importing torch and mlflow
def test_submitit_local_sweep_of_two_jobs(tmp_path, data_dir, blank_store):
    _, _, sweep = finished_sweep(
        ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"], [0, 1], tmp_path, data_dir, blank_store
    )
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2  # really submitit


@pytest.mark.slow
def test_submitit_requeue_resumes_the_run_from_its_checkpoint(tmp_path, data_dir):
    """SLURM's time-limit path, run locally: USR2 to a running job -> submitit calls the Hydra
    launcher's checkpoint() and requeues the same job -> the run resumes from its epoch
    checkpoint into the same MLflow run, and ends FINISHED with every epoch logged once."""
    epochs = 30
    command = [
        sys.executable, "-m", "src.run", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
        "dataset=digits", f"trainer.epochs={epochs}", "schedule.milestones=[10,20]", "trainer.threads=1",
        f"paths.output_dir={tmp_path}", f"paths.data_dir={data_dir}",
    ]
    sweep = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "checkpoints").glob("*.pt")):  # epoch 1 is done
            assert sweep.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        [controller] = [p for p in only_sweep_folder(tmp_path).glob(".submitit/*") if p.name.isdigit()]
        children = Path(f"/proc/{controller.name}/task/{controller.name}/children").read_text().split()
        [job_pid] = children  # the one task: python -m submitit.core._submit
        os.kill(int(job_pid), signal.SIGUSR2)
        output, _ = sweep.communicate(timeout=240)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, output[-3000:]
    log = "\n".join(p.read_text() for p in only_sweep_folder(tmp_path).glob(".submitit/*/*_log.out"))
    assert "Calling checkpoint method" in log and "Requeued job" in log, log[-3000:]
    assert "resuming MLflow run" in log
    [run] = runs_in(tmp_path)
    assert run.info.status == "FINISHED"
    assert schema.ERROR_TAG not in run.data.tags  # the interrupted attempt's error tag is gone
    steps = [s for s, _ in history(client_for(tmp_path), run.info.run_id, schema.VAL_LOSS)]
    assert sorted(steps) == list(range(epochs))  # every epoch logged once
    # as if never stopped: under last_batch=carry, floor(30 epochs x 1,437 samples / B 64) steps
    assert run.data.metrics[schema.TOTAL_PARAM_UPDATES] == epochs * 1437 // 64 == 673
