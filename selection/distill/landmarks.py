"""Landmarks: which examples get an accurate gradient, and its preconditioning (docs/algorithms.md §14.2-§14.3).

`draw_landmarks`: L = min(landmarks, N) distinct pool indices drawn uniformly with the seed from
the whole pool (never per shard), returned sorted. Their gradients are preconditioned with
Influence Distillation's first-order Adam weighting,
`selection.gradients.preconditioners.BiasCorrectedAdamPreconditioner`.
"""

from __future__ import annotations

import numpy as np


def draw_landmarks(pool_size: int, count: int, seed: int) -> np.ndarray:
    """Sorted distinct indices: np.random.default_rng(seed).choice(N, size=min(count, N), replace=False)."""
    if pool_size < 1:
        raise ValueError("the training pool is empty")
    if count < 1:
        raise ValueError(f"distillation.landmarks: must be >= 1, got {count}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool_size, size=min(count, pool_size), replace=False)).astype(np.int64)
