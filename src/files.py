"""Files a run writes: whole or not at all, in folders checked before anything is written.

write_atomically is the one writer of the files a killed process must not leave torn (the
checkpoints, the MNIST-1D cache); remove_stale_temporaries clears what it could not clear itself
(a process killed with SIGKILL runs no clean-up); check_folder makes a folder a config key names
usable, or refuses it in one line naming the key.
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from src.errors import ConfigError
from src.signals import held


def _temporary(path: Path, pid: int) -> Path:
    """Where process `pid` writes `path` before renaming it: hidden, beside it (a rename within
    one folder is atomic)."""
    return path.with_name(f".{path.name}.{pid}.tmp")


def _os_error_in(error: BaseException) -> OSError | None:
    """The OSError behind a failed write. torch's zip writer reports one (a full disk) as a
    RuntimeError ("unexpected pos ...") that names neither the cause nor the file; the OSError
    the file object raised is in its context."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno is not None:
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def write_atomically(path: Path, write: Callable[[BinaryIO], None], previous: Path | None = None) -> None:
    """Write `path` through `write(file)` so that a reader sees a whole old or a whole new file:
    a temporary file, fsynced, renamed over it (the old one first renamed to `previous`, if
    given), the renames made durable. Ctrl-C or SIGTERM meanwhile acts once the file is whole
    (src/signals.py: inside torch.save, it would end the run FAILED with torch's "unexpected pos").
    A failed write (no space left, a read-only folder) leaves no temporary file behind and is an
    OSError naming `path`, so its one line says which file and why."""
    with held():
        _write_and_rename(path, write, previous)


def _write_and_rename(path: Path, write: Callable[[BinaryIO], None], previous: Path | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path, os.getpid())
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        failed = _os_error_in(error) if isinstance(error, Exception) else None
        if failed is not None:
            raise OSError(failed.errno, failed.strerror, str(path)) from error
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, run by another user
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporary files of `path` whose writing process is gone (killed with SIGKILL
    while it wrote: an out-of-memory kill, kill -9), and return them. A live process's file is
    kept: it may be writing it now. Process ids are this machine's: call it where only this
    machine writes `path` (a checkpoint, under its config's lock)."""
    removed = []
    prefix, suffix = f".{path.name}.", ".tmp"
    for name in glob.glob(glob.escape(str(path.parent / prefix)) + "*" + suffix):
        tmp = Path(name)
        pid = tmp.name[len(prefix) : -len(suffix)]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def check_folder(key: str, folder: str | Path, *, value: Any = None, writable: bool = True) -> None:
    """Make a folder a config names usable before anything is written there: create it if
    missing and, if `writable`, write in it once (a temporary file, gone at once). A folder that
    cannot be created or written is a ConfigError naming `key` and its value (`value`, when that
    is not the folder itself: a store's URI)."""
    folder = Path(folder)
    told = f"{key}={folder if value is None else value}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"{told}: cannot create the folder {folder} ({error.strerror or error})") from None
    if writable:
        try:
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as error:
            raise ConfigError(f"{told}: cannot write in the folder {folder} ({error.strerror or error})") from None
