"""The gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018): the batch size
beyond which a larger batch buys less than proportional progress per step.

Within one step the loop has, at no extra backward pass, the gradient of the whole batch
(B_big samples) and those of its parts (the micro-batches, or two halves). Since
E|G_b|^2 = |G|^2 + tr(Sigma) / b for a mean gradient over b samples, their squared norms give
unbiased estimates (McCandlish et al. 2018, "An Empirical Model of Large-Batch Training",
arXiv 1812.06162, appendix A):

    |G|^2     ~= (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~= (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

|G_small|^2 is the mean over the parts of their squared norms; when the parts differ in size
b_i, its expectation is |G|^2 + tr(Sigma) * mean_i(1 / b_i), so B_small must be the HARMONIC
mean of the b_i for both estimates to stay unbiased (the loop passes it; tests/test_gns.py
shows the arithmetic mean's bias).

One step's estimates are noisy and their ratio more so, so both are smoothed by exponential
moving averages before dividing. The averages' memory is counted in training samples, not in
measurements: a measurement stands for the `every` steps of B samples it was drawn among, and
weighs exp(-every * B / memory) of the past, so the average forgets at the same pace per epoch
at B = 64 as at B = 2,048 (per measured step it would remember ~0.6 epoch at B 64 and 10-16 epochs
at B >= 1,000, and lag a growing B_simple where B is large). Pure Python: the loop hands in four
numbers per measured step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from src.schema import GNS_B_SIMPLE, GNS_GRAD_SQ, GNS_TRACE


@dataclass
class NoiseScaleEstimator:
    memory: float  # samples: the e-folding memory of the averages (trainer.gns_memory_epochs x N)
    every: int  # measure one step in `every`: the parts of a measured step train slower
    grad_sq: float | None = None  # moving average of the |G|^2 estimates
    trace: float | None = None  # moving average of the tr(Sigma) estimates
    weight: float = 0.0  # the averages' total weight so far: 1 - exp(-samples / memory)

    def update(self, small_sq: float, small_batch: float, big_sq: float, big_batch: float) -> None:
        """One measured step: mean squared norm of the parts' mean gradients (parts of
        small_batch samples, the harmonic mean of their sizes when they differ) and squared norm
        of the whole batch's mean gradient (big_batch samples). It stands for `every` steps of
        big_batch samples: the past keeps the weight exp(-every * big_batch / memory). Divided by
        the total weight so far (as Adam corrects its moments), so that before a memory's worth of
        samples the averages are the plain mean of the measurements, not the first one's value."""
        grad_sq = (big_batch * big_sq - small_batch * small_sq) / (big_batch - small_batch)
        trace = (small_sq - big_sq) / (1.0 / small_batch - 1.0 / big_batch)
        past = math.exp(-self.every * big_batch / self.memory)
        kept, self.weight = past * self.weight, past * self.weight + (1 - past)
        self.grad_sq = ((kept * self.grad_sq if kept else 0.0) + (1 - past) * grad_sq) / self.weight
        self.trace = ((kept * self.trace if kept else 0.0) + (1 - past) * trace) / self.weight

    @property
    def b_simple(self) -> float:
        """tr(Sigma) / |G|^2 from the smoothed estimates; nan until they make sense."""
        if self.grad_sq is None or self.trace is None or self.grad_sq <= 0 or self.trace < 0:
            return math.nan
        return self.trace / self.grad_sq

    def metrics(self) -> dict[str, float]:
        """What the loop logs per epoch (nan before the first measured step)."""
        def known(value):
            return math.nan if value is None else value

        return {GNS_B_SIMPLE: self.b_simple, GNS_TRACE: known(self.trace), GNS_GRAD_SQ: known(self.grad_sq)}

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        """The averages so far; memory and every stay the config's (part of the run's identity)."""
        self.grad_sq, self.trace, self.weight = state["grad_sq"], state["trace"], state["weight"]
