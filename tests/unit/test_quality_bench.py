"""Smoke test of the selection-quality benchmark (bench/quality) at its smallest size.

The real benchmark runs by hand (`python -m bench.quality.run`); this runs every code path once —
pretraining, dsel selection for every method, LoRA fine-tuning, exact-match evaluation and the
report — on a model and pool small enough for CI. Its numbers mean nothing.
"""

from __future__ import annotations

import importlib.util
import json
import random
from dataclasses import replace

import pytest

from bench.quality import tasks, transfer


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


def test_transfer_rules_and_ingredients():
    rng = random.Random(0)
    for task in tasks.TASKS:
        for _ in range(30):
            item = tasks.make_item(task, rng)
            assert transfer.solve(task, item.question) == item.answer
            far = transfer.OFF_TARGET[task](rng)
            assert transfer.solve(task, far.question) == far.answer and far.kind == "off-target"
            assert transfer.wrong_answer(task, item.question, rng) != item.answer
    assert transfer.flipped_answer("larger", "of 41 and 17 the larger is") == "17"
    assert transfer.flipped_answer("successor", "after 389 comes") == "388"
    assert transfer.flipped_answer("sort", "5 2 8 in order is") == "8 5 2"
    assert transfer.flipped_answer("lookup", "q=41 b=73 x=15; b is") == "15"
    assert transfer.flipped_answer("count", "bcaab has ? a:") == "3"


def test_transfer_pool_has_every_ingredient_and_no_test_question():
    sizes = tasks.PoolSizes(pool=600, validation_per_task=3, test_per_task=20)
    mix = transfer.TransferMix()
    data = transfer.build_datasets(sizes, mix, seed=2)
    assert len(data.pool) == 600
    held_out = {item.question for items in data.test.values() for item in items}
    validation = {i.question for items in data.validation.values() for i in items}
    assert not held_out & {item.question for item in data.pool}
    assert not validation & {item.question for item in data.pool}
    assert all(transfer.is_correct(i) and i.kind == "on-target" for items in data.validation.values() for i in items)
    slots = (600 - 90) // len(tasks.TASKS)
    expected = mix.counts(slots)
    for task in tasks.TASKS:
        items = [i for i in data.pool if i.task == task]
        assert len(items) == slots
        kinds = {k: sum(i.kind == k for i in items) for k in transfer.KINDS}
        assert len(items) - len({i.key for i in items}) >= 1  # duplicates are there
        assert kinds["off-target"] >= expected["off-target"] and kinds["wrong"] >= expected["wrong"]
        assert all(not transfer.is_correct(i) for i in items if i.kind == "wrong")
    assert tasks.test_sets(sizes) == data.test


def test_controls_use_the_true_labels():
    from bench.quality import run

    data = transfer.build_datasets(tasks.PoolSizes(pool=600, validation_per_task=3, test_per_task=20),
                                   transfer.TransferMix(), seed=0)
    chosen = run.stratified_indices(data.pool, 62, random.Random(0))
    counts = run.composition_by_task(data.pool, chosen)
    assert counts[tasks.DISTRACTOR] == 0 and sorted(counts[t] for t in tasks.TASKS) == [10] * 4 + [11] * 2
    wanted = {**{t: 3 for t in tasks.TASKS}, tasks.DISTRACTOR: 5}
    drawn = run.within_task_indices(data.pool, wanted, random.Random(1))
    assert run.composition_by_task(data.pool, drawn) == wanted and len(set(drawn)) == len(drawn)
    quality = run.subset_quality(data.pool, list(range(len(data.pool))))
    assert 0.2 < quality["wrong_share"] < 0.35 and 0.2 < quality["off_target_share"] < 0.35
    assert quality["duplicate_share"] > 0.05 and abs(quality["distractor_share"] - 0.15) < 0.01


def test_workers_run_the_same_benchmark_on_their_share_of_the_seeds(tmp_path, monkeypatch):
    """`--workers N`: each worker's command line names the parent's size, budgets, methods and
    controls, and the seeds are split without loss or overlap."""
    from bench.quality import run

    seen = []

    def fake_run(args, name, size, out, cache, methods, skipped, log, argv):
        seen.append((name, size, tuple(args.seed_ids), tuple(m.label for m in methods), out))
        return 0

    monkeypatch.setattr(run, "_run", fake_run)
    args = run.argparse.Namespace(cache=tmp_path / "cache", threads=1, methods=["bids", "random"], fresh=False)
    size = replace(run.size_preset("full", "transfer"), budgets=(0.1, 0.05), controls=("stratified",),
                   train_full_pool=False)
    argvs = [run.worker_argv(args, "full", size, seeds, tmp_path / f"w{k}") for k, seeds in enumerate(([0, 2, 4], [1, 3]))]
    for argv in argvs:
        assert run.main(argv) == 0
    assert sorted(s for entry in seen for s in entry[2]) == [0, 1, 2, 3, 4]
    for name, child, _, labels, out in seen:
        assert name == "full" and labels == ("bids", "random")
        assert child.budgets == size.budgets and child.controls == size.controls and not child.train_full_pool
        assert child.scenario == "transfer" and out.parent == tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["transfer", "in-domain"])
def test_smoke_run_writes_a_report(tmp_path, scenario):
    from bench.quality import run

    out, cache = tmp_path / "out", tmp_path / "cache"
    plots = importlib.util.find_spec("matplotlib") is not None  # optional: `pip install matplotlib`
    arguments = ["--size", "smoke", "--scenario", scenario, "--out", str(out), "--cache", str(cache)]
    assert run.main(arguments + ([] if plots else ["--no-plots"])) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["finished"]
    methods = {r["method"] for r in results["records"]}
    assert {"random", "less", "quota", "bids", "full", "stratified"} <= methods
    if scenario == "transfer":
        assert {"quota-sample", "within-task@bids"} <= methods
    for r in results["records"]:
        assert set(r["accuracy"]) == set(tasks.TASKS) == set(r["loss"])
        assert sum(r["composition"].values()) == r["count"]
        assert 0.0 <= r["worst"] <= r["macro"] <= 1.0
        assert 0.0 <= r["quality"]["wrong_share"] <= 1.0
    report = (out / "REPORT.md").read_text()
    assert "| bids 25% |" in report and "| less 25% |" in report and "## Verdict" in report
    assert "python -m bench.quality.run --size smoke" in report
    if plots:
        for name in ("accuracy.png", "composition.png"):
            assert (out / name).read_bytes().startswith(b"\x89PNG")
            assert f"]({name})" in report


def test_a_column_without_data_is_shown_as_a_dash_not_a_crash():
    """With no learned task, the learned-task columns are nan for every seed (statistics.stdev
    raises on those); the report shows a dash and keeps the finite values."""
    from bench.quality import report

    nan = float("nan")
    assert report._mean_sd([nan, nan]) == "–"
    assert report._mean_sd([0.1, nan, 0.3]) == "20.0 ± 14.1"
