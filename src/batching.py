"""Batches: how each epoch's permutation of the training set is cut into batches of B
(trainer.last_batch: carry, drop or keep), and how many parameter updates that makes.

Batches are slices of a seeded permutation of the resident training tensors, so the batch size
can change at any epoch with nothing to rebuild and no random state lost: no DataLoader, no
workers prefetching batches of the old size. The policy names are spelt and checked here only
(check_last_batch: validation calls it, and so do the functions below for their direct
callers, the tests and benchmarks); the counts
(updates_in_epoch, planned_updates) are the ones BatchStream makes, so a schedule's update count
and the loop's param_updates agree.

No torch on import: src.config checks trainer.last_batch with this module before torch loads (a
bad config is refused in about a second), so BatchStream imports torch where it is used.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from src.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from src.schedules import Schedule

# trainer.last_batch: what becomes of the samples left over when B does not divide an epoch
# (conf/trainer/default.yaml says why carry is the default).
LAST_BATCH = ("carry", "drop", "keep")


def check_last_batch(last_batch: str) -> None:
    """The one check of a last-batch policy: a ConfigError naming trainer.last_batch."""
    if last_batch not in LAST_BATCH:
        raise ConfigError(f"trainer.last_batch={last_batch!r}: allowed: {', '.join(LAST_BATCH)}")


def updates_in_epoch(n_train: int, batch_size: int, last_batch: str, leftover: int = 0) -> int:
    """Optimizer steps in one epoch (BatchStream cuts them). last_batch='carry': the `leftover`
    samples carried in from the epoch before open its first batch, every batch holds B:
    floor((leftover + N) / B), and (leftover + N) mod B carry on; 'keep': the smaller last batch
    is a step too; 'drop': it is skipped (its samples are not seen that epoch)."""
    check_last_batch(last_batch)
    if last_batch == "carry":
        return (leftover + n_train) // batch_size
    if leftover:
        raise ValueError(f"last_batch={last_batch!r} carries nothing: leftover must be 0, not {leftover}")
    return math.ceil(n_train / batch_size) if last_batch == "keep" else n_train // batch_size


def planned_updates(schedule: Schedule, n_train: int, epochs: int, last_batch: str | None = None) -> float:
    """Total parameter updates a schedule makes. last_batch=None counts N/B per epoch as a
    fraction, as the paper does (200 * 50000 / 128 = 78,125); 'carry', 'keep' or 'drop' count
    the whole batches the loop really makes (carry: the leftovers carried from epoch to epoch,
    counted as the loop counts them)."""
    total, leftover = 0.0, 0
    for epoch in range(epochs):
        batch_size = schedule(epoch).batch_size
        if last_batch is None:
            total += n_train / batch_size
            continue
        updates = updates_in_epoch(n_train, batch_size, last_batch, leftover)
        if last_batch == "carry":
            leftover = leftover + n_train - updates * batch_size
        total += updates
    return total


def batch_indices(permutation: torch.Tensor, batch_size: int, last_batch: str) -> Iterator[torch.Tensor]:
    """Consecutive slices of one epoch's permutation. last_batch='keep' yields the smaller
    remainder as a final batch; 'drop' skips it (see updates_in_epoch)."""
    n = len(permutation)
    stop = n if last_batch == "keep" else n - n % batch_size
    for start in range(0, stop, batch_size):
        yield permutation[start : start + batch_size]


class BatchStream:
    """The training batches of a run, one epoch's permutation at a time, cut into batches of B
    by the trainer.last_batch policy (conf/trainer/default.yaml says why carry is the default):

      carry  one continuing stream of per-epoch permutations: the samples left over at an
             epoch's end (fewer than B) open the next epoch's first batch, so every batch holds
             exactly B samples and none is skipped (except the last leftover of the run).
             epoch(permutation, B) yields floor((leftover + N) / B) batches.
      drop   the remainder of each epoch (N mod B samples) is skipped: floor(N / B) batches
      keep   the remainder is one more, smaller batch: ceil(N / B) batches

    Under carry the leftover (indices into the training set) is this object's state:
    state_dict() goes into the checkpoint, so a resumed run cuts the same batches. The batch
    that opens an epoch with carried samples is completed with samples of the new permutation
    that are not among them (the first such ones, in permutation order; the ones passed over
    keep their order behind), so no batch holds a sample twice while B does not shrink (no
    schedule shrinks it), and each permutation is still consumed exactly once. No random draw:
    every DDP rank, given the same permutations, cuts the same batches.
    """

    def __init__(self, last_batch: str):
        import torch

        check_last_batch(last_batch)
        self.last_batch = last_batch
        self.leftover = torch.empty(0, dtype=torch.int64)

    def epoch(self, permutation: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
        """This epoch's batches (index tensors on the permutation's device)."""
        import torch

        if self.last_batch != "carry":
            return list(batch_indices(permutation, batch_size, self.last_batch))
        carried = self.leftover.to(permutation.device)
        if len(carried):
            missing = -len(carried) % batch_size  # samples that complete the carried batch
            fill = permutation[~torch.isin(permutation, carried)][:missing]
            permutation = torch.cat([carried, fill, permutation[~torch.isin(permutation, fill)]])
        whole = len(permutation) - len(permutation) % batch_size
        self.leftover = permutation[whole:]
        return list(permutation[:whole].split(batch_size))

    def state_dict(self) -> dict:
        return {"leftover": self.leftover.cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.leftover = state["leftover"].long()  # int64, whatever the checkpoint held
