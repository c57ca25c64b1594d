"""From tokenized examples to stored features: batching, preconditioning, normalization.

`FeatureExtractor` is the swappable part: it returns projected (not yet normalized) features of
one collated batch. `ReferenceExtractor` is the plain definition (one backward per example,
flatten, precondition, project) that faster extractors are tested against;
`selection.gradients.engine.LoraGradientEngine` (one batched backward, per-layer Adam transform
and projection) is the one the pipeline uses (`default_extractor`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np
import torch

from selection.data import Tokenized, collate
from selection.gradients.projection import Projector
from selection.loss import model_loss
from selection.warmup import Checkpoint, trainable_parameters

ADAM_EPS = 1e-8  # inside the square root, as LESS does (ALGORITHMS.md §3)


@dataclass(frozen=True)
class AdamPreconditioner:
    """LESS's Adam-aware gradient: (b1*m + (1-b1)*g) / sqrt(b2*v + (1-b2)*g^2 + eps).

    No bias correction and no learning rate: the update direction Adam would take next.
    `exp_avg` and `exp_avg_sq` are flattened in the model's LoRA parameter order.
    """

    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    beta1: float
    beta2: float

    def __call__(self, gradients: torch.Tensor) -> torch.Tensor:
        m = self.exp_avg.to(gradients.device, torch.float32)
        v = self.exp_avg_sq.to(gradients.device, torch.float32)
        g = gradients.float()
        return (self.beta1 * m + (1 - self.beta1) * g) / torch.sqrt(
            self.beta2 * v + (1 - self.beta2) * g * g + ADAM_EPS
        )

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Checkpoint, beta1: float, beta2: float, *, momentum: bool = True
    ) -> "AdamPreconditioner":
        """LESS's transform at a checkpoint; `momentum=False` drops the shared b1*m term (m = 0),
        leaving (1-b1)*g / sqrt(b2*v + (1-b2)*g^2 + eps): the example's own part of the update."""
        order = checkpoint.parameter_order
        exp_avg = torch.cat([checkpoint.exp_avg[name].reshape(-1).float() for name in order])
        return cls(
            exp_avg=exp_avg if momentum else torch.zeros_like(exp_avg),
            exp_avg_sq=torch.cat([checkpoint.exp_avg_sq[name].reshape(-1).float() for name in order]),
            beta1=beta1,
            beta2=beta2,
        )


Preconditioner = Callable[[torch.Tensor], torch.Tensor]

# gradients.trainType: how a training example's gradient becomes its feature (docs: spec.py).
TRAIN_TYPES = ("adam", "sgd", "adam-no-momentum", "adam-diagonal")


def training_transform(train_type: str, checkpoint: Checkpoint, warmup, projector: Projector):
    """(precondition, projector) for training features of `train_type` at `checkpoint`.

    adam: LESS exact, (b1*m + (1-b1)*g) / sqrt(b2*v + (1-b2)*g^2 + eps).
    sgd: the plain gradient g.
    adam-no-momentum: LESS without the b1*m term, (1-b1)*g / sqrt(b2*v + (1-b2)*g^2 + eps). After
        a short warmup m is one direction shared by every example and dominates the feature
        (bench/quality measured a mean pairwise cosine of 0.8-0.9 with it, 0.08 without).
    adam-diagonal: g / (sqrt(v / (1 - b2^(t+1))) + eps), the bias-corrected, g-independent Adam
        scaling Influence Distillation preconditions with (its constant (1-b1)/(1-b1^(t+1))
        factor cancels in the L2 normalization); folded into the projection, so it streams.
    `warmup` is the WarmupSpec (betas, eps).
    """
    if train_type == "sgd":
        return None, projector
    if train_type in ("adam", "adam-no-momentum"):
        momentum = train_type == "adam"
        return AdamPreconditioner.from_checkpoint(checkpoint, warmup.beta1, warmup.beta2, momentum=momentum), projector
    if train_type == "adam-diagonal":
        from selection.distill.landmarks import BiasCorrectedAdamPreconditioner

        scaling = BiasCorrectedAdamPreconditioner.from_checkpoint(checkpoint, warmup.beta1, warmup.beta2, warmup.eps)
        return None, scaling.fold_into(projector)
    raise ValueError(f"gradients.trainType: unknown {train_type!r} (expected one of {', '.join(TRAIN_TYPES)})")


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
    return out


def default_extractor() -> FeatureExtractor:
    """The extractor the pipeline uses: the batched engine (one backward per batch)."""
    from selection.gradients.engine import LoraGradientEngine

    return LoraGradientEngine()
