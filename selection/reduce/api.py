"""`reduce_matrix`: validate the inputs, run one method of the registry, attach the composition."""

from __future__ import annotations

import numbers
from typing import Sequence

from selection.reduce import simple
from selection.reduce.base import GRANULARITIES, Reduction, ReductionError, resolve_budget
from selection.reduce.matrix import as_matrix, check_tasks
from selection.reduce.normalize import column_stats, task_groups  # not the module: `normalize` is a switch here
from selection.reduce.registry import ALL_METHODS, REDUCERS, Problem


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
) -> Reduction:
    """Select `budget` rows of the N x M attribution matrix with `method` (docs/algorithms.md §9-§14).

    matrix: N x M float16/32/64 array or memory map (read in row blocks, not copied).
    tasks: one task label per column.
    budget: a count in [1, N] (a float or a string goes through `resolve_budget`).
    granularity, normalize, iterative: the BIDS switches (ignored by other methods).
    seed: the seed of the random method and of influence-distillation's round-robin column
        orders (ignored by other methods).
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
    reducer = REDUCERS[method]
    if reducer.seeded and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
        raise ReductionError(f"seed {seed!r} must be a non-negative integer", input="seed")
    stats = column_stats(a)  # also rejects NaN/inf, naming the first one
    groups = task_groups(labels)
    problem = Problem(
        matrix=a, stats=stats, groups=groups, budget=count, granularity=granularity,
        normalize=bool(normalize), iterative=bool(iterative), seed=int(seed) if reducer.seeded else seed,
    )
    indices = reducer.order(problem)
    parameters = {"method": method, **reducer.parameters(problem)}
    return Reduction(
        method=method,
        budget=count,
        indices=indices,
        composition=simple.composition(a, stats, groups, indices),
        parameters=parameters,
    )
