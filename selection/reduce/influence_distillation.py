"""Influence Distillation's selection: round robin over validation examples (docs/algorithms.md §14.5).

The plain loop (`naive_round_robin`, the oracle), on the raw N x M matrix (no z-scores):

    rng = numpy.random.default_rng(seed); S = []
    while |S| < B:
        for j in rng.permutation(M):                  # a fresh random column order every round
            if |S| == B: stop
            i* = argmax_{i not in S} A_ij  (ties: lowest index);  append i* to S

`round_robin_order` returns exactly the same list. Fewer than B examples are taken before any
turn, so a column's pick is always within its own top B: each column's top B (ranked with
`normalize.top_order`, the shared tie rule) is computed once, and each turn advances that column's
cursor past examples already taken. Cost: one read of A per column chunk plus O(M·B) for the
rankings, instead of O(B·N) for the loop.
"""

from __future__ import annotations

import numpy as np

from selection.reduce import normalize

COLUMN_CHUNK_BYTES = 256 << 20  # float64 (N x columns) buffer used to rank a chunk of columns


def _column_rankings(matrix: np.ndarray, budget: int) -> np.ndarray:
    """(M, min(B, N)) row indices: each column's top B, largest first, ties to the lower index."""
    n, m = matrix.shape
    width = min(budget, n)
    dtype = np.int32 if n < 2**31 else np.int64
    rankings = np.empty((m, width), dtype=dtype)
    chunk = max(1, min(m, COLUMN_CHUNK_BYTES // (8 * max(1, n))))
    for first in range(0, m, chunk):
        last = min(m, first + chunk)
        columns = np.empty((last - first, n))  # one contiguous row per column
        for lo, hi in normalize.row_blocks(n):
            columns[:, lo:hi] = normalize.as_float64_block(matrix, lo, hi)[:, first:last].T
        for offset, values in enumerate(columns):
            rankings[first + offset] = normalize.top_order(values, width)
    return rankings


def round_robin_order(matrix: np.ndarray, budget: int, seed: int) -> list[int]:
    """The ordered selection of the module docstring's loop, computed from per-column rankings."""
    n, m = matrix.shape
    rankings = _column_rankings(matrix, budget)
    rng = np.random.default_rng(seed)
    return normalize.round_robin(rankings, n, budget, lambda: rng.permutation(m))


def naive_round_robin(matrix: np.ndarray, budget: int, seed: int) -> list[int]:
    """The plain loop (float64, O(B·N)): the oracle `round_robin_order` must equal."""
    a = np.asarray(matrix, dtype=np.float64)
    n, m = a.shape
    available = np.ones(n, dtype=bool)
    rng = np.random.default_rng(seed)
    order: list[int] = []
    while len(order) < budget:
        for j in rng.permutation(m):
            if len(order) == budget:
                break
            column = np.where(available, a[:, j], -np.inf)
            best = column.max()
            pick = int(np.flatnonzero(available & (column == best))[0])
            available[pick] = False
            order.append(pick)
    return order
