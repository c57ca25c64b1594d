"""`dsel reduce` as a process: its JSON output, its help, and exit status 2 on bad input."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest

from selection.reduce import naive, reduce_matrix
from selection.reduce.cli import add_reduce_parser, run_reduce

N, M = 300, 6
TASKS = ["math", "math", "code", "code", "prose", "prose"]


def dsel_reduce(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "selection.reduce.cli", *args],
        capture_output=True, text=True, cwd=cwd, timeout=120,
    )


@pytest.fixture()
def inputs(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((N, M)).astype(np.float32)
    np.save(tmp_path / "A.npy", a)
    (tmp_path / "tasks.txt").write_text("\n".join(TASKS) + "\n")
    return tmp_path, a


@pytest.mark.parametrize(
    ("extra", "method", "parameters"),
    [
        ([], "bids", {"method": "bids", "granularity": "instance", "normalize": True, "iterative": True}),
        (["--granularity", "task", "--no-normalize", "--no-iterative"], "bids",
         {"method": "bids", "granularity": "task", "normalize": False, "iterative": False}),
        (["--method", "less"], "less", {"method": "less"}),
        (["--method", "quota"], "quota", {"method": "quota"}),
        (["--method", "random", "--seed", "7"], "random", {"method": "random", "seed": 7}),
    ],
)
def test_writes_the_selection_document(inputs, extra, method, parameters):
    directory, a = inputs
    run = dsel_reduce("--matrix", "A.npy", "--tasks", "tasks.txt", "--budget", "0.15",
                      "--output", "selection.json", *extra, cwd=directory)
    assert run.returncode == 0, run.stderr
    document = json.loads((directory / "selection.json").read_text())
    assert list(document) == ["method", "budget", "indices", "composition", "parameters"]
    assert document["method"] == method and document["budget"] == 45
    assert document["parameters"] == parameters
    expected = reduce_matrix(a, TASKS, method=method, budget=45,
                             granularity=parameters.get("granularity", "instance"),
                             normalize=parameters.get("normalize", True),
                             iterative=parameters.get("iterative", True), seed=parameters.get("seed", 0))
    assert document["indices"] == expected.indices
    assert document["composition"] == expected.composition
    if extra == []:
        assert document["indices"] == naive.naive_bids(a, TASKS, 45)


def test_reads_a_directory_of_row_shards_and_writes_stdout(inputs):
    directory, a = inputs
    shards = directory / "scores"
    shards.mkdir()
    for shard, (lo, hi) in enumerate([(0, 100), (100, 250), (250, N)]):
        np.save(shards / f"shard-{shard:05d}-of-00003.npy", a[lo:hi])
    run = dsel_reduce("--matrix", "scores", "--tasks", "tasks.txt", "--budget", "20", cwd=directory)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["indices"] == naive.naive_bids(a, TASKS, 20)


def test_help_documents_every_option_and_the_input_formats(tmp_path):
    run = dsel_reduce("--help", cwd=tmp_path)
    assert run.returncode == 0
    for text in ["--matrix", "--tasks", "--method", "--budget", "--output", "--granularity",
                 "--no-normalize", "--no-iterative", "--seed", ".npy", "row-shard", "one task label",
                 "float16", "bids", "less", "quota", "random", "composition", "exit status"]:
        assert text in run.stdout, text


def _bad(directory, name: str, array) -> str:
    np.save(directory / name, array)
    return name


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("nan", r"--matrix bad.npy: non-finite value nan at row 12, column 3"),
        ("inf", r"--matrix bad.npy: non-finite value inf at row 0, column 5"),
        ("shape", r"--tasks short.txt has 5 labels \(lines\) but --matrix A.npy has 6 columns"),
        ("budget-zero", r"--budget 0 must be a fraction in \(0, 1\] or a count in \[1, N=300\]"),
        ("budget-large", r"--budget 301 must be a fraction in \(0, 1\] or a count in \[1, N=300\]"),
        ("budget-fraction", r"--budget 1.5 must be a fraction in \(0, 1\]"),
        ("budget-tiny", r"--budget 0.001 of N=300 selects floor\(0.001 x 300\) = 0 examples"),
        ("method", r"argument --method: invalid choice: 'top'"),
        ("missing-matrix", r"--matrix nope.npy: no such file or directory"),
        ("missing-tasks", r"--tasks nope.txt: no such file"),
        ("blank-task", r"--tasks blank.txt, line 2: empty task label"),
        ("dtype", r"--matrix ints.npy: dtype int64 is not supported"),
        ("ndim", r"--matrix flat.npy: expected a 2-D N x M matrix, got shape \(6,\)"),
        ("empty-dir", r"--matrix empty: directory holds no .npy row shards"),
    ],
)
def test_bad_input_exits_2_naming_what_and_where(inputs, case, message):
    directory, a = inputs
    args = {"--matrix": "A.npy", "--tasks": "tasks.txt", "--budget": "0.1"}
    if case in ("nan", "inf"):
        bad = a.copy()
        bad[(12, 3) if case == "nan" else (0, 5)] = np.nan if case == "nan" else np.inf
        args["--matrix"] = _bad(directory, "bad.npy", bad)
    elif case == "shape":
        (directory / "short.txt").write_text("\n".join(TASKS[:5]) + "\n")
        args["--tasks"] = "short.txt"
    elif case.startswith("budget"):
        args["--budget"] = {"budget-zero": "0", "budget-large": "301", "budget-fraction": "1.5",
                            "budget-tiny": "0.001"}[case]
    elif case == "method":
        args["--method"] = "top"
    elif case == "missing-matrix":
        args["--matrix"] = "nope.npy"
    elif case == "missing-tasks":
        args["--tasks"] = "nope.txt"
    elif case == "blank-task":
        (directory / "blank.txt").write_text("math\n\ncode\n")
        args["--tasks"] = "blank.txt"
    elif case == "dtype":
        args["--matrix"] = _bad(directory, "ints.npy", np.zeros((N, M), dtype=np.int64))
    elif case == "ndim":
        args["--matrix"] = _bad(directory, "flat.npy", np.zeros(M, dtype=np.float32))
    elif case == "empty-dir":
        (directory / "empty").mkdir()
        args["--matrix"] = "empty"
    run = dsel_reduce(*[x for pair in args.items() for x in pair], "--output", "out.json", cwd=directory)
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert __import__("re").search(message, run.stderr), run.stderr
    assert not (directory / "out.json").exists()


def test_add_reduce_parser_wires_into_a_parent_parser(inputs, capsys):
    directory, a = inputs
    parser = argparse.ArgumentParser(prog="dsel")
    add_reduce_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["reduce", "--matrix", str(directory / "A.npy"), "--tasks",
                              str(directory / "tasks.txt"), "--budget", "5", "--method", "less"])
    assert args.handler is run_reduce
    assert run_reduce(args) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["indices"] == naive.naive_less(a, TASKS, 5)
