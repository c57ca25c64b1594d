"""The reference reductions: docs/algorithms.md §9-§14 written as plainly as possible.

These are the oracles the fast engines are tested (and benchmarked) against. They hold A in
memory as float64 and cost O(B·N·M) for BIDS; use them on small matrices only. The numbers
they compare come from `selection.reduce.normalize` (which defines the arithmetic: float64,
blocked column statistics, entrywise z-scores and task means); everything else is here.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from selection.reduce import normalize


def bids_matrix(matrix, tasks: Sequence[str], *, granularity: str, normalize_columns: bool) -> np.ndarray:
    """The matrix the BIDS loop runs on: Ã (or A), task-averaged for granularity='task'."""
    a = np.asarray(matrix, dtype=np.float64)
    if normalize_columns:
        stats = normalize.column_stats(a)
        x = (a - stats.mean) / stats.scale
        x[:, stats.constant] = 0.0
    else:
        x = a.copy()
    if granularity == "task":
        x = normalize.task_means(x, normalize.task_groups(tasks))
    return x


def naive_bids(
    matrix,
    tasks: Sequence[str],
    budget: int,
    *,
    granularity: str = "instance",
    normalize_columns: bool = True,
    iterative: bool = True,
) -> list[int]:
    """docs/algorithms.md §10: u_i = max_j (X_ij - r_j) over unselected i; take argmax (lowest index
    on ties); r = (running float64 sum of the selected rows, in selection order) / |S|."""
    x = bids_matrix(matrix, tasks, granularity=granularity, normalize_columns=normalize_columns)
    n, d = x.shape
    selected = np.zeros(n, dtype=bool)
    total = np.zeros(d)
    r = np.zeros(d)
    order: list[int] = []
    for _ in range(budget):
        utility = (x - r).max(axis=1)
        utility[selected] = -np.inf
        pick = int(np.argmax(utility))  # first maximum = lowest index
        order.append(pick)
        selected[pick] = True
        if iterative:
            total += x[pick]
            r = total / len(order)
    return order


def naive_less(matrix, tasks: Sequence[str], budget: int) -> list[int]:
    """s_i = max_k mean_{j in task k} A_ij on raw A; the top B by s, ties to the lower index."""
    a = np.asarray(matrix, dtype=np.float64)
    score = normalize.task_means(a, normalize.task_groups(tasks)).max(axis=1)
    return sorted(range(a.shape[0]), key=lambda i: (-score[i], i))[:budget]


def task_mean_zscores(matrix, tasks: Sequence[str]) -> np.ndarray:
    """(N, K) task means of the instance-normalized Ã, tasks in sorted-name order."""
    z = bids_matrix(matrix, tasks, granularity="instance", normalize_columns=True)
    return normalize.task_means(z, normalize.task_groups(tasks))


def naive_quota(matrix, tasks: Sequence[str], budget: int) -> list[int]:
    """Round robin over tasks in sorted-name order; each turn, the task takes its highest
    remaining example by its task-mean Ã (ties to the lower index) until B are taken."""
    means = task_mean_zscores(matrix, tasks)
    n, k = means.shape
    rankings = [sorted(range(n), key=lambda i: (-means[i, t], i)) for t in range(k)]
    taken: set[int] = set()
    order: list[int] = []
    while len(order) < budget:
        for ranking in rankings:
            if len(order) == budget:
                break
            pick = next(i for i in ranking if i not in taken)
            taken.add(pick)
            order.append(pick)
    return order


def naive_composition(matrix, tasks: Sequence[str], indices: Sequence[int]) -> dict[str, int]:
    """docs/algorithms.md §15: each selected example counts for the task whose task-mean Ã is
    largest (first task in sorted-name order on ties); every task is listed."""
    names = sorted(set(tasks))
    means = task_mean_zscores(matrix, tasks)
    counts = {name: 0 for name in names}
    for i in indices:
        row = list(means[i])
        counts[names[row.index(max(row))]] += 1
    return counts
