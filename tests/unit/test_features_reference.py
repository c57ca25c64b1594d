"""The reference features equal docs/algorithms.md §4-§7 computed by hand on a tiny model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from selection import data
from selection.gradients.features import ReferenceExtractor, compute_features
from selection.gradients.preconditioners import AdamPreconditioner
from selection.gradients.projection import RademacherProjector
from selection.models import PLAIN_CHAT_TEMPLATE, build_byte_tokenizer
from selection.warmup import Checkpoint, trainable_parameters

from tests.support.models import demo_lora_model


def test_adam_formula_on_numbers():
    pre = AdamPreconditioner(torch.tensor([0.1, -0.2]), torch.tensor([0.04, 0.0]), beta1=0.9, beta2=0.999)
    got = pre(torch.tensor([0.5, 0.3]))
    expected = [
        (0.9 * 0.1 + 0.1 * 0.5) / math.sqrt(0.999 * 0.04 + 0.001 * 0.25 + 1e-8),
        (0.9 * -0.2 + 0.1 * 0.3) / math.sqrt(0.001 * 0.09 + 1e-8),
    ]
    assert got.tolist() == pytest.approx(expected, rel=1e-6)


@pytest.fixture(scope="module")
def lora_model(tmp_path_factory):
    return demo_lora_model(tmp_path_factory.mktemp("tiny"))


def examples():
    tokenizer = build_byte_tokenizer()
    rows = [
        [{"role": "user", "content": "Reverse: abc"}, {"role": "assistant", "content": "cba"}],
        [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "1+1?"},
         {"role": "assistant", "content": "2"}],
    ]
    parsed = [data.Example(i, tuple(r), None, "") for i, r in enumerate(rows)]
    return tokenizer, [data.tokenize_example(tokenizer, e, template=PLAIN_CHAT_TEMPLATE, max_length=128) for e in parsed]


def manual_gradient(model, tokenized: data.Tokenized) -> torch.Tensor:
    """Mean cross-entropy over assistant tokens, differentiated by autograd, flattened by hand."""
    ids = torch.tensor([tokenized.input_ids])
    logits = model(input_ids=ids).logits[0]
    total, count = 0.0, 0
    for position in range(1, len(tokenized.input_ids)):
        if tokenized.labels[position] != data.IGNORE_INDEX:
            total = total - torch.log_softmax(logits[position - 1], dim=-1)[tokenized.labels[position]]
            count += 1
    params = [p for _, p in trainable_parameters(model)]
    grads = torch.autograd.grad(total / count, params)
    return torch.cat([g.reshape(-1) for g in grads]).double()


def test_adam_aware_features_match_hand_computation(lora_model):
    tokenizer, tokenized = examples()
    names = [n for n, _ in trainable_parameters(lora_model)]
    generator = torch.Generator().manual_seed(3)
    shapes = {n: p.shape for n, p in trainable_parameters(lora_model)}
    checkpoint = Checkpoint(
        epoch=0, step=5, mean_lr=1e-3, parameter_order=names, adapter={},
        exp_avg={n: torch.randn(shapes[n], generator=generator) * 1e-3 for n in names},
        exp_avg_sq={n: torch.rand(shapes[n], generator=generator) * 1e-6 for n in names},
    )
    p = sum(math.prod(s) for s in shapes.values())
    projector = RademacherProjector(p, 64, seed=11)
    features = compute_features(
        lora_model, tokenized, extractor=ReferenceExtractor(), projector=projector,
        precondition=AdamPreconditioner.from_checkpoint(checkpoint, 0.9, 0.999),
        batch_size=2, pad_token_id=tokenizer.pad_token_id,
    )
    dense = torch.cat([projector.block(b) for b in range(projector.blocks)]).double().numpy()
    assert dense.shape == (p, 64) and set(np.unique(np.abs(dense) * 8).round(6)) == {1.0}
    m = torch.cat([checkpoint.exp_avg[n].reshape(-1) for n in names]).double()
    v = torch.cat([checkpoint.exp_avg_sq[n].reshape(-1) for n in names]).double()
    for row, item in enumerate(tokenized):
        g = manual_gradient(lora_model, item)
        assert float(g.abs().max()) > 0
        gamma = (0.9 * m + 0.1 * g) / torch.sqrt(0.999 * v + 0.001 * g * g + 1e-8)
        projected = gamma.numpy() @ dense
        expected = projected / np.linalg.norm(projected)
        assert features.dtype == np.float16
        np.testing.assert_allclose(features[row].astype(np.float64), expected, atol=2e-3)


def test_plain_features_are_normalized_projected_gradients(lora_model):
    tokenizer, tokenized = examples()
    p = sum(param.numel() for _, param in trainable_parameters(lora_model))
    projector = RademacherProjector(p, 32, seed=5)
    features = compute_features(
        lora_model, tokenized, extractor=ReferenceExtractor(), projector=projector, precondition=None,
        batch_size=1, pad_token_id=tokenizer.pad_token_id,
    )
    dense = torch.cat([projector.block(b) for b in range(projector.blocks)]).double().numpy()
    for row, item in enumerate(tokenized):
        projected = manual_gradient(lora_model, item).numpy() @ dense
        np.testing.assert_allclose(features[row], projected / np.linalg.norm(projected), atol=2e-3)


def test_an_example_without_trained_tokens_gets_a_zero_feature(lora_model):
    tokenizer, tokenized = examples()
    truncated = data.Tokenized(tokenized[0].input_ids[:5], (data.IGNORE_INDEX,) * 5)
    p = sum(param.numel() for _, param in trainable_parameters(lora_model))
    features = compute_features(
        lora_model, [truncated], extractor=ReferenceExtractor(), projector=RademacherProjector(p, 16, 0),
        precondition=None, batch_size=1, pad_token_id=tokenizer.pad_token_id,
    )
    assert not np.isnan(features).any() and not features.any()
