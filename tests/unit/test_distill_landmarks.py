"""Landmark draw and the bias-corrected Adam preconditioner (docs/algorithms.md §14.2-§14.3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selection import data
from selection.distill.landmarks import draw_landmarks
from selection.gradients.features import ReferenceExtractor, compute_features, default_extractor, lora_dim
from selection.gradients.preconditioners import BiasCorrectedAdamPreconditioner, DiagonalScaledProjector
from selection.gradients.projection import CountSketchProjector, IdentityProjector, RademacherProjector
from selection.warmup import Checkpoint, trainable_parameters

from tests.support.models import one_thread, tiny_lora_llama  # noqa: F401  (one_thread: autouse)

PAD = 0


def test_landmarks_are_seeded_sorted_distinct_and_capped():
    first = draw_landmarks(1000, 64, seed=3)
    assert first.dtype == np.int64 and len(first) == 64 and len(set(first.tolist())) == 64
    assert np.all(np.diff(first) > 0) and 0 <= first[0] and first[-1] < 1000
    np.testing.assert_array_equal(first, np.sort(np.random.default_rng(3).choice(1000, 64, replace=False)))
    np.testing.assert_array_equal(first, draw_landmarks(1000, 64, seed=3))
    assert not np.array_equal(first, draw_landmarks(1000, 64, seed=4))
    np.testing.assert_array_equal(draw_landmarks(10, 4096, seed=0), np.arange(10))
    with pytest.raises(ValueError, match="landmarks"):
        draw_landmarks(10, 0, seed=0)


def test_coefficients_follow_the_formula():
    v = torch.tensor([0.0, 1e-8, 4e-6, 0.25], dtype=torch.float64)
    t, b1, b2, eps = 7, 0.9, 0.999, 1e-8
    expected = ((1 - b1) / (1 - b1 ** (t + 1))) / (torch.sqrt(v / (1 - b2 ** (t + 1))) + eps)
    got = BiasCorrectedAdamPreconditioner.coefficients(v, t, b1, b2, eps)
    torch.testing.assert_close(got, expected.float(), rtol=1e-6, atol=0)
    g = torch.tensor([[1.0, -2.0, 3.0, 4.0]])
    torch.testing.assert_close(BiasCorrectedAdamPreconditioner(got)(g), g * expected.float())


@pytest.fixture(scope="module")
def setup():
    model = tiny_lora_llama(dtype=torch.float32)
    model.eval()
    named = trainable_parameters(model)
    rng = torch.Generator().manual_seed(0)
    checkpoint = Checkpoint(
        epoch=1, step=12, mean_lr=1e-3, parameter_order=[n for n, _ in named],
        adapter={n: p.detach().clone() for n, p in named},
        exp_avg={n: torch.randn(p.shape, generator=rng) * 1e-3 for n, p in named},
        exp_avg_sq={n: torch.rand(p.shape, generator=rng) * 1e-4 for n, p in named},
    )
    gen = np.random.default_rng(1)
    examples = []
    for n in (9, 5, 12, 7):
        ids = tuple(int(t) for t in gen.integers(1, 40, n))
        examples.append(data.Tokenized(ids, (data.IGNORE_INDEX,) * 3 + ids[3:]))
    return model, checkpoint, examples


def test_from_checkpoint_uses_the_name_keyed_moments_in_model_order(setup):
    model, checkpoint, _ = setup
    pre = BiasCorrectedAdamPreconditioner.from_checkpoint(checkpoint, 0.9, 0.999, 1e-8)
    assert pre.scale.shape == (lora_dim(model),)
    name = checkpoint.parameter_order[1]
    offset = checkpoint.exp_avg_sq[checkpoint.parameter_order[0]].numel()
    v = checkpoint.exp_avg_sq[name].reshape(-1).double()
    expected = BiasCorrectedAdamPreconditioner.coefficients(v, 12, 0.9, 0.999, 1e-8)
    torch.testing.assert_close(pre.scale[offset : offset + v.numel()], expected)


@pytest.mark.parametrize("kind", ["identity", "rademacher", "countsketch"])
def test_folded_projection_equals_preconditioning_the_reference_gradient(setup, kind):
    """Engine + P·diag(a) (streaming) == one backward per example, a*g, then P (the oracle)."""
    model, checkpoint, examples = setup
    p = lora_dim(model)
    projector = {
        "identity": IdentityProjector(p),
        "rademacher": RademacherProjector(p, 64, seed=2),
        "countsketch": CountSketchProjector(p, 64, seed=2),
    }[kind]
    pre = BiasCorrectedAdamPreconditioner.from_checkpoint(checkpoint, 0.9, 0.999, 1e-8)
    folded = pre.fold_into(projector)
    assert isinstance(folded, DiagonalScaledProjector) and hasattr(folded, "project_segment")
    common = dict(batch_size=3, pad_token_id=PAD)
    fast = compute_features(model, examples, extractor=default_extractor(), projector=folded, precondition=None, **common)
    oracle = compute_features(model, examples, extractor=ReferenceExtractor(), projector=projector, precondition=pre, **common)
    generic = compute_features(model, examples, extractor=default_extractor(), projector=projector, precondition=pre, **common)
    assert np.abs(oracle.astype(np.float32)).max() > 0
    for got in (fast, generic):
        np.testing.assert_allclose(got.astype(np.float32), oracle.astype(np.float32), atol=2e-3)
    norms = np.linalg.norm(fast.astype(np.float32), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)


def test_folded_projector_checks_sizes():
    with pytest.raises(ValueError, match="coefficients"):
        DiagonalScaledProjector(IdentityProjector(4), torch.ones(5))
    folded = DiagonalScaledProjector(IdentityProjector(3), torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(folded.project(torch.ones(2, 3)), torch.tensor([[1.0, 2.0, 3.0]] * 2))
