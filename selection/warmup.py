"""LoRA warmup training (docs/algorithms.md §3) with checkpoints that gradient extraction can use.

Each epoch ends in a checkpoint directory holding the adapter, the Adam moments keyed by
parameter name (LESS's reference code breaks on integer-keyed optimizer state), the optimizer
step count and the epoch's mean learning rate. Data order and dropout are seeded per epoch, so a
warmup resumed from checkpoint e continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from selection.data import Tokenized, collate
from selection.loss import model_loss
from selection.spec import WarmupSpec

ADAPTER_FILE = "adapter.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
INFO_FILE = "checkpoint.json"


def warmup_indices(pool_size: int, fraction: float, seed: int) -> list[int]:
    """The seeded random subset of the pool used for warmup (at least one example)."""
    count = max(1, math.floor(fraction * pool_size))
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(pool_size, size=count, replace=False))


def attach_lora(model, lora, seed: int):
    """Wrap `model` with LoRA adapters, initialized from `seed`."""
    from peft import LoraConfig, get_peft_model  # deferred: peft imports transformers (~3x torch's import time)

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with warnings.catch_warnings():
            # peft reads an attribute transformers 5 deprecates; nothing for users to act on
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(model, config)
    finally:
        torch.random.set_rng_state(state)


def trainable_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    """LoRA parameters in `named_parameters` order: the fixed order of flattened gradients."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


@dataclass(frozen=True)
class Checkpoint:
    """One warmup checkpoint, loaded: what gradient extraction needs."""

    epoch: int
    step: int
    mean_lr: float
    parameter_order: list[str]
    adapter: dict[str, torch.Tensor]
    exp_avg: dict[str, torch.Tensor]
    exp_avg_sq: dict[str, torch.Tensor]


def save_checkpoint(directory: Path, model, optimizer, epoch: int, step: int, mean_lr: float) -> None:
    """Write adapter, name-keyed Adam moments and metadata to `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    named = trainable_parameters(model)
    adapter = {name: p.detach().cpu().contiguous() for name, p in named}
    moments: dict[str, torch.Tensor] = {}
    for name, parameter in named:
        state = optimizer.state.get(parameter, {})
        zeros = torch.zeros_like(parameter, device="cpu")
        moments[f"exp_avg/{name}"] = state.get("exp_avg", zeros).detach().cpu().contiguous()
        moments[f"exp_avg_sq/{name}"] = state.get("exp_avg_sq", zeros).detach().cpu().contiguous()
    save_file(adapter, str(directory / ADAPTER_FILE))
    save_file(moments, str(directory / OPTIMIZER_FILE))
    info = {
        "epoch": epoch,
        "step": step,
        "mean_lr": mean_lr,
        "parameter_order": [name for name, _ in named],
    }
    (directory / INFO_FILE).write_text(json.dumps(info, indent=2))


def load_checkpoint(directory: Path) -> Checkpoint:
    info = json.loads((Path(directory) / INFO_FILE).read_text())
    moments = load_file(str(Path(directory) / OPTIMIZER_FILE))
    return Checkpoint(
        epoch=info["epoch"],
        step=info["step"],
        mean_lr=info["mean_lr"],
        parameter_order=info["parameter_order"],
        adapter=load_file(str(Path(directory) / ADAPTER_FILE)),
        exp_avg={k.removeprefix("exp_avg/"): v for k, v in moments.items() if k.startswith("exp_avg/")},
        exp_avg_sq={
            k.removeprefix("exp_avg_sq/"): v for k, v in moments.items() if k.startswith("exp_avg_sq/")
        },
    )


def apply_adapter(model, checkpoint: Checkpoint) -> None:
    """Load a checkpoint's LoRA weights into a model built by `attach_lora` with the same config."""
    named = dict(trainable_parameters(model))
    missing = [name for name in checkpoint.parameter_order if name not in named]
    if missing or len(named) != len(checkpoint.parameter_order):
        raise ValueError(
            f"checkpoint of epoch {checkpoint.epoch} does not match the model's LoRA parameters "
            f"(missing: {missing[:3]}); was it made with another model or LoRA config?"
        )
    with torch.no_grad():
        for name in checkpoint.parameter_order:
            named[name].copy_(checkpoint.adapter[name].to(named[name].device, named[name].dtype))


def _lr_lambda(spec: WarmupSpec, total_steps: int) -> Callable[[int], float]:
    ramp = math.ceil(spec.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if ramp and step < ramp:
            return (step + 1) / (ramp + 1)  # never exactly 0: the first step must move the adapter
        if spec.schedule == "constant":
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - ramp))

    return factor


def _refuse_divergence(model, epoch: int, step: int) -> None:
    """A diverged adapter (NaN or inf weights) would only surface at reduction as an unlocated
    NaN; stop here, before the checkpoint is committed, and name the setting to change."""
    from selection.spec import SpecError

    for name, parameter in trainable_parameters(model):
        if not torch.isfinite(parameter.detach()).all():
            raise SpecError([(
                "spec.warmup.learningRate",
                f"the warmup diverged: adapter weight {name} is not finite after epoch {epoch} "
                f"(step {step}); lower learningRate (or weightDecay)",
            )])


def train_warmup(
    model,
    examples: Sequence[Tokenized],
    spec: WarmupSpec,
    pad_token_id: int,
    *,
    save: Callable[[int, Path], None],
    scratch: Path,
    resume_from: Checkpoint | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Train the LoRA-wrapped `model` on `examples`; call `save(epoch, dir)` after each epoch.

    The loss of an optimizer step is the mean of its examples' losses (each example counts the
    same, whatever its length), accumulated over micro-batches.
    """
    device = next(model.parameters()).device
    named = trainable_parameters(model)
    optimizer = torch.optim.AdamW(
        [p for _, p in named],
        lr=spec.learning_rate,
        betas=(spec.beta1, spec.beta2),
        eps=spec.eps,
        weight_decay=spec.weight_decay,
    )
    steps_per_epoch = math.ceil(len(examples) / spec.effective_batch_size)
    total_steps = steps_per_epoch * spec.epochs
    first_epoch, resumed_steps = 0, 0
    if resume_from is not None:
        apply_adapter(model, resume_from)
        for name, parameter in named:
            optimizer.state[parameter] = {
                "step": torch.tensor(float(resume_from.step)),
                "exp_avg": resume_from.exp_avg[name].to(device, parameter.dtype).clone(),
                "exp_avg_sq": resume_from.exp_avg_sq[name].to(device, parameter.dtype).clone(),
            }
        first_epoch, resumed_steps = resume_from.epoch + 1, resume_from.step
    for param_group in optimizer.param_groups:
        param_group.setdefault("initial_lr", param_group["lr"])
    # last_epoch places the schedule at the resumed step without replaying it
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(spec, total_steps), last_epoch=resumed_steps - 1
    )

    model.train()
    step = first_epoch * steps_per_epoch
    for epoch in range(first_epoch, spec.epochs):
        torch.manual_seed(spec.seed * 1_000_003 + epoch)  # dropout, reproducible after a resume
        order = np.random.default_rng([spec.seed, epoch]).permutation(len(examples))
        learning_rates = []
        for start in range(0, len(order), spec.effective_batch_size):
            group = [examples[i] for i in order[start : start + spec.effective_batch_size]]
            optimizer.zero_grad(set_to_none=True)
            for micro in range(0, len(group), spec.micro_batch_size):
                batch = collate(group[micro : micro + spec.micro_batch_size], pad_token_id)
                batch = {k: v.to(device) for k, v in batch.items()}
                losses = model_loss(model, batch)
                (losses.sum() / len(group)).backward()
            learning_rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
            step += 1
            if progress:
                progress(step, total_steps)
        _refuse_divergence(model, epoch, step)
        directory = scratch / f"epoch-{epoch}"
        save_checkpoint(directory, model, optimizer, epoch, step, float(np.mean(learning_rates)))
        save(epoch, directory)
    model.eval()
