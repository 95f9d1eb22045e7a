"""Data-parallel training of one run across the processes that `torchrun` starts (DDP).

The rule for the global batch: the schedule's batch of B samples is cut by tensor_split into
world-size consecutive shares of floor(B/W) or ceil(B/W) samples (sizes differ by at most one
when W does not divide B); rank r trains on share r. Each rank weights its loss by its share of
B and multiplies by W to undo DDP's average over ranks, so every rank steps with the gradient of
the whole global batch: the update a single process makes, up to float summation order. One
optimizer step is one parameter update, whatever the number of ranks.

Every rank draws the same permutation and augmentation (one seed) and cuts the same batches
from it (src.batching.BatchStream: the leftover carried between epochs follows from the
permutations alone), so the shares never overlap and never miss a sample. Validation is sharded the same way and summed across ranks. Only rank 0
logs to MLflow and writes checkpoints; a checkpoint holds the unwrapped model, so a run can
resume under another world size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def join() -> World:
    """The process group torchrun set up in the environment (gloo on CPU, nccl on GPU), or a
    world of one when not launched by torchrun."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return world


def together(world: World) -> None:
    """Wait until every rank is here. At a run's end, so that no rank tears down its process
    group and exits while rank 0 still logs the run (its LoggedModel takes seconds): gloo's
    threads of a rank leaving alone were seen to abort it (SIGABRT, "terminate called without an
    active exception"), failing a run that had finished."""
    if world.size > 1:
        dist.barrier()


def leave(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def share(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's consecutive share of a global batch."""
    return tensor.tensor_split(world.size)[world.rank] if world.size > 1 else tensor


def all_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    if world.size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
