"""Sweeps that lose nothing: failure isolation, resume after SIGKILL, bad input, checkpoints."""

import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, TINY, client_for, run_cli

from src import checkpoint
from src.tracking import config_hash
from src.train import train
from test_train import PER_EPOCH, history


def all_runs(output_dir):
    if not (output_dir / "mlflow.db").exists():
        return []
    client = client_for(output_dir)
    experiment = client.get_experiment_by_name("batch-size-study")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def test_a_diverging_job_fails_alone(tmp_path, data_dir):
    result = run_cli("-m", "schedule.lr=0.05,1e6,0.1", *TINY, output_dir=tmp_path, data_dir=data_dir)
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert "1 of 3 jobs failed" in last_line, result.stderr[-2000:]
    runs = all_runs(tmp_path)
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED", "FINISHED"]
    [failed] = [r for r in runs if r.info.status == "FAILED"]
    assert failed.data.params["schedule.lr"] == "1000000.0"
    assert failed.data.tags["error"].startswith("Diverged: loss is nan")


# (override, key the message must name). TINY runs 3 epochs on 1,437 training samples.
BAD_INPUTS = [
    ("schedule=foo", "schedule=foo"),
    ("trainer.epoch=5", "trainer.epoch"),
    ("+trainer.epoch=5", "trainer.epoch"),
    ("+model.hiddn=[4]", "model.hiddn"),
    ("trainer.epochs=abc", "trainer.epochs"),
    ("schedule.lr=fast", "schedule.lr"),
    ("trainer.epochs=0", "trainer.epochs"),
    ("schedule.factor=1", "schedule.factor"),
    ("schedule.factor=0.5", "schedule.factor"),
    ("schedule.milestones=[2,1]", "schedule.milestones"),
    ("schedule.milestones=[1,5]", "schedule.milestones"),
    ("schedule.milestones=[0.5,2]", "schedule.milestones"),
    ("schedule.batch_size=5000", "schedule.batch_size"),
    ("schedule.lr=0", "schedule.lr"),
    ("schedule.lr=-0.1", "schedule.lr"),
    ("optimizer.momentum=1.0", "optimizer.momentum"),
    ("optimizer.momentum=-0.1", "optimizer.momentum"),
    ("trainer.last_batch=half", "trainer.last_batch"),
    ("model.init=he", "model.init"),
    ("trainer.device=tpu", "trainer.device"),
    ("trainer.epochs=[1", "trainer.epochs"),
    ("~optimizer.lr_scale", "optimizer.lr_scale"),
]


@pytest.fixture(scope="module")
def bad_input_results(tmp_path_factory, data_dir):
    """Every bad input run as its own `python -m src.run`, four at a time (each takes ~1 s)."""
    results, running = {}, []
    for number, (override, _) in enumerate(BAD_INPUTS):
        output_dir = tmp_path_factory.mktemp(f"bad{number}")
        command = [sys.executable, "-m", "src.run", *TINY, override,
                   f"paths.output_dir={output_dir}", f"paths.data_dir={data_dir}"]
        running.append((override, output_dir, subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        if len(running) == 4 or number == len(BAD_INPUTS) - 1:
            for name, out, process in running:
                _, stderr = process.communicate(timeout=120)
                results[name] = (process.returncode, stderr, out)
            running = []
    return results


@pytest.mark.parametrize("override,key", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_fails_fast_with_one_line(bad_input_results, override, key):
    returncode, stderr, output_dir = bad_input_results[override]
    assert returncode == 2
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and key in errors[0], stderr[-2000:]
    assert "Traceback" not in stderr
    assert all_runs(output_dir) == []


def test_a_bad_job_stops_a_sweep_before_any_job_starts(tmp_path, data_dir):
    result = run_cli("-m", "schedule.factor=2,1", *TINY, output_dir=tmp_path, data_dir=data_dir)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: job 1 (schedule.factor=1")
    assert all_runs(tmp_path) == []


def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, data_dir):
    # long enough to kill mid-way: 16 epochs at B = 16 on digits, dropout on (the RNG must resume)
    args = ["dataset=digits", "trainer.epochs=16", "schedule.batch_size=16", "schedule=increase_bs",
            "schedule.milestones=[4,8,12]", "schedule.factor=2", "trainer.threads=1"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    command = [sys.executable, "-m", "src.run", *args, f"paths.output_dir={killed}", f"paths.data_dir={data_dir}"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = killed / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not (checkpoints.exists() and any(checkpoints.glob("*.pt.prev"))):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    [interrupted] = all_runs(killed)
    assert interrupted.info.status == "RUNNING"  # SIGKILL: nothing could close it

    # The checkpoints copied next to another store: its run is not there, so start over.
    moved = tmp_path / "moved"
    shutil.copytree(checkpoints, moved / "checkpoints")
    elsewhere = run_cli(*args, output_dir=moved, data_dir=data_dir)
    assert elsewhere.returncode == 0, elsewhere.stderr[-2000:]
    assert "starting over" in elsewhere.stdout and "resuming" not in elsewhere.stdout
    assert [r.info.status for r in all_runs(moved)] == ["FINISHED"]

    resumed = run_cli(*args, output_dir=killed, data_dir=data_dir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming MLflow run {interrupted.info.run_id} from epoch" in resumed.stdout  # Hydra logs to stdout
    assert run_cli(*args, output_dir=clean, data_dir=data_dir).returncode == 0

    [after] = all_runs(killed)  # the same MLflow run, now FINISHED
    assert after.info.run_id == interrupted.info.run_id and after.info.status == "FINISHED"
    [reference] = all_runs(clean)
    a, b = client_for(killed), client_for(clean)
    for name in PER_EPOCH:
        if name == "wall_time_s":
            continue
        assert history(a, after.info.run_id, name) == history(b, reference.info.run_id, name), name
    # Under last_batch=carry (the default) the samples left over at each epoch's end open the
    # next epoch, across the kill too (the checkpoint holds them): 4 epochs at each B of 16, 32,
    # 64, 128 make (0 + 4 x 1437) // 16 = 359 steps (4 left), then 179 (24 left), 90 (12 left)
    # and 45; `keep` would make 4 x (90 + 45 + 23 + 12) = 680.
    assert after.data.metrics["total_param_updates"] == 359 + 179 + 90 + 45
    assert not list(checkpoints.glob("*.pt*"))  # removed once FINISHED

    again = run_cli(*args, output_dir=killed, data_dir=data_dir)
    assert again.returncode == 0 and "already FINISHED" in again.stdout
    assert len(all_runs(killed)) == 1


def test_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    path = tmp_path / "run.pt"
    checkpoint.save(path, {"epoch": 1, "weights": torch.ones(3)})
    checkpoint.save(path, {"epoch": 2, "weights": torch.zeros(3)})
    assert checkpoint.load(path, {"epoch"})["epoch"] == 2
    path.write_bytes(path.read_bytes()[:100])  # torn
    assert checkpoint.load(path, {"epoch"})["epoch"] == 1
    assert "unreadable" in caplog.text
    path.with_name("run.pt.prev").write_bytes(b"")
    assert checkpoint.load(path, {"epoch"}) is None
    assert checkpoint.load(tmp_path / "missing.pt", {"epoch"}) is None


def test_a_torn_checkpoint_means_starting_over_not_crashing(make_cfg, tmp_path, caplog):
    cfg = make_cfg(*TINY, "tracking.sweep_id=torn", output_dir=tmp_path)
    torn = tmp_path / "checkpoints" / f"{config_hash(cfg)}.pt"
    torn.parent.mkdir(parents=True)
    torn.write_bytes(b"PK\x03\x04 not really a checkpoint")
    final = train(cfg)
    assert final["outcome"] == "finished" and "unreadable" in caplog.text
    [run] = all_runs(tmp_path)
    assert run.info.status == "FINISHED"
    assert [s for s, _ in history(client_for(tmp_path), run.info.run_id, "val_loss")] == [0, 1, 2]


@pytest.mark.slow
def test_four_processes_into_one_fresh_store(tmp_path, data_dir):
    """4 sweeps of 2 jobs started at the same moment into a store that does not exist yet."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "src.run", "-m", "schedule=decay_lr,increase_bs", *TINY,
             f"trainer.seed={seed}", f"paths.output_dir={tmp_path}", f"paths.data_dir={data_dir}"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        for seed in range(4)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-2000:]
    runs = all_runs(tmp_path)
    assert len(runs) == 8 and {r.info.status for r in runs} == {"FINISHED"}
    sweeps = [r.data.tags["sweep_id"] for r in runs]
    assert sorted(sweeps.count(s) for s in set(sweeps)) == [2, 2, 2, 2]  # one id per sweep, never shared
    client = client_for(tmp_path)
    for run in runs:
        for name in PER_EPOCH:
            assert [s for s, _ in history(client, run.info.run_id, name)] == [0, 1, 2], name
