"""Fine-tune a fresh LoRA on a subset with one fixed recipe, then merge it for evaluation.

The training loop is dsel's own (`selection.warmup.train_warmup`: AdamW, linear schedule, each
example's loss the mean over its assistant tokens), driven by a `WarmupSpec` that holds this
benchmark's recipe; examples are tokenized by `selection.data.tokenize_example` with the plain
chat template, exactly as dsel tokenizes them for gradients. Every subset of every method gets
the same recipe and the same seed (adapter initialization, data order, dropout), so the only
thing that differs between two runs of one seed is the data.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from bench.quality import tasks
from selection import data as dsel_data
from selection.models import PLAIN_CHAT_TEMPLATE
from selection.spec import LoraSpec, WarmupSpec
from selection.warmup import attach_lora, train_warmup


@dataclass(frozen=True)
class FinetuneRecipe:
    """One recipe for every subset (the paper trains every subset the same way)."""

    epochs: int = 8  # small subsets need several passes; the full pool gets the same recipe
    learning_rate: float = 6e-3  # a tiny model wants a large LoRA step (2e-3 learned little)
    batch_size: int = 16
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = (
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    )
    max_length: int = 128

    def spec(self, seed: int) -> WarmupSpec:
        return WarmupSpec(
            fraction=1.0,
            epochs=self.epochs,
            learning_rate=self.learning_rate,
            schedule="linear",
            warmup_ratio=0.03,
            effective_batch_size=self.batch_size,
            micro_batch_size=self.batch_size,
            seed=seed,
            lora=LoraSpec(
                r=self.lora_r,
                alpha=self.lora_alpha,
                dropout=self.lora_dropout,
                target_modules=list(self.target_modules),
            ),
        )


def tokenize(tokenizer, items: Sequence[tasks.Item], max_length: int) -> list[dsel_data.Tokenized]:
    examples = [
        dsel_data.Example(line=i, messages=tuple(tasks.chat_record(item)["messages"]), task=None, raw="")
        for i, item in enumerate(items)
    ]
    return [
        dsel_data.tokenize_example(tokenizer, e, template=PLAIN_CHAT_TEMPLATE, max_length=max_length)
        for e in examples
    ]


def finetune(base_dir: Path, items: Sequence[tasks.Item], recipe: FinetuneRecipe, seed: int):
    """A fresh LoRA trained on `items`, merged into a copy of the base model: (model, tokenizer)."""
    from selection.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(base_dir), dtype="float32")
    spec = recipe.spec(seed)
    model = attach_lora(model, spec.lora, seed)
    examples = tokenize(tokenizer, items, recipe.max_length)
    with tempfile.TemporaryDirectory(prefix="bench-quality-ft-") as scratch:
        train_warmup(
            model, examples, spec, tokenizer.pad_token_id,
            save=lambda epoch, directory: None,  # only the final weights matter here
            scratch=Path(scratch),
        )
    model = model.merge_and_unload()
    model.eval()
    return model, tokenizer
