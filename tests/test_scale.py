"""Scaling out with existing engines: joblib and submitit sweeps, one GPU per job, the SLURM
launcher config, a remote `mlflow server`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import CONF, ROOT, TINY, client_for, run_cli
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict

from src.devices import (
    ALL_AT_ONCE,
    available_cores,
    device_for_job,
    job_device,
    job_threads,
    parallel_jobs,
    threads_per_job,
)
from test_train import history


def runs_in_store(output_dir: Path):
    client = client_for(output_dir)
    experiment = client.get_experiment_by_name("batch-size-study")
    return client.search_runs([experiment.experiment_id])


def only_sweep_folder(output_dir: Path) -> Path:
    [folder] = (output_dir / "multirun").iterdir()
    return folder


def hydra_cfg(*overrides: str):
    """The composed config with its hydra node, as a job of a multirun sees it."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
    return cfg


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
    launcher = lambda *o: OmegaConf.to_container(hydra_cfg(*o).hydra.launcher)  # noqa: E731
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
        cfg = hydra_cfg(*overrides)
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

    cfg = hydra_cfg("hydra/launcher=slurm", "hydra.launcher.partition=gpu", f"paths.output_dir={tmp_path}")
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


@pytest.fixture(scope="session")
def blank_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables and no experiment: creating the tables takes
    seconds (MLflow's migrations), copying the file milliseconds."""
    db = tmp_path_factory.mktemp("blank_store") / "mlflow.db"
    client_for(db.parent).search_experiments()  # creates the tables
    return db


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
    runs = runs_in_store(output_dir)
    assert sorted(int(r.data.tags["seed"]) for r in runs) == seeds
    assert [r.info.status for r in runs] == ["FINISHED"] * n
    sweep = only_sweep_folder(output_dir)
    assert {r.data.tags["sweep_id"] for r in runs} == {sweep.name}  # the same in every worker
    return result, runs, sweep


def test_joblib_sweep_of_four_jobs_two_at_a_time(tmp_path, data_dir, blank_store):
    result, runs, sweep = finished_sweep(
        ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], [0, 1, 2, 3], tmp_path, data_dir, blank_store
    )
    assert "Joblib.Parallel(n_jobs=2" in result.stdout  # really joblib, really 2 workers
    client = client_for(tmp_path)
    for run in runs:
        assert [s for s, _ in history(client, run.info.run_id, "val_loss")] == [0, 1, 2]

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
    [run] = runs_in_store(tmp_path)
    assert run.info.status == "FINISHED"
    assert "error" not in run.data.tags  # the interrupted attempt's error tag is gone
    steps = [s for s, _ in history(client_for(tmp_path), run.info.run_id, "val_loss")]
    assert sorted(steps) == list(range(epochs))  # every epoch logged once
    # as if never stopped: under last_batch=carry, floor(30 epochs x 1,437 samples / B 64) steps
    assert run.data.metrics["total_param_updates"] == epochs * 1437 // 64 == 673


# ---------------------------------------------------------------- a remote MLflow server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rest(base: str, path: str, body: dict | None = None) -> dict:
    """GET (body None) or POST JSON to the server's REST API."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}{path}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, proxied artifacts), stopped by its
    PID when the module's tests are done."""
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    log = open(root / "server.log", "w")
    server = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{root}/server.db",
            "--artifacts-destination", str(root / "artifacts"), "--workers", "1",
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # ~20 s here
        while True:
            assert server.poll() is None, (root / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        yield {"uri": base, "root": root}
    finally:
        os.kill(server.pid, signal.SIGTERM)  # the server stops its uvicorn and job-runner children
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)  # its session: the server and its children
            server.wait(timeout=10)
        log.close()
    with pytest.raises(OSError):  # nothing listens any more
        urllib.request.urlopen(f"{base}/health", timeout=2)


@pytest.fixture(scope="module")
def server_sweep(mlflow_server, tmp_path_factory, data_dir):
    """A tiny joblib sweep logged into the server: two processes writing to one store."""
    output_dir = tmp_path_factory.mktemp("client")
    result = run_cli(
        "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "schedule=decay_lr,increase_bs", *TINY,
        f"tracking.uri={mlflow_server['uri']}", output_dir=output_dir, data_dir=data_dir, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {"output_dir": output_dir, "sweep_id": only_sweep_folder(output_dir).name}


@pytest.mark.slow
def test_server_receives_a_sweep_read_back_over_rest(mlflow_server, server_sweep):
    base = mlflow_server["uri"]
    experiment = rest(base, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=batch-size-study")["experiment"]
    found = rest(base, "/api/2.0/mlflow/runs/search", {
        "experiment_ids": [experiment["experiment_id"]],
        "filter": f"tags.sweep_id = '{server_sweep['sweep_id']}'",
    })
    runs = found["runs"]
    tags = [{t["key"]: t["value"] for t in run["data"]["tags"]} for run in runs]
    assert sorted(t["schedule"] for t in tags) == ["decay_lr", "increase_bs"]
    assert [run["info"]["status"] for run in runs] == ["FINISHED", "FINISHED"]
    for run in runs:
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        assert {"final_val_acc", "total_param_updates", "val_loss"} <= metrics.keys()
        history_ = rest(base, f"/api/2.0/mlflow/metrics/get-history?run_id={run['info']['run_id']}&metric_key=val_loss")
        assert sorted(m["step"] for m in history_["metrics"]) == [0, 1, 2]
    assert not (server_sweep["output_dir"] / "mlflow.db").exists()  # nothing went to a local store


@pytest.mark.slow
def test_server_keeps_the_artifacts(mlflow_server, server_sweep):
    """With a server, a run's artifacts (config.yaml) go through the server's artifact proxy to
    its --artifacts-destination, so every machine's runs keep them in one place."""
    base = mlflow_server["uri"]
    experiment = rest(base, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=batch-size-study")["experiment"]
    assert experiment["artifact_location"].startswith("mlflow-artifacts:")
    stored = list((mlflow_server["root"] / "artifacts").rglob("config.yaml"))
    assert len(stored) == 2
    assert not (server_sweep["output_dir"] / "mlartifacts").exists()
