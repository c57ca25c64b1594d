"""Local writes: atomic ones (all or nothing, no temporary left behind on an error) and .npy
files written row block by row block."""

from __future__ import annotations

import numpy as np
import pytest

from selection.files import NpyRowWriter, replace_atomically, write_text_atomically


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


@pytest.mark.parametrize("dtype, rows", [(np.float16, 37), (np.float32, 5), (np.float32, 0)])
def test_row_writer_writes_the_bytes_of_np_save(tmp_path, dtype, rows):
    array = np.random.default_rng(0).standard_normal((rows, 6)).astype(dtype)
    np.save(tmp_path / "whole.npy", array, allow_pickle=False)
    with NpyRowWriter(tmp_path / "blocks.npy", array.shape, dtype) as writer:
        for start in range(0, rows, 8):
            writer.write(array[start : start + 8])
    assert (tmp_path / "blocks.npy").read_bytes() == (tmp_path / "whole.npy").read_bytes()


def test_row_writer_refuses_a_short_file_and_a_block_that_does_not_fit(tmp_path):
    with pytest.raises(ValueError, match="2 of 3 rows written"):
        with NpyRowWriter(tmp_path / "a.npy", (3, 2), np.float32) as writer:
            writer.write(np.zeros((2, 2)))
    with NpyRowWriter(tmp_path / "b.npy", (3, 2), np.float32) as writer:
        with pytest.raises(ValueError, match="does not fit"):
            writer.write(np.zeros((4, 2)))
        writer.write(np.zeros((3, 2)))
