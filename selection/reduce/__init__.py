"""Reductions of the attribution matrix to an ordered selection (docs/algorithms.md §9-§15).

`reduce_matrix` runs one method of `registry.REDUCERS` (bids, less, quota, random,
influence-distillation) on an N x M matrix (memory-mapped, read in row blocks); `naive` holds the
plain reference loops the fast engines equal exactly; the shared float64 arithmetic is defined in
`normalize`. `dsel reduce` is `cli`.
"""

from selection.reduce.api import reduce_matrix
from selection.reduce.base import Reduction, ReductionError, resolve_budget
from selection.reduce.matrix import load_matrix, load_tasks
from selection.reduce.registry import ALL_METHODS, METHODS, REDUCERS

__all__ = [
    "ALL_METHODS",
    "METHODS",
    "REDUCERS",
    "Reduction",
    "ReductionError",
    "load_matrix",
    "load_tasks",
    "reduce_matrix",
    "resolve_budget",
]
