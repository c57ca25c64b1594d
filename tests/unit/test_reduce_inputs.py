"""`dsel reduce` refuses ambiguous inputs and never destroys what --output names."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

from selection.reduce.cli import main

TASKS = ["math", "math", "code"]


@pytest.fixture()
def inputs(tmp_path):
    matrix = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32)
    np.save(tmp_path / "A.npy", matrix)
    (tmp_path / "tasks.txt").write_text("\n".join(TASKS) + "\n")
    return tmp_path


def reduce(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def snapshot(directory: Path) -> dict[str, bytes | str]:
    """Every entry under `directory`: file bytes, or what a symlink points at."""
    return {
        str(p.relative_to(directory)): (os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else "dir")
        for p in sorted(directory.rglob("*"))
    }


def test_bom_in_tasks_is_refused(inputs, capsys):
    (inputs / "tasks.txt").write_text("\ufeff" + "\n".join(TASKS) + "\n", encoding="utf-8")
    before = snapshot(inputs)
    code, out, err = reduce(capsys, "--matrix", str(inputs / "A.npy"), "--tasks", str(inputs / "tasks.txt"),
                            "--budget", "3", "--output", str(inputs / "out.json"))
    assert code == 2 and out == ""
    assert f"--tasks {inputs / 'tasks.txt'}, line 1: starts with a UTF-8 byte-order mark" in err
    assert snapshot(inputs) == before


def shard_dir(inputs: Path, names: list[str]) -> Path:
    directory = inputs / "shards"
    directory.mkdir()
    matrix = np.load(inputs / "A.npy")
    for name, rows in zip(names, np.array_split(matrix, len(names))):
        np.save(directory / name, rows)
    return directory


def test_dangling_symlinked_shard_is_refused(inputs, capsys):
    directory = shard_dir(inputs, ["shard-00000-of-00003.npy", "shard-00002-of-00003.npy"])
    (directory / "shard-00001-of-00003.npy").symlink_to(inputs / "gone.npy")
    code, _, err = reduce(capsys, "--matrix", str(directory), "--tasks", str(inputs / "tasks.txt"), "--budget", "3")
    assert code == 2
    assert f"--matrix {directory / 'shard-00001-of-00003.npy'}: row shard is a dangling symlink" in err


def test_unpadded_shard_numbers_are_refused(inputs, capsys):
    directory = shard_dir(inputs, [f"part-{i}.npy" for i in range(11)])
    code, _, err = reduce(capsys, "--matrix", str(directory), "--tasks", str(inputs / "tasks.txt"), "--budget", "3")
    assert code == 2
    assert f"--matrix {directory}: shard names sort differently as text and as numbers" in err
    assert "part-10.npy before part-2.npy" in err


def test_zero_byte_npy_is_one_clear_line(inputs, capsys):
    (inputs / "empty.npy").write_bytes(b"")
    code, _, err = reduce(capsys, "--matrix", str(inputs / "empty.npy"), "--tasks", str(inputs / "tasks.txt"),
                          "--budget", "3")
    assert code == 2 and f"--matrix {inputs / 'empty.npy'}: not a readable .npy array" in err


@pytest.mark.parametrize("budget", ["1_0", "\uff11\uff10", "\u0661\u0660", "1,5"])
def test_budget_must_be_ascii_digits(inputs, capsys, budget):
    code, out, err = reduce(capsys, "--matrix", str(inputs / "A.npy"), "--tasks", str(inputs / "tasks.txt"),
                            "--budget", budget)
    assert code == 2 and out == ""
    assert f"--budget {budget!r} is not a number written in ASCII digits" in err


def test_output_directory_is_refused_before_any_work(inputs, capsys):
    target = inputs / "results"
    target.mkdir()
    before = snapshot(inputs)
    code, _, err = reduce(capsys, "--matrix", str(inputs / "A.npy"), "--tasks", str(inputs / "tasks.txt"),
                          "--budget", "3", "--output", str(target))
    assert code == 2 and f"--output {target}: is a directory" in err
    assert snapshot(inputs) == before  # no temporary file left behind


def test_output_symlink_is_kept_and_its_target_written(inputs, capsys):
    real = inputs / "real.json"
    real.write_text("old\n")
    link = inputs / "link.json"
    link.symlink_to(real)
    code, _, _ = reduce(capsys, "--matrix", str(inputs / "A.npy"), "--tasks", str(inputs / "tasks.txt"),
                        "--budget", "3", "--output", str(link))
    assert code == 0
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert '"indices"' in real.read_text()


def test_output_special_file_is_written_in_place(inputs, capsys):
    fifo = inputs / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    code, _, _ = reduce(capsys, "--matrix", str(inputs / "A.npy"), "--tasks", str(inputs / "tasks.txt"),
                        "--budget", "3", "--output", str(fifo))
    reader.join(timeout=30)
    assert code == 0
    assert stat.S_ISFIFO(fifo.lstat().st_mode), "the pipe was replaced by a regular file"
    assert b'"indices"' in received[0]
