"""Every reduction method, by name: the one list the spec, the CLI and `reduce_matrix` derive from.

A `Reducer` turns the checked inputs of `reduce_matrix` (a `Problem`) into an ordered selection
and says which switches to record with it. Adding a method is one entry in `REDUCERS`; the
spec's `selection.method`, `dsel reduce --method` and the generated CRD follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from selection.reduce import bids, influence_distillation, simple
from selection.reduce.normalize import ColumnStats, TaskGroups


@dataclass(frozen=True)
class Problem:
    """What a reducer reads: the matrix with its column statistics and task groups, the budget
    as a count, and the switches (each reducer uses the ones it declares)."""

    matrix: np.ndarray
    stats: ColumnStats
    groups: TaskGroups
    budget: int
    granularity: str
    normalize: bool
    iterative: bool
    seed: int


@dataclass(frozen=True)
class Reducer:
    """One reduction method.

    order: the ordered selection (row indices) of a problem.
    parameters: the switches that influenced it, recorded in `selection.json` after "method".
    seeded: reads `Problem.seed` (which `reduce_matrix` then checks).
    naive_oracle: its plain reference loop lives in `selection.reduce.naive` (tests iterate over
        these; influence-distillation's oracle is `influence_distillation.naive_round_robin`).
    """

    name: str
    order: Callable[[Problem], list[int]]
    parameters: Callable[[Problem], dict[str, Any]] = lambda problem: {}
    seeded: bool = False
    naive_oracle: bool = True


def _seed(problem: Problem) -> dict[str, Any]:
    return {"seed": problem.seed}


def _bids(problem: Problem) -> list[int]:
    return bids.bids_order(
        problem.matrix, problem.stats, problem.groups, problem.budget,
        granularity=problem.granularity, normalize_columns=problem.normalize, iterative=problem.iterative,
    )


REDUCERS: dict[str, Reducer] = {
    reducer.name: reducer
    for reducer in (
        Reducer(
            "bids", _bids,
            lambda p: {"granularity": p.granularity, "normalize": p.normalize, "iterative": p.iterative},
        ),
        Reducer("less", lambda p: simple.less_order(p.matrix, p.groups, p.budget)),
        Reducer("quota", lambda p: simple.quota_order(p.matrix, p.stats, p.groups, p.budget)),
        Reducer("random", lambda p: simple.random_order(p.matrix.shape[0], p.budget, p.seed), _seed, seeded=True),
        Reducer(
            "influence-distillation",
            lambda p: influence_distillation.round_robin_order(p.matrix, p.budget, p.seed),
            _seed, seeded=True, naive_oracle=False,
        ),
    )
}
ALL_METHODS: tuple[str, ...] = tuple(REDUCERS)  # what the spec, reduce_matrix and `dsel reduce` accept
METHODS: tuple[str, ...] = tuple(name for name, r in REDUCERS.items() if r.naive_oracle)
