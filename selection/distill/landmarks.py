"""Landmarks: which examples get an accurate gradient, and its preconditioning (docs/algorithms.md §14.2-§14.3).

- `draw_landmarks`: L = min(landmarks, N) distinct pool indices drawn uniformly with the seed
  from the whole pool (never per shard), returned sorted.
- `BiasCorrectedAdamPreconditioner`: Influence Distillation's first-order Adam weighting,
  `a = ((1-b1)/(1-b1^(t+1))) / (sqrt(v/(1-b2^(t+1))) + eps)` applied elementwise to g, with v
  the checkpoint's second moment and t its optimizer step count. Unlike LESS's transform
  (`selection.gradients.features.AdamPreconditioner`) it does not depend on g, so it is a
  diagonal scaling: `fold_into(projector)` applies it segment by segment inside the projection,
  which lets the gradient engine stream layer by layer instead of materializing the (B, p)
  flattened gradients a generic preconditioner needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from selection.warmup import Checkpoint


def draw_landmarks(pool_size: int, count: int, seed: int) -> np.ndarray:
    """Sorted distinct indices: np.random.default_rng(seed).choice(N, size=min(count, N), replace=False)."""
    if pool_size < 1:
        raise ValueError("the training pool is empty")
    if count < 1:
        raise ValueError(f"distillation.landmarks: must be >= 1, got {count}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool_size, size=min(count, pool_size), replace=False)).astype(np.int64)


@dataclass(frozen=True)
class BiasCorrectedAdamPreconditioner:
    """g -> a * g with a = ((1-b1)/(1-b1^(t+1))) / (sqrt(v/(1-b2^(t+1))) + eps), elementwise.

    `scale` is a, flattened in the model's LoRA parameter order (as the checkpoint stores it).
    Callable on a flattened gradient (p,) or a batch of them (B, p), like any preconditioner of
    `selection.gradients.features.compute_features`.
    """

    scale: torch.Tensor

    def __call__(self, gradients: torch.Tensor) -> torch.Tensor:
        return gradients.float() * self.scale.to(gradients.device, torch.float32)

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
        """A projector computing P·(a*g): use it with precondition=None to keep streaming."""
        return DiagonalScaledProjector(projector, self.scale)


class DiagonalScaledProjector:
    """P·diag(scale): scales each coordinate, then projects with the wrapped projector.

    Offers `project_segment` when the wrapped projector does, so the gradient engine projects
    layer by layer with the scaling applied to each block as it arrives.
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
        if hasattr(inner, "project_segment"):
            self.project_segment = self._project_segment

    def _scale_on(self, device: torch.device) -> torch.Tensor:
        scale = self._on_device.get(device)
        if scale is None:
            scale = self._on_device[device] = self.scale.to(device)
        return scale

    def _project_segment(self, segment: torch.Tensor, offset: int, out: torch.Tensor, *, consume: bool = False) -> None:
        factor = self._scale_on(segment.device)[offset : offset + segment.shape[1]]
        if consume and segment.dtype == torch.float32:
            scaled = segment.mul_(factor)
        else:
            scaled = segment.float() * factor
        self.inner.project_segment(scaled, offset, out, consume=True)

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        return self.inner.project(vectors.float() * self._scale_on(vectors.device))
