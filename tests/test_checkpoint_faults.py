"""Faults under a run's checkpoints (issue 22): a full disk is one line naming the checkpoint and
"No space left", with the run closed FAILED and nothing half-written; the temporary files of a
writer killed with SIGKILL are removed on the next start (those whose process is gone only).

A full disk is provoked without filling one: the checkpoint's temporary file is made a link to
/dev/full, whose every write fails with ENOSPC through the same open/write/fsync path a full
filesystem fails in; where this process may mount (root), a 1 MiB tmpfs under the checkpoints
is the real thing for `python -m src.run`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.cli import run_cli
from helpers.configs import TINY, checkpoint_path
from helpers.store import runs_in

from src import checkpoint, files
from src.cli import needs_traceback, one_line_error
from src.train import train

FULL = Path("/dev/full")
needs_dev_full = pytest.mark.skipif(not FULL.exists(), reason="no /dev/full on this system")


def temporary_of(path: Path, pid: int) -> Path:
    """Where process `pid` writes `path` first (src.files.write_atomically's name for it)."""
    return path.with_name(f".{path.name}.{pid}.tmp")


@needs_dev_full
def test_an_atomic_write_onto_a_full_disk_names_the_file_and_leaves_nothing(tmp_path):
    path = tmp_path / "cache.npz"
    temporary_of(path, os.getpid()).symlink_to(FULL)
    with pytest.raises(OSError) as raised:
        files.write_atomically(path, lambda f: f.write(b"x" * 2**20))
    assert str(raised.value) == f"[Errno 28] No space left on device: '{path}'"
    assert list(tmp_path.iterdir()) == []  # no file, no temporary file


@needs_dev_full
def test_a_full_disk_under_a_checkpoint_is_one_line_and_the_run_failed(make_cfg, tmp_path):
    cfg = make_cfg(*TINY, "tracking.sweep_id=full-disk", output_dir=tmp_path)
    path = checkpoint_path(cfg)
    path.parent.mkdir(parents=True)
    temporary_of(path, os.getpid()).symlink_to(FULL)  # the first checkpoint's write fails
    with pytest.raises(OSError) as raised:
        train(cfg)
    message, code = one_line_error(raised.value)
    assert (message, code) == (f"OSError: [Errno 28] No space left on device: '{path}'", 1)
    assert not needs_traceback(raised.value)  # told in that one line
    [run] = runs_in(tmp_path)
    assert run.info.status == "FAILED"
    assert sorted(p.name for p in path.parent.iterdir()) == [checkpoint.lock_path(cfg).name]  # nothing half-written


@pytest.mark.slow  # ~7 s on 2 idle cores: kept out of the default suite's 5 minutes
def test_a_full_filesystem_under_the_checkpoints_ends_the_command_in_one_line(tmp_path, data_dir):
    """The real thing where this process may mount: a 1 MiB tmpfs under checkpoints/, which the
    first checkpoint (an MLP's weights and momentum: ~4 MB) does not fit in."""
    folder = tmp_path / checkpoint.FOLDER
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        done = run_cli(*TINY, "model=mlp", output_dir=tmp_path, data_dir=data_dir)
        [written] = [p for p in folder.iterdir() if p.suffix != ".lock"] or [None]
    finally:
        subprocess.run(["umount", str(folder)], check=True)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: OSError: [Errno 28] No space left on device: ") and last.endswith(".pt'")
    assert "Traceback" not in done.stderr
    assert written is None  # neither a checkpoint nor a temporary file
    [run] = runs_in(tmp_path)
    assert run.info.status == "FAILED"


def test_the_temporary_files_of_killed_writers_are_removed_on_the_next_start(make_cfg, tmp_path):
    cfg = make_cfg(*TINY, "tracking.sweep_id=stale", output_dir=tmp_path)
    path = checkpoint_path(cfg)
    path.parent.mkdir(parents=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    living = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        stale = temporary_of(path, int(gone.stdout))  # a writer killed with SIGKILL: its process is gone
        busy = temporary_of(path, living.pid)  # a process still alive: it may be writing it now
        other = temporary_of(path.with_name("another-config.pt"), int(gone.stdout))  # not this run's
        for tmp in (stale, busy, other):
            tmp.write_bytes(b"half a checkpoint")
        assert train(cfg)["outcome"] == "finished"
        assert not stale.exists()
        assert busy.exists() and other.exists()
    finally:
        living.kill()
        living.wait()
