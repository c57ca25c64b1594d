"""Exact-match accuracy per task: greedy decoding of each held-out question, batched.

Prompts are rendered with the same plain chat template dsel trains on (user turn, then an open
assistant turn), so the fine-tuned model sees at test time exactly the prefix it learned from.
"""

from __future__ import annotations

from typing import Sequence

import torch

from bench.quality import tasks
from selection.models import PLAIN_CHAT_TEMPLATE

MAX_NEW_TOKENS = 14  # the longest answer (6 sorted digits with spaces) is 11 characters


def chat_prompt_text(tokenizer, question: str) -> str:
    """The prompt dsel trains on: the user turn, then an open assistant turn."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}],
        chat_template=PLAIN_CHAT_TEMPLATE,
        tokenize=False,
        add_generation_prompt=True,
    )


def chat_prompt(tokenizer, item: tasks.Item) -> list[int]:
    return tokenizer(chat_prompt_text(tokenizer, item.question), add_special_tokens=False)["input_ids"]


def narrative_prompt(tokenizer, item: tasks.Item) -> list[int]:
    """The narrative line up to its answer ("after 389 comes "): probes what pretraining taught."""
    return tokenizer(item.question + " ", add_special_tokens=False)["input_ids"]


@torch.no_grad()
def greedy(model, tokenizer, prompts: Sequence[list[int]], max_new_tokens: int, stop: Sequence[int]) -> list[str]:
    """Greedy continuations of left-padded prompts, cut at the first stop token."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=pad,
        eos_token_id=list(stop),
    )
    texts = []
    for row in out[:, width:].tolist():
        for position, token in enumerate(row):
            if token in stop:
                row = row[:position]
                break
        texts.append(tokenizer.decode(row, skip_special_tokens=True))
    return texts


def accuracy(
    model,
    tokenizer,
    test: dict[str, list[tasks.Item]],
    *,
    form: str = "chat",
    batch_size: int = 100,
) -> dict[str, float]:
    """Exact-match accuracy per task on `test` (chat form, or narrative form for the base model)."""
    model.eval()
    if form == "chat":
        make, stop = chat_prompt, [tokenizer.eos_token_id]
        expected = lambda item: item.answer  # noqa: E731
    elif form == "narrative":  # the rest of the line: "390."
        make, stop = narrative_prompt, [tokenizer.eos_token_id, *tokenizer("\n", add_special_tokens=False)["input_ids"]]
        expected = lambda item: item.answer + "."  # noqa: E731
    else:
        raise ValueError(f"unknown prompt form {form!r}")
    scores: dict[str, float] = {}
    for task, items in test.items():
        correct = 0
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            outputs = greedy(model, tokenizer, [make(tokenizer, i) for i in chunk], MAX_NEW_TOKENS, stop)
            correct += sum(tasks.exact_match(o, expected(i)) for o, i in zip(outputs, chunk))
        scores[task] = correct / len(items)
    return scores


@torch.no_grad()
def test_loss(model, tokenizer, test: dict[str, list[tasks.Item]], *, batch_size: int = 100) -> dict[str, float]:
    """Teacher-forced loss per task: mean over test items of the mean cross-entropy of the
    answer tokens (and EOS) given the chat prompt, exactly dsel's training loss on that item.

    Exact match is coarse on some tasks (parity is ~50% or ~100%); the loss moves smoothly.
    """
    from bench.quality.finetune import tokenize
    from selection.data import collate
    from selection.loss import model_loss

    model.eval()
    losses: dict[str, float] = {}
    for task, items in test.items():
        examples = tokenize(tokenizer, items, max_length=256)
        total = 0.0
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start : start + batch_size], tokenizer.pad_token_id)
            total += float(model_loss(model, batch).sum())
        losses[task] = total / len(items)
    return losses
