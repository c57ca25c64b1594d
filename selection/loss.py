"""Per-example language-model loss, and its gradient at the final hidden states without autograd.

`per_example_loss` is the mean cross-entropy over each example's labelled tokens: what warmup
trains on and the quantity whose per-example gradients LESS compares.

The gradient engine cannot afford to differentiate it through a (B, T, V) logits tensor (about
1 GiB for 8 x 512 tokens at V = 32000, plus its float copy and its gradient). The output layer is frozen, so
its contribution to every LoRA gradient is just dL/dh, the gradient at the decoder's final hidden
states, which has a closed form: for a labelled position t of row b (h_t predicts label y_{t+1}),

    dL_b/dh_t = (softmax(W h_t + c) - onehot(y_{t+1}))^T W / n_b,     n_b = labelled tokens of row b

and zero elsewhere (prompt tokens and padding). `head_gradient` computes it for labelled positions
only, in chunks whose logits fit a byte budget, with no autograd graph; the engine then runs the
backward from the hidden states with `grad_outputs=dL/dh`. This is exactly the gradient of
`per_example_loss` summed over the batch, as long as the model's logits are plain
`lm_head(decoder(...))`. `DecoderHead.for_model` checks that once per model on a few tokens and
returns None (the engine then uses the plain full-logits loss) for models that do anything else
(logit soft-capping, scaling).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from selection.data import IGNORE_INDEX

DEFAULT_HEAD_CHUNK_BYTES = 64 << 20  # float32 logits per chunk: 64 MiB (2048 tokens at V = 8192)
_CHECK_TOKENS = 12
_CHECK_TOLERANCE = 1e-3  # relative to the largest logit; a soft-cap or scale is far beyond it


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Loss of each row (B,): next-token cross-entropy averaged over that row's labelled tokens.

    Rows weigh equally whatever their length, so a batch's loss is the mean of example losses,
    the quantity whose per-example gradients LESS compares. A row with no labelled token
    (everything truncated away) has loss 0 and so a zero gradient.
    """
    shifted_logits = logits[:, :-1, :].float()
    shifted_labels = labels[:, 1:]
    token_loss = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.size(-1)),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shifted_labels.shape)
    counts = (shifted_labels != IGNORE_INDEX).sum(dim=1)
    return token_loss.sum(dim=1) / counts.clamp(min=1)


def model_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-example losses of a collated batch (see `selection.data.collate`)."""
    output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return per_example_loss(output.logits, batch["labels"])


def head_gradient(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    chunk_bytes: int = DEFAULT_HEAD_CHUNK_BYTES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL/dh, losses): the gradient of sum_b loss_b at `hidden` (B, T, H), and each loss_b (B,).

    loss_b is the mean next-token cross-entropy over row b's labelled tokens (0 with none), the
    quantity `per_example_loss` computes. Logits are computed in float32 from
    `weight`'s dtype, `chunk_bytes` at a time; no autograd graph is built.
    """
    batch = hidden.shape[0]
    hidden = hidden.detach()
    targets = labels[:, 1:]
    labelled = targets != IGNORE_INDEX
    counts = labelled.sum(dim=1).clamp(min=1).to(torch.float32)
    rows, positions = labelled.nonzero(as_tuple=True)
    grad = torch.zeros_like(hidden)
    losses = torch.zeros(batch, dtype=torch.float32, device=hidden.device)
    vocab = weight.shape[0]
    chunk = max(1, chunk_bytes // (4 * vocab))
    with torch.no_grad():
        for start in range(0, rows.numel(), chunk):
            r, t = rows[start : start + chunk], positions[start : start + chunk]
            states = hidden[r, t].to(weight.dtype)
            logits = F.linear(states, weight, bias).float()
            y = targets[r, t]
            log_probs = torch.log_softmax(logits, dim=-1)
            scale = 1.0 / counts[r]
            losses.index_add_(0, r, -log_probs.gather(1, y[:, None])[:, 0] * scale)
            probs = log_probs.exp_()
            probs[torch.arange(y.numel(), device=y.device), y] -= 1.0
            probs.mul_(scale[:, None])
            grad[r, t] = (probs.to(weight.dtype) @ weight).to(grad.dtype)
    return grad, losses


@dataclass(frozen=True)
class DecoderHead:
    """A causal LM split into its decoder (ids -> final hidden states) and its frozen output layer."""

    decoder: torch.nn.Module
    head: torch.nn.Linear

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        output = self.decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return output[0] if isinstance(output, tuple) else output.last_hidden_state

    @staticmethod
    def for_model(model, sample_ids: torch.Tensor) -> "DecoderHead | None":
        """The split of `model`, if its logits are exactly head(decoder(ids)); else None.

        Checked once per model (cached weakly) on the first `_CHECK_TOKENS` tokens of `sample_ids`.
        """
        cached = _CHECKED.get(model)
        if cached is not None:
            return cached or None
        split = _split(model)
        if split is not None and not _matches(model, split, sample_ids[:1, :_CHECK_TOKENS]):
            split = None
        _CHECKED[model] = split or False
        return split


# False: checked, and the model has no such split.
_CHECKED: "weakref.WeakKeyDictionary[torch.nn.Module, DecoderHead | Literal[False]]" = weakref.WeakKeyDictionary()


def _split(model) -> DecoderHead | None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    get_decoder = getattr(base, "get_decoder", None)
    get_head = getattr(base, "get_output_embeddings", None)
    if get_decoder is None or get_head is None:
        return None
    decoder, head = get_decoder(), get_head()
    if decoder is None or decoder is base or not isinstance(head, torch.nn.Linear):
        return None
    if any(p.requires_grad for p in head.parameters()):
        return None  # a trainable output layer needs its own per-example gradient
    return DecoderHead(decoder, head)


def _matches(model, split: DecoderHead, ids: torch.Tensor) -> bool:
    mask = torch.ones_like(ids)
    try:
        with torch.no_grad():
            expected = model(input_ids=ids, attention_mask=mask).logits.float()
            got = split.head(split.hidden_states(ids, mask)).float()
    except (TypeError, ValueError, AttributeError, RuntimeError):
        return False
    if expected.shape != got.shape:
        return False
    scale = float(expected.abs().max()) + 1e-6
    return float((expected - got).abs().max()) <= _CHECK_TOLERANCE * scale
