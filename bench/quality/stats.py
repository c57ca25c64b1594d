"""Paired statistics over seeds: mean difference with a 95% t-interval, and win counts."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

# Two-sided 95% quantiles of Student's t, by degrees of freedom (1..30); beyond: 1.96.
T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)


def t_quantile(df: int) -> float:
    return T975[df - 1] if 1 <= df <= len(T975) else 1.96


@dataclass(frozen=True)
class Interval:
    """Mean of n values with its 95% t-interval half-width (nan with fewer than 2 values)."""

    mean: float
    half: float
    n: int
    wins: int = 0  # values > 0 (for paired differences: seeds where the first was higher)

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half

    def shown(self, scale: float = 100.0, digits: int = 1) -> str:
        if self.n == 0:
            return "–"
        if self.n < 2 or math.isnan(self.half):
            return f"{scale * self.mean:+.{digits}f}"
        return (f"{scale * self.mean:+.{digits}f} [{scale * self.low:+.{digits}f}, "
                f"{scale * self.high:+.{digits}f}]")


def interval(values: list[float]) -> Interval:
    values = [v for v in values if not math.isnan(v)]  # a measurement the records lack
    n = len(values)
    if n == 0:
        return Interval(float("nan"), float("nan"), 0)
    mean = statistics.fmean(values)
    half = t_quantile(n - 1) * statistics.stdev(values) / math.sqrt(n) if n > 1 else float("nan")
    return Interval(mean, half, n, sum(v > 0 for v in values))


def paired(left: dict[int, float], right: dict[int, float]) -> Interval:
    """left − right over the seeds both have."""
    seeds = sorted(set(left) & set(right))
    return interval([left[s] - right[s] for s in seeds])
