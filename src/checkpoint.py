"""Checkpoints that survive being killed at any instant.

save() writes a temporary file, fsyncs it and renames it over the checkpoint, keeping the one
before as `<name>.prev`: a reader sees a whole old or a whole new file, never a torn one.
load() reads with torch.load(weights_only=True) (tensors and plain containers only: no code
runs) and falls back to the previous checkpoint, then to nothing, with a warning each time.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def _previous(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def save(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:  # a full disk, a signal: no half-written file left behind
        tmp.unlink(missing_ok=True)
        raise
    if path.exists():
        os.replace(path, _previous(path))
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)  # make the renames themselves durable
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


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
