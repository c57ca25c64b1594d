"""quota-sample: per-task quotas, each filled by a seeded uniform draw among the task's top
candidates (docs/algorithms.md §18.3: a dsel method, not one of the papers'; bench/quality/README.md
has the evidence).

Why: inside one task, taking the top-k of a single influence score collapses onto near-copies of
the few validation examples (one answer class, the validation answers), and bench/quality
measured that a uniform draw within each task at BIDS's or quota's own per-task counts beats
the top-k. Influence still separates helpful from harmful data (wrong answers, near-rule
distractors, off-target items score low). So influence is used as a filter and randomness for
diversity:

    Ã = column z-scores of A (as BIDS and quota); s_k = mean of Ã over task k's columns
    quota_k = floor(B/K), plus one for the first (B mod K) tasks in sorted-name order
    for each task k in name order: C_k = the top ceil(c * quota_k) examples by s_k (ties: lower
        index), in an order drawn by numpy.random.default_rng(seed).permutation, followed by the
        rest of the ranking in score order (used only when other tasks took C_k's examples)
    round robin over tasks in name order: each turn a task takes the next example of its list
        that is not yet taken, until B are taken

`candidates` c = 1 takes each task's top quota_k (quota's subset when tasks do not compete for
examples); larger c trades score for diversity.
"""

from __future__ import annotations

import math

import numpy as np

from selection.reduce import normalize
from selection.reduce.normalize import ColumnStats, TaskGroups
from selection.reduce.simple import task_mean_zscores


def quota_sample_order(
    matrix: np.ndarray, stats: ColumnStats, groups: TaskGroups, budget: int, *, candidates: float, seed: int
) -> list[int]:
    """The ordered selection of the module docstring."""
    if not math.isfinite(candidates) or candidates < 1:
        raise ValueError(f"candidates must be a number >= 1, got {candidates!r}")
    means = task_mean_zscores(matrix, stats, groups)
    n = matrix.shape[0]
    tasks = len(groups.names)
    quotas = [budget // tasks + (k < budget % tasks) for k in range(tasks)]
    rng = np.random.default_rng(seed)
    lists = []
    for k, row in enumerate(means):
        head = min(n, math.ceil(candidates * quotas[k]))
        ranking = normalize.top_order(row, min(n, head + budget))  # enough to refill after collisions
        lists.append(np.concatenate([ranking[:head][rng.permutation(head)], ranking[head:]]))
    del means
    return normalize.round_robin(lists, n, budget, lambda: range(len(lists)))
