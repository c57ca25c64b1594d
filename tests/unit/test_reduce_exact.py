"""The fast reductions equal the naive loops of docs/algorithms.md §9-§14 exactly (same order)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from selection.reduce import (
    METHODS,
    Reduction,
    ReductionError,
    load_matrix,
    load_tasks,
    reduce_matrix,
    resolve_budget,
)
from selection.reduce import bids, naive, normalize, simple

SWITCHES = list(itertools.product(["instance", "task"], [True, False], [True, False]))


def _tasks(rng: np.random.Generator, m: int, k: int = 3) -> list[str]:
    return [f"task{int(t)}" for t in rng.integers(0, k, m)]


def _matrix(kind: str, rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    """Random matrices of the shapes that break naive shortcuts."""
    if kind == "gaussian":
        return rng.standard_normal((n, m))
    if kind == "float32":
        return rng.standard_normal((n, m)).astype(np.float32)
    if kind == "float16":
        return rng.standard_normal((n, m)).astype(np.float16)
    if kind == "ties":  # few distinct values: exact ties everywhere
        return rng.integers(0, 3, (n, m)).astype(np.float64)
    if kind == "constant-columns":
        a = np.round(rng.standard_normal((n, m)), 1)
        a[:, rng.integers(0, m, max(1, m // 3))] = 2.5
        return a
    if kind == "correlated":  # near-identical columns: one pick heads many lists at once
        return rng.standard_normal((n, 1)) + 1e-3 * rng.integers(0, 3, (n, m))
    if kind == "rounding-ties":
        # Tiny distinct values beside huge ones: fl(x - r) ties for distinct x once r is large.
        a = rng.integers(1, 4, (n, m)) * 1e-17
        a[rng.integers(0, n, 2)] = 1.0 + rng.integers(0, 3, (2, m))
        return a
    raise AssertionError(kind)


KINDS = ["gaussian", "float32", "float16", "ties", "constant-columns", "correlated", "rounding-ties"]


@pytest.mark.parametrize("kind", KINDS)
def test_bids_engine_equals_naive_loop_for_every_switch(kind):
    rng = np.random.default_rng(KINDS.index(kind))
    for trial in range(25):
        n = int(rng.integers(1, 50))
        m = int(rng.integers(1, 10)) if trial % 3 else int(rng.integers(n + 1, n + 12))  # N < M too
        a = _matrix(kind, rng, n, m)
        tasks = _tasks(rng, m)
        budget = n if trial % 4 == 0 else int(rng.integers(1, n + 1))  # B = N included
        stats, groups = normalize.column_stats(a), normalize.task_groups(tasks)
        for granularity, normalize_columns, iterative in SWITCHES:
            expected = naive.naive_bids(
                a, tasks, budget,
                granularity=granularity, normalize_columns=normalize_columns, iterative=iterative,
            )
            # Default lists, and short lists that force refills and whole-column tie scans.
            for list_length in (None, 1, 3):
                got = bids.bids_order(
                    a, stats, groups, budget, granularity=granularity,
                    normalize_columns=normalize_columns, iterative=iterative, list_length=list_length,
                )
                assert got == expected, (kind, trial, n, m, budget, granularity, normalize_columns,
                                         iterative, list_length)


def test_bids_engine_equals_naive_loop_on_a_larger_structured_matrix():
    rng = np.random.default_rng(7)
    n, m = 1500, 48
    a = (0.05 * rng.standard_normal((n, 8)) @ rng.standard_normal((8, m))
         + 0.02 * rng.standard_normal((n, m))).astype(np.float32)
    tasks = [f"t{j % 4}" for j in range(m)]
    for granularity, normalize_columns, iterative in SWITCHES:
        expected = naive.naive_bids(a, tasks, 300, granularity=granularity,
                                    normalize_columns=normalize_columns, iterative=iterative)
        result = reduce_matrix(a, tasks, method="bids", budget=300, granularity=granularity,
                               normalize=normalize_columns, iterative=iterative)
        assert result.indices == expected


def test_reduce_matrix_matches_every_oracle_and_composition():
    rng = np.random.default_rng(11)
    for trial in range(30):
        n, m = int(rng.integers(1, 40)), int(rng.integers(1, 9))
        a = _matrix(KINDS[trial % len(KINDS)], rng, n, m)
        tasks = _tasks(rng, m, k=4)
        budget = int(rng.integers(1, n + 1))
        expected = {
            "bids": naive.naive_bids(a, tasks, budget),
            "less": naive.naive_less(a, tasks, budget),
            "quota": naive.naive_quota(a, tasks, budget),
            "random": list(np.random.default_rng(3).choice(n, size=budget, replace=False)),
        }
        for method in METHODS:
            result = reduce_matrix(a, tasks, method=method, budget=budget, seed=3)
            assert result.indices == expected[method], (trial, method)
            assert result.composition == naive.naive_composition(a, tasks, result.indices)
            assert list(result.composition) == sorted(set(tasks))
            assert sum(result.composition.values()) == budget


def test_short_lists_exercise_refills_and_whole_column_scans():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 2, (60, 4)).astype(np.float64)  # two values: long tied prefixes
    tasks = ["a", "a", "b", "b"]
    stats = normalize.column_stats(a)
    expected = naive.naive_bids(a, tasks, 60)
    engine = bids.BidsEngine(bids.InstanceSource(a, stats), 60, list_length=2)
    assert engine.run(iterative=True) == expected
    assert engine.refills > 0 and engine.scans > 0


def test_top_order_with_many_ties():
    rng = np.random.default_rng(8)
    for distinct in (3, 50, 5000):
        values = rng.integers(0, distinct, 6000).astype(np.float64)
        values[rng.integers(0, 6000, 30)] = -0.0  # -0.0 ties with 0.0
        for count in (1, 100, 2999, 6000):
            expected = sorted(range(values.size), key=lambda i: (-values[i], i))[:count]
            assert normalize.top_order(values, count).tolist() == expected


def test_engine_pieces_equal_their_definitions():
    rng = np.random.default_rng(5)
    for _ in range(50):
        values = rng.integers(0, 5, int(rng.integers(1, 40))).astype(float)
        count = int(rng.integers(1, values.size + 2))
        expected = sorted(range(values.size), key=lambda i: (-values[i], i))[:count]
        assert normalize.top_order(values, count).tolist() == expected
    a = rng.standard_normal((20000, 5)) * 3 + 1
    a[:, 2] = 7.0
    stats = normalize.column_stats(a)
    np.testing.assert_allclose(stats.mean, a.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.std, a.std(axis=0), rtol=1e-12, atol=1e-12)
    assert stats.constant.tolist() == [False, False, True, False, False]
    z = normalize.zscore(a, stats)
    assert np.all(z[:, 2] == 0)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-12)


def test_the_paper_example_picks_the_under_represented_column():
    # Two columns; rows 0-2 are strong on column 0, row 3 is strong on column 1. After the first
    # pick r favours column 0, so BIDS turns to column 1 where LESS keeps taking column 0.
    a = np.array([[3.0, 0.0], [2.9, 0.1], [2.8, 0.0], [0.0, 2.0], [0.1, 0.2]])
    tasks = ["math", "code"]
    bids_pick = reduce_matrix(a, tasks, method="bids", budget=2, normalize=False)
    less_pick = reduce_matrix(a, tasks, method="less", budget=2)
    assert bids_pick.indices == [0, 3]
    assert less_pick.indices == [0, 1]
    assert bids_pick.composition == {"code": 1, "math": 1}


def test_memmap_and_float16_inputs_are_used_in_place(tmp_path):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((120, 7)).astype(np.float16)
    np.save(tmp_path / "a.npy", a)
    mapped = load_matrix(tmp_path / "a.npy")
    assert isinstance(mapped, np.memmap) and mapped.dtype == np.float16
    tasks = _tasks(rng, 7)
    for granularity, normalize_columns, iterative in SWITCHES:
        result = reduce_matrix(mapped, tasks, method="bids", budget=30, granularity=granularity,
                               normalize=normalize_columns, iterative=iterative)
        assert result.indices == naive.naive_bids(
            a.astype(np.float64), tasks, 30, granularity=granularity,
            normalize_columns=normalize_columns, iterative=iterative,
        )


def test_row_shards_are_concatenated_in_name_order(tmp_path):
    rng = np.random.default_rng(4)
    a = rng.standard_normal((50, 4)).astype(np.float32)
    shards = tmp_path / "scores"
    shards.mkdir()
    for shard, (lo, hi) in enumerate([(0, 20), (20, 21), (21, 50)]):
        np.save(shards / f"shard-{shard:05d}-of-00003.npy", a[lo:hi])
    (shards / "manifest.json").write_text("{}")
    assert np.array_equal(load_matrix(shards), a)
    one = tmp_path / "one"
    one.mkdir()
    np.save(one / "shard-00000-of-00001.npy", a)
    assert isinstance(load_matrix(one), np.memmap)  # a single shard stays mapped
    np.save(shards / "shard-00004-of-00005.npy", a[:, :3])
    with pytest.raises(ReductionError, match="3 columns"):
        load_matrix(shards)


def test_reduction_document_and_parameters():
    rng = np.random.default_rng(9)
    a = rng.standard_normal((40, 6))
    tasks = ["b", "b", "a", "a", "c", "c"]
    result = reduce_matrix(a, tasks, method="bids", budget=0.25, granularity="task", iterative=False)
    assert isinstance(result, Reduction)
    document = result.to_json_dict()
    assert list(document) == ["method", "budget", "indices", "composition", "parameters"]
    assert document["budget"] == 10 and len(document["indices"]) == 10
    assert document["parameters"] == {"method": "bids", "granularity": "task", "normalize": True,
                                      "iterative": False}
    assert reduce_matrix(a, tasks, method="random", budget=3, seed=5).parameters == {
        "method": "random", "seed": 5}
    assert reduce_matrix(a, tasks, method="less", budget=3).parameters == {"method": "less"}
    assert all(isinstance(i, int) for i in document["indices"])


@pytest.mark.parametrize(
    ("budget", "n", "expected"),
    [(1, 10, 1), (10, 10, 10), ("7", 10, 7), (0.15, 20000, 3000), ("0.15", 20000, 3000),
     (0.29, 100, 29), (1.0, 300, 300), ("1.0", 300, 300), ("1", 300, 1), (0.5, 3, 1),
     (np.int64(7), 10, 7), (np.float64(0.5), 10, 5)],
)
def test_resolve_budget(budget, n, expected):
    assert resolve_budget(budget, n) == expected


@pytest.mark.parametrize("budget", [0, 301, -1, 0.0, 1.5, "0", "abc", "nan", float("inf"), True, 0.001, None])
def test_resolve_budget_rejects(budget):
    with pytest.raises(ReductionError, match="budget"):
        resolve_budget(budget, 300)
    if type(budget) is int and budget == 0:
        with pytest.raises(ReductionError, match=r"budget 0 must be a fraction in \(0, 1\] or a count in \[1, N=300\]"):
            resolve_budget(budget, 300)


def test_bad_inputs_name_what_and_where(tmp_path):
    a = np.zeros((5, 3))
    a[0, :] = 1
    a[3, 2] = np.nan
    with pytest.raises(ReductionError, match="row 3, column 2"):
        reduce_matrix(a, ["x", "y", "z"], method="less", budget=2)
    a[3, 2] = 0
    a[4, 0] = -np.inf
    with pytest.raises(ReductionError, match="-inf at row 4, column 0"):
        reduce_matrix(a, ["x", "y", "z"], method="random", budget=2)
    a[4, 0] = 0
    with pytest.raises(ReductionError, match="2 task labels for a matrix with 3 columns"):
        reduce_matrix(a, ["x", "y"], method="bids", budget=2)
    with pytest.raises(ReductionError, match="unknown method 'top'"):
        reduce_matrix(a, ["x", "y", "z"], method="top", budget=2)
    with pytest.raises(ReductionError, match="unknown granularity"):
        reduce_matrix(a, ["x", "y", "z"], method="bids", budget=2, granularity="column")
    with pytest.raises(ReductionError, match="N=5"):
        reduce_matrix(a, ["x", "y", "z"], method="bids", budget=6)
    with pytest.raises(ReductionError, match="2-D"):
        reduce_matrix(np.zeros(4), ["x"], method="bids", budget=1)
    np.save(tmp_path / "ints.npy", np.zeros((3, 2), dtype=np.int32))
    with pytest.raises(ReductionError, match="dtype int32"):
        load_matrix(tmp_path / "ints.npy")
    (tmp_path / "tasks.txt").write_text("a\n\nb\n")
    with pytest.raises(ReductionError, match="line 2: empty task label"):
        load_tasks(tmp_path / "tasks.txt")
    (tmp_path / "tasks.txt").write_text("a\r\n b \n")
    assert load_tasks(tmp_path / "tasks.txt") == ["a", "b"]


def test_quota_takes_turns_in_task_name_order():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((30, 4))
    tasks = ["z", "z", "a", "m"]
    result = reduce_matrix(a, tasks, method="quota", budget=7)
    means = simple.task_mean_zscores(a, normalize.column_stats(a), normalize.task_groups(tasks))
    assert result.indices[0] == int(np.argmax(means[0]))  # "a" goes first
    assert len(set(result.indices)) == 7
