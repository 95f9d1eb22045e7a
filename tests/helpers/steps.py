"""The samples behind each optimizer step of a real train(cfg), counted with PyTorch's global
hooks: a forward pre-hook adds up the samples the MLP sees in training mode, an optimizer step
pre-hook records that sum at each step (micro-batches add up to their batch)."""

from __future__ import annotations

from contextlib import contextmanager

from torch.nn.modules.module import register_module_forward_pre_hook
from torch.optim.optimizer import register_optimizer_step_pre_hook

from src.models import MLP


class Interrupted(Exception):
    """Raised from the step hook to stop a run in the middle of an epoch."""


@contextmanager
def step_sizes(stop_at_step: int | None = None):
    """Yields the list of samples behind each optimizer step, appended as the run trains; with
    stop_at_step, the step of that (0-based) number raises Interrupted before it is taken."""
    sizes, pending = [], [0]

    def count_samples(module, args):
        if isinstance(module, MLP) and module.training:
            pending[0] += len(args[0])

    def record_step(optimizer, args, kwargs):
        if len(sizes) == stop_at_step:
            raise Interrupted(f"stopped before step {stop_at_step}")
        sizes.append(pending[0])
        pending[0] = 0

    handles = [register_module_forward_pre_hook(count_samples), register_optimizer_step_pre_hook(record_step)]
    try:
        yield sizes
    finally:
        for handle in handles:
            handle.remove()
