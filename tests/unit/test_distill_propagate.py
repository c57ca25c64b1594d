"""Kernel ridge propagation (docs/algorithms.md §14.4) against a dense solve."""

from __future__ import annotations

import numpy as np
import pytest

from selection.distill import propagate


def dense_reference(embeddings: np.ndarray, landmark_index: np.ndarray, values: np.ndarray, ridge: float):
    """The plain definition: pairwise differences, median distance, inverse, N x L kernel at once."""
    x = np.asarray(embeddings, dtype=np.float64)
    points = x[landmark_index]
    distances = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1))
    sigma = np.median(distances[np.triu_indices(len(points), k=1)])
    kernel = np.exp(-(distances**2) / (2 * sigma**2))
    lam = ridge * np.mean(np.diag(kernel))
    weights = np.linalg.inv(kernel + lam * np.eye(len(points))) @ values
    full = np.exp(-((x[:, None, :] - points[None, :, :]) ** 2).sum(-1) / (2 * sigma**2))
    return full @ weights, sigma, lam, weights


@pytest.fixture()
def problem():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 6)) * 3
    embeddings = (centers[rng.integers(0, 4, 120)] + rng.normal(size=(120, 6))).astype(np.float32)
    landmark_index = np.sort(rng.choice(120, 30, replace=False))
    values = rng.normal(size=(30, 5))
    return embeddings, landmark_index, values


def test_matches_a_dense_solve(problem):
    embeddings, landmark_index, values = problem
    expected, sigma, lam, weights = dense_reference(embeddings, landmark_index, values, 1e-2)
    model = propagate.fit(embeddings[landmark_index], values, 1e-2)
    assert model.sigma == pytest.approx(sigma, rel=1e-12) and model.ridge == pytest.approx(lam)
    np.testing.assert_allclose(model.weights, weights, rtol=1e-8, atol=1e-8 * np.abs(weights).max())
    out = propagate.propagate(model, embeddings, np.empty((120, 5)))
    np.testing.assert_allclose(out, expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())


def test_reproduces_the_landmark_values_up_to_the_ridge_term(problem):
    embeddings, landmark_index, values = problem
    model = propagate.fit(embeddings[landmark_index], values, 1e-2)
    at_landmarks = model.predict(embeddings[landmark_index])
    # K W = p_L - lambda W exactly, so the ridge term is all that separates them
    np.testing.assert_allclose(at_landmarks + model.ridge * model.weights, values, atol=1e-9)
    assert np.abs(at_landmarks - values).max() > 1e-6
    tiny = propagate.fit(embeddings[landmark_index], values, 1e-9)
    np.testing.assert_allclose(tiny.predict(embeddings[landmark_index]), values, atol=1e-5)


def test_blocks_and_shards_do_not_change_the_result(problem, monkeypatch):
    embeddings, landmark_index, values = problem
    model = propagate.fit(embeddings[landmark_index], values, 1e-2)
    whole = propagate.propagate(model, embeddings, np.empty((120, 5), dtype=np.float32))
    monkeypatch.setattr(propagate, "BLOCK_BYTES", 8 * 30 * 7)  # 7 rows per block
    assert model.row_block == 7
    shards = propagate.ConcatenatedRows([embeddings[:50], embeddings[50:51], embeddings[51:]])
    seen = []
    blocked = propagate.propagate(model, shards, np.empty((120, 5), dtype=np.float32), progress=seen.append)
    np.testing.assert_array_equal(blocked, whole)
    assert sum(seen) == 120 and max(seen) == 7
    np.testing.assert_array_equal(shards.take(landmark_index), embeddings[landmark_index].astype(np.float64))
    np.testing.assert_array_equal(shards.rows(45, 60), embeddings[45:60].astype(np.float64))


def test_bandwidth_edge_cases():
    assert propagate.median_pairwise_distance(np.zeros((1, 3))) == 1.0
    assert propagate.median_pairwise_distance(np.zeros((5, 3))) == 1.0  # all equal
    duplicates = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
    # three zero distances out of six: the median is 2.5, fine
    assert propagate.median_pairwise_distance(duplicates) == pytest.approx(2.5)
    mostly = np.array([[0.0], [0.0], [0.0], [0.0], [2.0]])  # 6 zeros, 4 twos: median 0 -> mean 0.8
    assert propagate.median_pairwise_distance(mostly) == pytest.approx(0.8)
    model = propagate.fit(np.zeros((3, 2)), np.ones((3, 1)), 1e-2)  # singular kernel: the ridge saves it
    np.testing.assert_allclose(model.predict(np.zeros((1, 2))), [[3 / 3.01]])


def test_bad_inputs():
    with pytest.raises(ValueError, match="must be"):
        propagate.fit(np.zeros((3, 2)), np.zeros((4, 1)), 1e-2)
    with pytest.raises(ValueError, match="finite"):
        propagate.fit(np.array([[np.nan, 0.0], [1.0, 1.0]]), np.zeros((2, 1)), 1e-2)
    model = propagate.fit(np.eye(2), np.eye(2), 1e-2)
    with pytest.raises(ValueError, match="rows"):
        propagate.propagate(model, np.eye(2), np.empty((3, 2)))
