"""Smoke test of the selection-quality benchmark (bench/quality) at its smallest size.

The real benchmark runs by hand (`python -m bench.quality.run`); this runs every code path once —
pretraining, dsel selection for every method, LoRA fine-tuning, exact-match evaluation and the
report — on a model and pool small enough for CI. Its numbers mean nothing.
"""

from __future__ import annotations

import importlib.util
import json
import random

import pytest

from bench.quality import tasks


def test_generators_are_deterministic_and_answers_are_right():
    for task in (*tasks.TASKS, tasks.DISTRACTOR):
        first = [tasks.make_item(task, random.Random(3)) for _ in range(3)]
        again = [tasks.make_item(task, random.Random(3)) for _ in range(3)]
        assert first == again
    rng = random.Random(0)
    for _ in range(50):
        item = tasks.make_item("successor", rng)
        assert int(item.answer) == int(item.question.split()[1]) + 1
        item = tasks.make_item("larger", rng)
        words = item.question.split()
        assert int(item.answer) == max(int(words[1]), int(words[3]))
        item = tasks.make_item("parity", rng)
        assert item.answer == ("even" if int(item.question.split()[0]) % 2 == 0 else "odd")
        item = tasks.make_item("count", rng)
        text, _, _, target = item.question.removesuffix(":").split()
        assert int(item.answer) == text.count(target)
        item = tasks.make_item("lookup", rng)
        pairs, asked = item.question.removesuffix(" is").split("; ")
        assert dict(p.split("=") for p in pairs.split())[asked] == item.answer
        item = tasks.make_item("sort", rng)
        digits = item.question.removesuffix(" in order is").split()
        assert item.answer.split() == sorted(digits)
        assert item.narrative == f"{item.question} {item.answer}."


def test_pool_has_no_test_question_and_the_promised_shares():
    sizes = tasks.PoolSizes(pool=300, validation_per_task=3, test_per_task=20)
    data = tasks.build_datasets(sizes, seed=1)
    questions = [item.question for item in data.pool if item.task != tasks.DISTRACTOR]
    held_out = {item.question for items in data.test.values() for item in items}
    assert len(set(questions)) == len(questions)
    assert not held_out & set(questions)
    assert not held_out & {i.question for items in data.validation.values() for i in items}
    counts = {task: sum(item.task == task for item in data.pool) for task in (*tasks.TASKS, tasks.DISTRACTOR)}
    assert counts[tasks.DISTRACTOR] == 60 and all(counts[t] == 40 for t in tasks.TASKS)
    assert tasks.test_sets(sizes) == data.test  # the same held-out sets for every seed


@pytest.mark.slow
def test_smoke_run_writes_a_report(tmp_path):
    from bench.quality import run

    out, cache = tmp_path / "out", tmp_path / "cache"
    plots = importlib.util.find_spec("matplotlib") is not None  # optional: `pip install matplotlib`
    arguments = ["--size", "smoke", "--out", str(out), "--cache", str(cache)] + ([] if plots else ["--no-plots"])
    assert run.main(arguments) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["finished"]
    methods = {r["method"] for r in results["records"]}
    assert {"random", "less", "quota", "bids", "full"} <= methods
    for r in results["records"]:
        assert set(r["accuracy"]) == set(tasks.TASKS)
        assert sum(r["composition"].values()) == r["count"]
        assert 0.0 <= r["worst"] <= r["macro"] <= 1.0
    report = (out / "REPORT.md").read_text()
    assert "| bids 25% |" in report and "| less 25% |" in report and "## Verdict" in report
    assert "python -m bench.quality.run --size smoke" in report
    if plots:
        for name in ("accuracy.png", "composition.png"):
            assert (out / name).read_bytes().startswith(b"\x89PNG")
            assert f"]({name})" in report
