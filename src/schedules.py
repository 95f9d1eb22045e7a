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
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import ClassVar, Protocol

from src.errors import ConfigError
from src.schema import VAL_LOSS

# What the loop has measured so far, per metric, one value per finished epoch
# (e.g. {"val_loss": [...], "gns_b_simple": [...]}): what plateau and adaptive schedules follow.
History = Mapping[str, Sequence[float]]


@dataclass(frozen=True)
class Plan:
    """What one epoch trains with. lr is its first step's; with lr_end, each step's lr moves
    linearly from lr towards lr_end (the next epoch's first lr) over the epoch's steps: a
    per-iteration warm-up (Goyal et al. 2017). Without it every step trains at lr."""

    lr: float
    batch_size: int
    momentum: float
    lr_end: float | None = None


class Schedule(Protocol):
    """What the training loop asks of a schedule (conf/schedule/*.yaml builds one with
    `_target_: ...for_run`, given n_train, epochs and optimizer_momentum by the loop). A for_run
    takes one keyword per key of its YAML (10-14 of them, over the ~7 of other functions): its
    signature is what src.config checks a schedule's keys against, so they stay spelt out.

    Called before every epoch with that epoch and the history of every finished epoch, it
    answers with the epoch's Plan. Its state_dict (JSON-able) is checkpointed after every epoch
    and given back to load_state_dict when a run resumes, so that the resumed run plans as if it
    had never stopped. `follows` names the per-epoch metrics it reads from the history that the
    loop measures only on request (src.schema.GNS_METRICS): the loop measures them for it.
    """

    follows: ClassVar[tuple[str, ...]]

    def __call__(self, epoch: int, history: History = {}) -> Plan: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def metrics(self) -> dict[str, float]:
        """Per-epoch numbers about the schedule's own decisions for the epoch last planned,
        logged with the loop's metrics ({} for a schedule that decides nothing beyond its Plan)."""
        ...


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


def batch_cap(max_batch_size: int | None, n_train: int) -> int:
    """The largest batch a schedule grows to: None = N / 10, the paper's recipe."""
    return n_train // 10 if max_batch_size is None else int(max_batch_size)


@dataclass(frozen=True)
class StepSchedule:
    """The paper's figure-1 family: the noise scale drops by `factor` at each milestone.

    At each of the first `batch_growth_steps` milestones the batch grows by `factor` (lr kept);
    at the later ones lr is divided by `factor` (B kept). A growth that would pass
    `max_batch_size` stops at the cap and divides lr by what is left of the factor, so g stays
    on schedule (the paper's B_max = 5120 reading).

        decay_lr           batch_growth_steps = 0
        hybrid             batch_growth_steps = 1
        increase_bs        batch_growth_steps = len(milestones)
        constant           no milestones (StepSchedule.constant takes none)
        increase_lr        increase_bs with lr x5 and B0 x5 (paper figure 5)
        increase_momentum  increase_bs with lr x5, m 0.98 and B0 x25 (paper figure 5)
        large_batch_scaled B = max_batch_size from the start, lr scaled by B / B0 and warmed up
                           linearly over the first epochs (Goyal et al. 2017), decays as decay_lr

    During the first `warmup_epochs` epochs lr rises linearly, step by step (Plan.lr_end), from
    `warmup_start_lr` to `lr`, as Goyal et al. warm up per iteration.
    """

    name: str
    lr: float
    batch_size: int
    momentum: float
    factor: float
    milestones: tuple[int, ...]  # epochs (0-based) from which each step applies
    batch_growth_steps: int
    max_batch_size: int
    warmup_epochs: int = 0
    warmup_start_lr: float = 0.0

    follows: ClassVar[tuple[str, ...]] = ()  # a function of the epoch alone

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
        lr_boost: float = 1.0,
        momentum: float | None = None,
        scale_to_cap: bool = False,
        warmup: float = 0.0,
        n_train: int,
        epochs: int,
        optimizer_momentum: float,
    ) -> StepSchedule:
        """Resolve what depends on the run: fractional milestones; growth steps None = all;
        max_batch_size None = N / 10 (the paper's recipe); momentum None = the optimizer's.

        Raising the effective learning rate lr / (1 - m), by lr_boost or by a larger momentum,
        starts from the same noise scale g only if B0 grows by the same factor: B0 becomes
        batch_size * lr_boost * (1 - optimizer_momentum) / (1 - momentum) (paper section 5.2:
        eps 0.1 -> 0.5 with B0 128 -> 640; m 0.9 -> 0.98 with B0 -> 3200).
        scale_to_cap: B0 = the cap and lr x cap / B0.
        warmup: over this fraction of the epochs (rounded to whole epochs, at least one) lr
        rises linearly per step from schedule.lr (the small-batch lr, before lr_boost and
        scale_to_cap: Goyal et al.'s warm-up) to the first lr.
        """
        steps = milestone_epochs(milestones, epochs)
        cap = batch_cap(max_batch_size, n_train)
        momentum = optimizer_momentum if momentum is None else momentum
        first_lr = lr * lr_boost
        first_batch = int(round(batch_size * lr_boost * (1 - optimizer_momentum) / (1 - momentum)))
        if first_batch > cap:
            raise ConfigError(
                f"schedule.batch_size={batch_size}: the first batch ({first_batch}, after lr_boost and momentum) "
                f"must be <= max_batch_size={cap}"
            )
        if scale_to_cap:  # Goyal et al.: k times the batch, k times the lr
            first_lr *= cap / first_batch
            first_batch = cap
        return cls(
            name=name,
            lr=float(first_lr),
            batch_size=first_batch,
            momentum=float(momentum),
            factor=float(factor),
            milestones=steps,
            batch_growth_steps=len(steps) if batch_growth_steps is None else int(batch_growth_steps),
            max_batch_size=cap,
            warmup_epochs=max(1, math.floor(warmup * epochs + 0.5)) if warmup > 0 else 0,
            warmup_start_lr=float(lr),
        )

    @classmethod
    def constant(
        cls, *, name: str, lr: float, batch_size: int, n_train: int, epochs: int, optimizer_momentum: float
    ) -> StepSchedule:
        """lr and B fixed for the whole run: a step schedule without milestones, so it takes no
        factor, growth or cap (conf/schedule/constant.yaml), and a milestone given to it is
        refused by the config's validation, not obeyed. `n_train` and `epochs` are taken, and not
        needed, so that every schedule is built by the same call."""
        return cls(name=name, lr=float(lr), batch_size=int(batch_size), momentum=float(optimizer_momentum),
                   factor=1.0, milestones=(), batch_growth_steps=0, max_batch_size=int(batch_size))

    def __call__(self, epoch: int, history: History = {}) -> Plan:
        batch_size, lr = self._after_milestones(epoch, self._warmed_up(epoch))
        lr_end = self._after_milestones(epoch, self._warmed_up(epoch + 1))[1] if epoch < self.warmup_epochs else None
        return Plan(lr=lr, batch_size=batch_size, momentum=self.momentum, lr_end=lr_end)

    def _after_milestones(self, epoch: int, lr: float) -> tuple[int, float]:
        """B and lr at `epoch` from B0 and `lr`, after the milestones reached so far."""
        batch_size = self.batch_size
        for step, milestone in enumerate(self.milestones):
            if epoch < milestone:
                break
            if step < self.batch_growth_steps:
                batch_size, lr = drop_by_growing(batch_size, lr, self.factor, self.max_batch_size)
            else:
                lr /= self.factor
        return batch_size, lr

    def _warmed_up(self, epochs_done: float) -> float:
        """The lr before any milestone after `epochs_done` epochs: the warm-up's line, then lr."""
        if epochs_done >= self.warmup_epochs:
            return self.lr
        return self.warmup_start_lr + (self.lr - self.warmup_start_lr) * epochs_done / self.warmup_epochs

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def metrics(self) -> dict[str, float]:
        return {}  # its Plan says it all


@dataclass
class _PlateauState:
    """What a PlateauSchedule has drawn from the losses so far (its state_dict)."""

    lr: float  # current
    batch_size: int  # current
    phase: str  # "batch": a drop grows B; "lr": a drop divides lr
    best: float | None = None  # lowest validation loss so far; None before the first
    wait: int = 0  # epochs since the best improved by more than min_delta
    seen: int = 0  # validation losses consumed


@dataclass(eq=False)  # a stateful object: equal configs are not equal schedules
class PlateauSchedule:
    """The blog demo's plateau-driven schedules as one state machine: the noise scale drops by
    `factor` whenever the validation loss has not improved for `patience` epochs.

    The rule is Keras' ReduceLROnPlateau (mode min, cooldown 0, min_delta absolute): a loss below
    best - min_delta becomes the best and resets the wait; any other loss adds one epoch to the
    wait, and a wait of `patience` epochs is a plateau, which resets the wait and drops the noise
    scale:
      - batch phase (grow_batch=True, the blog's batch arm): B *= factor while the new B stays
        <= max_batch_size (the blog's "continue while B <= N_train/10"). The first plateau at
        which it would not switches the schedule for good to the lr phase, and is itself an lr
        decay.
      - lr phase (from the start when grow_batch=False: the blog's baseline, plain
        ReduceLROnPlateau): lr /= factor.
    best and wait carry over the phase change. The blog demo called fit() once per phase, which
    reset the callback's best and wait each time; that flaw is not reproduced.

    A Schedule: call it with the epoch about to start and the validation losses of all finished
    epochs. It consumes the losses it has not seen yet, so calling it every
    epoch with the growing list, or once with a whole history, gives the same plan. Its state
    (state_dict, JSON-able) is what a resumed run needs to continue identically.
    """

    name: str
    lr: float  # initial
    batch_size: int  # initial
    momentum: float
    max_batch_size: int
    factor: float
    patience: int  # epochs
    grow_batch: bool
    min_delta: float  # absolute, in units of the loss
    _state: _PlateauState = field(init=False, repr=False)

    follows: ClassVar[tuple[str, ...]] = (VAL_LOSS,)

    def __post_init__(self):
        self._state = _PlateauState(self.lr, self.batch_size, "batch" if self.grow_batch else "lr")

    @classmethod
    def for_run(
        cls,
        *,
        name: str,
        lr: float,
        batch_size: int,
        factor: float,
        patience: int,
        max_batch_size: int | None,
        grow_batch: bool,
        min_delta: float,
        n_train: int,
        epochs: int,
        optimizer_momentum: float,
    ) -> PlateauSchedule:
        """Resolve max_batch_size None = N / 10. `epochs` is taken, and not needed, so that every
        schedule is built by the same call."""
        return cls(
            name=name, lr=float(lr), batch_size=int(batch_size), momentum=float(optimizer_momentum),
            max_batch_size=batch_cap(max_batch_size, n_train), factor=float(factor), patience=int(patience),
            grow_batch=bool(grow_batch), min_delta=float(min_delta),
        )

    def __call__(self, epoch: int, history: History = {}) -> Plan:
        state = self._state
        val_losses = history.get(VAL_LOSS, ())
        if len(val_losses) < state.seen:
            raise ValueError(
                f"{self.name}: {len(val_losses)} validation losses given, {state.seen} already seen; "
                "pass the whole history of the run"
            )
        for loss in val_losses[state.seen :]:
            state.seen += 1
            best = math.inf if state.best is None else state.best
            if loss < best - self.min_delta:  # False for a NaN loss: it never improves
                state.best, state.wait = float(loss), 0
                continue
            state.wait += 1
            if state.wait >= self.patience:
                state.wait = 0
                self._drop_noise_scale()
        return Plan(lr=state.lr, batch_size=state.batch_size, momentum=self.momentum)

    def _drop_noise_scale(self) -> None:
        state = self._state
        if state.phase == "batch":
            grown = int(round(state.batch_size * self.factor))
            if grown <= self.max_batch_size:
                state.batch_size = grown
                return
            state.phase = "lr"  # for good: this plateau and every later one divide lr
        state.lr /= self.factor

    def state_dict(self) -> dict:
        return asdict(self._state)

    def load_state_dict(self, state: dict) -> None:
        self._state = _PlateauState(**state)

    def metrics(self) -> dict[str, float]:
        return {}  # its Plan says it all


def drop_by_growing(batch_size: int, lr: float, factor: float, ceiling: int) -> tuple[int, float]:
    """One drop of the noise scale g ~ lr N / B by `factor`, by growing B as far as `ceiling`
    allows (never shrinking it) and dividing lr by the rest of the factor: (new B, new lr). lr is
    kept when B grows by the whole factor, divided by all of it when B cannot grow."""
    target = batch_size * factor
    grown = max(batch_size, min(int(round(target)), ceiling))
    return grown, lr / (target / grown)
