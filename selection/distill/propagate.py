"""RBF kernel ridge regression from the landmarks to every example (docs/algorithms.md §14.4).

    k(x, y) = exp(-|x - y|^2 / (2 sigma^2)),   sigma = median distance over all landmark pairs
    W = (K_LL + lambda I)^-1 p_L                 (L x M), lambda = ridge x mean(diag K_LL)
    p_hat = K_NL W                               (N x M), computed in blocks of rows

Exact definitions (the paper leaves them open):
- sigma is the median of the L(L-1)/2 distances between distinct landmarks (all pairs, no
  subsampling; numpy's median, the mean of the two middle values for an even count). When it
  is 0 (duplicate embeddings) the mean pairwise distance is used, and when that is 0 too (all
  landmarks equal, or L = 1) sigma = 1: the kernel is then constant on the landmarks anyway.
- Squared distances are |x|^2 + |y|^2 - 2 x.y in float64, clamped at 0; the kernel diagonal is
  exactly 1, so lambda = ridge.
- The solve is float64 (LU, `numpy.linalg.solve`); K_LL + lambda I is symmetric positive definite.
- At a landmark, p_hat = K_LL W = p_L - lambda W: the landmark values come back up to the ridge
  term (tests check this identity and a dense solve).
Memory: the L x L system, plus one (rows x L) kernel block at a time (`row_block` rows, chosen so
a block stays near 64 MiB); the N x L kernel is never formed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

BLOCK_BYTES = 64 << 20  # target size of one float64 (rows x L) kernel block


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) float64 |a_i - b_j|^2 by the expansion, clamped at 0."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    out = a @ b.T
    out *= -2.0
    out += np.einsum("ij,ij->i", a, a)[:, None]
    out += np.einsum("ij,ij->i", b, b)[None, :]
    np.maximum(out, 0.0, out=out)
    return out


def median_pairwise_distance(points: np.ndarray) -> float:
    """The bandwidth sigma of the module docstring (median distance over distinct pairs)."""
    return _bandwidth(squared_distances(points, points))


def _bandwidth(squared: np.ndarray) -> float:
    """sigma from the (L x L) squared distances between the landmarks."""
    count = squared.shape[0]
    if count < 2:
        return 1.0
    upper = np.sqrt(squared[np.triu(np.ones((count, count), dtype=bool), k=1)])
    sigma = float(np.median(upper))
    if sigma > 0:
        return sigma
    mean = float(upper.mean())
    return mean if mean > 0 else 1.0


def rbf(squared: np.ndarray, sigma: float) -> np.ndarray:
    """exp(-d^2 / (2 sigma^2)) in place on a float64 array of squared distances."""
    squared *= -1.0 / (2.0 * sigma * sigma)
    return np.exp(squared, out=squared)


@dataclass(frozen=True)
class KernelRidge:
    """A fitted propagation: landmark embeddings, bandwidth, ridge and the weights W (L x M)."""

    landmarks: np.ndarray  # (L, E) float64
    sigma: float
    ridge: float  # lambda, absolute
    weights: np.ndarray  # (L, M) float64

    @property
    def row_block(self) -> int:
        return max(1, BLOCK_BYTES // (8 * max(1, self.landmarks.shape[0])))

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        """p_hat for a block of rows: (n, E) -> (n, M) float64."""
        kernel = rbf(squared_distances(embeddings, self.landmarks), self.sigma)
        return kernel @ self.weights


def fit(landmark_embeddings: np.ndarray, landmark_values: np.ndarray, ridge_factor: float) -> KernelRidge:
    """Solve (K_LL + lambda I) W = p_L with sigma and lambda as the module docstring defines them."""
    points = np.asarray(landmark_embeddings, dtype=np.float64)
    values = np.asarray(landmark_values, dtype=np.float64)
    if points.ndim != 2 or values.ndim != 2 or points.shape[0] != values.shape[0]:
        raise ValueError(
            f"landmark embeddings {points.shape} and landmark values {values.shape} must be (L, E) and (L, M)"
        )
    if not np.isfinite(points).all() or not np.isfinite(values).all():
        raise ValueError("landmark embeddings and values must be finite")
    if ridge_factor <= 0:
        raise ValueError(f"distillation.ridge: must be > 0, got {ridge_factor}")
    squared = squared_distances(points, points)
    sigma = _bandwidth(squared)
    kernel = rbf(squared, sigma)
    np.fill_diagonal(kernel, 1.0)  # exact: the expansion may leave a rounding residue on the diagonal
    ridge = ridge_factor * float(np.mean(np.diag(kernel)))
    kernel[np.diag_indices_from(kernel)] += ridge
    weights = np.linalg.solve(kernel, values)
    return KernelRidge(landmarks=points, sigma=sigma, ridge=ridge, weights=weights)


class ConcatenatedRows:
    """Row-shard arrays (memory maps) read as one (N, E) matrix, a row range at a time."""

    def __init__(self, parts: Sequence[np.ndarray]):
        if not parts:
            raise ValueError("no embedding shards")
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [p.shape[0] for p in self.parts])
        self.shape = (int(self.offsets[-1]), int(self.parts[0].shape[1]))

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as float64, gathered across shard boundaries."""
        pieces = []
        for index, part in enumerate(self.parts):
            lo, hi = int(self.offsets[index]), int(self.offsets[index + 1])
            if hi <= start or lo >= stop:
                continue
            pieces.append(np.asarray(part[max(start, lo) - lo : min(stop, hi) - lo], dtype=np.float64))
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Rows at sorted `indices` as float64 (the landmark embeddings)."""
        out = np.empty((len(indices), self.shape[1]))
        for index, part in enumerate(self.parts):
            lo, hi = int(self.offsets[index]), int(self.offsets[index + 1])
            inside = (indices >= lo) & (indices < hi)
            if inside.any():
                out[inside] = np.asarray(part[indices[inside] - lo], dtype=np.float64)
        return out


def propagate(
    model: KernelRidge,
    embeddings,
    out: np.ndarray,
    *,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Write p_hat for every row of `embeddings` into `out` (N x M), `model.row_block` rows at a time.

    `embeddings` is an (N, E) array or a `ConcatenatedRows` of row shards. Blocks start at global
    multiples of the block size, so the numbers do not depend on how the rows are sharded. `out`
    may be a memory map; its dtype (float32 for the stored matrix) receives the float64 result
    rounded.
    """
    source = embeddings if isinstance(embeddings, ConcatenatedRows) else ConcatenatedRows([embeddings])
    total = source.shape[0]
    if out.shape[0] != total:
        raise ValueError(f"the output has {out.shape[0]} rows, the embeddings {total}")
    step = model.row_block
    for start in range(0, total, step):
        stop = min(total, start + step)
        out[start:stop] = model.predict(source.rows(start, stop))
        if progress:
            progress(stop - start)
    return out
