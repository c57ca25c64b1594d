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
from typing import Any

from selection import artifacts, data, spec as spec_module, storage
from selection.contract import JobArgs, ShardRange, shard_range


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
    def warmup_fingerprint(self) -> str:
        return spec_module.spec_fingerprint(
            {
                "model": self.spec.model.model_dump(mode="json"),
                "train_sha256": data.sha256_hex(self._train_bytes),
                "max_length": self.spec.data.max_length,
                "warmup": self.spec.warmup.model_dump(mode="json"),
            }
        )

    def _gradients_part(self) -> dict[str, Any]:
        g = self.spec.gradients
        return {"dim": g.projection_dim, "projection": g.projection, "seed": g.seed}

    @cached_property
    def validation_fingerprint(self) -> str:
        return spec_module.spec_fingerprint(
            {"warmup": self.warmup_fingerprint, "validation": self._validation_digest, **self._gradients_part()}
        )

    @cached_property
    def train_fingerprint(self) -> str:
        g = self.spec.gradients
        return spec_module.spec_fingerprint(
            {
                "warmup": self.warmup_fingerprint,
                **self._gradients_part(),
                "train_type": g.train_type,
                "batch_size": g.batch_size,
                "shards": g.shards,
            }
        )

    @cached_property
    def scores_fingerprint(self) -> str:
        return spec_module.spec_fingerprint({"train": self.train_fingerprint, "validation": self.validation_fingerprint})

    @cached_property
    def selection_fingerprint(self) -> str:
        return spec_module.spec_fingerprint(
            {"scores": self.scores_fingerprint, "selection": self.spec.selection.model_dump(mode="json")}
        )

    # --- influence distillation (selection.jobs.distill) -----------------------------------
    @property
    def distillation_epoch(self) -> int:
        """The checkpoint distillation uses for embeddings, landmark and validation gradients: the last."""
        return self.epochs[-1]

    @property
    def validation_epochs(self) -> list[int]:
        """Checkpoints whose validation features the selection reads."""
        return [self.distillation_epoch] if self.spec.uses_distillation else self.epochs

    def _embedding_inputs(self) -> dict[str, Any]:
        d = self.spec.distillation
        return {
            "warmup": self.warmup_fingerprint,
            "epoch": self.distillation_epoch,
            "blocks": d.blocks,
            "tangents": d.tangents,
            "embed_dim": d.embed_dim,
            "seed": d.seed,
            "batch_size": self.spec.gradients.batch_size,
        }

    def _landmark_inputs(self) -> dict[str, Any]:
        d = self.spec.distillation
        return {
            "warmup": self.warmup_fingerprint,
            "epoch": self.distillation_epoch,
            "landmarks": d.landmarks,
            "seed": d.seed,
            "batch_size": self.spec.gradients.batch_size,
            "train_type": self.spec.gradients.train_type,
            **self._gradients_part(),
        }

    @cached_property
    def embeddings_fingerprint(self) -> str:
        return spec_module.spec_fingerprint(
            {"embeddings": self._embedding_inputs(), "shards": self.spec.gradients.shards}
        )

    @cached_property
    def landmark_fingerprint(self) -> str:
        return spec_module.spec_fingerprint(
            {"landmarks": self._landmark_inputs(), "shards": self.spec.gradients.shards}
        )

    @cached_property
    def distilled_scores_fingerprint(self) -> str:
        """Independent of the shard layout: distilled scores are the same whatever the sharding."""
        return spec_module.spec_fingerprint(
            {
                "embeddings": self._embedding_inputs(),
                "landmarks": self._landmark_inputs(),
                "validation": self.validation_fingerprint,
                "ridge": self.spec.distillation.ridge,
            }
        )

    @cached_property
    def distilled_selection_fingerprint(self) -> str:
        return spec_module.spec_fingerprint(
            {"scores": self.distilled_scores_fingerprint, "selection": self.spec.selection.model_dump(mode="json")}
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
