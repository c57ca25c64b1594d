"""Exact duplicates in the pool take one budget slot, not two (docs/algorithms.md §18.5)."""

from __future__ import annotations

import json

import pytest

from selection import data
from selection.jobs.reduce import _rows_to_select_from
from selection.spec import SpecError

from tests.jobs.test_pipeline import TRAIN_LINES, write_spec


def _example(line: int, *turns: tuple[str, str]) -> data.Example:
    return data.Example(line=line, messages=tuple({"role": r, "content": c} for r, c in turns), task=None, raw="")


def test_duplicate_lines_are_exact_repeats_of_an_earlier_line(caplog):
    pool = [
        _example(0, ("user", "2+2"), ("assistant", "4")),
        _example(1, ("user", "2+2"), ("assistant", "5")),  # another answer: not a repeat
        _example(2, ("user", "2+2"), ("assistant", "4")),
        _example(3, ("system", "2+2"), ("assistant", "4")),  # another role: not a repeat
        _example(4, ("user", "2+2"), ("assistant", "4")),
        _example(5, ("user", "2+2"), ("assistant", "5")),
    ]
    with caplog.at_level("WARNING", logger="dsel.data"):
        assert data.duplicate_lines(pool, "train.jsonl") == [2, 4, 5]
    assert "train.jsonl: 3 example(s) repeat an earlier line exactly" in caplog.text
    assert "line(s) 3, 5, 6" in caplog.text  # 1-based, as an editor shows them


def test_a_budget_beyond_the_distinct_lines_is_refused_with_the_reasons():
    assert _rows_to_select_from(5, [], [], 5) is None
    assert _rows_to_select_from(5, [0], [3], 3).tolist() == [1, 2, 4]
    with pytest.raises(SpecError) as refused:
        _rows_to_select_from(5, [0], [3, 4], 3)
    message = str(refused.value)
    assert "spec.selection.budget" in message and "only 2 of 5 can be selected" in message
    assert "1 keep no assistant token" in message and "2 repeat an earlier line" in message


@pytest.mark.slow
def test_a_pool_of_pairs_selects_each_example_once(tmp_path, capsys):
    """Every demo line twice: with deduplicate (the default) the selection holds distinct first
    copies only; without it the score-ranked `less` spends most slots on both copies of a pair."""
    from selection.cli import main

    train = tmp_path / "pairs.jsonl"
    train.write_text("\n".join(TRAIN_LINES + TRAIN_LINES) + "\n")
    n = len(TRAIN_LINES)

    def run(deduplicate: bool) -> dict:
        def mutate(document):
            document["spec"]["data"]["train"] = str(train)
            document["spec"]["warmup"]["epochs"] = 1
            document["spec"]["selection"].update(method="less", deduplicate=deduplicate)
        output = tmp_path / f"selection-{deduplicate}.json"
        spec = write_spec(tmp_path, mutate, name=f"spec-{deduplicate}.yaml")
        assert main(["run", str(spec), "-q", "--storage", str(tmp_path / "store"), "--output", str(output)]) == 0
        return json.loads(output.read_text())

    kept = run(True)
    assert f"Left out before selecting: {n} exact duplicates" in capsys.readouterr().out
    assert kept["excludedDuplicates"] == list(range(n, 2 * n))
    assert len(kept["indices"]) == kept["budget"] and all(i < n for i in kept["indices"])
    both = run(False)  # same store: only the reduction reruns
    assert "excludedDuplicates" not in both and len(both["indices"]) == both["budget"] == kept["budget"]
    distinct = {i % n for i in both["indices"]}
    assert len(distinct) <= len(both["indices"]) // 2 + 1  # pairs: each picked example also has its copy picked
