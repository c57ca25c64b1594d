"""Writing a result file the user named (`--output`): atomic for regular files, never destructive.

Renaming a temporary file over the path (`selection.files`) is what makes a regular file appear
whole, but done blindly it replaces a symlink with a file, or a device node (/dev/stdout,
/dev/full) with a regular file. So a symlink is followed and its target written, a special file is written in
place, and a directory is refused before any work starts.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from selection.files import write_text_atomically


class OutputError(ValueError):
    """The output path cannot take the result; the message names the option and the path."""


def check_output_path(path: str | os.PathLike[str], option: str = "--output") -> Path:
    """Refuse a path that can never be written as a file (a directory), before the work."""
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"{option} {target}: is a directory; give a file path")
    return target


def write_output(path: str | os.PathLike[str], text: str, option: str = "--output") -> None:
    """Write `text` to `path`: atomically for a regular (or new) file, in place for a special
    file, through to the target for a symlink."""
    target = Path(os.path.realpath(check_output_path(path, option)))
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        mode = None
    try:
        if mode is not None and not stat.S_ISREG(mode):
            with open(target, "w", encoding="utf-8") as stream:  # a device or pipe: no rename
                stream.write(text)
            return
        write_text_atomically(target, text)
    except OSError as error:
        raise OutputError(f"{option} {path}: cannot write ({error.strerror or error})") from None
