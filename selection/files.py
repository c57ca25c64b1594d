"""Local files: written all-or-nothing (a reader sees the old content or the new, never a part),
or, for large arrays, row block by row block (`NpyRowWriter`)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import numpy as np

TMP_PREFIX = ".dsel-tmp-"  # temporaries beside their target; listings skip names starting with it


@contextlib.contextmanager
def staged(target: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh temp path beside `target`, renamed over it when the block succeeds.

    Same directory, so `os.replace` is a same-filesystem rename that readers observe as
    all-or-nothing; when the block raises, the temp file is removed, so no stray file is left.
    """
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    os.close(fd)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def replace_atomically(target: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> None:
    """Write via `write(fileobj)`, flushed to disk, then rename over `target` (see `staged`)."""
    with staged(target) as temporary, open(temporary, "wb") as stream:
        write(stream)
        stream.flush()
        os.fsync(stream.fileno())


def write_text_atomically(target: str | os.PathLike[str], text: str) -> None:
    """`replace_atomically` for a UTF-8 text."""
    data = text.encode("utf-8")
    replace_atomically(target, lambda stream: stream.write(data))


class NpyRowWriter:
    """A 2-D `.npy` file of known shape written block of rows by block, so a writer holds one
    block in memory, never the whole array (nor a second copy for saving).

    The bytes equal `np.save` of the whole array. Use it as a context manager; leaving the block
    without having written every row raises, so a short file is never taken for a finished one.
    """

    def __init__(self, path: str | os.PathLike[str], shape: tuple[int, int], dtype: Any):
        self.path = Path(path)
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self.rows = 0
        self._stream = open(self.path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_1_0(self._stream, header)

    def write(self, block: np.ndarray) -> None:
        """Append rows (cast to the file's dtype) after those written so far."""
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.ndim != 2 or block.shape[1] != self.shape[1] or self.rows + block.shape[0] > self.shape[0]:
            raise ValueError(f"{self.path}: block {block.shape} does not fit rows {self.rows}.. of {self.shape}")
        self._stream.write(block.reshape(-1).view(np.uint8).data)
        self.rows += block.shape[0]

    def __enter__(self) -> NpyRowWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self._stream.close()
        if kind is None and self.rows != self.shape[0]:
            raise ValueError(f"{self.path}: {self.rows} of {self.shape[0]} rows written")
