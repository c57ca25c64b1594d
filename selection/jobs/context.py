"""What every stage shares: its arguments, the data, the model and the fingerprints.

A stage's arguments are one `selection.contract.JobArgs` document (a mounted ConfigMap on
Kubernetes, a dict in `dsel run`): the resource, where artifacts live, and for sharded stages the
shard index (taken from JOB_COMPLETION_INDEX in an Indexed Job).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from selection import artifacts, data, spec as spec_module, storage
from selection.artifacts import Fingerprints
from selection.contract import JobArgs, ShardRange, shard_range
from selection.model_checks import check_adapter_fits
from selection.models import load_model_and_tokenizer, model_identity
from selection.reduce import ReductionError, resolve_budget


@dataclass
class StageContext:
    """Lazily loaded inputs of a stage, and the fingerprints that tie artifacts to them."""

    args: JobArgs
    scratch_root: Path | None = None
    _scratch: tempfile.TemporaryDirectory | None = field(default=None, init=False, repr=False)

    @property
    def spec(self) -> spec_module.DataSelectionSpec:
        return self.args.resource.spec

    @cached_property
    def scratch(self) -> Path:
        if self.scratch_root is not None:
            self.scratch_root.mkdir(parents=True, exist_ok=True)
            return self.scratch_root
        self._scratch = tempfile.TemporaryDirectory(prefix="dsel-")
        return Path(self._scratch.name)

    @cached_property
    def artifacts(self) -> artifacts.ArtifactStore:
        location = self.args.storage
        store = storage.open_store(location.uri, endpoint_url=location.endpoint, region=location.region)
        return artifacts.ArtifactStore(store, self.scratch / "artifacts")

    # --- data -----------------------------------------------------------------------------
    @cached_property
    def _train_bytes(self) -> bytes:
        return data.read_uri(self.spec.data.train, self.args.base_dir, self.args.storage)

    @cached_property
    def train_examples(self) -> list[data.Example]:
        text = data.decode(self._train_bytes, self.spec.data.train)
        return data.parse_jsonl(text, self.spec.data.train)

    @cached_property
    def validation_examples(self) -> list[data.Example]:
        examples: list[data.Example] = []
        for entry in self.spec.data.validation:
            raw = data.read_uri(entry.uri, self.args.base_dir, self.args.storage)
            examples += data.parse_jsonl(data.decode(raw, entry.uri), entry.uri, task=entry.task, require_task=True)
        return examples

    @cached_property
    def validation_tasks(self) -> list[str]:
        """Each validation example's task, in file order."""
        tasks = []
        for example in self.validation_examples:
            assert example.task is not None, "parse_jsonl(require_task=True) gives every validation line a task"
            tasks.append(example.task)
        return tasks

    @cached_property
    def _validation_digest(self) -> list[list[str]]:
        return [[e.task or "", data.sha256_hex(e.raw.encode())] for e in self.validation_examples]

    def preflight(self) -> int:
        """Read and check every input before expensive work; returns the budget as a count.

        The first stage calls it, so bad data or an impossible budget fails in seconds instead
        of after warmup and extraction.
        """
        pool = len(self.train_examples)
        _ = self.validation_examples  # parsed now, so a bad validation file fails here
        try:
            budget = resolve_budget(self.spec.selection.budget, pool)
        except ReductionError as error:
            raise spec_module.SpecError([("spec.selection.budget", str(error))]) from None
        _ = self.fingerprints.warmup  # resolves the model source: a missing dir or preset fails here
        check_adapter_fits(self.spec.model, self.spec.warmup.lora, self.spec.gradients.projection_dim,
                           cache_dir=self.args.cache_dir, s3=self.args.storage)
        return budget

    # --- model ----------------------------------------------------------------------------
    def load_model(self):
        """A fresh (model, tokenizer) pair; stages wrap the model with LoRA themselves."""
        model_spec = self.spec.model
        return load_model_and_tokenizer(
            model_spec.source,
            revision=model_spec.revision,
            dtype=model_spec.dtype,
            cache_dir=self.args.cache_dir,
            s3=self.args.storage,
        )

    def tokenize(self, tokenizer, examples: list[data.Example]) -> list[data.Tokenized]:
        template = data.chat_template_for(tokenizer, self.spec.model.chat_template)
        return [
            data.tokenize_example(tokenizer, e, template=template, max_length=self.spec.data.max_length)
            for e in examples
        ]

    # --- fingerprints ---------------------------------------------------------------------
    @cached_property
    def fingerprints(self) -> Fingerprints:  # not `artifacts.`: the property `artifacts` shadows the module here
        """What each artifact kind's inputs hash to (the data are read when first needed)."""
        return artifacts.Fingerprints(
            self.spec, lambda: data.sha256_hex(self._train_bytes), lambda: self._validation_digest,
            model_identity=lambda: model_identity(self.spec.model.source, self.spec.model.revision,
                                                  self.args.cache_dir, self.args.storage),
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
