"""The distilled influence matrix from the shards' results (docs/algorithms.md §14.3-§14.4).

p_L = G_L V^T (L x M, float64: cosines of unit rows) from the landmark features and the
validation features, then the kernel ridge regression of `selection.distill.propagate` from the
landmarks to every example, written as p_hat (N x M float32) into a file that is memory-mapped
while it is filled, never held whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from numpy.lib.format import open_memmap

from selection.artifacts import StaleArtifactError
from selection.distill import propagate


@dataclass(frozen=True)
class DistilledScores:
    """What was fitted: the bandwidth and ridge of the regression, and the matrix's shape."""

    sigma: float
    ridge: float
    rows: int
    columns: int
    embedding_dim: int


def check_cover(indices: Sequence[np.ndarray], landmarks: np.ndarray) -> None:
    """The landmark feature shards, in shard order, hold exactly the drawn landmarks in order."""
    if not np.array_equal(np.concatenate([np.asarray(i) for i in indices]), landmarks):
        raise StaleArtifactError("landmark feature shards do not cover the drawn landmarks in order")


def landmark_scores(features: Sequence[np.ndarray], validation: np.ndarray) -> np.ndarray:
    """p_L (L x M float64) from the landmark feature shards and the validation features."""
    gradients = np.concatenate([np.asarray(f, dtype=np.float64) for f in features])
    return gradients @ np.asarray(validation, dtype=np.float64).T


def write_distilled_scores(
    embedding_shards: Sequence[np.ndarray],
    landmarks: np.ndarray,
    scores_at_landmarks: np.ndarray,
    ridge: float,
    pool: int,
    scores_path: Path,
    landmark_scores_path: Path,
    progress: Callable[[int], None] | None = None,
) -> DistilledScores:
    """Fit the regression on the landmarks' embeddings and write p_hat and p_L (float32 .npy)."""
    embeddings = propagate.ConcatenatedRows(list(embedding_shards))
    if embeddings.shape[0] != pool:
        raise StaleArtifactError(
            f"embedding rows ({embeddings.shape[0]}) do not match the training pool ({pool} lines)"
        )
    model = propagate.fit(embeddings.take(landmarks), scores_at_landmarks, ridge)
    columns = scores_at_landmarks.shape[1]
    scores = open_memmap(scores_path, mode="w+", dtype=np.float32, shape=(pool, columns))
    propagate.propagate(model, embeddings, scores, progress=progress)
    scores.flush()
    del scores
    np.save(landmark_scores_path, scores_at_landmarks.astype(np.float32), allow_pickle=False)
    return DistilledScores(
        sigma=model.sigma, ridge=model.ridge, rows=pool, columns=int(columns), embedding_dim=int(embeddings.shape[1])
    )
