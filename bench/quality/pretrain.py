"""The base model: a small Llama built from a config, briefly pretrained, cached on disk.

It is pretrained with a plain next-token loss on "narrative" text from the task generators
(`tasks.pretraining_pieces`: "after 389 comes 390.", "5 2 8 in order is 2 5 8.", random words).
A small share of the skill lines (`chat_share`, 3%) appears in the chat form instead, as the
question-and-answer pages a web-pretrained model has read: the base model then answers some
questions in the chat form zero-shot and assigns wrong answers a high loss, like the pretrained
LLMs of the LESS and BIDS papers. With no chat text at all (the first version of this benchmark)
the model could not answer in the chat form, fine-tuning had to teach the format from nothing,
and no signal (influence or loss) could tell a wrong answer from a right one (README.md).

The result is saved with `save_pretrained` (model + dsel's byte tokenizer), so dsel loads it
like any local model directory (`spec.model.source: /abs/path`).

The cache key is a hash of the whole recipe: a changed recipe builds a new model, never reuses
a stale one.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from bench.quality import evaluate, tasks
from selection.models import build_byte_tokenizer
from selection.spec import spec_fingerprint

RECIPE_FILE = "bench-pretrain.json"


@dataclass(frozen=True)
class PretrainConfig:
    """Architecture and pretraining recipe of the base model."""

    hidden_size: int = 128
    intermediate_size: int = 344
    num_hidden_layers: int = 2  # 2 layers learned the skills faster per CPU-second than 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    steps: int = 2000  # optimizer steps
    batch_size: int = 16  # sequences per step
    sequence_length: int = 96  # tokens per packed sequence
    learning_rate: float = 3e-3  # peak; a tiny model trained from scratch wants a large step
    warmup_steps: int = 30
    weight_decay: float = 0.01
    answer_only_loss: bool = True  # loss on answers (and generic text) only; see _token_stream
    chat_share: float = 0.03  # share of skill lines written in the chat form (module docstring)
    seed: int = 0
    test_sizes: tasks.PoolSizes = field(default_factory=tasks.PoolSizes)  # test questions excluded

    def fingerprint(self) -> str:
        return spec_fingerprint(asdict(self))[:12]


def _token_stream(config: PretrainConfig, tokenizer, total_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lines of narrative text joined by newlines as one id stream, and its labels.

    With `answer_only_loss`, only the completions (answers, and chatter lines) are labelled, so
    the short pretraining spends its gradient on the skills rather than on predicting random
    operands (which cannot be learned).
    """
    rng = random.Random(config.seed)
    exclude = {item.question for items in tasks.test_sets(config.test_sizes).values() for item in items}
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    ids: list[int] = []
    labels: list[int] = []
    while len(ids) < total_tokens:
        for context, completion in tasks.pretraining_pieces(rng, 64, exclude):
            if context and rng.random() < config.chat_share:  # the same line as a chat turn
                head = tokenizer(evaluate.chat_prompt_text(tokenizer, context.strip()), add_special_tokens=False)["input_ids"]
                tail = tokenizer(completion.removesuffix("."), add_special_tokens=False)["input_ids"]
                tail += [tokenizer.eos_token_id] + newline
            else:
                head = tokenizer(context, add_special_tokens=False)["input_ids"] if context else []
                tail = tokenizer(completion + "\n", add_special_tokens=False)["input_ids"]
            ids += head + tail
            labels += ([-100] * len(head) if config.answer_only_loss else head) + tail
    return (
        torch.tensor(ids[:total_tokens], dtype=torch.long),
        torch.tensor(labels[:total_tokens], dtype=torch.long),
    )


def pretrain(
    config: PretrainConfig,
    directory: Path,
    log: Callable[[str], None] = print,
    on_step: Callable[[int, object], None] | None = None,
) -> Path:
    """Build, pretrain and save the base model to `directory` (model + tokenizer + recipe)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_byte_tokenizer()
    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=256,
    )
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(model_config)
    tokens_per_step = config.batch_size * config.sequence_length
    stream, label_stream = _token_stream(config, tokenizer, config.steps * tokens_per_step)
    batches = stream.view(config.steps, config.batch_size, config.sequence_length)
    label_batches = label_stream.view(config.steps, config.batch_size, config.sequence_length)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay, betas=(0.9, 0.95)
    )

    def factor(step: int) -> float:  # linear warmup, cosine decay to 10%
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    model.train()
    started = time.perf_counter()
    for step in range(config.steps):
        loss = model(input_ids=batches[step], labels=label_batches[step]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == config.steps - 1:
            log(f"  pretrain step {step + 1}/{config.steps}  loss {loss.item():.3f}  "
                f"({time.perf_counter() - started:.0f} s)")
        if on_step is not None:  # diagnostics (e.g. probing skills while tuning the recipe)
            on_step(step + 1, model)
    model.eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / RECIPE_FILE).write_text(json.dumps(asdict(config), indent=2, default=str))
    return directory


def ensure_base_model(config: PretrainConfig, cache_root: Path, log: Callable[[str], None] = print) -> tuple[Path, bool]:
    """The cached base model for `config`, pretrained first if missing; (directory, was_built)."""
    target = Path(cache_root).resolve() / f"base-{config.fingerprint()}"
    if (target / RECIPE_FILE).is_file():
        return target, False
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    log(f"pretraining the base model ({config.steps} steps) -> {target}")
    pretrain(config, staging, log)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target, True
