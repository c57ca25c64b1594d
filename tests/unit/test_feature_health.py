"""Feature health (docs/algorithms.md §18.4): exact streaming statistics and the degenerate warning."""

from __future__ import annotations

import numpy as np
import pytest

from selection.gradients.health import (
    DEGENERATE_COSINE,
    CheckpointHealth,
    FeatureStatistics,
    feature_health,
)


def unit_rows(rng, rows: int, dim: int, common: float = 0.0) -> np.ndarray:
    """Unit rows around a shared direction: `common` is the weight of that direction."""
    shared = np.zeros(dim)
    shared[0] = 1.0
    x = common * shared + rng.standard_normal((rows, dim)) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def statistics_of(blocks) -> FeatureStatistics:
    stats = FeatureStatistics.empty(blocks[0].shape[1])
    for block in blocks:
        stats.add(block)
    return stats


def brute_force(x: np.ndarray) -> tuple[float, float]:
    """Mean pairwise cosine over i != j and |mean|^2 / mean |x|^2, from the full Gram matrix."""
    x = x.astype(np.float64)
    x = x[np.linalg.norm(x, axis=1) > 0]
    gram = x @ x.T
    n = len(x)
    pairs = (gram.sum() - np.trace(gram)) / (n * (n - 1))
    share = float(x.mean(0) @ x.mean(0)) / float(np.mean(np.einsum("ij,ij->i", x, x)))
    return pairs, share


def test_streaming_statistics_equal_the_pairwise_definition_and_ignore_zero_rows():
    rng = np.random.default_rng(0)
    x = unit_rows(rng, 300, 64, common=0.7)
    x[[5, 17]] = 0  # examples without a trained token
    stats = statistics_of([x[i : i + 32] for i in range(0, len(x), 32)])
    pairs, share = brute_force(x)
    assert stats.rows == 298 and stats.zero_rows == 2
    assert stats.mean_pairwise_cosine() == pytest.approx(pairs, abs=1e-12)
    assert stats.common_direction_share() == pytest.approx(share, abs=1e-12)
    # for unit rows s = 1/n + (n-1)/n * c
    assert stats.common_direction_share() == pytest.approx(1 / 298 + 297 / 298 * pairs, abs=1e-3)


def test_shards_merge_exactly_through_the_json_and_the_sum_vector():
    rng = np.random.default_rng(1)
    x = unit_rows(rng, 200, 32, common=0.3)
    whole = statistics_of([x])
    parts = [statistics_of([x[:70]]), statistics_of([x[70:]])]
    restored = [FeatureStatistics.from_json(p.to_json(), p.total) for p in parts]
    merged = restored[0].merge(restored[1])
    assert merged.rows == whole.rows
    assert merged.mean_pairwise_cosine() == pytest.approx(whole.mean_pairwise_cosine(), abs=1e-12)


def test_fewer_than_two_rows_have_no_pairwise_cosine():
    stats = statistics_of([np.zeros((3, 8), dtype=np.float16)])
    assert stats.mean_pairwise_cosine() is None and stats.common_direction_share() is None
    assert not CheckpointHealth(0, stats).degenerate


def test_degenerate_features_warn_and_say_what_to_change():
    rng = np.random.default_rng(2)
    collapsed = statistics_of([unit_rows(rng, 200, 64, common=3.0)])  # one shared direction dominates
    healthy = statistics_of([unit_rows(rng, 200, 64)])
    assert collapsed.mean_pairwise_cosine() > DEGENERATE_COSINE > healthy.mean_pairwise_cosine()
    document = feature_health([CheckpointHealth(0, healthy), CheckpointHealth(1, collapsed)], "adam")
    assert document["degenerate"] is True and document["threshold"] == DEGENERATE_COSINE
    assert [c["degenerate"] for c in document["checkpoints"]] == [False, True]
    warning = document["warning"]
    assert "checkpoint 1" in warning and "checkpoint 0" not in warning
    assert "warmup.epochs" in warning and "gradients.trainType: sgd" in warning


def test_healthy_features_get_no_warning():
    rng = np.random.default_rng(3)
    document = feature_health([CheckpointHealth(0, statistics_of([unit_rows(rng, 100, 64)]))], "adam")
    assert document["degenerate"] is False and "warning" not in document
    assert abs(document["checkpoints"][0]["meanPairwiseCosine"]) < 0.1


def run_cli_with(monkeypatch, capsys, health: dict) -> tuple[str, str]:
    """`dsel run` of the demo spec with the pipeline replaced by a document carrying `health`."""
    from pathlib import Path

    from selection import cli, local

    document = {"indices": [0, 1], "budget": 2, "method": "bids", "composition": {"t": 2}, "poolSize": 10,
                "featureHealth": health}
    monkeypatch.setattr(local, "run_selection", lambda resource, **options: document)
    spec = Path(__file__).resolve().parents[2] / "examples" / "demo" / "dataselection.yaml"
    assert cli.main(["run", str(spec), "--quiet"]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_dsel_run_prints_the_health_and_warns_on_degenerate_features(monkeypatch, capsys):
    rng = np.random.default_rng(4)
    collapsed = CheckpointHealth(0, statistics_of([unit_rows(rng, 100, 64, common=3.0)]))
    out, err = run_cli_with(monkeypatch, capsys, feature_health([collapsed], "adam"))
    assert "checkpoint 0: mean pairwise cosine" in out and "DEGENERATE" in out
    assert "warning: degenerate training features" in err and "gradients.trainType: sgd" in err


def test_dsel_run_does_not_warn_on_healthy_features(monkeypatch, capsys):
    rng = np.random.default_rng(5)
    healthy = CheckpointHealth(0, statistics_of([unit_rows(rng, 100, 64)]))
    out, err = run_cli_with(monkeypatch, capsys, feature_health([healthy], "adam"))
    assert "checkpoint 0: mean pairwise cosine" in out and "DEGENERATE" not in out
    assert "warning" not in err
