"""Intervals that stay inside what their quantity can take, and the power of a paired test.

The verdicts compare schedules over a handful of seeds, paired by seed. A plain Student-t
interval on such numbers can print an accuracy difference of -540 points or a time ratio below
zero when one seed diverges; these functions compute the t interval on a scale where the
quantity is unbounded and map it back:

- a difference of two accuracies (points, within [-100, +100]): atanh(d / 100);
- an accuracy (%, within [0, 100]): logit(a / 100);
- a ratio of two positive numbers (times, updates): log(r);
- a quantity with no bounds (a difference of losses): as it is.

Near the middle of the range each transform is close to linear (atanh(x) ~ x for |x| < 0.1,
so a difference of a few points keeps the plain t interval's numbers); near the ends it bends so
that no bound crosses them. Where the seeds' own spread is zero (identical pairs) or cannot be
measured (one pair), a spread pooled over the other arms of the same study stands in, and the
interval says so; with none to pool, there is no interval. Pure numpy/scipy: no project imports.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Callable, Sequence

from scipy import stats

# The scales: (to the unbounded scale, back). Values at the very ends (an accuracy of exactly
# 0 or 100%, a difference of exactly +-100 points) are moved in by EDGE so the transform is finite.
EDGE = 1e-6


def _clip(x: float) -> float:
    return min(max(x, -1 + EDGE), 1 - EDGE)


SCALES: dict[str, tuple[Callable[[float], float], Callable[[float], float]]] = {
    # accuracy difference in points, [-100, 100]
    "difference": (lambda d: math.atanh(_clip(d / 100)), lambda z: 100 * math.tanh(z)),
    # accuracy in percent, [0, 100]
    "percent": (lambda a: math.atanh(_clip(2 * a / 100 - 1)), lambda z: 50 * (math.tanh(z) + 1)),
    # a ratio of positive numbers, (0, inf)
    "ratio": (math.log, math.exp),
    # a quantity with no bounds (a difference of two losses): the plain t interval
    "unbounded": (float, float),
}


@dataclass(frozen=True)
class Interval:
    """A centre and its interval on the quantity's own scale. `centre` is the mean (difference,
    percent) or the geometric mean (ratio) of the values; low/high are None where no interval
    could be computed; `pooled` says the spread came from the study's other arms."""

    centre: float
    low: float | None
    high: float | None
    n: int
    pooled: bool = False

    @property
    def width(self) -> float | None:
        return None if self.low is None else self.high - self.low


def spread(values: Sequence[float], scale: str) -> float | None:
    """The sample standard deviation of the values on the scale's unbounded axis (None from
    fewer than 2 values)."""
    forward, _ = SCALES[scale]
    z = [forward(v) for v in values]
    return statistics.stdev(z) if len(z) > 1 else None


def pooled_spread(groups: Sequence[Sequence[float]], scale: str) -> float | None:
    """The pooled standard deviation of several groups on the scale's axis, each weighted by
    its degrees of freedom; groups of fewer than 2 values, or with no spread, add nothing."""
    forward, _ = SCALES[scale]
    total, dof = 0.0, 0
    for values in groups:
        z = [forward(v) for v in values]
        if len(z) > 1 and statistics.stdev(z) > 0:
            total += (len(z) - 1) * statistics.variance(z)
            dof += len(z) - 1
    return math.sqrt(total / dof) if dof else None


def interval(values: Sequence[float], scale: str, confidence: float, pooled_sd: float | None = None) -> Interval:
    """The t interval of the mean of `values` on the scale's axis, mapped back. Where the values'
    own spread is zero or unmeasurable, `pooled_sd` (on the same axis, see pooled_spread) stands in."""
    forward, back = SCALES[scale]
    z = [forward(v) for v in values]
    n = len(z)
    centre_z = statistics.fmean(z)
    own = statistics.stdev(z) if n > 1 else 0.0
    sd, pooled = (own, False) if own > 0 else (pooled_sd, True)
    if not sd or n < 1 or (n < 2 and not pooled):
        return Interval(back(centre_z), None, None, n)
    # One value with a pooled spread: the pooled degrees of freedom are unknown here, so the
    # interval keeps n - 1 >= 1 of its own at least (a conservative t quantile).
    half = stats.t.ppf((1 + confidence) / 2, max(n - 1, 1)) * sd / math.sqrt(n)
    return Interval(back(centre_z), back(centre_z - half), back(centre_z + half), n, pooled)


def bounds_text(low: float | None, high: float | None, fmt: str) -> str:
    """An interval as the reports print it after its centre: " [low, high]", or "" when there is none."""
    return "" if low is None else f" [{format(low, fmt)}, {format(high, fmt)}]"


def detectable_difference(sd_points: float | None, n: int, confidence: float, power: float) -> float | None:
    """The smallest true paired difference (points) that a two-sided paired t test at this
    confidence detects with this power, from the paired differences' standard deviation in
    points over n seeds: (t_{(1+c)/2, n-1} + t_{power, n-1}) * sd / sqrt(n). None below 2 seeds."""
    if sd_points is None or n < 2:
        return None
    dof = n - 1
    return (stats.t.ppf((1 + confidence) / 2, dof) + stats.t.ppf(power, dof)) * sd_points / math.sqrt(n)


def binomial_interval(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Clopper-Pearson exact interval of a proportion k/n (e.g. seeds that diverged), as
    fractions in [0, 1]."""
    alpha = 1 - confidence
    low = 0.0 if k == 0 else stats.beta.ppf(alpha / 2, k, n - k + 1)
    high = 1.0 if k == n else stats.beta.ppf(1 - alpha / 2, k + 1, n - k)
    return float(low), float(high)
