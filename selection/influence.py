"""The attribution matrix A = sum_c w_c G_c V_c^T (docs/algorithms.md §7), built in row blocks."""

from __future__ import annotations

from typing import Sequence

import numpy as np

ROW_BLOCK = 8192


def checkpoint_weights(mean_learning_rates: Sequence[float]) -> np.ndarray:
    """w_c = the epoch's mean learning rate, normalized to sum to 1 (equal weights if all zero)."""
    rates = np.asarray(mean_learning_rates, dtype=np.float64)
    if rates.ndim != 1 or rates.size == 0:
        raise ValueError("need at least one checkpoint learning rate")
    if np.any(rates < 0) or not np.all(np.isfinite(rates)):
        raise ValueError(f"checkpoint learning rates must be finite and >= 0, got {rates.tolist()}")
    total = rates.sum()
    return rates / total if total > 0 else np.full_like(rates, 1.0 / rates.size)


def attribution_rows(
    train_features: Sequence[np.ndarray],
    validation_features: Sequence[np.ndarray],
    weights: Sequence[float] | np.ndarray,
) -> np.ndarray:
    """Rows of A for one shard: train_features[c] is (n, d), validation_features[c] is (M, d).

    Features are unit rows, so each term is a cosine; float32 accumulation in row blocks keeps
    memory at one block of each checkpoint's features.
    """
    if not (len(train_features) == len(validation_features) == len(weights)):
        raise ValueError("one train and one validation feature matrix per checkpoint weight")
    rows = train_features[0].shape[0]
    columns = validation_features[0].shape[0]
    scores = np.zeros((rows, columns), dtype=np.float32)
    validation = [np.asarray(v, dtype=np.float32) for v in validation_features]
    for start in range(0, rows, ROW_BLOCK):
        stop = min(rows, start + ROW_BLOCK)
        for weight, train, val in zip(weights, train_features, validation):
            block = np.asarray(train[start:stop], dtype=np.float32)
            scores[start:stop] += np.float32(weight) * (block @ val.T)
    return scores
