"""Check the LoRA and projection sizes of a spec against the model, before any training.

A rank larger than a layer, a target module the model does not have or a projection wider
than the gradient it projects would fail only once the model is loaded, as an allocation
error or a library traceback. Here the model is built on the meta device (no weights, no
memory) from its config, so the check costs a config read.
"""

from __future__ import annotations

from pathlib import Path

from selection import spec as spec_module
from selection.contract import StorageLocation
from selection.models import resolve_model_dir


def adapted_layers(model, target_modules: list[str]) -> dict[str, list[tuple[str, int, int]]]:
    """target name -> [(module name, in features, out features)] the way peft matches names:
    the full name, or its last dotted components."""
    import torch
    from transformers.pytorch_utils import Conv1D

    found: dict[str, list[tuple[str, int, int]]] = {t: [] for t in target_modules}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            shape = (module.in_features, module.out_features)
        elif isinstance(module, Conv1D):
            shape = (int(module.weight.shape[0]), int(module.weight.shape[1]))
        else:
            continue
        for target in target_modules:
            if name == target or name.endswith("." + target):
                found[target].append((name, *shape))
    return found


def check_adapter_fits(
    model_spec: spec_module.ModelSpec,
    lora: spec_module.LoraSpec,
    projection_dim: int,
    *,
    cache_dir: str | Path | None = None,
    s3: StorageLocation | None = None,
) -> int:
    """Raise SpecError unless the LoRA targets exist, the rank fits them and the projection
    is no wider than the LoRA gradient; returns the LoRA parameter count p."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    location = resolve_model_dir(model_spec.source, cache_dir, s3)
    try:
        config = AutoConfig.from_pretrained(location, revision=model_spec.revision)
    except (OSError, ValueError) as error:
        from selection.models import ModelLoadError

        raise ModelLoadError(f"model.source '{model_spec.source}': cannot read its config: {error}") from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    layers = adapted_layers(model, list(lora.target_modules))
    problems: list[tuple[str, str]] = []
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    for position, (target, matched) in enumerate(layers.items()):
        if not matched:
            problems.append((
                f"spec.warmup.lora.targetModules[{position}]",
                f"{target!r} matches no linear layer of the model (it has: {', '.join(linear)})",
            ))
    widths = [min(i, o) for matched in layers.values() for _, i, o in matched]
    if widths and lora.r > min(widths):
        problems.append((
            "spec.warmup.lora.r",
            f"{lora.r} exceeds the narrowest adapted layer ({min(widths)} features); a LoRA rank "
            "cannot exceed the layer's width",
        ))
    parameters = sum(lora.r * (i + o) for matched in layers.values() for _, i, o in matched)
    if widths and not problems and projection_dim > parameters:
        problems.append((
            "spec.gradients.projectionDim",
            f"{projection_dim} exceeds the {parameters} LoRA parameters it projects "
            "(rank x (in + out) summed over the adapted layers)",
        ))
    if problems:
        raise spec_module.SpecError(problems)
    return parameters
