"""The options bench/quality's evidence added: training-feature variants and quota-sample.

Each test fails if its option did nothing (returned the default's result) or did something else
than its documented formula.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selection.gradients.features import ReferenceExtractor, lora_dim
from selection.gradients.preconditioners import (
    TRAIN_TYPES, AdamPreconditioner, SegmentPreconditioner, training_preconditioner,
)
from selection.gradients.projection import IdentityProjector
from selection.reduce import ReductionError, reduce_matrix
from selection.reduce.naive import naive_quota
from selection.spec import GradientsSpec, SelectionSpec, WarmupSpec
from selection.warmup import Checkpoint


def _checkpoint(p: int, step: int = 20) -> Checkpoint:
    generator = torch.Generator().manual_seed(5)
    return Checkpoint(
        epoch=0, step=step, mean_lr=1e-3, parameter_order=["w"], adapter={},
        exp_avg={"w": torch.randn(p, generator=generator) * 1e-3},
        exp_avg_sq={"w": torch.rand(p, generator=generator) * 1e-6},
    )


def _transform(train_type: str, checkpoint: Checkpoint, g: torch.Tensor) -> torch.Tensor:
    precondition = training_preconditioner(train_type, checkpoint, WarmupSpec())
    return IdentityProjector(g.shape[1]).project(precondition(g) if precondition is not None else g)


def test_every_train_type_of_the_spec_has_a_transform():
    from typing import get_args

    assert set(get_args(GradientsSpec.model_fields["train_type"].annotation)) == set(TRAIN_TYPES)
    with pytest.raises(ValueError, match="unknown"):
        training_preconditioner("adamw", _checkpoint(4), WarmupSpec())


def test_feature_variants_follow_their_formulas():
    p = 64
    checkpoint = _checkpoint(p)
    g = torch.randn(3, p, generator=torch.Generator().manual_seed(9)) * 1e-3
    m, v = checkpoint.exp_avg["w"], checkpoint.exp_avg_sq["w"]
    b1, b2, eps = 0.9, 0.999, 1e-8
    less = (b1 * m + (1 - b1) * g) / torch.sqrt(b2 * v + (1 - b2) * g * g + 1e-8)
    no_momentum = (1 - b1) * g / torch.sqrt(b2 * v + (1 - b2) * g * g + 1e-8)
    t = checkpoint.step
    diagonal = g * ((1 - b1) / (1 - b1 ** (t + 1))) / (torch.sqrt(v / (1 - b2 ** (t + 1))) + eps)
    torch.testing.assert_close(_transform("adam", checkpoint, g), less)
    torch.testing.assert_close(_transform("sgd", checkpoint, g), g)
    torch.testing.assert_close(_transform("adam-no-momentum", checkpoint, g), no_momentum)
    torch.testing.assert_close(_transform("adam-diagonal", checkpoint, g), diagonal, rtol=1e-5, atol=0)
    # and they really differ from LESS's features (the shared momentum term is gone)
    assert not torch.allclose(_transform("adam-no-momentum", checkpoint, g), less)


def test_dropping_momentum_removes_the_shared_direction():
    """With a large shared m every LESS feature points the same way; without it they do not."""
    p = 256
    checkpoint = _checkpoint(p)
    checkpoint.exp_avg["w"] = torch.full((p,), 1e-2)  # momentum much larger than any example's g
    g = torch.randn(8, p, generator=torch.Generator().manual_seed(2)) * 1e-4

    def mean_cosine(features: torch.Tensor) -> float:
        unit = features / features.norm(dim=1, keepdim=True)
        sims = unit @ unit.T
        return float((sims.sum() - sims.diagonal().sum()) / (len(unit) * (len(unit) - 1)))

    assert mean_cosine(_transform("adam", checkpoint, g)) > 0.9
    assert abs(mean_cosine(_transform("adam-no-momentum", checkpoint, g))) < 0.2


@pytest.fixture(scope="module")
def lora_case():
    """(model, batch, checkpoint, p): a tiny LoRA model, a batch of two examples and random moments."""
    from transformers import AutoModelForCausalLM

    from selection import data
    from selection.models import PLAIN_CHAT_TEMPLATE, build_byte_tokenizer, build_tiny_model
    from selection.spec import LoraSpec
    from selection.warmup import attach_lora, trainable_parameters

    import tempfile
    from pathlib import Path

    torch.set_num_threads(1)
    tokenizer = build_byte_tokenizer()
    with tempfile.TemporaryDirectory() as scratch:
        directory = build_tiny_model("llama-demo", Path(scratch))
        model = attach_lora(AutoModelForCausalLM.from_pretrained(directory), LoraSpec(r=2, alpha=4), seed=0)
    torch.manual_seed(1)
    with torch.no_grad():  # peft starts lora_B at zero, which would zero every lora_A gradient
        for name, parameter in trainable_parameters(model):
            if "lora_B" in name:
                parameter.normal_(std=0.05)
    model.eval()
    examples = [
        data.tokenize_example(
            tokenizer,
            data.Example(i, ({"role": "user", "content": q}, {"role": "assistant", "content": a}), None, ""),
            template=PLAIN_CHAT_TEMPLATE, max_length=64,
        )
        for i, (q, a) in enumerate([("after 3 comes", "4"), ("of 41 and 17 the larger is", "41")])
    ]
    batch = data.collate(examples, tokenizer.pad_token_id)
    p = lora_dim(model)
    names = [name for name, _ in trainable_parameters(model)]
    generator = torch.Generator().manual_seed(1)
    exp_avg = torch.randn(p, generator=generator) * 1e-3
    exp_avg_sq = torch.rand(p, generator=generator) * 1e-6
    sizes = [parameter.numel() for _, parameter in trainable_parameters(model)]
    checkpoint = Checkpoint(
        epoch=0, step=10, mean_lr=1e-3, parameter_order=names, adapter={},
        exp_avg=dict(zip(names, exp_avg.split(sizes))), exp_avg_sq=dict(zip(names, exp_avg_sq.split(sizes))),
    )
    return model, batch, checkpoint, p


def test_momentum_free_preconditioner_streams_through_the_engine(lora_case):
    """The engine's streaming path (isinstance AdamPreconditioner) equals the reference oracle."""
    from selection.gradients.engine import LoraGradientEngine

    model, batch, checkpoint, p = lora_case
    precondition = AdamPreconditioner.from_checkpoint(checkpoint, 0.9, 0.999, momentum=False)
    assert torch.count_nonzero(precondition.exp_avg) == 0
    projector = IdentityProjector(p)
    fast = LoraGradientEngine()(model, batch, projector, precondition)
    slow = ReferenceExtractor()(model, batch, projector, precondition)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-6)


class _StreamingOnly(IdentityProjector):
    """An identity projector that fails when asked to project flattened gradients (the fallback)."""

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the engine materialized the flattened gradients")


def test_every_training_preconditioner_streams_through_the_engine(lora_case):
    """Each trainType's preconditioner takes the engine's per-segment path (never the flattened
    fallback) and equals the reference oracle there."""
    from selection.gradients.engine import LoraGradientEngine

    model, batch, checkpoint, p = lora_case
    for train_type in TRAIN_TYPES:
        precondition = training_preconditioner(train_type, checkpoint, WarmupSpec())
        assert precondition is None or isinstance(precondition, SegmentPreconditioner), train_type
        fast = LoraGradientEngine()(model, batch, _StreamingOnly(p), precondition)
        slow = ReferenceExtractor()(model, batch, IdentityProjector(p), precondition)
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-6, msg=train_type)


def _blocks(n_per_task: int = 40, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Two tasks whose pool rows are disjoint: rows [0, n) score high on task a, [n, 2n) on b."""
    rng = np.random.default_rng(seed)
    n = n_per_task
    a = rng.normal(size=(2 * n, 6)) * 1e-4  # ranks follow the linspace
    a[:n, :3] += np.linspace(2, 1, n)[:, None]
    a[n:, 3:] += np.linspace(2, 1, n)[:, None]
    return a, ["a"] * 3 + ["b"] * 3


def test_quota_sample_with_one_candidate_per_slot_is_quota():
    matrix, tasks = _blocks()
    sampled = reduce_matrix(matrix, tasks, method="quota-sample", budget=10, candidates=1.0, seed=4)
    quota = reduce_matrix(matrix, tasks, method="quota", budget=10)
    assert sorted(sampled.indices) == sorted(quota.indices) == sorted(naive_quota(matrix, tasks, 10))


def test_quota_sample_draws_within_each_tasks_top_candidates():
    matrix, tasks = _blocks()
    budget, c = 10, 3.0
    result = reduce_matrix(matrix, tasks, method="quota-sample", budget=budget, candidates=c, seed=1)
    picked = np.array(result.indices)
    assert len(set(result.indices)) == budget
    # per-task quotas of 5, each drawn from that task's top ceil(3 x 5) = 15 rows
    assert ((picked < 15).sum(), ((picked >= 40) & (picked < 55)).sum()) == (5, 5)
    quota = reduce_matrix(matrix, tasks, method="quota", budget=budget)
    assert sorted(result.indices) != sorted(quota.indices)  # the draw changed the subset
    again = reduce_matrix(matrix, tasks, method="quota-sample", budget=budget, candidates=c, seed=1)
    other = reduce_matrix(matrix, tasks, method="quota-sample", budget=budget, candidates=c, seed=2)
    assert again.indices == result.indices and other.indices != result.indices
    assert result.parameters == {"method": "quota-sample", "candidates": 3.0, "seed": 1}


def test_quota_sample_refills_when_tasks_compete_for_rows():
    matrix = np.ones((12, 2))
    matrix[:, 0] = np.arange(12)
    matrix[:, 1] = np.arange(12)  # both tasks rank the same rows first
    result = reduce_matrix(matrix, ["a", "b"], method="quota-sample", budget=8, candidates=1.0, seed=0)
    assert sorted(result.indices) == list(range(4, 12))


def test_quota_sample_rejects_fewer_candidates_than_slots():
    matrix, tasks = _blocks()
    with pytest.raises(ReductionError, match="candidates"):
        reduce_matrix(matrix, tasks, method="quota-sample", budget=4, candidates=0.5)
    with pytest.raises(ValueError):
        SelectionSpec(method="quota-sample", budget=4, candidates=0.5)
    assert SelectionSpec(method="quota-sample", budget=4).candidates == 3.0


def test_feature_variants_and_candidates_key_their_artifacts():
    """Features of another trainType, or a selection with other candidates, are not reused."""
    from selection.artifacts import Fingerprints
    from selection.spec import parse_selection

    def fingerprints(gradients: dict, selection: dict) -> Fingerprints:
        document = {
            "apiVersion": "dsel.dev/v1alpha1", "kind": "DataSelection", "metadata": {"name": "variants"},
            "spec": {
                "model": {"source": "tiny:llama-demo"},
                "data": {"train": "t.jsonl", "validation": [{"uri": "v.jsonl"}]},
                "gradients": gradients, "selection": {"fraction": 0.1, **selection},
            },
        }
        return Fingerprints(
            parse_selection(document).spec, lambda: "0" * 64, lambda: [["task", "0" * 64]],
            model_identity=lambda: {"source": "tiny:llama-demo"},
        )

    trains = {fingerprints({"trainType": t}, {}).train for t in TRAIN_TYPES}
    assert len(trains) == len(TRAIN_TYPES)
    sampled = [fingerprints({}, {"method": "quota-sample", "candidates": c}) for c in (2.0, 3.0)]
    assert sampled[0].train == sampled[1].train and sampled[0].selection != sampled[1].selection


def test_dsel_reduce_runs_quota_sample_and_refuses_bad_candidates(tmp_path):
    import json
    import subprocess
    import sys

    matrix, tasks = _blocks()
    np.save(tmp_path / "A.npy", matrix)
    (tmp_path / "tasks.txt").write_text("\n".join(tasks) + "\n")

    def dsel_reduce(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "selection.reduce.cli", "--matrix", "A.npy", "--tasks", "tasks.txt",
             "--budget", "10", "--method", "quota-sample", *extra],
            capture_output=True, text=True, cwd=tmp_path, timeout=120,
        )

    run = dsel_reduce("--candidates", "2", "--seed", "3")
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    assert document["parameters"] == {"method": "quota-sample", "candidates": 2.0, "seed": 3}
    assert document["indices"] == reduce_matrix(
        matrix, tasks, method="quota-sample", budget=10, candidates=2.0, seed=3
    ).indices
    refused = dsel_reduce("--candidates", "0.5")
    assert refused.returncode == 2 and "--candidates 0.5 must be a finite number >= 1" in refused.stderr
