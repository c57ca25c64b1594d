"""Loading and validating the attribution matrix A (N x M) and its task labels.

A is read through a memory map and never copied whole when that can be avoided: every pass
over it goes in row blocks. A directory of row shards is the exception (the shards are
concatenated into one in-memory array, one copy in the stored dtype) unless it holds one shard.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from selection.reduce.base import ReductionError

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def _load_npy(path: Path) -> np.ndarray:
    try:
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as error:
            if "empty" not in str(error).lower():
                raise
            array = np.load(path, allow_pickle=False)  # numpy cannot map a zero-length array
    except (OSError, ValueError, EOFError) as error:
        raise ReductionError(
            f"{path}: not a readable .npy array ({error or type(error).__name__})", input="matrix"
        ) from None
    if not isinstance(array, np.ndarray):
        raise ReductionError(f"{path}: holds an archive, not one .npy array", input="matrix")
    return array


def load_matrix(path: str | Path) -> np.ndarray:
    """A as a (memory-mapped when possible) N x M array.

    `path` is a `.npy` file (float16, float32 or float64), mapped read-only, or a directory of
    row-shard `.npy` files (directly inside it; symlinks followed) concatenated in file-name
    order, which is row order when shard numbers are zero-padded as the pipeline writes them
    (`shard-00000-of-00004.npy`, ...). Shards must agree on the column count; mixed float dtypes
    are widened to the widest one.
    """
    path = Path(path)
    if path.is_dir():
        shards = _row_shards(path)
        if not shards:
            raise ReductionError(f"{path}: directory holds no .npy row shards", input="matrix")
        arrays = [_load_npy(p) for p in shards]
        for shard, array in zip(shards, arrays):
            _check_array(array, str(shard))
        columns = arrays[0].shape[1]
        for shard, array in zip(shards, arrays):
            if array.shape[1] != columns:
                raise ReductionError(
                    f"{shard}: row shard has {array.shape[1]} columns but {shards[0].name} has "
                    f"{columns}; all shards of one matrix must have the same columns",
                    input="matrix",
                )
        if len(arrays) == 1:
            return arrays[0]
        dtype = np.result_type(*arrays)
        out = np.empty((sum(a.shape[0] for a in arrays), columns), dtype=dtype)
        start = 0
        for array in arrays:
            out[start : start + array.shape[0]] = array
            start += array.shape[0]
        return out
    if not path.exists():
        raise ReductionError(f"{path}: no such file or directory", input="matrix")
    array = _load_npy(path)
    _check_array(array, str(path))
    return array


def _row_shards(directory: Path) -> list[Path]:
    """The directory's .npy files in row order; refuses what would silently drop or reorder rows."""
    entries = sorted(p for p in directory.iterdir() if p.suffix == ".npy")
    for entry in entries:
        if not entry.is_file():
            what = "a dangling symlink" if entry.is_symlink() and not entry.exists() else "not a regular file"
            raise ReductionError(
                f"{entry}: row shard is {what}; skipping it would renumber every later row",
                input="matrix",
            )
    numbered = [tuple(int(n) for n in re.findall(r"[0-9]+", p.name)) for p in entries]
    if numbered != sorted(numbered):
        first = next(i for i in range(1, len(entries)) if numbered[i] < numbered[i - 1])
        raise ReductionError(
            f"{directory}: shard names sort differently as text and as numbers "
            f"({entries[first - 1].name} before {entries[first].name}); zero-pad the shard "
            "numbers (shard-00000-of-00004.npy) so that name order is row order",
            input="matrix",
        )
    return entries


def _check_array(array: np.ndarray, where: str) -> None:
    if array.ndim != 2:
        raise ReductionError(
            f"{where}: expected a 2-D N x M matrix, got shape {tuple(array.shape)}", input="matrix"
        )
    if array.dtype not in FLOAT_DTYPES:
        raise ReductionError(
            f"{where}: dtype {array.dtype} is not supported (float16, float32 or float64)",
            input="matrix",
        )


def as_matrix(matrix) -> np.ndarray:
    """`matrix` as a 2-D float array without copying when it already is one.

    float16/32/64 arrays (and memory maps) are used as they are; integer and bool arrays or
    nested sequences are converted to float64 (exact for integers below 2**53).
    """
    array = np.asarray(matrix)  # drops the np.memmap subclass (cheaper indexing), no copy
    if array.dtype.kind in "biu":
        array = array.astype(np.float64)
    if array.ndim != 2:
        raise ReductionError(
            f"matrix: expected a 2-D N x M matrix, got shape {tuple(array.shape)}", input="matrix"
        )
    if array.dtype not in FLOAT_DTYPES:
        raise ReductionError(
            f"matrix: dtype {array.dtype} is not supported (float16, float32 or float64)",
            input="matrix",
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ReductionError(
            f"matrix: shape {tuple(array.shape)} has no {'rows' if array.shape[0] == 0 else 'columns'}",
            input="matrix",
        )
    return array


def load_tasks(path: str | Path) -> list[str]:
    """Task labels, one per line (one per column of A); surrounding whitespace is stripped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReductionError(f"{path}: no such file", input="tasks") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ReductionError(f"{path}: cannot read task labels ({error})", input="tasks") from None
    if text.startswith("\ufeff"):
        raise ReductionError(
            f"{path}, line 1: starts with a UTF-8 byte-order mark, which would become part of the "
            "first task label; save the file as UTF-8 without BOM",
            input="tasks",
        )
    labels = [line.strip() for line in text.splitlines()]
    for number, label in enumerate(labels, start=1):
        if not label:
            raise ReductionError(f"{path}, line {number}: empty task label", input="tasks")
    if not labels:
        raise ReductionError(f"{path}: no task labels (expected one per matrix column)", input="tasks")
    return labels


def check_tasks(tasks: Sequence[str], columns: int) -> list[str]:
    labels = [str(t) for t in tasks]
    if len(labels) != columns:
        raise ReductionError(
            f"{len(labels)} task labels for a matrix with {columns} columns "
            "(one label per column, i.e. per validation example)",
            input="tasks",
        )
    for position, label in enumerate(labels):
        if not label:
            raise ReductionError(f"task label of column {position} is empty", input="tasks")
    return labels
