"""Schedules that follow the measured gradient noise scale B_simple (src/gns.py, McCandlish et
al. 2018), beyond the paper: adaptive_gns lets the measured B_simple pick how much of decay_lr's
anneal the batch takes; critical_bs grows B at the paper's milestones only up to B_simple. Both
keep g on decay_lr's schedule at every epoch and follow src.schedules' Schedule protocol; what
they decided is their state, so a resumed run replays none of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import ClassVar

from src.schedules import History, Plan, batch_cap, drop_by_growing, milestone_epochs
from src.schema import GNS_B_SIMPLE, GNS_BATCH_CAP


@dataclass
class _AdaptiveState:
    """What an AdaptiveNoiseScaleSchedule has drawn from the measurements so far."""

    batch_size: int  # current
    seen: int = 0  # noise-scale measurements consumed


@dataclass(eq=False)
class AdaptiveNoiseScaleSchedule:
    """decay_lr's noise scale, with the batch following the measured gradient noise scale
    B_simple (src/gns.py), the batch size past which a bigger batch stops paying for itself
    (McCandlish et al. 2018); Merrill et al. 2025 grow the batch as the measured critical batch
    size grows. It tests one thing: letting the measured B_simple pick how much of decay_lr's
    anneal the batch takes.

    The noise scale g ~ lr / B follows decay_lr's at every epoch: divided by `factor` at each
    milestone. After each epoch the smoothed B_simple is rounded up to the next multiple of
    `multiple` and clipped to [batch_size, ceiling], where the ceiling is max_batch_size and
    batch_size x factor^k after k milestones (B never takes more of the anneal than decay_lr has
    made so far). The batch only ever grows, and only when the new size is at least `min_growth`
    times the current one or the ceiling, so noise in the estimate cannot make it flip-flop.
    lr is the rest: lr x (B / batch_size) / factor^k, never above lr. So lr falls at each milestone
    by what B does not take of the factor, whether or not B reached its cap. Deterministic given
    the measurements, which are deterministic given the seed.
    """

    follows: ClassVar[tuple[str, ...]] = (GNS_B_SIMPLE,)

    name: str
    lr: float
    batch_size: int  # B_min, the first batch
    momentum: float
    factor: float
    milestones: tuple[int, ...]
    max_batch_size: int
    multiple: int
    min_growth: float
    _state: _AdaptiveState = field(init=False, repr=False)

    def __post_init__(self):
        self._state = _AdaptiveState(self.batch_size)

    @classmethod
    def for_run(
        cls,
        *,
        name: str,
        lr: float,
        batch_size: int,
        factor: float,
        milestones: Sequence[float],
        max_batch_size: int | None,
        multiple: int | None,
        min_growth: float,
        n_train: int,
        epochs: int,
        optimizer_momentum: float,
    ) -> AdaptiveNoiseScaleSchedule:
        """multiple None = batch_size; max_batch_size None = N / 10."""
        return cls(
            name=name, lr=float(lr), batch_size=int(batch_size), momentum=float(optimizer_momentum),
            factor=float(factor), milestones=milestone_epochs(milestones, epochs),
            max_batch_size=batch_cap(max_batch_size, n_train), multiple=int(multiple or batch_size),
            min_growth=float(min_growth),
        )

    def _drops(self, epoch: int) -> int:
        """Milestones passed by `epoch`: how many times decay_lr has divided g by then."""
        return sum(1 for m in self.milestones if m <= epoch)

    def __call__(self, epoch: int, history: History = {}) -> Plan:
        state = self._state
        measured = history.get(GNS_B_SIMPLE, ())
        for value in measured[state.seen :]:
            state.seen += 1  # measured after epoch seen-1: decides B from epoch `seen`
            if not math.isfinite(value):
                continue
            ceiling = min(self.max_batch_size, math.floor(self.batch_size * self.factor ** self._drops(state.seen)))
            target = min(ceiling, max(self.batch_size, math.ceil(value / self.multiple) * self.multiple))
            if target >= state.batch_size * self.min_growth or (target == ceiling > state.batch_size):
                state.batch_size = target
        drops = self._drops(epoch)
        lr = self.lr * (state.batch_size / self.batch_size) / self.factor**drops  # g on decay_lr's schedule
        return Plan(lr=lr, batch_size=state.batch_size, momentum=self.momentum)

    def state_dict(self) -> dict:
        return asdict(self._state)

    def load_state_dict(self, state: dict) -> None:
        self._state = _AdaptiveState(**state)

    def metrics(self) -> dict[str, float]:
        return {}  # its Plan says it all


@dataclass
class _CriticalState:
    """What a CriticalBatchSchedule decided at the milestones passed so far, one entry each."""

    batch_sizes: list[int] = field(default_factory=list)  # B from that milestone on
    lrs: list[float] = field(default_factory=list)  # lr from that milestone on
    caps: list[float | None] = field(default_factory=list)  # cap_factor x B_simple it used (samples); None: none measured


@dataclass(eq=False)
class CriticalBatchSchedule:
    """The paper's step schedule with the batch grown only up to the measured critical batch size.

    At each milestone the noise scale drops by `factor`, as in decay_lr and increase_bs, so g
    stays on decay_lr's schedule at every epoch. The drop grows B, but only while the new B
    stays <= cap = cap_factor x B_simple, the smoothed gradient noise scale (src/gns.py) logged
    for the epoch before the milestone, i.e. measured on the steps before it (B_crit ~ B_simple,
    McCandlish et al. 2018), and <= max_batch_size; what the cap leaves of the factor divides lr,
    as StepSchedule does at its cap. B never shrinks: with the cap at or below the current B the
    whole drop divides lr. Each milestone decides afresh, so a B_simple that has grown since (it
    grows as the loss falls) lets a later milestone grow B again.

    A milestone whose measurement is nan (no measured step yet, or the smoothed |G|^2 estimate
    not yet positive) has no cap to go by: B is kept and the whole drop divides lr, decay_lr's
    step, the one that keeps g on schedule without any claim about the batch; its cap is
    logged as nan.

    metrics() is what the loop logs per epoch: gns_batch_cap, the cap of the latest milestone
    passed by the epoch last planned (nan before the first milestone).

    Deterministic given the measurements, which are deterministic given the seed. Its decisions
    are its state (state_dict, JSON-able): a resumed run replays none of them.
    """

    follows: ClassVar[tuple[str, ...]] = (GNS_B_SIMPLE,)

    name: str
    lr: float  # initial
    batch_size: int  # initial
    momentum: float
    factor: float
    milestones: tuple[int, ...]
    max_batch_size: int
    cap_factor: float
    _state: _CriticalState = field(init=False, repr=False)
    _passed: int = field(init=False, repr=False, default=0)  # milestones passed by the epoch last planned

    def __post_init__(self):
        self._state = _CriticalState()

    @classmethod
    def for_run(
        cls,
        *,
        name: str,
        lr: float,
        batch_size: int,
        factor: float,
        milestones: Sequence[float],
        max_batch_size: int | None,
        cap_factor: float,
        n_train: int,
        epochs: int,
        optimizer_momentum: float,
    ) -> CriticalBatchSchedule:
        """Fractional milestones resolved; max_batch_size None = N / 10."""
        return cls(
            name=name, lr=float(lr), batch_size=int(batch_size), momentum=float(optimizer_momentum),
            factor=float(factor), milestones=milestone_epochs(milestones, epochs),
            max_batch_size=batch_cap(max_batch_size, n_train), cap_factor=float(cap_factor),
        )

    def __call__(self, epoch: int, history: History = {}) -> Plan:
        state = self._state
        measured = history.get(GNS_B_SIMPLE, ())
        for milestone in self.milestones[len(state.caps) :]:
            if milestone > epoch:
                break
            if len(measured) < milestone:
                raise ValueError(
                    f"{self.name}: the milestone at epoch {milestone} needs gns_b_simple of epoch {milestone - 1}, "
                    f"{len(measured)} values given; pass the whole history of the run"
                )
            self._decide(measured[milestone - 1])
        self._passed = passed = sum(1 for m in self.milestones if m <= epoch)
        if passed == 0:
            return Plan(lr=self.lr, batch_size=self.batch_size, momentum=self.momentum)
        return Plan(lr=state.lrs[passed - 1], batch_size=state.batch_sizes[passed - 1], momentum=self.momentum)

    def _decide(self, b_simple: float) -> None:
        state = self._state
        batch_size = state.batch_sizes[-1] if state.caps else self.batch_size
        lr = state.lrs[-1] if state.caps else self.lr
        cap = self.cap_factor * b_simple
        if math.isnan(cap):
            ceiling = batch_size  # nothing measured: no growth
        else:
            ceiling = self.max_batch_size if cap >= self.max_batch_size else math.floor(cap)
        grown, lr = drop_by_growing(batch_size, lr, self.factor, ceiling)
        state.batch_sizes.append(grown)
        state.lrs.append(lr)
        state.caps.append(None if math.isnan(cap) else float(cap))

    def metrics(self) -> dict[str, float]:
        cap = self._state.caps[self._passed - 1] if self._passed else None
        return {GNS_BATCH_CAP: math.nan if cap is None else cap}

    def state_dict(self) -> dict:
        return asdict(self._state)

    def load_state_dict(self, state: dict) -> None:
        self._state = _CriticalState(**state)
