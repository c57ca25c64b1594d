"""`reduce_matrix`: validate the inputs, run one method, attach the composition."""

from __future__ import annotations

import numbers
from typing import Sequence

from selection.reduce import bids, influence_distillation, quota_sample, simple
from selection.reduce.base import (
    ALL_METHODS, GRANULARITIES, QUOTA_SAMPLE, ROUND_ROBIN, Reduction, ReductionError, resolve_budget,
)
from selection.reduce.matrix import as_matrix, check_tasks
from selection.reduce.normalize import column_stats, task_groups  # not the module: `normalize` is a switch here


def reduce_matrix(
    matrix,
    tasks: Sequence[str],
    *,
    method: str,
    budget: int,
    granularity: str = "instance",
    normalize: bool = True,
    iterative: bool = True,
    seed: int = 0,
    candidates: float = 3.0,
) -> Reduction:
    """Select `budget` rows of the N x M attribution matrix with `method` (ALGORITHMS.md §5).

    matrix: N x M float16/32/64 array or memory map (read in row blocks, not copied).
    tasks: one task label per column.
    budget: a count in [1, N] (a float or a string goes through `resolve_budget`).
    granularity, normalize, iterative: the BIDS switches (ignored by other methods).
    seed: the seed of the random method, of influence-distillation's round-robin column
        orders and of quota-sample's draws (ignored by other methods).
    candidates: quota-sample's candidate pool per task, as a multiple of its quota (>= 1).
    The matrix must be finite (every method checks, in one pass with the column statistics).
    """
    if method not in ALL_METHODS:
        raise ReductionError(
            f"unknown method {method!r}; expected one of {', '.join(ALL_METHODS)}", input="method"
        )
    if granularity not in GRANULARITIES:
        raise ReductionError(
            f"unknown granularity {granularity!r}; expected one of {', '.join(GRANULARITIES)}",
            input="granularity",
        )
    a = as_matrix(matrix)
    labels = check_tasks(tasks, a.shape[1])
    count = resolve_budget(budget, a.shape[0])
    seeded = method in ("random", ROUND_ROBIN, QUOTA_SAMPLE)
    if seeded and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
        raise ReductionError(f"seed {seed!r} must be a non-negative integer", input="seed")
    stats = column_stats(a)  # also rejects NaN/inf, naming the first one
    groups = task_groups(labels)
    if method == "bids":
        indices = bids.bids_order(
            a, stats, groups, count,
            granularity=granularity, normalize_columns=bool(normalize), iterative=bool(iterative),
        )
        parameters = {
            "method": method,
            "granularity": granularity,
            "normalize": bool(normalize),
            "iterative": bool(iterative),
        }
    elif method == "less":
        indices = simple.less_order(a, groups, count)
        parameters = {"method": method}
    elif method == "quota":
        indices = simple.quota_order(a, stats, groups, count)
        parameters = {"method": method}
    elif method == QUOTA_SAMPLE:
        if isinstance(candidates, bool) or not isinstance(candidates, numbers.Real) or not candidates >= 1:
            raise ReductionError(f"candidates {candidates!r} must be a number >= 1", input="candidates")
        indices = quota_sample.quota_sample_order(
            a, stats, groups, count, candidates=float(candidates), seed=int(seed)
        )
        parameters = {"method": method, "candidates": float(candidates), "seed": int(seed)}
    elif method == ROUND_ROBIN:
        indices = influence_distillation.round_robin_order(a, count, int(seed))
        parameters = {"method": method, "seed": int(seed)}
    else:
        indices = simple.random_order(a.shape[0], count, int(seed))
        parameters = {"method": method, "seed": int(seed)}
    return Reduction(
        method=method,
        budget=count,
        indices=indices,
        composition=simple.composition(a, stats, groups, indices),
        parameters=parameters,
    )
