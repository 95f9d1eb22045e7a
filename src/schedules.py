"""Schedules: for an epoch, the learning rate, batch size and momentum to train it with.

The heart of the study. Pure Python (no torch, no I/O) so the arithmetic of the paper can be
checked without training. Every milestone is an EPOCH, never an iteration: the number of
iterations in an epoch changes whenever the batch size does.

The claim under test (Smith et al. 2018, eq. 1): SGD's noise scale

    g = lr / (1 - m) * (N / B - 1)        N training samples, B batch size, m momentum

falls by the same factor whether lr is divided by k or B multiplied by k, so accuracy per epoch
should match while the number of parameter updates falls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    """What one epoch trains with."""

    lr: float
    batch_size: int
    momentum: float


def noise_scale(lr: float, batch_size: int, momentum: float, n_train: int) -> float:
    """g = lr / (1 - m) * (N / B - 1), the paper's SGD noise scale (units of lr)."""
    return lr / (1.0 - momentum) * (n_train / batch_size - 1.0)


def milestone_epochs(milestones: Sequence[float], epochs: int) -> tuple[int, ...]:
    """Milestones as absolute epochs.

    Values strictly between 0 and 1 are fractions of the run (0.3 of 200 epochs -> epoch 60);
    anything else is taken as an absolute epoch. Mixing the two is refused: it is almost
    always a typo.
    """
    fractions = [0.0 < m < 1.0 for m in milestones]
    if any(fractions) and not all(fractions):
        raise ValueError(
            f"schedule.milestones={list(milestones)}: use all fractions of the run (0 < m < 1) "
            "or all absolute epochs, not both"
        )
    if all(fractions):
        return tuple(math.floor(m * epochs + 0.5) for m in milestones)  # round half up
    return tuple(int(m) for m in milestones)


@dataclass(frozen=True)
class StepSchedule:
    """The paper's figure-1 family: the noise scale drops by `factor` at each milestone.

    At each of the first `batch_growth_steps` milestones the batch grows by `factor` (lr kept);
    at the later ones lr is divided by `factor` (B kept). A growth that would pass
    `max_batch_size` stops at the cap and divides lr by what is left of the factor, so g stays
    on schedule (the paper's B_max = 5120 reading).

        decay_lr     batch_growth_steps = 0
        hybrid       batch_growth_steps = 1
        increase_bs  batch_growth_steps = len(milestones)
        constant     no milestones
    """

    name: str
    lr: float
    batch_size: int
    momentum: float
    factor: float
    milestones: tuple[int, ...]  # epochs (0-based) from which each step applies
    batch_growth_steps: int
    max_batch_size: int

    @classmethod
    def for_run(
        cls,
        *,
        name: str,
        lr: float,
        batch_size: int,
        factor: float,
        milestones: Sequence[float],
        batch_growth_steps: int | None,
        max_batch_size: int | None,
        n_train: int,
        epochs: int,
        momentum: float,
    ) -> StepSchedule:
        """Resolve run-dependent defaults: fractional milestones, growth steps None = all,
        max_batch_size None = N / 10 (the paper's recipe)."""
        steps = milestone_epochs(milestones, epochs)
        return cls(
            name=name,
            lr=float(lr),
            batch_size=int(batch_size),
            momentum=float(momentum),
            factor=float(factor),
            milestones=steps,
            batch_growth_steps=len(steps) if batch_growth_steps is None else int(batch_growth_steps),
            max_batch_size=n_train // 10 if max_batch_size is None else int(max_batch_size),
        )

    def __call__(self, epoch: int, val_losses: Sequence[float] = ()) -> Plan:
        lr, batch_size = self.lr, self.batch_size
        for step, milestone in enumerate(self.milestones):
            if epoch < milestone:
                break
            if step < self.batch_growth_steps:
                target = batch_size * self.factor
                batch_size = max(batch_size, min(int(round(target)), self.max_batch_size))
                lr /= target / batch_size  # 1 unless the cap cut the growth short
            else:
                lr /= self.factor
        return Plan(lr=lr, batch_size=batch_size, momentum=self.momentum)

    def state_dict(self) -> dict:
        return {}  # a function of the epoch alone

    def load_state_dict(self, state: dict) -> None:
        pass


def updates_in_epoch(n_train: int, batch_size: int, last_batch: str) -> int:
    """Optimizer steps in one epoch. last_batch='keep': the smaller last batch is a step too;
    'drop': it is skipped (its samples are not seen that epoch)."""
    if last_batch == "keep":
        return math.ceil(n_train / batch_size)
    if last_batch == "drop":
        return n_train // batch_size
    raise ValueError(f"last_batch={last_batch!r}: allowed 'keep' or 'drop'")


def planned_updates(schedule, n_train: int, epochs: int, last_batch: str | None = None) -> float:
    """Total parameter updates a schedule makes. last_batch=None counts N/B per epoch as a
    fraction, as the paper does (200 * 50000 / 128 = 78,125); 'keep' or 'drop' count the
    whole batches a loop really makes."""
    total = 0.0
    for epoch in range(epochs):
        batch_size = schedule(epoch).batch_size
        if last_batch is None:
            total += n_train / batch_size
        else:
            total += updates_in_epoch(n_train, batch_size, last_batch)
    return total
