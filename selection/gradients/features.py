"""From tokenized examples to stored features: batching, preconditioning, normalization.

`FeatureExtractor` is the swappable part: it returns projected (not yet normalized) features of
one collated batch. `ReferenceExtractor` is the plain definition (one backward per example,
flatten, precondition, project) that faster extractors are tested against;
`selection.gradients.engine.LoraGradientEngine` (one batched backward, per-layer Adam transform
and projection) is the one the pipeline uses (`default_extractor`).
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np
import torch

from selection.data import Tokenized, collate
from selection.gradients.engine import LoraGradientEngine
from selection.gradients.preconditioners import Preconditioner
from selection.gradients.projection import Projector
from selection.loss import model_loss
from selection.warmup import trainable_parameters


class FeatureExtractor(Protocol):
    """Projected, unnormalized per-example features (B, d) of one collated batch."""

    def __call__(
        self, model, batch: dict[str, torch.Tensor], projector: Projector, precondition: Preconditioner | None
    ) -> torch.Tensor: ...


def lora_dim(model) -> int:
    """p: the number of LoRA parameters, the length of a flattened gradient."""
    return sum(p.numel() for _, p in trainable_parameters(model))


def flat_gradient(model, batch: dict[str, torch.Tensor], row: int) -> torch.Tensor:
    """The LoRA gradient of example `row`'s loss, flattened in parameter order (reference path)."""
    params = [p for _, p in trainable_parameters(model)]
    width = int(batch["attention_mask"][row].sum())
    single = {k: v[row : row + 1, :width] for k, v in batch.items()}
    loss = model_loss(model, single)[0]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1).float() for g, p in zip(grads, params)]
    )


class ReferenceExtractor:
    """One backward per example, then precondition and project: the oracle."""

    def __call__(self, model, batch, projector, precondition):
        rows = []
        for row in range(batch["input_ids"].shape[0]):
            gradient = flat_gradient(model, batch, row)
            if precondition is not None:
                gradient = precondition(gradient)
            rows.append(gradient)
        return projector.project(torch.stack(rows))


def normalize_rows(features: torch.Tensor) -> torch.Tensor:
    """L2-normalize each row; an all-zero row (no trained token) stays zero instead of NaN."""
    norms = features.norm(dim=1, keepdim=True)
    return torch.where(norms > 0, features / norms.clamp(min=torch.finfo(features.dtype).tiny), features)


def compute_features(
    model,
    examples: Sequence[Tokenized],
    *,
    extractor: FeatureExtractor,
    projector: Projector,
    precondition: Preconditioner | None,
    batch_size: int,
    pad_token_id: int,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Features of `examples` in order, as an (n, d) float16 array of unit rows.

    Batches are consecutive runs of `batch_size` examples, so callers that pass shards starting
    at multiples of `batch_size` get the same numbers whatever the sharding.
    """
    device = next(model.parameters()).device
    model.eval()  # dropout off: gradients of the deterministic model
    out = np.zeros((len(examples), projector.output_dim), dtype=np.float16)
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate(chunk, pad_token_id).items()}
        projected = extractor(model, batch, projector, precondition)
        out[start : start + len(chunk)] = normalize_rows(projected.float()).cpu().numpy().astype(np.float16)
        if progress:
            progress(len(chunk))
    release = getattr(extractor, "release", None)
    if release is not None:
        release()  # scratch buffers and this checkpoint's moments; what it learned stays
    return out


_PIPELINE_ENGINE: FeatureExtractor | None = None


def default_extractor() -> FeatureExtractor:
    """The extractor the pipeline uses: the batched engine (one backward per batch).

    One engine per process, so a batch size it lowered after an out-of-memory error stays lowered
    for every later checkpoint and for the validation features, instead of failing again first.
    """
    global _PIPELINE_ENGINE
    if _PIPELINE_ENGINE is None:
        _PIPELINE_ENGINE = LoraGradientEngine()
    return _PIPELINE_ENGINE
