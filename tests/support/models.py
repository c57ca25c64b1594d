"""Tiny LoRA models and the one-thread fixture of the tests that run torch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from selection.models import build_tiny_model
from selection.spec import LoraSpec
from selection.warmup import attach_lora, trainable_parameters

TINY_HIDDEN = 16  # hidden size of `tiny_lora_llama`
TINY_PAD = 0  # its pad token id


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is as fast, and immune to OpenMP spinning on a busy machine.

    Import it into a test module to apply it to every test there.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def demo_lora_model(directory: Path):
    """The llama-demo model with r=4 LoRA, lora_B random (peft starts it at zero, which would
    zero every lora_A gradient), in eval mode."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(build_tiny_model("llama-demo", directory))
    model = attach_lora(model, LoraSpec(r=4, alpha=8, dropout=0.1), seed=0)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in trainable_parameters(model):
            if "lora_B" in name:
                parameter.normal_(std=0.05)
    model.eval()
    return model


def tiny_lora_llama(layers: int = 2, dtype=torch.float64):
    """A small Llama with LoRA adapters whose A and B are both random (B=0 would hide A)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=40, hidden_size=TINY_HIDDEN, intermediate_size=32, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=TINY_PAD,
    )
    torch.manual_seed(0)
    model = attach_lora(LlamaForCausalLM(config), LoraSpec(r=2, alpha=4, dropout=0.1), seed=0)
    with torch.no_grad():
        for _, parameter in trainable_parameters(model):
            parameter.normal_(std=0.3)
    return model.to(dtype)  # left in train mode: the embedder must switch dropout off itself
