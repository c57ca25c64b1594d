"""JVP embeddings (docs/algorithms.md §14.1) against finite differences on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selection import data
from selection.distill.embeddings import (
    EmbeddingError,
    JvpEmbedder,
    decoder_of,
    draw_tangents,
    last_token_jvp,
    length_halves,
    tangent_parameters,
    truncated,
)
from selection.gradients.projection import RademacherProjector
from selection.warmup import trainable_parameters

from tests.support.models import TINY_HIDDEN, TINY_PAD, one_thread, tiny_lora_llama  # noqa: F401

HIDDEN = TINY_HIDDEN
LENGTHS = [9, 4, 13, 6, 11]  # right padding in every batch
PAD = TINY_PAD
FD_TOLERANCE = 1e-6  # relative; float64 central differences with step 1e-6 are good to ~1e-9


@pytest.fixture(scope="module")
def model():
    return tiny_lora_llama()


@pytest.fixture(scope="module")
def examples():
    rng = np.random.default_rng(0)
    return [
        data.Tokenized(tuple(int(t) for t in rng.integers(1, 40, n)), (data.IGNORE_INDEX,) * n) for n in LENGTHS
    ]


@pytest.fixture(autouse=True, scope="module")
def float64_norms():
    """Llama's RMSNorm computes in float32 even in a float64 model, which would drown a finite
    difference in rounding; here it keeps the input's dtype, for the JVP and the check alike."""
    from transformers.models.llama import modeling_llama

    def forward(self, hidden_states):
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(modeling_llama.LlamaRMSNorm, "forward", forward)
        yield


def finite_difference(model, examples, blocks: int, tangents: int, seed: int, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the truncated model's last-token hidden state, one example at a time."""
    decoder = decoder_of(model)
    model.eval()
    columns = []
    with torch.no_grad(), truncated(decoder, blocks) as kept:
        primals = tangent_parameters(decoder, kept)
        directions = draw_tangents(primals, tangents, seed)
        rows = []
        for example in examples:
            ids = torch.tensor([example.input_ids])
            per_tangent = []
            for t in range(tangents):
                def hidden(step, t=t, ids=ids):
                    params = {n: p + step * directions[n][t] for n, p in primals.items()}
                    out = torch.func.functional_call(decoder, params, (ids,), {"use_cache": False})
                    return out.last_hidden_state[0, -1]

                per_tangent.append((hidden(eps) - hidden(-eps)) / (2 * eps))
            rows.append(torch.cat(per_tangent))
        columns = torch.stack(rows)
    model.train()
    return columns.numpy()


def test_jvp_equals_finite_differences(model, examples):
    embedder = JvpEmbedder(blocks=2, tangents=2, embed_dim=4096, seed=3)
    got = embedder(model, examples, batch_size=2, pad_token_id=PAD)
    expected = finite_difference(model, examples, blocks=2, tangents=2, seed=3)
    assert got.shape == (len(examples), 2 * HIDDEN) and got.dtype == np.float32
    assert np.abs(expected).max() > 1e-2  # the directions really move the output
    np.testing.assert_allclose(got, expected, rtol=FD_TOLERANCE, atol=FD_TOLERANCE * np.abs(expected).max())


def test_truncation_keeps_the_first_blocks_and_restores_the_model(model, examples):
    decoder = decoder_of(model)
    layers, implementation = decoder.layers, decoder.config._attn_implementation
    one = JvpEmbedder(blocks=1, tangents=1, seed=0)(model, examples, batch_size=8, pad_token_id=PAD)
    np.testing.assert_allclose(
        one, finite_difference(model, examples, blocks=1, tangents=1, seed=0), rtol=FD_TOLERANCE,
        atol=FD_TOLERANCE * np.abs(one).max(),
    )
    capped = JvpEmbedder(blocks=9, tangents=1, seed=0)(model, examples, batch_size=8, pad_token_id=PAD)
    two = JvpEmbedder(blocks=2, tangents=1, seed=0)(model, examples, batch_size=8, pad_token_id=PAD)
    np.testing.assert_array_equal(capped, two)  # more blocks than layers: all of them
    assert not np.allclose(one, two)
    assert decoder.layers is layers and len(decoder.layers) == 2
    assert decoder.config._attn_implementation == implementation
    assert model.training  # mode restored
    assert JvpEmbedder(blocks=9).kept_blocks(model) == 2


def test_batching_does_not_change_an_embedding(model, examples):
    """Right padding never reaches a real token: batched equals one example at a time."""
    embedder = JvpEmbedder(blocks=2, tangents=2, seed=1)
    batched = embedder(model, examples, batch_size=len(examples), pad_token_id=PAD)
    single = embedder(model, examples, batch_size=1, pad_token_id=PAD)
    np.testing.assert_allclose(batched, single, rtol=1e-10, atol=1e-10 * np.abs(single).max())


def test_seeded_directions_and_projection(model, examples):
    first = JvpEmbedder(tangents=2, seed=5)(model, examples, batch_size=4, pad_token_id=PAD)
    again = JvpEmbedder(tangents=2, seed=5)(model, examples, batch_size=4, pad_token_id=PAD)
    other = JvpEmbedder(tangents=2, seed=6)(model, examples, batch_size=4, pad_token_id=PAD)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    small = JvpEmbedder(tangents=2, embed_dim=8, seed=5)
    projected = small(model, examples, batch_size=4, pad_token_id=PAD)
    assert projected.shape == (len(examples), 8) and small.output_dim(model) == 8
    expected = RademacherProjector(2 * HIDDEN, 8, 5).project(torch.from_numpy(first)).numpy()
    np.testing.assert_allclose(projected, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_float32_model_and_progress(examples):
    model = tiny_lora_llama(dtype=torch.float32)
    seen = []
    out = JvpEmbedder(tangents=2)(model, examples, batch_size=2, pad_token_id=PAD, progress=seen.append)
    assert seen == [2, 2, 1] and np.isfinite(out).all()
    reference = JvpEmbedder(tangents=2)(model.double(), examples, batch_size=2, pad_token_id=PAD)
    np.testing.assert_allclose(out, reference, rtol=1e-3, atol=1e-4 * np.abs(reference).max())


def test_no_trainable_parameters_in_the_kept_blocks_is_an_error(examples):
    model = tiny_lora_llama()
    with torch.no_grad():
        for name, parameter in trainable_parameters(model):
            if ".layers.0." in name:
                parameter.requires_grad_(False)
    with pytest.raises(EmbeddingError, match="first 1 decoder blocks have no trainable"):
        JvpEmbedder(blocks=1)(model, examples, batch_size=2, pad_token_id=PAD)
    assert len(decoder_of(model).layers) == 2


def test_last_token_jvp_shape(model, examples):
    decoder = decoder_of(model)
    batch = data.collate(examples[:3], PAD)
    model.eval()  # the caller's job (JvpEmbedder does it): dropout would be random under vmap
    with truncated(decoder, 1) as kept:
        primals = tangent_parameters(decoder, kept)
        assert all(name.startswith("layers.0.") for name in primals)
        out = last_token_jvp(decoder, primals, draw_tangents(primals, 3, 0), batch)
    model.train()
    assert out.shape == (3, 3 * HIDDEN) and out.dtype == torch.float32


def test_length_halves_sort_by_length_then_position(examples):
    parts = length_halves(examples)  # lengths 9, 4, 13, 6, 11
    assert [p.tolist() for p in parts] == [[1, 3], [0, 4, 2]]
    assert [p.tolist() for p in length_halves(examples[:1])] == [[0]]
    tied = [examples[1], examples[1], examples[3]]
    assert [p.tolist() for p in length_halves(tied)] == [[0], [1, 2]]
