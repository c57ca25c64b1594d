"""Per-example language-model loss: mean cross-entropy over each example's labelled tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selection.data import IGNORE_INDEX


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
