"""Ctrl-C or SIGTERM in the middle of a write acts once the write is done (src/signals.py).

CI saw a Ctrl-C'd run left RUNNING, and a SIGINT landing inside torch.save ended a run FAILED
with torch's "unexpected pos" RuntimeError instead of KILLED with its checkpoint. Here the
signal is sent by the process to itself from inside the write, at a point it always reaches."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from mlflow.tracking import MlflowClient

from src import files
from src.errors import Stopped
from src.signals import held
from src.tracking import writing_client


@pytest.fixture(autouse=True)
def ctrl_c_raises():
    """SIGINT raises KeyboardInterrupt here, as at a terminal, however pytest was started: a
    process started in the background by a non-interactive shell (`nohup ... &`, some CI
    runners) inherits SIGINT ignored, and Python then installs no handler for it."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


class SignalsWhilePickled:
    """Sends `signum` to this process when torch.save pickles it; loads back as the int 7 (not
    weights_only: int is a global to its unpickler)."""

    def __init__(self, signum: int):
        self.signum = signum

    def __reduce__(self):
        os.kill(os.getpid(), self.signum)
        return int, (7,)


class SignalsWhenShown:
    """Sends SIGINT to this process when str() is taken of it (as MLflow does of a tag's value)."""

    def __str__(self) -> str:
        os.kill(os.getpid(), signal.SIGINT)
        return "written"


def test_ctrl_c_inside_torch_save_leaves_a_whole_file_then_interrupts(tmp_path):
    path = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt) as raised:  # not torch's RuntimeError "unexpected pos"
        files.write_atomically(path, lambda f: torch.save({"w": torch.ones(1000), "x": SignalsWhilePickled(
            signal.SIGINT)}, f))
    assert type(raised.value) is KeyboardInterrupt
    state = torch.load(path, weights_only=False)
    assert state["x"] == 7 and torch.equal(state["w"], torch.ones(1000))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temporary file


def test_sigterm_is_delivered_through_the_handler_that_was_there(tmp_path):
    def stop(signum, frame):
        raise Stopped(signum)

    before = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises(Stopped) as raised:
            files.write_atomically(tmp_path / "f.pt", lambda f: torch.save(SignalsWhilePickled(signal.SIGTERM), f))
        assert raised.value.signal == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is stop  # put back
        assert torch.load(tmp_path / "f.pt", weights_only=False) == 7
    finally:
        signal.signal(signal.SIGTERM, before)


def test_an_ignored_signal_stays_ignored():
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with held():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_signal_during_a_failing_block_still_acts():
    with pytest.raises(KeyboardInterrupt) as raised:
        with held():
            os.kill(os.getpid(), signal.SIGINT)
            raise OSError("disk full")
    assert isinstance(raised.value.__context__, OSError)


def test_a_local_stores_call_is_written_before_ctrl_c_acts(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = writing_client(uri)
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    with pytest.raises(KeyboardInterrupt):
        client.set_tag(run_id, "k", SignalsWhenShown())
    assert MlflowClient(uri).get_run(run_id).data.tags["k"] == "written"
