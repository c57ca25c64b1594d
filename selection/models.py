"""Load a causal LM by hub name, local path or S3 URI; build the tiny models demos and tests use.

Every source ends in the same place: a directory that `from_pretrained` reads. Tiny models are
built from a `LlamaConfig` with a seed and a byte-level tokenizer made locally, then saved with
`save_pretrained`, so demos and tests exercise the same loading path as real models.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from selection import storage
from selection.contract import StorageLocation

TINY_SCHEME = "tiny:"
COMPLETE_MARKER = ".dsel-complete"

# Plain chat template (docs/algorithms.md §2): used when a tokenizer has none, or when asked for.
# Turns are '<|role|>\n' + content, separated by '\n'; assistant turns end with EOS so the model
# learns to stop. The separator opens the next turn, so an assistant turn renders as exactly its
# content plus EOS: those are the labelled tokens. add_generation_prompt opens an assistant turn.
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if not loop.first %}{{ '\n' }}{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{% if messages %}{{ '\n' }}{% endif %}{{ '<|assistant|>\n' }}"
    "{% endif %}"
)

# name -> LlamaConfig overrides. Small enough for CPU tests; 'llama-small' is the benchmark size.
TINY_PRESETS: dict[str, dict[str, Any]] = {
    "llama-demo": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    ),
    "llama-small": dict(
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=2048,
    ),
}


class ModelLoadError(RuntimeError):
    """The model source cannot be turned into a loadable directory."""


def default_cache_dir() -> Path:
    """Where downloaded and built models live: $DSEL_CACHE_DIR, else ~/.cache/dsel."""
    return Path(os.environ.get("DSEL_CACHE_DIR") or Path.home() / ".cache" / "dsel")


def build_byte_tokenizer():
    """A byte-level BPE tokenizer with no merges (256 byte tokens + specials), built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    specials = ["<|endoftext|>", "<|pad|>"]
    vocab = {token: index for index, token in enumerate(specials + alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<|pad|>",
        model_max_length=4096,
    )
    tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(preset: str, directory: str | Path, seed: int = 0) -> Path:
    """Build a seeded tiny Llama and its tokenizer and save both to `directory`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if preset not in TINY_PRESETS:
        raise ModelLoadError(
            f"unknown tiny model preset '{preset}' (known: {', '.join(sorted(TINY_PRESETS))})"
        )
    tokenizer = build_byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **TINY_PRESETS[preset],
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _materialize(target: Path, fill) -> Path:
    """Fill `target` once, atomically: build in a sibling temp dir, then rename into place."""
    if (target / COMPLETE_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        fill(staging)
        (staging / COMPLETE_MARKER).write_text("ok\n")
        if target.exists():
            shutil.rmtree(target)  # an incomplete earlier attempt
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / COMPLETE_MARKER).exists():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _tiny_recipe_hash(preset: str) -> str:
    """Cache key of a tiny model: a changed preset or template must not reuse an old build."""
    import hashlib
    import json

    recipe = json.dumps([TINY_PRESETS[preset], PLAIN_CHAT_TEMPLATE], sort_keys=True)
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~", "file://")) or os.path.exists(source)


def resolve_model_dir(
    source: str, cache_dir: str | Path | None = None, s3: StorageLocation | None = None
) -> Path | str:
    """A local directory for `source`, or the hub name unchanged for `from_pretrained` to fetch."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if source.startswith(TINY_SCHEME):
        preset = source[len(TINY_SCHEME):]
        if preset not in TINY_PRESETS:
            raise ModelLoadError(
                f"model.source '{source}': unknown tiny preset (known: {', '.join(sorted(TINY_PRESETS))})"
            )
        return _materialize(cache / "tiny" / f"{preset}-{_tiny_recipe_hash(preset)}", lambda d: build_tiny_model(preset, d))
    if source.startswith("s3://"):
        reach = s3 or StorageLocation(uri=source)
        store = storage.open_store(source, endpoint_url=reach.endpoint, region=reach.region)
        keys = store.list_keys("")
        if not keys:
            raise ModelLoadError(f"model.source '{source}': no objects under this S3 prefix")
        name = source[len("s3://"):].strip("/").replace("/", "--")

        def download(directory: Path) -> None:
            for key in keys:
                store.get_file(key, directory / key)

        return _materialize(cache / "s3" / name, download)
    if _looks_like_path(source):
        path = Path(source.removeprefix("file://")).expanduser()
        if not path.is_dir():
            raise ModelLoadError(f"model.source '{source}': no such model directory")
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model.source '{source}': directory has no config.json")
        return path
    return source


def pick_device_and_dtype(requested: str = "auto"):
    """CUDA when present; bf16 on GPUs that support it, fp32 on CPU (docs/algorithms.md §3)."""
    import torch

    if torch.cuda.is_available():
        device = torch.device("cuda")
        if requested == "auto":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        else:
            dtype = getattr(torch, requested)
    else:
        device = torch.device("cpu")
        dtype = torch.float32 if requested == "auto" else getattr(torch, requested)
    return device, dtype


def load_model_and_tokenizer(
    source: str,
    *,
    revision: str | None = None,
    dtype: str = "auto",
    cache_dir: str | Path | None = None,
    s3: StorageLocation | None = None,
):
    """Load (model, tokenizer) for `source`; the model is on the chosen device, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # dsel shows its own per-stage progress
    location = resolve_model_dir(source, cache_dir, s3)
    device, torch_dtype = pick_device_and_dtype(dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(location, revision=revision, dtype=torch_dtype)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"model.source '{source}': cannot load: {error}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return model, tokenizer
