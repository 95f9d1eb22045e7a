"""Checkpoints: what one holds, where it lives, saving and restoring it side by side, and the
loop's counters it carries (LoopState).

A run's checkpoint is <paths.output_dir>/checkpoints/<config hash>.pt, with its lock beside it
(path_of and lock_path: the one place both are named). save() writes it atomically after every epoch
(src.files.write_atomically: a temporary file, fsynced, renamed over it), keeping the one before
as `<name>.prev`: a reader sees a whole old or a whole new file, never a torn one. load() reads
with torch.load(weights_only=True) (tensors and plain containers only: no code runs) and falls
back to the previous checkpoint, then to nothing, with a warning each time. restore() puts a
freshly built run back where save() left it: model, optimizer, schedule, the RNG streams, the
batches carried between epochs and the counters, so a resumed run has the same numbers as one
that never stopped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

from src import files, tracking
from src.build import RunParts

log = logging.getLogger(__name__)

FOLDER = "checkpoints"  # under paths.output_dir


def path_of(cfg: DictConfig, config_hash: str) -> Path:
    """cfg's checkpoint: <paths.output_dir>/checkpoints/<config hash>.pt, the hash of its config
    and its data (tracking.hash_config)."""
    return Path(cfg.paths.output_dir) / FOLDER / f"{config_hash}.pt"


def lock_path(cfg: DictConfig) -> Path:
    """cfg's lock: <paths.output_dir>/checkpoints/<hash of the config alone>.lock, taken before
    the data are loaded."""
    return path_of(cfg, tracking.hash_config(cfg, None)).with_suffix(".lock")


@dataclass
class LoopState:
    """What the loop has done so far: where a resumed run picks up."""

    epochs_done: int = 0
    param_updates: int = 0  # optimizer steps
    samples_seen: int = 0  # samples in those steps
    train_time: float = 0.0  # seconds in train_epoch
    earlier_attempts_s: float = 0.0  # wall seconds of the attempts before this one (a resumed run)
    history: dict[str, list[float]] = field(default_factory=dict)  # every per-epoch metric so far

    def record(self, metrics: Mapping[str, float]) -> None:
        """Add the next epoch's metrics to the history, one value per epoch in every list: a
        metric an epoch did not have (gpu_peak_memory_mib of a run resumed on a CPU after a GPU)
        is nan there, so epoch_metrics and the schedules index every list by epoch."""
        epoch = self.epochs_done
        for name in [*self.history, *(name for name in metrics if name not in self.history)]:
            self.history.setdefault(name, [math.nan] * epoch).append(metrics.get(name, math.nan))
        self.epochs_done = epoch + 1

    def epoch_metrics(self, epoch: int) -> dict[str, float]:
        """Every metric recorded for `epoch` (0-based), as it was logged (nan: not measured)."""
        return {name: values[epoch] for name, values in self.history.items()}


# What a checkpoint holds, written by state_of (save) and read back by restore (and, for run_id,
# by src.train). One more piece of state is one line in each of the two.
KEYS = frozenset({"run_id", "epoch", "model", "optimizer", "schedule", "noise", "rng", "batches", "counters", "history"})


def state_of(parts: RunParts, loop: LoopState, run_id: str | None, elapsed: float) -> dict:
    """Everything a resumed run needs to go on with the same numbers as if it had never stopped.
    `elapsed`: wall seconds of this run so far, earlier attempts included."""
    rng = {"torch": torch.get_rng_state(), "batch_order": parts.batch_order.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "run_id": run_id,  # the MLflow run it continues, if that run is still in the store
        "epoch": loop.epochs_done - 1,  # the last finished epoch, 0-based
        "model": parts.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "schedule": parts.schedule.state_dict(),
        "noise": parts.noise.state_dict() if parts.noise is not None else {},
        "rng": rng,
        "batches": parts.batches.state_dict(),  # under carry, the leftover that opens the next epoch
        "counters": [loop.param_updates, loop.samples_seen, loop.train_time, elapsed],
        "history": loop.history,
    }


def restore(parts: RunParts, state: dict) -> LoopState:
    """Put a freshly built run back where state_of left it; returns the loop's state."""
    parts.model.load_state_dict(state["model"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.schedule.load_state_dict(state["schedule"])
    if parts.noise is not None:
        parts.noise.load_state_dict(state["noise"])
    torch.set_rng_state(state["rng"]["torch"])
    parts.batch_order.set_state(state["rng"]["batch_order"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    parts.batches.load_state_dict(state["batches"])
    param_updates, samples_seen, train_time, elapsed = state["counters"]
    return LoopState(
        epochs_done=state["epoch"] + 1,
        param_updates=param_updates,
        samples_seen=samples_seen,
        train_time=train_time,
        earlier_attempts_s=elapsed,
        history={name: list(values) for name, values in state["history"].items()},
    )


def _previous(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def save(path: Path, state: dict) -> None:
    """A state (state_of) written atomically to `path`, the checkpoint before kept as <path>.prev."""
    files.write_atomically(path, lambda f: torch.save(state, f), previous=_previous(path))


def load(path: Path, required_keys: frozenset[str] = KEYS) -> dict | None:
    """The newest readable checkpoint at `path` (else <path>.prev) holding required_keys, or None."""
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


def remove_stale_temporaries(path: Path) -> None:
    """The temporary files of earlier attempts at `path` killed while they wrote it (SIGKILL:
    nothing of theirs ran to remove them), removed with one line each. Called under the
    config's lock, so no live process of this machine writes them."""
    for stale in files.remove_stale_temporaries(path):
        log.info("removed %s, left by a process killed while it wrote checkpoint %s", stale, path)


def remove(path: Path) -> None:
    """The checkpoint, its previous one and stale temporary files: none is needed any more."""
    for candidate in (path, _previous(path)):
        candidate.unlink(missing_ok=True)
    remove_stale_temporaries(path)
