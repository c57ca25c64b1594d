"""The fast BIDS engine: the docs/algorithms.md §10 loop's exact result in O(sort + B·D), not O(B·N·D).

Write X for the matrix the loop runs on (Ã, or A with normalize=false, or its task means;
N x D). Each step picks the lowest-index unselected i maximizing u_i = max_j fl(X_ij - r_j),
where fl is float64 rounding (see `selection.reduce.naive.naive_bids`).

Why per-column lists are enough. max over i of u_i is a maximum over pairs (i, j), so
    U = max_i u_i = max_j max_i fl(X_ij - r_j) = max_j fl(c_j - r_j),
with c_j the largest unselected value in column j, because rounding is monotone
(x <= y implies fl(x - r) <= fl(y - r)). c_j does not depend on r: it only changes when the
row holding it is selected. And row i ties for the maximum exactly when fl(X_ij - r_j) = U for
some column j, which (monotonicity again) puts it in a prefix of column j's unselected rows in
descending value order. So each step:
  1. U = max_j fl(c_j - r_j) (a D-vector operation); J = the columns attaining U.
  2. For each j in J, the lowest unselected index among rows with fl(X_ij - r_j) = U: the head
     of column j's list almost always (the next unselected value falls short); otherwise a
     binary search for the end of the tied prefix, then the lowest unselected index in it.
  3. The winner is the lowest of these; r = (running sum of selected rows) / |S| exactly as the
     oracle computes it, from the row recomputed bit for bit (`selection.reduce.normalize`).
  4. Columns whose head was the winner advance their pointer past selected rows.
Every comparison is on the same float64 numbers the oracle compares, so the order is identical
(no tolerance, no drift bound: the drift of r only moves U, never the per-column order).

Lists. Column j keeps its top L rows by (value desc, index asc), L = min(N, B) by default
(capped by a memory budget): since fewer than B rows are ever selected, a column of length B
never runs out. A shorter list is refilled from the full column when exhausted, and when a tied
prefix runs to the end of a truncated list the whole column is scanned exactly; both are rare
(heavy ties) and correct. A constant column ties every unselected row, so its candidate is the
lowest unselected index overall. Building the lists reads A column-block by column-block in
row blocks (no transposed copy of A: one column block of at most COLUMN_BLOCK_BYTES at a time).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from selection.reduce import normalize
from selection.reduce.normalize import ColumnStats, TaskGroups

COLUMN_BLOCK_BYTES = 256 * 2**20  # column block of A (in its dtype) read while building lists
PARALLEL_ROWS = 50_000  # below this, threads cost more than they save
TRANSPOSE_ROWS = 1024  # rows per step of that read: measured fastest on this machine
FEW_COLUMNS = 4  # heads moved one by one below this many, vectorized above
LIST_BYTES = 3 * 2**30  # cap on the per-column lists (index + value = 12 bytes per entry)


class InstanceSource:
    """X = Ã (z-scored A) or A itself, recomputed from A on demand, never stored whole."""

    def __init__(self, matrix: np.ndarray, stats: ColumnStats | None):
        self.matrix = matrix
        self.stats = stats
        self.n, self.d = matrix.shape
        self.itemsize = matrix.dtype.itemsize

    def row(self, i: int) -> np.ndarray:
        values = np.asarray(self.matrix[i], dtype=np.float64)
        return values.copy() if self.stats is None else normalize.zscore(values, self.stats)

    def column(self, j: int) -> np.ndarray:
        return self.finish(self.matrix[:, j], j)

    def raw_columns(self, start: int, stop: int) -> np.ndarray:
        """Columns [start, stop) of A as a contiguous (stop - start, N) array in A's dtype.

        Row blocks of TRANSPOSE_ROWS keep the strided reads and transposed writes in cache."""
        out = np.empty((stop - start, self.n), dtype=self.matrix.dtype)
        for lo, hi in normalize.row_blocks(self.n, TRANSPOSE_ROWS):
            out[:, lo:hi] = self.matrix[lo:hi, start:stop].T
        return out

    def finish(self, raw: np.ndarray, j: int) -> np.ndarray:
        """X[:, j] in float64 from column j of A (the same entrywise arithmetic as `zscore`)."""
        if self.stats is None:
            return np.array(raw, dtype=np.float64)
        if self.stats.constant[j]:
            return np.zeros(self.n)
        values = np.subtract(raw, self.stats.mean[j], dtype=np.float64)  # float64 operands
        values /= self.stats.scale[j]
        return values


class TaskSource:
    """X = task means of Ã (or of A), K columns, computed once in row blocks and kept (N x K)."""

    def __init__(self, matrix: np.ndarray, stats: ColumnStats | None, groups: TaskGroups):
        self.n = matrix.shape[0]
        self.d = len(groups.names)
        self.itemsize = 8
        self.values = np.empty((self.d, self.n))  # column-major: one contiguous row per task
        for lo, hi in normalize.row_blocks(self.n):
            block = normalize.as_float64_block(matrix, lo, hi)
            if stats is not None:
                block = normalize.zscore(block, stats)
            self.values[:, lo:hi] = normalize.task_means(block, groups).T

    def row(self, i: int) -> np.ndarray:
        return self.values[:, i].copy()

    def column(self, j: int) -> np.ndarray:
        return self.values[j].copy()

    def raw_columns(self, start: int, stop: int) -> np.ndarray:
        return self.values[start:stop]

    def finish(self, raw: np.ndarray, j: int) -> np.ndarray:
        return raw


class BidsEngine:
    """One run of the BIDS loop over a source (see the module docstring for the method)."""

    def __init__(self, source, budget: int, *, list_length: int | None = None):
        self.source = source
        n, d = source.n, source.d
        self.budget = budget
        if list_length is None:
            list_length = max(1, min(budget, LIST_BYTES // (12 * d)))
        self.length = max(1, min(n, list_length))
        index_type = np.int32 if n < 2**31 else np.int64
        self.index = np.empty((d, self.length), dtype=index_type)
        self.value = np.empty((d, self.length))
        self.size = np.zeros(d, dtype=np.int64)  # used entries of each list
        self.complete = np.zeros(d, dtype=bool)  # list held every then-unselected row when built
        self.constant = np.zeros(d, dtype=bool)  # every row has the same value in this column
        self.position = np.zeros(d, dtype=np.int64)  # first unselected entry of each list
        self.selected = np.zeros(n, dtype=bool)
        self.lowest = 0  # lowest unselected row (candidate of constant columns)
        self.refills = 0
        self.scans = 0
        self._build()

    def _build(self) -> None:
        n, d = self.source.n, self.source.d
        width = max(1, min(d, COLUMN_BLOCK_BYTES // (self.source.itemsize * n)))
        # Columns are independent: two threads (numpy releases the GIL in sorts and ufuncs)
        # each fill their own rows of the lists, so the result does not depend on scheduling.
        threads = min(2, os.cpu_count() or 1) if n >= PARALLEL_ROWS else 1
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for start in range(0, d, width):
                stop = min(d, start + width)
                block = self.source.raw_columns(start, stop)
                if threads == 1:
                    for j in range(start, stop):
                        self._build_column(j, block[j - start])
                else:
                    list(pool.map(lambda j, block=block, start=start: self._build_column(j, block[j - start]),
                                  range(start, stop)))
                del block
        self.head_index = self.index[:, 0].astype(np.int64)
        self.head_value = self.value[:, 0].copy()

    def _build_column(self, j: int, raw: np.ndarray) -> None:
        column = self.source.finish(raw, j)
        order = normalize.top_order(column, self.length)
        self.index[j] = order
        self.value[j] = column[order]
        self.size[j] = self.length
        self.complete[j] = self.length == self.source.n
        self.constant[j] = bool(column.max() == column.min())

    # -- the loop -------------------------------------------------------------------------

    def run(self, iterative: bool) -> list[int]:
        d = self.source.d
        selected = self.selected
        r = np.zeros(d)
        total = np.zeros(d)
        order: list[int] = []
        for step in range(1, self.budget + 1):
            gain = self.head_value - r
            best = gain.max()
            columns = np.flatnonzero(gain == best)
            if columns.size == 1:
                pick = self._candidate(int(columns[0]), best, r)
            else:
                pick = min(self._candidate(int(j), best, r) for j in columns)
            selected[pick] = True
            order.append(pick)
            if step == self.budget:
                break  # no need to move r or the heads (a spent list would refill in vain)
            if iterative:
                total += self.source.row(pick)
                r = total / step
            self._advance(np.flatnonzero(self.head_index == pick))
        return order

    def _lowest_unselected(self) -> int:
        while self.selected[self.lowest]:
            self.lowest += 1
        return self.lowest

    def _candidate(self, j: int, best: np.float64, r: np.ndarray) -> int:
        """Lowest unselected row i with fl(X_ij - r_j) == best (column j attains best)."""
        if self.constant[j]:
            return self._lowest_unselected()
        selected = self.selected
        index, value, size = self.index[j], self.value[j], int(self.size[j])
        head = int(self.position[j])
        rj = r[j]
        k = self._next_unselected(j, head + 1)
        if k < size:
            if value[k] - rj < best:  # the next unselected row falls short: head is alone
                return int(index[head])
        elif self.complete[j] or value[size - 1] - rj < best:
            return int(index[head])  # no other unselected row in the list or beyond it ties
        # Several rows tie. The tied entries form a prefix [head, end) of the list (values
        # descend); find its end by bisection.
        lo, hi = (k + 1 if k < size else size), size
        while lo < hi:
            mid = (lo + hi) // 2
            if value[mid] - rj < best:
                hi = mid
            else:
                lo = mid + 1
        end = lo
        if end == size and not self.complete[j]:
            # Rows beyond a truncated list may tie as well: decide on the whole column.
            self.scans += 1
            column = self.source.column(j)
            return int(np.flatnonzero(((column - rj) == best) & ~selected)[0])
        if value[head] == value[end - 1]:
            return int(index[head])  # one value: the list orders it by index
        tied = index[head:end]
        return int(tied[~selected[tied]].min())

    def _next_unselected(self, j: int, k: int) -> int:
        """The first list position >= k of column j holding an unselected row (or its size)."""
        index, size = self.index[j], int(self.size[j])
        if k >= size or not self.selected[index[k]]:
            return k
        chunk = 16
        while k < size:
            stop = min(size, k + chunk)
            free = ~self.selected[index[k:stop]]
            if free.any():
                return k + int(free.argmax())
            k, chunk = stop, chunk * 4
        return int(size)

    def _advance(self, columns: np.ndarray) -> None:
        """Move the heads of `columns` (just selected) to their next unselected list entries.

        Vectorized over the columns and over a growing window of list entries: with
        correlated columns one pick heads many lists, whose heads then skip rows that other
        columns already took."""
        if columns.size <= FEW_COLUMNS:
            for j in columns.tolist():
                k = self._next_unselected(j, int(self.position[j]) + 1)
                if k < self.size[j]:
                    self.position[j] = k
                    self.head_index[j] = self.index[j, k]
                    self.head_value[j] = self.value[j, k]
                else:
                    self._restart(j)
            return
        selected = self.selected
        position = self.position[columns] + 1
        window = 4
        while columns.size:
            size = self.size[columns]
            inside = position < size
            if not inside.all():
                for j in columns[~inside]:
                    self._restart(int(j))
                columns, position, size = columns[inside], position[inside], size[inside]
            entries = position[:, None] + np.arange(window)
            usable = entries < size[:, None]
            rows = self.index[columns[:, None], np.minimum(entries, (size - 1)[:, None])]
            free = usable & ~selected[rows]
            found = free.any(axis=1)
            if found.any():
                first = free[found].argmax(axis=1)
                settled = columns[found]
                at = position[found] + first
                self.position[settled] = at
                self.head_index[settled] = rows[found, first]
                self.head_value[settled] = self.value[settled, at]
            lost = ~found
            columns, position = columns[lost], position[lost] + window
            window = min(4 * window, 1024)

    def _restart(self, j: int) -> None:
        """Column j's list is used up: refill it from the unselected rows. (Heads only move
        before the last pick, so some row is unselected; a complete list, which holds all of
        them, cannot be used up.)"""
        if self.complete[j]:
            raise RuntimeError(f"internal error: complete list of column {j} used up")
        self._refill(j)
        self.head_index[j] = self.index[j, 0]
        self.head_value[j] = self.value[j, 0]

    def _refill(self, j: int) -> None:
        """Rebuild column j's list from its unselected rows (only for truncated lists)."""
        self.refills += 1
        column = self.source.column(j)
        unselected = np.flatnonzero(~self.selected)
        values = column[unselected]
        length = min(self.length, unselected.size)
        order = normalize.top_order(values, length)
        self.index[j, :length] = unselected[order]
        self.value[j, :length] = values[order]
        self.size[j] = length
        self.complete[j] = length == unselected.size
        self.position[j] = 0


def bids_order(
    matrix: np.ndarray,
    stats: ColumnStats,
    groups: TaskGroups,
    budget: int,
    *,
    granularity: str = "instance",
    normalize_columns: bool = True,
    iterative: bool = True,
    list_length: int | None = None,
) -> list[int]:
    """The ordered BIDS selection, equal to `naive.naive_bids` with the same arguments.

    `list_length` overrides the per-column list length (tests use it to force refills).
    """
    column_stats = stats if normalize_columns else None
    source: TaskSource | InstanceSource
    if granularity == "task":
        source = TaskSource(matrix, column_stats, groups)
    else:
        source = InstanceSource(matrix, column_stats)
    return BidsEngine(source, budget, list_length=list_length).run(iterative)
