"""Atomic local writes: all or nothing, and no temporary file left behind on an error."""

from __future__ import annotations

import pytest

from selection.files import replace_atomically, write_text_atomically


def test_a_failed_write_keeps_the_old_content_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out" / "selection.json"
    write_text_atomically(target, "old\n")

    def fail(stream):
        stream.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        replace_atomically(target, fail)
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["selection.json"]
    write_text_atomically(target, "new\n")
    assert target.read_text() == "new\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["selection.json"]
