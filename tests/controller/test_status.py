"""Conditions and the encoding of selected indices in the status."""

from __future__ import annotations

import json
import random

import pytest

from selection_operator import status


def test_condition_transition_time_moves_only_when_status_flips():
    conditions = status.set_condition([], "Running", True, reason="Warmup", message="a", generation=1, now="t1")
    conditions = status.set_condition(conditions, "Running", True, reason="Extracting", message="b", generation=1, now="t2")
    assert conditions == [{"type": "Running", "status": "True", "reason": "Extracting", "message": "b",
                           "lastTransitionTime": "t1", "observedGeneration": 1}]
    conditions = status.set_condition(conditions, "Running", False, reason="Succeeded", message="c", generation=2, now="t3")
    assert conditions[0]["lastTransitionTime"] == "t3" and conditions[0]["observedGeneration"] == 2
    conditions = status.set_condition(conditions, "Complete", True, reason="Done", message="d", generation=2, now="t3")
    assert [c["type"] for c in conditions] == ["Running", "Complete"]
    assert status.find_condition(conditions, "Complete")["status"] == "True"
    assert status.remove_condition(conditions, "Running") == [conditions[1]]


@pytest.mark.parametrize("indices", [[], [0], [5, 3, 0, 2**40, 7], list(range(1000, 0, -3))])
def test_compact_indices_round_trip(indices):
    assert status.expand_indices(status.compact_indices(indices)) == indices


def test_small_selections_stay_a_plain_list():
    summary = status.selection_summary(
        {"method": "bids", "budget": 3, "indices": [9, 1, 4], "composition": {"a": 2, "b": 1}, "poolSize": 10,
         "subsetUri": "s3://b/selection/selected.jsonl", "parameters": {"big": "x" * 100}},
        "s3://b/selection/selection.json",
    )
    assert summary == {"method": "bids", "budget": 3, "count": 3, "poolSize": 10, "composition": {"a": 2, "b": 1},
                       "uri": "s3://b/selection/selection.json", "subsetUri": "s3://b/selection/selected.jsonl",
                       "encoding": "list", "indices": [9, 1, 4]}
    assert status.decode_indices(summary) == [9, 1, 4]


def test_feature_health_and_its_warning_are_copied_to_the_status():
    health = {"threshold": 0.5, "degenerate": True, "warning": "degenerate training features: ...",
              "checkpoints": [{"checkpoint": 0, "rows": 10, "zeroRows": 0, "meanPairwiseCosine": 0.9,
                               "commonDirectionShare": 0.91, "degenerate": True}]}
    summary = status.selection_summary({"indices": [1], "featureHealth": health}, "s3://b/s.json")
    assert summary["featureHealth"] == health
    assert "featureHealth" not in status.selection_summary({"indices": [1]}, "s3://b/s.json")


def test_large_selections_are_compacted_within_budget():
    indices = list(range(1_000_000))
    random.Random(1).shuffle(indices)
    indices = indices[:50_000]  # 5 % of a million-example pool, in score order
    summary = status.selection_summary({"indices": indices}, "s3://b/selection/selection.json")
    assert summary["encoding"] == status.ENCODING_COMPACT
    assert len(summary["indices"]) <= status.COMPACT_LIMIT_BYTES
    assert status.decode_indices(summary) == indices


def test_a_million_indices_in_score_order_are_left_to_the_uri():
    indices = list(range(1_000_000))
    random.Random(2).shuffle(indices)
    summary = status.selection_summary({"indices": indices}, "s3://b/selection/selection.json")
    assert summary["encoding"] == status.ENCODING_OMITTED and "indices" not in summary
    assert len(json.dumps(summary)) < 1024
    with pytest.raises(LookupError, match="s3://b/selection/selection.json"):
        status.decode_indices(summary)


def test_a_million_sorted_indices_compact_to_almost_nothing():
    summary = status.selection_summary({"indices": list(range(1_000_000))}, "s3://b/s.json")
    assert summary["encoding"] == status.ENCODING_COMPACT and len(summary["indices"]) < 10_000


def test_unknown_encodings_are_refused():
    with pytest.raises(ValueError, match="unknown indices encoding"):
        status.decode_indices({"encoding": "gzip", "indices": "x"})
