"""The baselines (docs/algorithms.md §11-§13) and the composition (§15), in row blocks.

Each equals its oracle in `selection.reduce.naive` exactly; the arithmetic is that of
`selection.reduce.normalize`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from selection.reduce import normalize
from selection.reduce.normalize import ColumnStats, TaskGroups


def less_order(matrix: np.ndarray, groups: TaskGroups, budget: int) -> list[int]:
    """LESS task-max: s_i = max_k mean_{j in task k} A_ij on raw A; top B, ties to lower index."""
    n = matrix.shape[0]
    score = np.empty(n)
    for lo, hi in normalize.row_blocks(n):
        block = normalize.as_float64_block(matrix, lo, hi)
        score[lo:hi] = normalize.task_means(block, groups).max(axis=1)
    return normalize.top_order(score, budget).tolist()


def task_mean_zscores(matrix: np.ndarray, stats: ColumnStats, groups: TaskGroups) -> np.ndarray:
    """(K, N): each task's mean Ã over its columns, one contiguous row per task."""
    n = matrix.shape[0]
    out = np.empty((len(groups.names), n))
    for lo, hi in normalize.row_blocks(n):
        block = normalize.zscore(normalize.as_float64_block(matrix, lo, hi), stats)
        out[:, lo:hi] = normalize.task_means(block, groups).T
    return out


def quota_order(matrix: np.ndarray, stats: ColumnStats, groups: TaskGroups, budget: int) -> list[int]:
    """Per-task quota: round robin over tasks in sorted-name order; each turn a task takes its
    highest not-yet-taken example by its task-mean Ã (ties to the lower index), until B.
    Each task thus gets floor(B/K) or one more (the first B mod K tasks in name order)."""
    means = task_mean_zscores(matrix, stats, groups)
    n = matrix.shape[0]
    # Fewer than B examples are taken before any turn, so a task's pick is within its top B.
    rankings = [normalize.top_order(row, budget) for row in means]
    del means
    return normalize.round_robin(rankings, n, budget, lambda: range(len(rankings)))


def random_order(n: int, budget: int, seed: int) -> list[int]:
    """B distinct indices: np.random.default_rng(seed).choice(N, size=B, replace=False), in the
    order drawn (numpy's Generator.choice without replacement, shuffle=True)."""
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.choice(n, size=budget, replace=False)]


def composition(
    matrix: np.ndarray, stats: ColumnStats, groups: TaskGroups, indices: Sequence[int]
) -> dict[str, int]:
    """docs/algorithms.md §15: every selected example counts for the task with the largest
    task-mean Ã (the instance-normalized one, whatever the method's switches); ties go to the first
    task in sorted-name order. Every task is listed, 0 when none is closest."""
    counts = np.zeros(len(groups.names), dtype=np.int64)
    rows = np.sort(np.asarray(indices, dtype=np.int64))  # sorted: sequential reads of A
    for lo, hi in normalize.row_blocks(rows.size):
        block = np.asarray(matrix[rows[lo:hi]], dtype=np.float64)
        means = normalize.task_means(normalize.zscore(block, stats), groups)
        counts += np.bincount(means.argmax(axis=1), minlength=len(groups.names))
    return {name: int(c) for name, c in zip(groups.names, counts)}
