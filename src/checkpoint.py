"""Checkpoints that survive being killed at any instant.

save() writes a temporary file, fsyncs it and renames it over the checkpoint, keeping the one
before as `<name>.prev`: a reader sees a whole old or a whole new file, never a torn one.
load() reads with torch.load(weights_only=True) (tensors and plain containers only: no code
runs) and falls back to the previous checkpoint, then to nothing, with a warning each time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch

log = logging.getLogger(__name__)


def _previous(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def write_atomically(path: Path, write: Callable[[BinaryIO], None], previous: Path | None = None) -> None:
    """Write `path` through `write(file)` so that a reader sees a whole old or a whole new file:
    a temporary file, fsynced, renamed over it (the old one first renamed to `previous`, if
    given), the renames made durable. Whatever stops it (a full disk, a signal) leaves no
    temporary file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def save(path: Path, state: dict) -> None:
    write_atomically(path, lambda f: torch.save(state, f), previous=_previous(path))


def load(path: Path, required_keys: set[str]) -> dict | None:
    """The newest readable checkpoint holding required_keys, or None."""
    for candidate in (path, _previous(path)):
        if not candidate.exists():
            continue
        try:
            state = torch.load(candidate, map_location="cpu", weights_only=True)
        except Exception as error:
            log.warning("checkpoint %s is unreadable (%s): trying an older one", candidate, type(error).__name__)
            continue
        if isinstance(state, dict) and required_keys <= state.keys():
            return state
        log.warning("checkpoint %s is incomplete: trying an older one", candidate)
    return None


def remove(path: Path) -> None:
    for candidate in (path, _previous(path)):
        candidate.unlink(missing_ok=True)
