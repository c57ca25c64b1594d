"""The gradient engine: per-example LoRA gradients of a whole batch from one batched backward.

Why it works: a LoRA layer computes u = A x and v = B u (then adds v * scaling to the frozen
output). For example b of a batch, the gradient of its loss L_b with respect to the weights is a
sum over that example's tokens t,

    dL_b/dA = sum_t (dL/du_bt) x_bt^T        dL/dB_b = sum_t (dL/dv_bt) u_bt^T,

and examples do not interact, so the gradients at u and v of the *batch* loss sum_b L_b, taken at
row b, are exactly example b's. One batched forward records each LoRA module's input (a forward
hook); one batched backward delivers dL/du and dL/dv (tensor hooks); a batched matmul over tokens
turns them into (B, out, in) per-example weight gradients. No loop over examples.

What happens to each per-example gradient block, layer by layer, as the backward produces it:
1. Padding and prompt tokens: labels mask the loss (assistant tokens only), so their positions
   carry no gradient; the token mask is also applied to the r-sized factor of every product, so
   padding cannot leak in even numerically.
2. Adam-aware features (docs/algorithms.md §5, §14.3) are elementwise in the flattened gradient, so a
   `SegmentPreconditioner` is applied to the block with its matching slice of coordinates.
3. The block is projected on its own (`SegmentProjector.project_segment`) and added to the (B, d)
   output: the full p-length gradient is never concatenated.
So memory beyond a plain forward/backward is one (B, out, in) block at a time plus the (B, d)
output. The backward runs from `torch.autograd.grad` with the LoRA outputs u as inputs, so the
summed weight gradients a normal backward computes (and the engine would discard) are skipped.

The frozen output layer and the cross-entropy are evaluated outside autograd in chunks
(`selection.loss`), so no full-vocabulary logits graph is kept.

Dropout is off (the model is put in eval mode for the call). Compute runs in the model's dtype
on the model's device (bf16 on GPUs that support it: see `selection.models.pick_device_and_dtype`);
`autocast_dtype=torch.bfloat16` runs a float32 model under bf16 autocast instead. Per-example blocks
are promoted to float32 before preconditioning and projection. On a CUDA out-of-memory error the
batch is split in halves and retried, and the smaller size is kept for later batches (and, with
the pipeline's one engine per process, `features.default_extractor`, for later checkpoints).
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from dataclasses import dataclass
from typing import Callable

import torch

from selection.loss import DEFAULT_HEAD_CHUNK_BYTES, DecoderHead, head_gradient, model_loss
from selection.gradients.preconditioners import SegmentPreconditioner, SegmentTransform
from selection.gradients.projection import IdentityProjector, Projector, SegmentProjector
from selection.warmup import trainable_parameters

log = logging.getLogger(__name__)


class UnsupportedModelError(ValueError):
    """The model has trainable parameters the engine cannot differentiate per example."""


@dataclass(frozen=True)
class LoraSegment:
    """One trainable LoRA weight: where its gradient sits in the flattened vector."""

    name: str  # parameter name, as in named_parameters
    module: torch.nn.Linear  # the lora_A.<adapter> or lora_B.<adapter> Linear owning it
    offset: int  # first index in the flattened gradient
    numel: int
    is_down: bool  # lora_A (d_in -> r): its output u is where the backward is asked to stop


def lora_segments(model) -> list[LoraSegment]:
    """The model's trainable parameters as LoRA segments, in flattening order.

    Raises UnsupportedModelError for anything but bias-free LoRA Linear weights (e.g. DoRA
    magnitudes, trainable biases, embeddings, modules_to_save): use `ReferenceExtractor` there.
    """
    trainable = trainable_parameters(model)
    names = tuple(name for name, _ in trainable)
    cached = _LAYOUTS.get(model)
    if cached is not None and cached[0] == names:
        return cached[1]
    modules = dict(model.named_modules())
    segments, offset = [], 0
    for name, parameter in trainable:
        owner, _, attribute = name.rpartition(".")
        module = modules.get(owner)
        parts = owner.split(".")
        kind = parts[-2] if len(parts) >= 2 else ""
        if attribute != "weight" or type(module) is not torch.nn.Linear or kind not in ("lora_A", "lora_B"):
            raise UnsupportedModelError(
                f"gradient engine: trainable parameter '{name}' is not the weight of a LoRA A/B Linear; "
                "only plain LoRA adapters are supported (use the reference extractor otherwise)"
            )
        if module.bias is not None and module.bias.requires_grad:
            raise UnsupportedModelError(f"gradient engine: '{owner}.bias' is trainable (lora_bias is not supported)")
        segments.append(LoraSegment(name, module, offset, parameter.numel(), kind == "lora_A"))
        offset += parameter.numel()
    if not segments:
        raise UnsupportedModelError("gradient engine: the model has no trainable LoRA parameters")
    _LAYOUTS[model] = (names, segments)
    return segments


# Per model: (trainable parameter names, segments), recomputed when the trainable set changes.
_LAYOUTS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple[str, ...], list[LoraSegment]]]" = (
    weakref.WeakKeyDictionary()
)

Sink = Callable[[LoraSegment, torch.Tensor], None]


class Workspace:
    """Reusable scratch buffers, one per purpose, grown to the largest size asked for.

    Allocating a fresh multi-megabyte tensor per layer is slow on CPU (the allocator returns
    such blocks to the OS, and each new one page-faults in again): measured 10-15x slower than
    reusing a buffer for the elementwise Adam transform on this machine.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    def get(self, purpose: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        numel = 1
        for size in shape:
            numel *= size
        key = (purpose, dtype, torch.device(device))
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < numel:
            buffer = self._buffers[key] = torch.empty(numel, dtype=dtype, device=device)
        return buffer[:numel].view(shape)

    def clear(self) -> None:
        self._buffers.clear()


def backward_per_example(
    model,
    batch: dict[str, torch.Tensor],
    sink: Sink,
    *,
    autocast_dtype: torch.dtype | None = None,
    head_chunk_bytes: int = DEFAULT_HEAD_CHUNK_BYTES,
    workspace: "Workspace | None" = None,
) -> None:
    """Call `sink(segment, grads)` once per LoRA segment with its per-example gradients (B, numel).

    grads is float32, row b the gradient of example b's loss (mean cross-entropy over its labelled
    tokens) w.r.t. that weight, flattened row-major like the parameter. It lives in a reusable
    workspace buffer: the sink may overwrite it, and must not keep it. Segments arrive in backward
    order (last layer first); a segment that receives no gradient gets zeros after the backward.
    """
    segments = lora_segments(model)
    rows = batch["input_ids"].shape[0]
    token_mask = batch["attention_mask"].bool()
    workspace = workspace if workspace is not None else Workspace()
    stops: list[torch.Tensor] = []  # lora_A outputs: the backward's inputs
    calls: dict[int, int] = {}
    delivered: set[int] = set()

    def on_gradient(index: int, inputs: torch.Tensor, grad_output: torch.Tensor) -> None:
        segment = segments[index]
        grad_output = grad_output.reshape(rows, -1, grad_output.shape[-1])
        inputs = inputs.reshape(rows, -1, inputs.shape[-1]).to(grad_output.dtype)
        if inputs.shape[1] == token_mask.shape[1]:
            # Zero padding in the r-sized factor (the input of B, the output gradient of A): cheap.
            mask = token_mask[:, :, None].to(grad_output.dtype)
            factor = grad_output if segment.is_down else inputs
            masked = torch.mul(factor, mask, out=workspace.get("mask", factor.shape, factor.dtype, factor.device))
            grad_output, inputs = (masked, inputs) if segment.is_down else (grad_output, masked)
        shape = (rows, grad_output.shape[-1], inputs.shape[-1])
        grads = workspace.get("grads", shape, torch.float32, grad_output.device)
        if grad_output.dtype == torch.float32:
            torch.bmm(grad_output.transpose(1, 2), inputs, out=grads)  # (B, out, in), summed over tokens
        else:
            low = workspace.get("grads-low", shape, grad_output.dtype, grad_output.device)
            grads.copy_(torch.bmm(grad_output.transpose(1, 2), inputs, out=low))
        delivered.add(index)
        sink(segment, grads.view(rows, -1))

    def forward_hook(index: int):
        def hook(module, args, output):
            calls[index] = calls.get(index, 0) + 1
            if not torch.is_tensor(output) or not output.requires_grad:
                return
            if output.shape[0] != rows:
                raise UnsupportedModelError(
                    f"gradient engine: '{segments[index].name}' sees a leading dimension of "
                    f"{output.shape[0]}, not the batch size {rows}"
                )
            saved = args[0].detach()
            output.register_hook(lambda grad: on_gradient(index, saved, grad))
            if segments[index].is_down:
                stops.append(output)

        return hook

    device_type = batch["input_ids"].device.type
    autocast = (
        torch.autocast(device_type=device_type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    was_training = model.training
    model.eval()  # dropout off: gradients of the deterministic model
    handles = []
    try:
        split = DecoderHead.for_model(model, batch["input_ids"])  # checked without hooks or autocast
        handles = [s.module.register_forward_hook(forward_hook(i)) for i, s in enumerate(segments)]
        with torch.enable_grad():
            with autocast:
                if split is not None:
                    hidden = split.hidden_states(batch["input_ids"], batch["attention_mask"])
                else:
                    losses = model_loss(model, batch)
            repeated = [segments[i].name for i, n in calls.items() if n > 1]
            if repeated:
                raise UnsupportedModelError(
                    f"gradient engine: LoRA modules run more than once per forward ({repeated[0]}, ...)"
                )
            if stops:
                if split is not None:
                    grad_hidden, _ = head_gradient(
                        hidden, batch["labels"], split.head.weight, split.head.bias, chunk_bytes=head_chunk_bytes
                    )
                    torch.autograd.grad(hidden, stops, grad_outputs=grad_hidden, allow_unused=True)
                else:
                    torch.autograd.grad(losses.sum(), stops, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    for index, segment in enumerate(segments):
        if index not in delivered:
            sink(segment, torch.zeros(rows, segment.numel, device=batch["input_ids"].device))


class LoraGradientEngine:
    """FeatureExtractor computing every example's LoRA gradient from one batched backward.

    Equal to `ReferenceExtractor` up to float rounding (tests/unit/test_gradient_engine.py), for
    any projector and preconditioner. It streams layer by layer when the projector is a
    `SegmentProjector` and the preconditioner is None or a `SegmentPreconditioner` (both Adam
    transforms are); anything else is applied to the materialized flattened gradients.
    """

    def __init__(
        self,
        *,
        autocast_dtype: torch.dtype | None = None,
        max_rows: int | None = None,
        head_chunk_bytes: int = DEFAULT_HEAD_CHUNK_BYTES,
    ):
        self.autocast_dtype = autocast_dtype
        self.max_rows = max_rows  # lowered after an out-of-memory error, kept for later batches
        self.head_chunk_bytes = head_chunk_bytes
        self._segments: tuple[SegmentPreconditioner, torch.device, SegmentTransform] | None = None
        self.workspace = Workspace()

    def __call__(self, model, batch, projector: Projector, precondition) -> torch.Tensor:
        rows = batch["input_ids"].shape[0]
        parts, start = [], 0
        while start < rows:
            size = min(rows - start, self.max_rows or rows)
            try:
                parts.append(self._run(model, _rows(batch, start, start + size), projector, precondition))
            except torch.OutOfMemoryError:
                if size == 1:
                    raise
                self.max_rows = size // 2
                log.warning("out of memory at %d examples per backward; retrying with %d", size, self.max_rows)
                self.workspace.clear()
                _release_cached_memory(batch["input_ids"].device)
                continue
            start += size
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def release(self) -> None:
        """Free the scratch buffers and the cached preconditioner state; keep the lowered batch size."""
        self._segments = None
        self.workspace.clear()

    def _segment_transform(self, precondition: SegmentPreconditioner, device: torch.device, total: int):
        """The preconditioner's per-device state, kept while the same preconditioner is in use."""
        cached = self._segments
        if cached is None or cached[0] is not precondition or cached[1] != device:
            self._segments = cached = None  # free the previous checkpoint's state first
            self._segments = cached = (precondition, device, precondition.on_device(device, total))
        return cached[2]

    def _run(self, model, batch, projector: Projector, precondition) -> torch.Tensor:
        rows = batch["input_ids"].shape[0]
        device = batch["input_ids"].device
        total = sum(s.numel for s in lora_segments(model))
        if projector.input_dim != total:
            raise ValueError(
                f"gradient engine: the projector expects {projector.input_dim} coordinates, "
                f"the model has {total} LoRA parameters"
            )
        streaming = isinstance(projector, SegmentProjector) and (
            precondition is None or isinstance(precondition, SegmentPreconditioner)
        )
        # The projector when it takes one segment at a time and the preconditioner lets it.
        segment_projector = projector if streaming and isinstance(projector, SegmentProjector) else None
        if segment_projector is not None:
            out = torch.zeros(rows, projector.output_dim, dtype=torch.float32, device=device)
            transform = self._segment_transform(precondition, device, total) if precondition is not None else None

            def sink(segment: LoraSegment, grads: torch.Tensor) -> None:
                if transform is not None:
                    scratch = self.workspace.get("precondition", grads.shape, torch.float32, device)
                    grads = transform.apply(grads, segment.offset, scratch)
                segment_projector.project_segment(grads, segment.offset, out, consume=True)

        else:
            flat = torch.zeros(rows, total, dtype=torch.float32, device=device)

            def sink(segment: LoraSegment, grads: torch.Tensor) -> None:
                flat[:, segment.offset : segment.offset + segment.numel] = grads

        backward_per_example(
            model, batch, sink, autocast_dtype=self.autocast_dtype, head_chunk_bytes=self.head_chunk_bytes,
            workspace=self.workspace,
        )
        if streaming:
            return out
        if precondition is not None:
            flat = precondition(flat)
        return projector.project(flat)


def per_example_gradients(model, batch, precondition=None, **engine_options) -> torch.Tensor:
    """Unprojected per-example gradients (B, p) (Adam-aware with an AdamPreconditioner), float32."""
    total = sum(s.numel for s in lora_segments(model))
    return LoraGradientEngine(**engine_options)(model, batch, IdentityProjector(total), precondition)


def _rows(batch: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    """Rows [start, stop) of a right-padded batch, trimmed to their own longest example."""
    width = int(batch["attention_mask"][start:stop].sum(dim=1).max().clamp(min=1))
    return {k: v[start:stop, :width] for k, v in batch.items()}


def _release_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
