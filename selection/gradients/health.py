"""Feature health: how much of the training features is one direction shared by every example
(docs/algorithms.md §18.4).

Computed streaming from the rows as extraction writes them: a shard keeps the float64 sum of
its rows, their summed squared norms and counts (`FeatureStatistics`), which add up exactly over
shards. From those, per checkpoint, the mean pairwise cosine (ḡ) and the common-direction share;
features whose mean pairwise cosine exceeds `DEGENERATE_COSINE` get a warning that says what to
change. Torch-free: the reduce stage aggregates the shards' statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

DEGENERATE_COSINE = 0.5
"""Mean pairwise cosine above which training features are reported as degenerate.

Issue 11 measured 0.81-0.90 for Adam-aware features after a 20-step warmup (selection no better
than random) and 0.08 for plain gradients on the same pool; 0.5 means the common direction
carries at least half of every pair's cosine.
"""


@dataclass
class FeatureStatistics:
    """Sufficient statistics of a set of unit feature rows: S = Σx (float64), Q = Σ|x|², the
    nonzero row count n and the zero rows (examples without a trained token, no direction)."""

    total: np.ndarray
    squared_norms: float = 0.0
    rows: int = 0
    zero_rows: int = 0

    @classmethod
    def empty(cls, dim: int) -> FeatureStatistics:
        return cls(total=np.zeros(dim, dtype=np.float64))

    def add(self, block: np.ndarray) -> None:
        """Accumulate a block of rows (any float dtype; summed in float64)."""
        values = np.asarray(block, dtype=np.float64)
        norms = np.einsum("ij,ij->i", values, values)
        zero = int(np.count_nonzero(norms == 0))
        self.total += values.sum(axis=0)
        self.squared_norms += float(norms.sum())
        self.rows += values.shape[0] - zero
        self.zero_rows += zero

    def merge(self, other: FeatureStatistics) -> FeatureStatistics:
        return FeatureStatistics(
            self.total + other.total, self.squared_norms + other.squared_norms,
            self.rows + other.rows, self.zero_rows + other.zero_rows,
        )

    def mean_pairwise_cosine(self) -> float | None:
        """(|S|² − Q) / (n(n−1)): the mean over ordered pairs i ≠ j of x_i·x_j (None below 2 rows)."""
        if self.rows < 2:
            return None
        return (float(self.total @ self.total) - self.squared_norms) / (self.rows * (self.rows - 1))

    def common_direction_share(self) -> float | None:
        """|S|² / (n·Q) = |x̄|² / mean |x|²: the share of the rows' energy Σ|x_i|² that their mean
        vector carries (Σ|x_i|² = n|x̄|² + Σ|x_i − x̄|²). None without a nonzero row."""
        if self.rows == 0 or self.squared_norms == 0:
            return None
        return float(self.total @ self.total) / (self.rows * self.squared_norms)

    def to_json(self) -> dict[str, Any]:
        """The scalar part, for a manifest (the sum vector is stored beside it as a file)."""
        return {
            "rows": self.rows, "zeroRows": self.zero_rows, "squaredNorms": self.squared_norms,
            "meanPairwiseCosine": self.mean_pairwise_cosine(),
            "commonDirectionShare": self.common_direction_share(),
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any], total: np.ndarray) -> FeatureStatistics:
        return cls(np.asarray(total, dtype=np.float64), float(document["squaredNorms"]),
                   int(document["rows"]), int(document["zeroRows"]))


@dataclass
class CheckpointHealth:
    checkpoint: int
    statistics: FeatureStatistics = field(repr=False)

    @property
    def degenerate(self) -> bool:
        cosine = self.statistics.mean_pairwise_cosine()
        return cosine is not None and cosine > DEGENERATE_COSINE

    def to_json(self) -> dict[str, Any]:
        s = self.statistics
        return {
            "checkpoint": self.checkpoint, "rows": s.rows, "zeroRows": s.zero_rows,
            "meanPairwiseCosine": s.mean_pairwise_cosine(), "commonDirectionShare": s.common_direction_share(),
            "degenerate": self.degenerate,
        }


def degenerate_warning(checkpoints: Iterable[CheckpointHealth], train_type: str) -> str | None:
    """What to tell the user when some checkpoint's features are degenerate (None when none is)."""
    bad = [c for c in checkpoints if c.degenerate]
    if not bad:
        return None
    figures = ", ".join(
        f"checkpoint {c.checkpoint}: {c.statistics.mean_pairwise_cosine():.2f}" for c in bad
    )
    change = (
        "another feature variant (gradients.trainType: sgd, plain gradients without Adam's shared "
        "momentum term)" if train_type == "adam" else "another gradients.trainType"
    )
    return (
        f"degenerate training features: mean pairwise cosine above {DEGENERATE_COSINE} ({figures}), so "
        "one direction shared by all examples dominates their influence scores, which then barely tell "
        "examples apart. Lengthen the warmup (warmup.epochs or warmup.fraction) or use " + change + "."
    )


def feature_health(checkpoints: list[CheckpointHealth], train_type: str) -> dict[str, Any]:
    """selection.json's "featureHealth": per checkpoint, the threshold, and a warning if degenerate."""
    document: dict[str, Any] = {
        "trainType": train_type,
        "threshold": DEGENERATE_COSINE,
        "checkpoints": [c.to_json() for c in checkpoints],
        "degenerate": any(c.degenerate for c in checkpoints),
    }
    warning = degenerate_warning(checkpoints, train_type)
    if warning is not None:
        document["warning"] = warning
    return document
