"""The batched gradient engine equals the per-example reference loop (docs/algorithms.md §4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selection import data
from selection import loss as head_module
from selection.gradients import engine as engine_module
from selection.gradients.engine import (
    LoraGradientEngine,
    UnsupportedModelError,
    lora_segments,
    per_example_gradients,
)
from selection.gradients.features import (
    ReferenceExtractor,
    compute_features,
    default_extractor,
    lora_dim,
)
from selection.gradients.preconditioners import AdamPreconditioner
from selection.gradients.projection import CountSketchProjector, IdentityProjector, RademacherProjector
from selection.loss import head_gradient, per_example_loss
from selection.models import PLAIN_CHAT_TEMPLATE, build_byte_tokenizer

from tests.support.models import demo_lora_model, one_thread  # noqa: F401  (autouse)

TOLERANCE = 1e-4  # relative error, fp32 (docs/algorithms.md §4)

CONVERSATIONS = [
    [{"role": "user", "content": "Reverse: abc"}, {"role": "assistant", "content": "cba"}],
    [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "What is 12 times 12?"},
     {"role": "assistant", "content": "144, since 12 * 12 = 144."}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there, how are you"},
     {"role": "user", "content": "fine"}, {"role": "assistant", "content": "good"}],
    [{"role": "user", "content": "A much longer prompt that pads the others: " + "lorem ipsum " * 4},
     {"role": "assistant", "content": "ok"}],
    [{"role": "user", "content": "Spell dog"}, {"role": "assistant", "content": "d-o-g"}],
]

@pytest.fixture(scope="module")
def tokenizer():
    return build_byte_tokenizer()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return demo_lora_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def examples(tokenizer):
    parsed = [data.Example(i, tuple(c), None, "") for i, c in enumerate(CONVERSATIONS)]
    tokenized = [data.tokenize_example(tokenizer, e, template=PLAIN_CHAT_TEMPLATE, max_length=128) for e in parsed]
    # One example whose assistant tokens were all truncated away: zero gradient, not NaN.
    tokenized.append(data.Tokenized(tokenized[1].input_ids[:6], (data.IGNORE_INDEX,) * 6))
    assert len({len(t.input_ids) for t in tokenized}) == len(tokenized)  # every batch is padded
    return tokenized


@pytest.fixture(scope="module")
def adam(model):
    p = lora_dim(model)
    generator = torch.Generator().manual_seed(3)
    return AdamPreconditioner(
        torch.randn(p, generator=generator) * 1e-3, torch.rand(p, generator=generator) * 1e-5, 0.9, 0.999
    )


def batch_of(items, tokenizer):
    return data.collate(items, tokenizer.pad_token_id)


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    norms = expected.norm(dim=1).clamp(min=1e-30)
    return float(((got - expected).norm(dim=1) / norms).max())


@pytest.mark.parametrize("kind", ["plain", "adam"])
def test_batched_gradients_equal_the_per_example_loop(model, examples, tokenizer, adam, kind):
    precondition = adam if kind == "adam" else None
    batch = batch_of(examples, tokenizer)
    p = lora_dim(model)
    expected = ReferenceExtractor()(model, batch, IdentityProjector(p), precondition)
    got = per_example_gradients(model, batch, precondition)
    assert got.shape == (len(examples), p)
    assert relative_error(got, expected) < TOLERANCE
    # Both LoRA halves are checked on their own, and lora_A gradients are really nonzero.
    segments = lora_segments(model)
    for down in (True, False):
        columns = torch.cat([torch.arange(s.offset, s.offset + s.numel) for s in segments if s.is_down == down])
        assert relative_error(got[:, columns], expected[:, columns]) < TOLERANCE
        assert bool((expected[:-1, columns].norm(dim=1) > 0).all())
    if precondition is None:
        assert not got[-1].any()  # no trained token: zero gradient (its Adam feature is b1*m/sqrt(...))


def test_padding_does_not_change_an_example(model, examples, tokenizer):
    alone = per_example_gradients(model, batch_of([examples[0]], tokenizer))
    padded = per_example_gradients(model, batch_of([examples[0], examples[3]], tokenizer))[:1]
    assert relative_error(padded, alone) < TOLERANCE


@pytest.mark.parametrize("projection", ["rademacher", "countsketch"])
def test_projected_features_equal_the_reference(model, examples, tokenizer, adam, projection):
    p = lora_dim(model)
    make = RademacherProjector if projection == "rademacher" else CountSketchProjector
    projector = make(p, 256, seed=7)
    batch = batch_of(examples, tokenizer)
    for precondition in (None, adam):
        expected = ReferenceExtractor()(model, batch, projector, precondition)
        got = LoraGradientEngine()(model, batch, projector, precondition)
        assert relative_error(got, expected) < TOLERANCE


def test_any_preconditioner_works_by_materializing(model, examples, tokenizer):
    batch = batch_of(examples[:3], tokenizer)
    projector = CountSketchProjector(lora_dim(model), 64, seed=1)

    def precondition(gradients):
        return torch.tanh(gradients * 10)

    expected = ReferenceExtractor()(model, batch, projector, precondition)
    assert relative_error(LoraGradientEngine()(model, batch, projector, precondition), expected) < TOLERANCE


def test_dropout_is_off_and_the_mode_is_restored(model, examples, tokenizer):
    batch = batch_of(examples[:3], tokenizer)
    evaluated = per_example_gradients(model, batch)
    model.train()
    try:
        trained = per_example_gradients(model, batch)
        assert model.training
    finally:
        model.eval()
    assert relative_error(trained, evaluated) < 1e-6


def test_full_logits_path_gives_the_same_gradients(model, examples, tokenizer, monkeypatch):
    batch = batch_of(examples, tokenizer)
    chunked = per_example_gradients(model, batch)
    monkeypatch.setattr(engine_module.DecoderHead, "for_model", staticmethod(lambda model, ids: None))
    assert relative_error(per_example_gradients(model, batch), chunked) < TOLERANCE


def test_head_gradient_is_the_loss_gradient_in_chunks():
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 7, 16, generator=generator, dtype=torch.float64).float().requires_grad_()
    weight, bias = torch.randn(40, 16, generator=generator), torch.randn(40, generator=generator)
    labels = torch.randint(0, 40, (3, 7), generator=generator)
    labels[0, :4] = data.IGNORE_INDEX
    labels[2, :] = data.IGNORE_INDEX  # no labelled token
    losses = per_example_loss(torch.nn.functional.linear(hidden, weight, bias), labels)
    (expected,) = torch.autograd.grad(losses.sum(), hidden)
    got, got_losses = head_gradient(hidden, labels, weight, bias, chunk_bytes=3 * 40 * 4)  # 3 tokens a chunk
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_losses, losses.detach(), rtol=1e-5, atol=1e-6)


def test_a_model_whose_logits_are_not_plain_uses_the_full_loss(model, examples, tokenizer, monkeypatch):
    head_module._CHECKED.pop(model, None)
    base = model.get_base_model()
    original = type(base).forward

    def scaled(self, *args, **kwargs):  # a logit scale, as some architectures have
        output = original(self, *args, **kwargs)
        output.logits = output.logits * 0.5
        return output

    monkeypatch.setattr(type(base), "forward", scaled)
    try:
        assert head_module.DecoderHead.for_model(model, torch.tensor([[5, 6, 7, 8]])) is None
        batch = batch_of(examples[:3], tokenizer)
        expected = ReferenceExtractor()(model, batch, IdentityProjector(lora_dim(model)), None)
        assert relative_error(per_example_gradients(model, batch), expected) < TOLERANCE
    finally:
        head_module._CHECKED.pop(model, None)


def test_out_of_memory_halves_the_batch_and_keeps_going(model, examples, tokenizer, monkeypatch):
    batch = batch_of(examples, tokenizer)
    projector = CountSketchProjector(lora_dim(model), 64, seed=2)
    expected = LoraGradientEngine()(model, batch, projector, None)
    engine = LoraGradientEngine()
    run, sizes = engine._run, []

    def run_with_little_memory(model, batch, projector, precondition):
        sizes.append(batch["input_ids"].shape[0])
        if batch["input_ids"].shape[0] > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return run(model, batch, projector, precondition)

    monkeypatch.setattr(engine, "_run", run_with_little_memory)
    got = engine(model, batch, projector, None)
    assert sizes == [6, 3, 3] and engine.max_rows == 3  # the smaller size is kept for later batches
    assert relative_error(got, expected) < TOLERANCE


def test_the_pipeline_engine_keeps_a_lowered_batch_size_across_checkpoints(model, examples, tokenizer, monkeypatch):
    engine = default_extractor()
    assert default_extractor() is engine  # one engine per process: what it learns is kept
    monkeypatch.setattr(engine, "max_rows", None)
    run, sizes = engine._run, []

    def run_out_of_memory_once(model, batch, projector, precondition):
        sizes.append(batch["input_ids"].shape[0])
        if len(sizes) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return run(model, batch, projector, precondition)

    monkeypatch.setattr(engine, "_run", run_out_of_memory_once)
    options = dict(
        projector=CountSketchProjector(lora_dim(model), 64, seed=2), precondition=None, batch_size=6,
        pad_token_id=tokenizer.pad_token_id,
    )
    first_checkpoint = compute_features(model, examples, extractor=default_extractor(), **options)
    later_checkpoint = compute_features(model, examples, extractor=default_extractor(), **options)
    assert sizes == [6, 3, 3, 3, 3]  # the later checkpoint starts at the halved size: no second failure
    np.testing.assert_array_equal(first_checkpoint, later_checkpoint)


def test_shards_concatenate_to_the_unsharded_result(model, examples, tokenizer, adam):
    projector = CountSketchProjector(lora_dim(model), 128, seed=4)
    options = dict(
        extractor=default_extractor(), projector=projector, precondition=adam, batch_size=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    whole = compute_features(model, examples, **options)
    shards = [compute_features(model, examples[start : start + 2], **options) for start in (0, 2, 4)]
    assert whole.dtype == np.float16 and whole.shape == (len(examples), 128)
    np.testing.assert_array_equal(np.concatenate(shards), whole)
    norms = np.linalg.norm(whole.astype(np.float32), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)  # Adam features of every row are nonzero


def test_the_pipeline_uses_the_engine():
    assert isinstance(default_extractor(), LoraGradientEngine)


def test_bf16_autocast_stays_close(model, examples, tokenizer):
    batch = batch_of(examples[:4], tokenizer)
    exact = per_example_gradients(model, batch)
    low = per_example_gradients(model, batch, autocast_dtype=torch.bfloat16)
    cosine = torch.nn.functional.cosine_similarity(low, exact, dim=1)
    assert float(cosine.min()) > 0.99


def test_trainable_parameters_outside_lora_are_refused(model, examples, tokenizer):
    norm = model.get_base_model().model.norm.weight
    norm.requires_grad_(True)
    try:
        with pytest.raises(UnsupportedModelError, match="norm.weight"):
            per_example_gradients(model, batch_of(examples[:2], tokenizer))
    finally:
        norm.requires_grad_(False)
    assert per_example_gradients(model, batch_of(examples[:2], tokenizer)).shape[1] == lora_dim(model)
