"""Resuming: after SIGKILL, with the same numbers as an uninterrupted run, also when the store
was deleted since; checkpoints that fall back to the previous one (each epoch still logged once)
or start over, never crash; two processes given the same run train it once."""

import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers.cli import run_cli
from helpers.configs import ROOT, TINY, checkpoint_path
from helpers.steps import Interrupted, step_sizes
from helpers.store import client_for, history, runs_in

from src import checkpoint, schema
from src.train import train


@pytest.mark.slow  # ~41 s on 2 idle cores: kept out of the default suite's 5 minutes
def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, data_dir):
    # long enough to kill mid-way: 16 epochs at B = 16 on digits, dropout on (the RNG must resume)
    args = ["dataset=digits", "trainer.epochs=16", "schedule.batch_size=16", "schedule=increase_bs",
            "schedule.milestones=[4,8,12]", "schedule.factor=2", "trainer.threads=1"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    command = [sys.executable, "-m", "src.run", *args, f"paths.output_dir={killed}", f"paths.data_dir={data_dir}"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = killed / checkpoint.FOLDER
    deadline = time.time() + 120
    while time.time() < deadline and not (checkpoints.exists() and any(checkpoints.glob("*.pt.prev"))):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    # A copy of the whole folder (store and checkpoints) resumes the same run. (This process
    # reads the copy only: MLflow keeps its SQLite connections open, and the original's store is
    # deleted below.)
    copy = tmp_path / "copy"
    shutil.copytree(killed, copy)
    [interrupted] = runs_in(copy)
    assert interrupted.info.status == "RUNNING"  # SIGKILL: nothing could close it
    resumed = run_cli(*args, output_dir=copy, data_dir=data_dir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming MLflow run {interrupted.info.run_id} from epoch" in resumed.stdout  # Hydra logs to stdout
    [after] = runs_in(copy)  # the same MLflow run, now FINISHED
    assert after.info.run_id == interrupted.info.run_id and after.info.status == "FINISHED"
    assert schema.ENDED_BY_TAG not in after.data.tags  # closed as dead by the re-run, then resumed
    # it keeps the sweep (here: the run folder) it started in, and lists the one that resumed it
    started_in = interrupted.data.tags[schema.SWEEP_TAG]
    assert after.data.tags[schema.SWEEP_TAG] == started_in
    [first, resumed_in] = after.data.tags[schema.SWEEPS_TAG].split()
    assert first == started_in != resumed_in

    # The store deleted under the checkpoints: their run is gone, so they resume into a new run,
    # with the epochs before the kill re-logged from the checkpoint.
    (killed / "mlflow.db").unlink()
    without_store = run_cli(*args, output_dir=killed, data_dir=data_dir)
    assert without_store.returncode == 0, without_store.stderr[-2000:]
    assert (f"continues MLflow run {interrupted.info.run_id}, which is not in sqlite:///{killed}/mlflow.db"
            in without_store.stdout)
    assert "resuming MLflow run" in without_store.stdout
    [new_run] = runs_in(killed)
    assert new_run.info.status == "FINISHED" and new_run.info.run_id != interrupted.info.run_id
    assert [d.dataset.name for d in client_for(killed).get_run(new_run.info.run_id).inputs.dataset_inputs] == \
        ["digits"]  # a new run: it has its data set input, as any new run

    assert run_cli(*args, output_dir=clean, data_dir=data_dir).returncode == 0
    [reference] = runs_in(clean)
    for output_dir, run in ((copy, after), (killed, new_run)):  # each epoch once, as if never stopped
        for name in schema.EPOCH_METRICS:
            if name == schema.WALL_TIME_S:
                continue
            assert history(client_for(output_dir), run.info.run_id, name) == history(
                client_for(clean), reference.info.run_id, name), (output_dir.name, name)
    # Under last_batch=carry (the default) the samples left over at each epoch's end open the
    # next epoch, across the kill too (the checkpoint holds them): 4 epochs at each B of 16, 32,
    # 64, 128 make (0 + 4 x 1437) // 16 = 359 steps (4 left), then 179 (24 left), 90 (12 left)
    # and 45; `keep` would make 4 x (90 + 45 + 23 + 12) = 680.
    assert after.data.metrics[schema.TOTAL_PARAM_UPDATES] == new_run.data.metrics[schema.TOTAL_PARAM_UPDATES] \
        == 359 + 179 + 90 + 45
    for folder in (copy, killed):
        assert not list((folder / checkpoint.FOLDER).glob("*.pt*"))  # removed once FINISHED

    again = run_cli(*args, output_dir=copy, data_dir=data_dir)
    assert again.returncode == 0 and "already FINISHED" in again.stdout
    assert len(runs_in(copy)) == 1


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
    torn = checkpoint_path(cfg)
    torn.parent.mkdir(parents=True)
    torn.write_bytes(b"PK\x03\x04 not really a checkpoint")
    final = train(cfg)
    assert final["outcome"] == "finished" and "unreadable" in caplog.text
    [run] = runs_in(tmp_path)
    assert run.info.status == "FINISHED"
    assert [s for s, _ in history(client_for(tmp_path), run.info.run_id, schema.VAL_LOSS)] == [0, 1, 2]


@pytest.mark.slow  # ~5 s: two real runs and a torn checkpoint
def test_a_fallback_to_the_previous_checkpoint_logs_each_epoch_once(make_cfg, tmp_path):
    """Stopped in its 4th epoch, the run has logged epochs 0-2 and checkpointed epoch 2 (the one
    before kept as .prev). The newest checkpoint torn, it resumes from epoch 1's: epoch 2 is
    trained again but not logged again, and every epoch holds the numbers of a run never stopped."""
    cfg = make_cfg(*TINY, "trainer.epochs=4", "tracking.sweep_id=torn-newest", output_dir=tmp_path)
    with pytest.raises(Interrupted), step_sizes(stop_at_step=70):  # epochs 0-2 take 22 + 22 + 23 steps
        train(cfg)
    [stopped] = runs_in(tmp_path)
    client = client_for(tmp_path)
    assert [s for s, _ in history(client, stopped.info.run_id, schema.VAL_LOSS)] == [0, 1, 2]
    newest = checkpoint_path(cfg)
    assert checkpoint.load(newest, {"epoch"})["epoch"] == 2
    newest.write_bytes(newest.read_bytes()[:100])  # torn: epoch 1's .prev is the newest readable

    assert train(cfg)["outcome"] == "resumed"
    [run] = runs_in(tmp_path)
    assert run.info.run_id == stopped.info.run_id and run.info.status == "FINISHED"
    train(make_cfg(*TINY, "trainer.epochs=4", output_dir=tmp_path / "clean"))
    [clean] = runs_in(tmp_path / "clean")
    for name in schema.EPOCH_METRICS:
        logged = history(client, run.info.run_id, name)
        assert [s for s, _ in logged] == [0, 1, 2, 3], name
        if name != schema.WALL_TIME_S:
            assert logged == history(client_for(tmp_path / "clean"), clean.info.run_id, name), name


@pytest.mark.slow
def test_two_identical_runs_at_once_train_once(tmp_path, data_dir):
    """The same command twice, the second started while the first trains (same config, same
    output folder): the second waits for the first's lock, then finds its run FINISHED."""
    args = ["dataset=digits", "trainer.epochs=40", "schedule.batch_size=16", "schedule.milestones=[]",
            "trainer.threads=1"]
    command = [sys.executable, "-m", "src.run", *args, f"paths.output_dir={tmp_path}", f"paths.data_dir={data_dir}"]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoints = tmp_path / checkpoint.FOLDER
    deadline = time.time() + 120
    while time.time() < deadline and not (checkpoints.exists() and any(checkpoints.glob("*.pt"))):
        time.sleep(0.05)
    second = run_cli(*args, output_dir=tmp_path, data_dir=data_dir)
    first_out, first_err = first.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, (first_err[-2000:], second.stderr[-2000:])
    [run] = runs_in(tmp_path)
    assert run.info.status == "FINISHED"
    steps = [s for s, _ in history(client_for(tmp_path), run.info.run_id, schema.VAL_LOSS)]
    assert steps == list(range(40))  # each epoch once
    assert "training in another process" in second.stdout and "already FINISHED" in second.stdout


def test_save_and_restore_keep_the_contract(make_cfg, tmp_path):
    """What checkpoint.state_of saves is exactly checkpoint.KEYS, and checkpoint.restore puts a
    freshly built run back where the saved one was, through a real checkpoint file."""
    from dataclasses import replace

    from src.build import build_run
    from src.checkpoint import KEYS, LoopState, restore, state_of
    from src.step import train_epoch

    cfg = make_cfg("dataset=digits", "schedule=plateau_increase_bs", "trainer.gns=true", "trainer.gns_every=1")
    cpu = torch.device("cpu")
    parts = build_run(cfg, cpu)
    order = torch.randperm(parts.data.n_train, generator=parts.batch_order)
    train_epoch(parts, order, batch_size=64)
    history = {schema.VAL_LOSS: [1.0, 1.0, 1.0, 1.0]}  # a plateau: the schedule's state moves
    parts.schedule(4, history)
    loop = LoopState(epochs_done=4, param_updates=92, samples_seen=4 * 1437, train_time=0.5, history=history)
    state = state_of(parts, loop, run_id="run", elapsed=2.0)
    assert state.keys() == KEYS
    checkpoint.save(tmp_path / "run.pt", state)

    fresh = build_run(cfg, cpu)
    assert not torch.equal(next(fresh.model.parameters()), next(parts.model.parameters()))  # trained apart
    saved = checkpoint.load(tmp_path / "run.pt")
    assert saved["run_id"] == "run"
    restored = restore(fresh, saved)
    assert restored == replace(loop, earlier_attempts_s=2.0)
    for a, b in zip(fresh.model.state_dict().values(), parts.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(fresh.optimizer.state.values(), parts.optimizer.state.values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    assert fresh.schedule.state_dict() == parts.schedule.state_dict() != build_run(cfg, cpu).schedule.state_dict()
    assert fresh.noise.state_dict() == parts.noise.state_dict()
    assert torch.equal(torch.randperm(100, generator=fresh.batch_order), torch.randperm(100, generator=parts.batch_order))
    # last_batch=carry (the default): the 1437 mod 64 = 29 samples left over open the next epoch
    assert len(parts.batches.leftover) == 29
    assert torch.equal(fresh.batches.leftover, parts.batches.leftover)


def test_every_history_list_holds_one_value_per_epoch_whatever_the_device():
    """A metric only some epochs have (GPU peak memory, for a run checkpointed on a GPU and
    resumed on a CPU, or the reverse) is nan in the others, so an epoch is re-logged from the
    checkpoint with its own values."""
    from src.checkpoint import LoopState

    progress = LoopState()
    progress.record({schema.VAL_LOSS: 1.0})  # epoch 0 on a CPU
    progress.record({schema.VAL_LOSS: 0.9, schema.GPU_PEAK_MEMORY_MIB: 512.0})  # resumed on a GPU
    progress.record({schema.VAL_LOSS: 0.8})  # and on a CPU again
    assert progress.epochs_done == 3
    assert progress.history[schema.VAL_LOSS] == [1.0, 0.9, 0.8]
    assert progress.epoch_metrics(1) == {schema.VAL_LOSS: 0.9, schema.GPU_PEAK_MEMORY_MIB: 512.0}
    assert progress.epoch_metrics(2)[schema.VAL_LOSS] == 0.8
    assert all(len(values) == 3 for values in progress.history.values())
