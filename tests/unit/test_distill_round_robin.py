"""Influence Distillation's round-robin selection equals its plain loop (docs/algorithms.md §14.5)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from selection.reduce import ALL_METHODS, METHODS, ReductionError, reduce_matrix
from selection.reduce import influence_distillation as rr
from selection.reduce import naive


def _matrix(rng, n, m, kind):
    if kind == "ties":
        return rng.integers(0, 3, (n, m)).astype(np.float64)  # long runs of equal values
    if kind == "float16":
        return rng.standard_normal((n, m)).astype(np.float16)
    return rng.standard_normal((n, m)).astype(np.float32)


@pytest.mark.parametrize("kind", ["float32", "float16", "ties"])
def test_equals_the_naive_loop(kind):
    rng = np.random.default_rng(5)
    for trial in range(40):
        n, m = int(rng.integers(1, 60)), int(rng.integers(1, 9))
        a = _matrix(rng, n, m, kind)
        budget = int(rng.integers(1, n + 1))
        seed = int(rng.integers(0, 100))
        expected = rr.naive_round_robin(a, budget, seed)
        got = rr.round_robin_order(a, budget, seed)
        assert got == expected, (trial, n, m, budget)
        assert len(got) == budget and len(set(got)) == budget and all(0 <= i < n for i in got)


def test_rounds_visit_columns_in_seeded_order():
    # Column j prefers row j; each round takes every column once, in a fresh permutation.
    a = np.eye(4) + 0.01 * np.arange(4)[:, None]
    order = rr.round_robin_order(a, 4, seed=7)
    assert order == [int(j) for j in np.random.default_rng(7).permutation(4)]
    assert rr.round_robin_order(a, 4, seed=7) == order


def test_small_column_chunks_give_the_same_rankings(monkeypatch):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((300, 7)).astype(np.float32)
    whole = rr.round_robin_order(a, 120, seed=1)
    monkeypatch.setattr(rr, "COLUMN_CHUNK_BYTES", 8 * 300 * 2)  # two columns per chunk
    assert rr.round_robin_order(a, 120, seed=1) == whole


def test_registered_in_reduce_matrix():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((80, 6)).astype(np.float32)
    tasks = ["x", "x", "y", "y", "z", "z"]
    result = reduce_matrix(a, tasks, method="influence-distillation", budget=0.25, seed=4)
    assert result.method == "influence-distillation" and result.budget == 20
    assert result.indices == rr.naive_round_robin(a, 20, 4)
    assert result.parameters == {"method": "influence-distillation", "seed": 4}
    assert result.composition == naive.naive_composition(a, tasks, result.indices)
    assert "influence-distillation" in ALL_METHODS and "influence-distillation" not in METHODS
    with pytest.raises(ReductionError, match="seed"):
        reduce_matrix(a, tasks, method="influence-distillation", budget=3, seed=-1)


def test_dsel_reduce_accepts_the_method(tmp_path):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((50, 4)).astype(np.float32)
    np.save(tmp_path / "A.npy", a)
    (tmp_path / "tasks.txt").write_text("p\nq\np\nq\n")
    run = subprocess.run(
        [sys.executable, "-m", "selection.reduce.cli", "--matrix", "A.npy", "--tasks", "tasks.txt",
         "--budget", "10", "--method", "influence-distillation", "--seed", "9"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["indices"] == rr.naive_round_robin(a, 10, 9)
