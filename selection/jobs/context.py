"""What every stage shares: its arguments document, the data, the model and the fingerprints.

A stage's arguments are one JSON document (a mounted ConfigMap on Kubernetes, a dict in
`dsel run`): the resource, where artifacts live, and for sharded stages the shard index
(taken from JOB_COMPLETION_INDEX in an Indexed Job).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from selection import artifacts, data, spec as spec_module, storage
from selection.models import StorageOptions


class JobArgumentError(ValueError):
    """The arguments document is unusable; the message says which field."""


@dataclass(frozen=True)
class JobArgs:
    """The arguments document of one stage run."""

    resource: spec_module.DataSelection
    storage_uri: str
    endpoint: str | None = None
    region: str | None = None
    base_dir: str | None = None  # relative data paths are resolved against it (dsel run)
    cache_dir: str | None = None  # model cache; defaults to $DSEL_CACHE_DIR or ~/.cache/dsel
    shard: int | None = None

    def required_shard(self, stage: str) -> int:
        if self.shard is None:
            raise JobArgumentError(f"{stage} needs a shard: field 'shard' or env JOB_COMPLETION_INDEX")
        return self.shard

    def to_document(self) -> dict[str, Any]:
        return {
            "resource": self.resource.to_manifest(),
            "storage": {"uri": self.storage_uri, "endpoint": self.endpoint, "region": self.region},
            "baseDir": self.base_dir,
            "cacheDir": self.cache_dir,
            "shard": self.shard,
        }

    @classmethod
    def from_document(cls, document: Any, source: str = "arguments") -> "JobArgs":
        if not isinstance(document, dict):
            raise JobArgumentError(f"{source}: expected a JSON object")
        if "resource" not in document:
            raise JobArgumentError(f"{source}: missing field 'resource'")
        resource = spec_module.parse_selection(document["resource"], source=f"{source}: resource")
        store = document.get("storage") or {}
        uri = store.get("uri") or resource.spec.storage.uri
        if not uri:
            raise JobArgumentError(f"{source}: storage.uri: no artifact location given")
        shard = document.get("shard")
        if shard is None and os.environ.get("JOB_COMPLETION_INDEX", "") != "":
            shard = os.environ["JOB_COMPLETION_INDEX"]
        if shard is not None:
            try:
                shard = int(shard)
            except (TypeError, ValueError):
                raise JobArgumentError(f"{source}: shard: expected an integer, got {shard!r}") from None
            shards = resource.spec.gradients.shards
            if not 0 <= shard < shards:
                raise JobArgumentError(f"{source}: shard: {shard} is outside 0..{shards - 1}")
        return cls(
            resource=resource,
            storage_uri=uri,
            endpoint=store.get("endpoint") or resource.spec.storage.endpoint,
            region=store.get("region") or resource.spec.storage.region,
            base_dir=document.get("baseDir"),
            cache_dir=document.get("cacheDir"),
            shard=shard,
        )


def read_job_args(argument: str) -> JobArgs:
    """Arguments from a JSON file path, or inline JSON when the argument starts with '{'."""
    if argument.lstrip().startswith("{"):
        source, text = "inline arguments", argument
    else:
        source = argument
        try:
            text = Path(argument).read_text(encoding="utf-8")
        except OSError as error:
            raise JobArgumentError(f"{argument}: cannot read ({error.strerror or error})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise JobArgumentError(f"{source}: not valid JSON ({error.msg}, line {error.lineno})") from None
    return JobArgs.from_document(document, source)


@dataclass(frozen=True)
class ShardRange:
    """Rows [start, stop) of the pool; boundaries fall on multiples of the gradient batch size."""

    shard: int
    shards: int
    start: int
    stop: int


def shard_range(pool_size: int, batch_size: int, shard: int, shards: int) -> ShardRange:
    batches = math.ceil(pool_size / batch_size)
    first = (shard * batches) // shards
    last = ((shard + 1) * batches) // shards
    return ShardRange(shard, shards, min(pool_size, first * batch_size), min(pool_size, last * batch_size))


@dataclass
class StageContext:
    """Lazily loaded inputs of a stage, and the fingerprints that tie artifacts to them."""

    args: JobArgs
    scratch_root: Path | None = None
    _scratch: tempfile.TemporaryDirectory | None = field(default=None, init=False, repr=False)

    @property
    def spec(self) -> spec_module.DataSelectionSpec:
        return self.args.resource.spec

    @property
    def s3_options(self) -> StorageOptions:
        return StorageOptions(endpoint=self.args.endpoint, region=self.args.region)

    @cached_property
    def scratch(self) -> Path:
        if self.scratch_root is not None:
            self.scratch_root.mkdir(parents=True, exist_ok=True)
            return self.scratch_root
        self._scratch = tempfile.TemporaryDirectory(prefix="dsel-")
        return Path(self._scratch.name)

    @cached_property
    def artifacts(self) -> artifacts.ArtifactStore:
        store = storage.open_store(self.args.storage_uri, endpoint_url=self.args.endpoint, region=self.args.region)
        return artifacts.ArtifactStore(store, self.scratch / "artifacts")

    # --- data -----------------------------------------------------------------------------
    @cached_property
    def _train_bytes(self) -> bytes:
        return data.read_uri(self.spec.data.train, self.args.base_dir, self.s3_options)

    @cached_property
    def train_examples(self) -> list[data.Example]:
        text = data.decode(self._train_bytes, self.spec.data.train)
        return data.parse_jsonl(text, self.spec.data.train)

    @cached_property
    def validation_examples(self) -> list[data.Example]:
        examples: list[data.Example] = []
        for entry in self.spec.data.validation:
            raw = data.read_uri(entry.uri, self.args.base_dir, self.s3_options)
            examples += data.parse_jsonl(data.decode(raw, entry.uri), entry.uri, task=entry.task, require_task=True)
        return examples

    @cached_property
    def _validation_digest(self) -> list[list[str]]:
        return [[e.task or "", data.sha256_hex(e.raw.encode())] for e in self.validation_examples]

    def preflight(self) -> int:
        """Read and check every input before expensive work; returns the budget as a count.

        The first stage calls it, so bad data or an impossible budget fails in seconds instead
        of after warmup and extraction.
        """
        from selection.reduce import ReductionError, resolve_budget

        pool = len(self.train_examples)
        self.validation_examples
        try:
            return resolve_budget(self.spec.selection.budget, pool)
        except ReductionError as error:
            raise spec_module.SpecError([("spec.selection.budget", str(error))]) from None

    # --- model ----------------------------------------------------------------------------
    def load_model(self):
        """A fresh (model, tokenizer) pair; stages wrap the model with LoRA themselves."""
        from selection.models import load_model_and_tokenizer

        model_spec = self.spec.model
        return load_model_and_tokenizer(
            model_spec.source,
            revision=model_spec.revision,
            dtype=model_spec.dtype,
            cache_dir=self.args.cache_dir,
            s3=self.s3_options,
        )

    def tokenize(self, tokenizer, examples: list[data.Example]) -> list[data.Tokenized]:
        template = data.chat_template_for(tokenizer, self.spec.model.chat_template)
        return [
            data.tokenize_example(tokenizer, e, template=template, max_length=self.spec.data.max_length)
            for e in examples
        ]

    # --- fingerprints ---------------------------------------------------------------------
    @cached_property
    def fingerprints(self) -> artifacts.Fingerprints:
        """What each artifact kind's inputs hash to (the data are read when first needed)."""
        return artifacts.Fingerprints(
            self.spec, lambda: data.sha256_hex(self._train_bytes), lambda: self._validation_digest
        )

    # --- layout ---------------------------------------------------------------------------
    @property
    def epochs(self) -> list[int]:
        return list(range(self.spec.warmup.epochs))

    def shard_range(self, shard: int) -> ShardRange:
        g = self.spec.gradients
        return shard_range(len(self.train_examples), g.batch_size, shard, g.shards)

    def close(self) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None
