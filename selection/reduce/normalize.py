"""The arithmetic every reduction shares: column z-scores, task means and orderings.

"Exactly equal to the naive loop" needs one defined arithmetic. These functions define the
numbers a selection is made from; the naive oracles (`selection.reduce.naive`) and the fast
engines both call them, and everything else they compute is entrywise IEEE float64:

- Everything is float64. A float16/32 entry converts to float64 exactly.
- Column statistics (`column_stats`) are computed in row blocks of STATS_ROW_BLOCK rows from
  row 0, whatever the memory layout or sharding of A: mean = (running sum over blocks of
  numpy's axis-0 sum of the C-ordered float64 block) / N; the population variance likewise
  from (A - mean)^2, / N (ddof=0); std = sqrt. A column is constant when its max equals its
  min (or its std is 0); its z-scores are then 0.
- z-score (`zscore`): Ã_ij = (A_ij - mean_j) / std_j, two correctly rounded IEEE operations
  per entry, so any row or column of Ã can be recomputed alone, bit for bit.
- Task means (`task_means`): tasks in sorted-name order; a task's mean is the running sum of
  its columns in ascending column order, divided by their count. Also entrywise, so a block of
  rows gives the same numbers as the whole matrix.
- The BIDS loop itself (see `naive.naive_bids`): u_i = max_j fl(X_ij - r_j) (max is exact),
  r = (running float64 sum of the selected rows, in selection order) / |S|; comparisons are
  exact, ties go to the lowest index. `top_order` is sorted(key=(-value, index)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from selection.reduce.base import ReductionError

STATS_ROW_BLOCK = 512  # rows per block of the column statistics: part of their definition
ROW_BLOCK = 4096  # rows per block of entrywise passes (any size gives the same numbers)


@dataclass(frozen=True)
class ColumnStats:
    mean: np.ndarray  # (M,) float64
    std: np.ndarray  # (M,) float64, population (ddof=0)
    constant: np.ndarray  # (M,) bool: max == min (z-scores are 0)
    scale: np.ndarray  # (M,) the divisor: std, or 1 for constant columns (then set to 0)


def row_blocks(n: int, rows: int = ROW_BLOCK):
    for start in range(0, n, rows):
        yield start, min(n, start + rows)


def as_float64_block(matrix: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) as a C-ordered float64 array (a view when A already is one)."""
    return np.asarray(matrix[start:stop], dtype=np.float64, order="C")


def _first_bad(block: np.ndarray, start: int) -> ReductionError:
    row, column = np.argwhere(~np.isfinite(block))[0]
    value = block[row, column]
    return ReductionError(
        f"non-finite value {value} at row {start + int(row)}, column {int(column)} "
        "(0-based; the first one in row-major order); the matrix must be finite",
        input="matrix",
    )


def column_stats(matrix: np.ndarray) -> ColumnStats:
    """Mean, population std and constancy of every column, in two blocked passes over A.

    Raises ReductionError naming the first non-finite entry (row-major order).
    """
    n, m = matrix.shape
    total = np.zeros(m)
    low = np.full(m, np.inf)
    high = np.full(m, -np.inf)
    for start, stop in row_blocks(n, STATS_ROW_BLOCK):
        block = as_float64_block(matrix, start, stop)
        if not np.isfinite(block).all():
            raise _first_bad(block, start)
        total += block.sum(axis=0)
        np.minimum(low, block.min(axis=0), out=low)
        np.maximum(high, block.max(axis=0), out=high)
    mean = total / n
    squares = np.zeros(m)
    for start, stop in row_blocks(n, STATS_ROW_BLOCK):
        deviation = as_float64_block(matrix, start, stop) - mean
        squares += (deviation * deviation).sum(axis=0)
    variance = squares / n
    if not np.isfinite(variance).all():
        column = int(np.flatnonzero(~np.isfinite(variance))[0])
        raise ReductionError(
            f"column {column}: values too large to z-score in float64 (variance overflows)",
            input="matrix",
        )
    std = np.sqrt(variance)
    constant = (high == low) | (std == 0)
    return ColumnStats(mean=mean, std=std, constant=constant, scale=np.where(constant, 1.0, std))


def zscore(block: np.ndarray, stats: ColumnStats, columns: slice | np.ndarray = slice(None)) -> np.ndarray:
    """Ã for a float64 block of rows (all columns, or `columns` of them); returns a new array."""
    out = (block - stats.mean[columns]) / stats.scale[columns]
    out[..., stats.constant[columns]] = 0.0
    return out


@dataclass(frozen=True)
class TaskGroups:
    """Tasks in sorted-name order and the (ascending) columns of each."""

    names: tuple[str, ...]
    columns: tuple[np.ndarray, ...]
    of_column: np.ndarray  # (M,) position of each column's task in `names`


def task_groups(tasks: Sequence[str]) -> TaskGroups:
    names = tuple(sorted(set(tasks)))
    position = {name: k for k, name in enumerate(names)}
    of_column = np.array([position[t] for t in tasks], dtype=np.int64)
    columns = tuple(np.flatnonzero(of_column == k) for k in range(len(names)))
    return TaskGroups(names=names, columns=columns, of_column=of_column)


def task_means(block: np.ndarray, groups: TaskGroups) -> np.ndarray:
    """(n, K) task means of a float64 (n, M) block: sequential sums in column order / count."""
    transposed = np.ascontiguousarray(block.T)  # contiguous columns; values unchanged
    out = np.empty((len(groups.names), block.shape[0]))
    for k, columns in enumerate(groups.columns):
        total = transposed[columns[0]].copy()
        for column in columns[1:]:
            total += transposed[column]
        out[k] = total / len(columns)
    return np.ascontiguousarray(out.T)


def top_order(values: np.ndarray, count: int) -> np.ndarray:
    """Positions of the `count` largest values, largest first, ties to the lower position.

    Equivalent to sorted(range(n), key=lambda i: (-values[i], i))[:count], in O(n) plus a sort
    of the `count` winners. The values must be free of NaN.
    """
    n = values.shape[0]
    count = min(count, n)
    if count <= 0:
        return np.empty(0, dtype=np.int64)
    if count < n:
        threshold = np.partition(values, n - count)[n - count]  # the count-th largest value
        above = np.flatnonzero(values > threshold)
        equal = np.flatnonzero(values == threshold)[: count - above.size]
        candidates = np.concatenate([above, equal])
    else:
        candidates = np.arange(n)
    keys = -values[candidates]
    # An unstable sort is 4-5x faster than a stable one; the tied entries (equal values) are
    # then put back in position order: one lexsort of just those entries by (run, position).
    order = np.argsort(keys, kind="quicksort")
    ranked = candidates[order]
    sorted_keys = keys[order]
    tied = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
    if tied.size:
        member = np.zeros(ranked.size, dtype=bool)
        member[tied] = True
        member[tied + 1] = True
        slots = np.flatnonzero(member)  # runs of equal values occupy contiguous slots
        run = np.cumsum(np.concatenate([[0], sorted_keys[slots[1:]] != sorted_keys[slots[:-1]]]))
        entries = ranked[slots]
        ranked[slots] = entries[np.lexsort((entries, run))]
    return ranked


def round_robin(rankings: Sequence[np.ndarray] | np.ndarray, n: int, budget: int, turns: Callable[[], Iterable[int]]) -> list[int]:
    """Take turns until `budget` picks: in each round `turns()` says who picks in which order,
    and a turn's pick is that list's highest-ranked row not taken yet (rankings: best first).

    Fewer than `budget` rows are taken before any turn, so each ranking needs only its top
    `budget` entries: a cursor per list moves past taken rows, O(total picks + skips).
    """
    taken = np.zeros(n, dtype=bool)
    cursor = [0] * len(rankings)
    order: list[int] = []
    while len(order) < budget:
        for k in turns():
            if len(order) == budget:
                break
            ranking, p = rankings[k], cursor[k]
            while taken[ranking[p]]:
                p += 1
            pick = int(ranking[p])
            cursor[k] = p + 1
            taken[pick] = True
            order.append(pick)
    return order
