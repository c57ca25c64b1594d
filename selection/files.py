"""Local files written all-or-nothing: a reader sees the old content or the new, never a part."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterator

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
