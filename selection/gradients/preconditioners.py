"""Preconditioners of per-example gradients, and the segment-wise protocol the engine streams with.

A preconditioner maps flattened gradients (p,) or (B, p) to preconditioned ones of the same
shape. Both Adam transforms dsel uses are elementwise in the gradient, so they can also be
applied to one contiguous slice of coordinates at a time (`SegmentPreconditioner.on_device`):
that lets `selection.gradients.engine.LoraGradientEngine` transform and project each layer's
block as the backward produces it, without ever materializing the (B, p) flattened gradients.
Any other callable still works: the engine then materializes the flattened gradients first.

- `AdamPreconditioner` (LESS, docs/algorithms.md §5): (b1 m + (1-b1) g) / sqrt(b2 v + (1-b2) g^2 + eps),
  no bias correction and no learning rate: the update direction Adam would take next.
- `BiasCorrectedAdamPreconditioner` (Influence Distillation, docs/algorithms.md §14.3):
  a * g with a = ((1-b1)/(1-b1^(t+1))) / (sqrt(v/(1-b2^(t+1))) + eps), a diagonal scaling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import torch

from selection.warmup import Checkpoint

ADAM_EPS = 1e-8  # inside the square root, as LESS does (docs/algorithms.md §5)

Preconditioner = Callable[[torch.Tensor], torch.Tensor]


class SegmentTransform(Protocol):
    """A preconditioner's state on one device, applied to one slice of coordinates at a time."""

    def apply(self, grads: torch.Tensor, offset: int, scratch: torch.Tensor) -> torch.Tensor:
        """Preconditioned (B, n) float32 gradients of coordinates [offset, offset + n).

        `grads` may be overwritten (the engine owns it); `scratch` is a same-shaped float32 buffer
        the transform may use.
        """
        ...


@runtime_checkable
class SegmentPreconditioner(Protocol):
    """A preconditioner that is elementwise in the gradient, so the engine can stream it."""

    def __call__(self, gradients: torch.Tensor) -> torch.Tensor: ...

    def on_device(self, device: torch.device, size: int) -> SegmentTransform:
        """Its state on `device` for gradients of `size` coordinates (ValueError when it covers another size)."""
        ...


def _check_size(what: str, found: int, size: int) -> None:
    if found != size:
        raise ValueError(f"gradient engine: the {what} {found} entries, the model has {size} LoRA parameters")


def _flattened(checkpoint: Checkpoint, moments: dict[str, torch.Tensor]) -> torch.Tensor:
    """A checkpoint's per-parameter moments flattened in the model's LoRA parameter order."""
    return torch.cat([moments[name].reshape(-1).float() for name in checkpoint.parameter_order])


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

    def on_device(self, device: torch.device, size: int) -> "_AdamSegments":
        _check_size("Adam moments have", self.exp_avg.numel(), size)
        _check_size("Adam moments have", self.exp_avg_sq.numel(), size)
        return _AdamSegments(self, device)

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, beta1: float, beta2: float) -> "AdamPreconditioner":
        return cls(
            exp_avg=_flattened(checkpoint, checkpoint.exp_avg),
            exp_avg_sq=_flattened(checkpoint, checkpoint.exp_avg_sq),
            beta1=beta1,
            beta2=beta2,
        )


class _AdamSegments:
    """An AdamPreconditioner's moments on one device, pre-scaled for the per-segment formula."""

    def __init__(self, precondition: AdamPreconditioner, device: torch.device):
        self.beta1, self.beta2 = precondition.beta1, precondition.beta2
        self.scaled_m = precondition.exp_avg.to(device, torch.float32) * self.beta1
        self.scaled_v = precondition.exp_avg_sq.to(device, torch.float32) * self.beta2 + ADAM_EPS

    def apply(self, grads: torch.Tensor, offset: int, scratch: torch.Tensor) -> torch.Tensor:
        """(b1 m + (1-b1) g) / sqrt(b2 v + (1-b2) g^2 + eps) on coordinates [offset, offset+n), in place."""
        stop = offset + grads.shape[1]
        torch.addcmul(self.scaled_v[offset:stop], grads, grads, value=1 - self.beta2, out=scratch).rsqrt_()
        return grads.mul_(1 - self.beta1).add_(self.scaled_m[offset:stop]).mul_(scratch)


@dataclass(frozen=True)
class BiasCorrectedAdamPreconditioner:
    """g -> a * g with a = ((1-b1)/(1-b1^(t+1))) / (sqrt(v/(1-b2^(t+1))) + eps), elementwise.

    `scale` is a, flattened in the model's LoRA parameter order (as the checkpoint stores it).
    Unlike LESS's transform it does not depend on g: a diagonal scaling. Callable on a flattened
    gradient (p,) or a batch of them (B, p), like any preconditioner of
    `selection.gradients.features.compute_features`.
    """

    scale: torch.Tensor

    def __call__(self, gradients: torch.Tensor) -> torch.Tensor:
        return gradients.float() * self.scale.to(gradients.device, torch.float32)

    def on_device(self, device: torch.device, size: int) -> "_DiagonalSegments":
        _check_size("preconditioner has", self.scale.numel(), size)
        return _DiagonalSegments(self.scale.to(device, torch.float32))

    @staticmethod
    def coefficients(exp_avg_sq: torch.Tensor, step: int, beta1: float, beta2: float, eps: float) -> torch.Tensor:
        """a for second moments v after `step` optimizer steps (float64 arithmetic, float32 result)."""
        if step < 0:
            raise ValueError(f"optimizer step count must be >= 0, got {step}")
        first = (1.0 - beta1) / (1.0 - beta1 ** (step + 1))
        second = 1.0 - beta2 ** (step + 1)
        v = exp_avg_sq.double().clamp(min=0)
        return (first / (torch.sqrt(v / second) + eps)).float()

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Checkpoint, beta1: float, beta2: float, eps: float
    ) -> "BiasCorrectedAdamPreconditioner":
        v = torch.cat([checkpoint.exp_avg_sq[name].reshape(-1) for name in checkpoint.parameter_order])
        return cls(cls.coefficients(v, checkpoint.step, beta1, beta2, eps))

    def fold_into(self, projector) -> "DiagonalScaledProjector":
        """A projector computing P·(a*g), for callers that want the scaling inside the projection."""
        return DiagonalScaledProjector(projector, self.scale)


class _DiagonalSegments:
    def __init__(self, scale: torch.Tensor):
        self.scale = scale

    def apply(self, grads: torch.Tensor, offset: int, scratch: torch.Tensor) -> torch.Tensor:
        return grads.mul_(self.scale[offset : offset + grads.shape[1]])


class DiagonalScaledProjector:
    """P·diag(scale): scales each coordinate, then projects with the wrapped segment projector.

    `project_segment` applies the scaling to each block as it arrives, so the gradient engine
    still projects layer by layer.
    """

    def __init__(self, inner, scale: torch.Tensor):
        if scale.ndim != 1 or scale.numel() != inner.input_dim:
            raise ValueError(
                f"the preconditioner has {scale.numel()} coefficients, the projector expects {inner.input_dim}"
            )
        self.inner = inner
        self.scale = scale.float()
        self.input_dim, self.output_dim = inner.input_dim, inner.output_dim
        self._on_device: dict[torch.device, torch.Tensor] = {}

    def _scale_on(self, device: torch.device) -> torch.Tensor:
        scale = self._on_device.get(device)
        if scale is None:
            scale = self._on_device[device] = self.scale.to(device)
        return scale

    def project_segment(self, segment: torch.Tensor, offset: int, out: torch.Tensor, *, consume: bool = False) -> None:
        factor = self._scale_on(segment.device)[offset : offset + segment.shape[1]]
        if consume and segment.dtype == torch.float32:
            scaled = segment.mul_(factor)
        else:
            scaled = segment.float() * factor
        self.inner.project_segment(scaled, offset, out, consume=True)

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        return self.inner.project(vectors.float() * self._scale_on(vectors.device))
