"""The attribution benchmark (bench/attribution.py): its statistics, its pool, and a toy-size run.

The real benchmark runs by hand (`python -m bench.attribution`); the slow test runs every code
path once (pretraining, dsel features for every row, fine-tuning per subset, the table) on a
model and pool small enough for CI. Its LDS numbers mean nothing; the checks are structural
plus the self-check that an attribution equal to the measured effects scores LDS 1.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from bench import attribution
from bench.quality import tasks


def test_spearman_matches_the_rank_definition_with_ties():
    a = np.array([[1.0, 3.0], [2.0, 3.0], [2.0, 1.0], [5.0, 0.0]])
    b = np.array([[10.0, 1.0], [20.0, 2.0], [30.0, 3.0], [40.0, 4.0]])
    ranks = attribution.average_ranks(a)
    assert ranks[:, 0].tolist() == [1.0, 2.5, 2.5, 4.0]
    assert ranks[:, 1].tolist() == [3.5, 3.5, 2.0, 1.0]
    rho = attribution.spearman_columns(a, b)
    expected = [np.corrcoef(ranks[:, c], [1, 2, 3, 4])[0, 1] for c in range(2)]
    assert np.allclose(rho, expected)
    # a constant column ranks nothing: 0, not NaN
    assert attribution.spearman_columns(np.ones((4, 1)), b[:, :1]).tolist() == [0.0]


def test_lds_is_one_for_the_true_effects_and_minus_one_for_their_negation():
    rng = np.random.default_rng(0)
    masks = attribution.draw_subsets(60, 20, 0.5, seed=3)
    assert masks.shape == (20, 60) and (masks.sum(axis=1) == 30).all()
    effects = rng.standard_normal((60, 5))  # how much each example lowers each validation loss
    losses = 2.0 - masks @ effects
    assert np.allclose(attribution.lds_per_example(masks, effects, losses), 1.0)
    assert np.allclose(attribution.lds_per_example(masks, -effects, losses), -1.0)
    # a monotone transform of the loss does not matter (Spearman)
    assert np.allclose(attribution.lds_per_example(masks, effects, np.exp(losses)), 1.0)
    # the in-sample datamodel reproduces any measurements: LDS 1 by construction
    noisy = rng.standard_normal((20, 5))
    fitted = attribution.in_sample_datamodel(masks, noisy)
    assert np.allclose(attribution.lds_per_example(masks, fitted, noisy), 1.0)


def test_same_task_indicator_wins_when_the_loss_follows_the_task_count():
    pool = [attribution.PoolEntry(tasks.Item(t, "q", "a"), "on-target") for t in tasks.TASKS for _ in range(10)]
    validation_tasks = list(tasks.TASKS) * 3
    references = attribution.reference_attributions(pool, validation_tasks, seed=0)
    masks = attribution.draw_subsets(len(pool), 40, 0.5, seed=1)
    same = references["same-task indicator (oracle labels)"]
    noise = np.random.default_rng(2).normal(scale=0.3, size=(40, len(validation_tasks)))
    losses = 5.0 - 0.5 * (masks @ same) + noise
    rows = {r["method"]: r for r in attribution.score_table(masks, losses, references, validation_tasks, 2000, 0)}
    assert rows["same-task indicator (oracle labels)"]["lds"] > 0.7
    low, high = rows["random"]["ci95"]
    assert low < 0 < high and abs(rows["random"]["lds"]) < 0.2


def test_pool_has_every_ingredient_and_no_validation_question():
    sizes = attribution.MixedPool(size=200, validation_per_task=3)
    pool, validation = attribution.build_pool(sizes, seed=4)
    counts, chatter = sizes.counts()
    assert len(pool) == 200 and sum(e.kind == attribution.CHATTER for e in pool) == chatter
    for task in tasks.TASKS:
        for kind, count in counts.items():
            assert sum(e.task == task and e.kind == kind for e in pool) == count
    held_out = {item.question for items in validation.values() for item in items}
    assert not held_out & {e.item.question for e in pool}
    on_target = {e.item for e in pool if e.kind == "on-target"}
    for entry in pool:
        if entry.kind == "duplicate":
            assert entry.item in on_target
        assert (entry.item.answer != entry.correct) == (entry.kind in ("wrong", "flipped"))
        if entry.kind == "flipped":
            assert entry.item.answer == attribution.flipped_answer(replace(entry.item, answer=entry.correct))
    flipped = [e.item for e in pool if e.kind == "flipped"]
    successor = next(i for i in flipped if i.task == "successor")
    assert int(successor.answer) == int(successor.question.split()[1]) - 1
    off = [e.item for e in pool if e.kind == "off-target" and e.task == "larger"]
    assert all(int(i.answer) >= 100 for i in off)
    assert attribution.build_pool(sizes, seed=4) == (pool, validation)


@pytest.mark.slow
def test_smoke_run_writes_the_table(tmp_path):
    out = tmp_path / "out"
    assert attribution.main(["--size", "smoke", "--out", str(out), "--cache", str(tmp_path / "cache")]) == 0
    results = json.loads((out / "results.json").read_text())
    methods = [r["method"] for r in results["rows"]]
    assert methods[:5] == [
        "less (dsel, Adam train vs plain val)", "sgd (plain train vs plain val)", "influence-distillation (dsel)",
        "adam-bias-corrected, no momentum", "adam-bias-corrected, last checkpoint",
    ]
    assert {"same-task indicator (oracle labels)", "random"} <= set(methods)
    size = attribution.size_preset("smoke")
    masks = np.zeros((size.subsets, size.pool.size), dtype=bool)
    for k, indices in enumerate(results["subsets"]):
        masks[k, indices] = True
    losses = np.asarray(results["losses"])
    assert losses.shape == (size.subsets, size.pool.validation_per_task * len(tasks.TASKS))
    assert np.isfinite(losses).all()
    for row in results["rows"]:
        assert -1.0 <= row["ci95"][0] <= row["lds"] <= row["ci95"][1] <= 1.0
        assert len(row["per_example"]) == losses.shape[1]
        assert set(row["per_task"]) == set(tasks.TASKS)
    # an attribution equal to the measured effects scores 1 on the real measurements
    assert results["self_check_in_sample_lds"] == pytest.approx(1.0)
    oracle = attribution.in_sample_datamodel(masks, losses)
    assert np.allclose(attribution.lds_per_example(masks, oracle, losses), 1.0)
    table = (out / "TABLE.md").read_text()
    assert "| attribution | LDS | 95% CI | vs less (paired) | successor |" in table
    assert results["rows"][0]["vs_first"] == 0.0  # the paired column is relative to the LESS row
    less = np.asarray(results["rows"][0]["per_example"])
    for row in results["rows"]:
        assert row["vs_first"] == pytest.approx(float(np.mean(np.asarray(row["per_example"]) - less)))
    assert "| same-task indicator (oracle labels) |" in table and "| random |" in table
    assert "python -m bench.attribution --size smoke" in table
