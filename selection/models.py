"""Load a causal LM by hub name, local path or S3 URI; build the tiny models demos and tests use.

Every source ends in the same place: a directory that `from_pretrained` reads. Tiny models are
built from a `LlamaConfig` with a seed and a byte-level tokenizer made locally, then saved with
`save_pretrained`, so demos and tests exercise the same loading path as real models.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
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
    # deferred here and below: light modules import models for its errors and constants
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
    import torch  # deferred (see build_byte_tokenizer)
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a stderr bar would break one-line error reports
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
    recipe = json.dumps([TINY_PRESETS[preset], PLAIN_CHAT_TEMPLATE], sort_keys=True)
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~", "file://")) or os.path.exists(source)


def _tiny_preset(source: str) -> str:
    preset = source[len(TINY_SCHEME):]
    if preset not in TINY_PRESETS:
        raise ModelLoadError(
            f"model.source '{source}': unknown tiny preset (known: {', '.join(sorted(TINY_PRESETS))})"
        )
    return preset


def resolve_model_dir(
    source: str, cache_dir: str | Path | None = None, s3: StorageLocation | None = None
) -> Path | str:
    """A local directory for `source`, or the hub name unchanged for `from_pretrained` to fetch."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if source.startswith(TINY_SCHEME):
        preset = _tiny_preset(source)
        return _materialize(cache / "tiny" / f"{preset}-{_tiny_recipe_hash(preset)}", lambda d: build_tiny_model(preset, d))
    if source.startswith("s3://"):
        store, versions = _s3_versions(source, s3)
        # The cache copy is named after the objects' sizes and ETags, so a model rewritten in
        # S3 is downloaded afresh instead of the old copy being loaded under the new fingerprint.
        name = source[len("s3://"):].strip("/").replace("/", "--") + "-" + _digest(versions)[:16]

        def download(directory: Path) -> None:
            for key in versions:
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


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _s3_versions(source: str, s3: StorageLocation | None):
    reach = s3 or StorageLocation(uri=source)
    store = storage.open_store(source, endpoint_url=reach.endpoint, region=reach.region)
    if not isinstance(store, storage.S3Store):  # an s3:// source always opens an S3Store
        raise ModelLoadError(f"model.source '{source}': not an S3 location")
    versions = store.list_versions()
    if not versions:
        raise ModelLoadError(f"model.source '{source}': no objects under this S3 prefix")
    return store, versions


def _directory_digests(directory: Path) -> dict[str, str]:
    """name -> SHA-256 of the files from_pretrained reads (config, weights, tokenizer)."""
    return {
        p.name: storage._sha256_file(p)[1]  # the artifact manifests' chunked hash
        for p in sorted(directory.iterdir())
        if p.is_file() and not p.name.startswith(".")
    }


_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@functools.lru_cache(maxsize=None)
def resolve_hub_commit(name: str, revision: str | None) -> str:
    """The commit a hub name and revision (branch, tag, commit; default main) point at now.

    Asks the hub, and falls back to the local Hugging Face cache when offline; a name that can
    be resolved neither way cannot be loaded either.
    """
    if revision and _COMMIT.match(revision):
        return revision
    from huggingface_hub import HfApi, constants, errors as hub_errors

    hub_error: Exception | None = None
    try:
        sha = HfApi().model_info(name, revision=revision).sha
        if sha:
            return sha
    except Exception as error:  # offline, or a private repo without a token: try the local cache
        hub_error = error
    ref = Path(constants.HF_HUB_CACHE) / f"models--{name.replace('/', '--')}" / "refs" / (revision or "main")
    try:
        return ref.read_text().strip()
    except OSError:
        pass
    # The hub's own verdict (no such repo or revision, gated, offline mode) is final; anything
    # else (429, 5xx, a dropped connection) stays the cause, so the stage retries it as transient.
    final = (hub_errors.RepositoryNotFoundError, hub_errors.RevisionNotFoundError,
             hub_errors.GatedRepoError, hub_errors.OfflineModeIsEnabled)
    cause = None if hub_error is None or isinstance(hub_error, final) else hub_error
    raise ModelLoadError(
        f"model.source '{name}': cannot resolve revision {revision or 'main'!r} to a commit "
        "(hub unreachable and not in the local cache)"
    ) from cause


def model_identity(
    source: str,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    s3: StorageLocation | None = None,
) -> dict[str, Any]:
    """What loading `source` actually reads, for the warmup fingerprint: a model changed in
    place (local weights rewritten, an S3 prefix re-uploaded, a hub branch moved) changes it.

    tiny: presets hash their recipe; local directories hash their files; s3:// prefixes hash
    the objects' sizes and ETags; hub names resolve the revision to a commit.
    """
    if source.startswith(TINY_SCHEME):
        return {"tiny": _tiny_recipe_hash(_tiny_preset(source))}
    if source.startswith("s3://"):
        return {"s3_objects": _digest(_s3_versions(source, s3)[1])}
    location = resolve_model_dir(source, cache_dir, s3)
    if isinstance(location, Path):
        return {"files": _directory_digests(location)}
    return {"commit": resolve_hub_commit(source, revision)}


def pick_device_and_dtype(requested: str = "auto"):
    """CUDA when present; bf16 on GPUs that support it, fp32 on CPU (docs/algorithms.md §3)."""
    import torch  # deferred (see build_byte_tokenizer)

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
    from transformers import AutoModelForCausalLM, AutoTokenizer  # deferred (see build_byte_tokenizer)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # dsel shows its own per-stage progress
    import pickle

    location = resolve_model_dir(source, cache_dir, s3)
    if isinstance(location, str):  # a hub name: load the commit the fingerprint recorded
        revision = resolve_hub_commit(location, revision)
    device, torch_dtype = pick_device_and_dtype(dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(location, revision=revision, dtype=torch_dtype)
    except pickle.UnpicklingError as error:
        raise ModelLoadError(
            f"model.source '{source}': refused to load pickled weights that could run code "
            f"({str(error).splitlines()[0]}); provide the weights as .safetensors"
        ) from None
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"model.source '{source}': cannot load: {error}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return model, tokenizer
