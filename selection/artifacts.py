"""Every artifact kind of a run, declared once: where it lives, its files, its metadata, its inputs.

An artifact is a key prefix in the store with a manifest written last (see `selection.storage`),
so a half-written one never counts as done. Each manifest records, as metadata, the fingerprint
of the inputs that produced it; finding a finished artifact with another fingerprint is refused
rather than mixed into a new run (or, for cheap derived kinds, recomputed).

A kind (`ArtifactKind`) declares its path template, its files, a typed metadata dataclass and
which fingerprint of `Fingerprints` it carries; `exists`, `require`, `metadata`, `save_*` and
`load_*` go through an `ArtifactStore`, which reads each manifest at most once (on S3 every read
is a GET). Torch-free: the operator imports this module for the layout it reports.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, ClassVar, Generic, Mapping, Sequence, TypeVar

import numpy as np

from selection import storage

FEATURES_FILE = "features.npy"
SCORES_FILE = "scores.npy"
EMBEDDINGS_FILE = "embeddings.npy"
LANDMARKS_FILE = "landmarks.npy"
LANDMARK_SCORES_FILE = "landmark-scores.npy"
SELECTION_FILE = "selection.json"
SUBSET_FILE = "selected.jsonl"
SELECTION_PREFIX = "selection"
DISTILLED_SCORES_PREFIX = "scores/distilled"


class StaleArtifactError(RuntimeError):
    """A finished artifact exists but was produced from different inputs."""


def shard_name(shard: int, shards: int) -> str:
    return f"shard-{shard:05d}-of-{shards:05d}"


# --- metadata ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metadata:
    """Base of the typed manifest metadata; field names are the JSON keys (`KEYS` renames)."""

    KEYS: ClassVar[Mapping[str, str]] = {}  # field name -> JSON key, where they differ
    fingerprint: str

    def to_json(self) -> dict[str, Any]:
        return {self.KEYS.get(f.name, f.name): getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, document: Mapping[str, Any], where: str):
        values = {}
        for f in dataclasses.fields(cls):
            key = cls.KEYS.get(f.name, f.name)
            if key in document:
                values[f.name] = document[key]
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise storage.CorruptArtifact(f"{where}: manifest metadata has no {key!r}")
        return cls(**values)


@dataclass(frozen=True)
class CheckpointMetadata(Metadata):
    epoch: int
    step: int  # optimizer steps so far (the bias correction of influence distillation reads it)
    mean_lr: float  # mean learning rate of the epoch: the checkpoint's weight in the scores
    warmup_examples: int


@dataclass(frozen=True)
class ValidationFeaturesMetadata(Metadata):
    epoch: int
    rows: int
    tasks: list[str]


@dataclass(frozen=True)
class TrainFeaturesMetadata(Metadata):
    epoch: int
    start: int  # pool rows [start, stop)
    stop: int
    answerless: list[int] = dataclasses.field(default_factory=list)  # 0-based lines that keep no answer token (data.lines_without_answer)


@dataclass(frozen=True)
class ScoresMetadata(Metadata):
    start: int
    stop: int
    columns: int


@dataclass(frozen=True)
class EmbeddingsMetadata(Metadata):
    epoch: int
    start: int
    stop: int
    rows: int
    blocks: int  # transformer blocks the JVP ran through
    dim: int
    answerless: list[int] = dataclasses.field(default_factory=list)  # as in TrainFeaturesMetadata


@dataclass(frozen=True)
class LandmarkFeaturesMetadata(Metadata):
    epoch: int
    step: int
    start: int  # positions [start, stop) in the sorted landmark list
    stop: int
    rows: int


@dataclass(frozen=True)
class DistilledScoresMetadata(Metadata):
    KEYS: ClassVar[Mapping[str, str]] = {"ridge": "lambda"}
    epoch: int
    rows: int
    columns: int
    landmarks: int
    sigma: float
    ridge: float  # the kernel ridge's lambda (JSON key "lambda")
    embedding_dim: int
    blocks: int


@dataclass(frozen=True)
class SelectionMetadata(Metadata):
    count: int


M = TypeVar("M", bound=Metadata)


# --- fingerprints --------------------------------------------------------------------------------
class Fingerprints:
    """The fingerprint of each kind's inputs, from the spec and digests of the data.

    Each property lists what its kind depends on; a dependency on an earlier artifact is its
    fingerprint, so a change anywhere upstream changes everything downstream.
    """

    def __init__(
        self,
        spec,
        train_sha256: Callable[[], str],
        validation_digest: Callable[[], list[list[str]]],
        *,
        model_identity: Callable[[], dict[str, Any]],
    ):
        self.spec = spec  # selection.spec.DataSelectionSpec (not imported: this module stays light)
        self._train_sha256 = train_sha256
        self._validation_digest = validation_digest
        # What loading the model actually reads (selection.models.model_identity): a model
        # changed in place under the same source string changes the warmup fingerprint.
        self._model_identity = model_identity

    def _hash(self, inputs: dict[str, Any]) -> str:
        from selection.spec import spec_fingerprint  # deferred: pydantic would double the operator-facing import time

        return spec_fingerprint(inputs)

    def _gradients(self) -> dict[str, Any]:
        g = self.spec.gradients
        return {"dim": g.projection_dim, "projection": g.projection, "seed": g.seed}

    @cached_property
    def warmup(self) -> str:
        """Model (the spec's section and what was loaded), training data, max_length, warmup section."""
        return self._hash(
            {
                "model": self.spec.model.model_dump(mode="json"),
                "loaded": self._model_identity(),
                "train_sha256": self._train_sha256(),
                "max_length": self.spec.data.max_length,
                "warmup": self.spec.warmup.model_dump(mode="json"),
            }
        )

    @cached_property
    def validation(self) -> str:
        """Warmup, validation examples (task and text), projection."""
        return self._hash({"warmup": self.warmup, "validation": self._validation_digest(), **self._gradients()})

    @cached_property
    def train(self) -> str:
        """Warmup, projection, train type, batch size, shard layout."""
        g = self.spec.gradients
        return self._hash(
            {"warmup": self.warmup, **self._gradients(), "train_type": g.train_type, "batch_size": g.batch_size,
             "shards": g.shards}
        )

    @cached_property
    def scores(self) -> str:
        return self._hash({"train": self.train, "validation": self.validation})

    @cached_property
    def selection(self) -> str:
        """The influence matrix the method reduced (gradient or distilled scores), selection section."""
        matrix = self.distilled_scores if self.spec.uses_distillation else self.scores
        return self._hash({"scores": matrix, "selection": self.spec.selection.model_dump(mode="json")})

    def distillation_epoch(self) -> int:
        """The checkpoint distillation uses for embeddings, landmark and validation gradients: the last."""
        return self.spec.warmup.epochs - 1

    def _embedding_inputs(self) -> dict[str, Any]:
        d = self.spec.distillation
        return {"warmup": self.warmup, "epoch": self.distillation_epoch(), "blocks": d.blocks,
                "tangents": d.tangents, "embed_dim": d.embed_dim, "seed": d.seed,
                "batch_size": self.spec.gradients.batch_size}

    def _landmark_inputs(self) -> dict[str, Any]:
        d = self.spec.distillation
        return {"warmup": self.warmup, "epoch": self.distillation_epoch(), "landmarks": d.landmarks,
                "seed": d.seed, "batch_size": self.spec.gradients.batch_size,
                "train_type": self.spec.gradients.train_type, **self._gradients()}

    @cached_property
    def embeddings(self) -> str:
        """Warmup, distillation checkpoint, JVP settings, batch size, shard layout."""
        return self._hash({"embeddings": self._embedding_inputs(), "shards": self.spec.gradients.shards})

    @cached_property
    def landmarks(self) -> str:
        """Warmup, distillation checkpoint, landmark draw, projection, train type, shard layout."""
        return self._hash({"landmarks": self._landmark_inputs(), "shards": self.spec.gradients.shards})

    @cached_property
    def distilled_scores(self) -> str:
        """Independent of the shard layout: distilled scores are the same whatever the sharding."""
        return self._hash(
            {"embeddings": self._embedding_inputs(), "landmarks": self._landmark_inputs(),
             "validation": self.validation, "ridge": self.spec.distillation.ridge}
        )


# --- the store -----------------------------------------------------------------------------------
def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


class ArtifactStore:
    """One run's artifacts: a store, a local scratch directory for downloads, and the manifests
    read so far (each is read once; committing through this object refreshes it)."""

    def __init__(self, store: storage.ObjectStore, scratch: str | Path):
        self.store = store
        self.scratch = Path(scratch)
        self._manifests: dict[str, storage.Manifest] = {}

    def uri(self, prefix: str, name: str | None = None) -> str:
        return self.store.uri_for(f"{prefix}/{name}" if name else prefix)

    def manifest(self, prefix: str) -> storage.Manifest | None:
        """The finished artifact's manifest (cached), or None while it is not finished."""
        manifest = self._manifests.get(prefix)
        if manifest is None:
            manifest = storage.read_manifest(self.store, prefix)
            if manifest is not None:
                self._manifests[prefix] = manifest
        return manifest

    def _required(self, prefix: str) -> storage.Manifest:
        manifest = self.manifest(prefix)
        if manifest is None:
            raise storage.ArtifactNotFound(f"{self.store.uri_for(prefix)}: artifact not finished")
        return manifest

    def is_done(self, prefix: str, fingerprint: str, *, replace_stale: bool = False) -> bool:
        """True when `prefix` is finished with this fingerprint; raise when finished with another.

        `replace_stale` is for cheap, derived artifacts (the selection) that a changed spec may
        simply recompute.
        """
        manifest = self.manifest(prefix)
        if manifest is None:
            return False
        found = manifest.metadata.get("fingerprint")
        if found == fingerprint:
            return True
        if replace_stale:
            return False
        raise StaleArtifactError(
            f"{self.store.uri_for(prefix)} was produced by a different spec "
            f"(fingerprint {str(found)[:12]}, expected {fingerprint[:12]}): a changed model, data, "
            "warmup or gradients section. Use a new storage.uri, or delete the old artifacts."
        )

    def metadata(self, prefix: str) -> dict[str, Any]:
        return dict(self._required(prefix).metadata)

    def checksums(self, prefix: str) -> dict[str, str]:
        return {name: entry.sha256 for name, entry in self._required(prefix).files.items()}

    def commit(self, prefix: str, files: Mapping[str, bytes | Path], metadata: Mapping[str, Any]) -> None:
        self._manifests.pop(prefix, None)
        storage.commit_artifact(self.store, prefix, dict(files), dict(metadata))

    def fetch(self, prefix: str) -> Path:
        """A verified local copy of the artifact's files (reused when already downloaded)."""
        target = self.scratch / prefix
        done = target / ".fetched"
        if done.exists():
            return target
        if target.exists():
            shutil.rmtree(target)
        storage.fetch_artifact(self.store, prefix, target, manifest=self._required(prefix))
        done.write_text("ok\n")
        return target

    def load_array(self, prefix: str, name: str, *, mmap: bool = True) -> np.ndarray:
        """Download (verified) to scratch once, then memory-map."""
        local = self.fetch(prefix) / name
        return np.load(local, mmap_mode="r" if mmap else None, allow_pickle=False)

    def load_json(self, prefix: str, name: str) -> Any:
        return json.loads(storage.read_artifact_file(self.store, prefix, name, manifest=self._required(prefix)))


# --- the kinds -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArtifactKind(Generic[M]):
    """One artifact kind: path template, files, metadata type, and the fingerprint it carries.

    template: the key prefix, formatted with the kind's coordinates (epoch, shard, shards).
    fingerprint: which of `Fingerprints` a finished artifact must carry.
    replace_stale: a finished artifact with another fingerprint is recomputed, not refused
        (cheap kinds derived only from fingerprinted artifacts).
    """

    name: str
    template: str
    files: tuple[str, ...]
    metadata_type: type[M]
    fingerprint: Callable[[Fingerprints], str]
    replace_stale: bool = False

    def prefix(self, **where: int) -> str:
        fields: dict[str, int | str] = dict(where)
        if "shard" in where:
            fields["shard_name"] = shard_name(where["shard"], where["shards"])
        return self.template.format(**fields)

    def exists(self, store: ArtifactStore, fingerprints: Fingerprints, **where: int) -> bool:
        """Finished with the current inputs (StaleArtifactError when finished with others)."""
        return store.is_done(self.prefix(**where), self.fingerprint(fingerprints), replace_stale=self.replace_stale)

    def require(self, store: ArtifactStore, fingerprints: Fingerprints, what: str, **where: int) -> M:
        """The metadata of a finished, current artifact that a later stage reads."""
        prefix = self.prefix(**where)
        if not store.is_done(prefix, self.fingerprint(fingerprints)):
            raise StaleArtifactError(f"{store.uri(prefix)}: {what} not finished")
        return self.metadata(store, **where)

    def metadata(self, store: ArtifactStore, **where: int) -> M:
        prefix = self.prefix(**where)
        return self.metadata_type.from_json(store.metadata(prefix), store.uri(prefix))

    def checksum(self, store: ArtifactStore, name: str, **where: int) -> str:
        return store.checksums(self.prefix(**where))[name]

    def uri(self, store: ArtifactStore, name: str | None = None, **where: int) -> str:
        return store.uri(self.prefix(**where), name)

    def _check(self, names: Sequence[str], metadata: Metadata) -> None:
        if set(names) != set(self.files) or not isinstance(metadata, self.metadata_type):
            raise ValueError(f"{self.name}: expected files {self.files} with {self.metadata_type.__name__}")

    def save_arrays(self, store: ArtifactStore, arrays: Mapping[str, np.ndarray], metadata: M, **where: int) -> None:
        self._check(list(arrays), metadata)
        store.commit(self.prefix(**where), {n: npy_bytes(a) for n, a in arrays.items()}, metadata.to_json())

    def save_directory(self, store: ArtifactStore, directory: Path, metadata: M, **where: int) -> None:
        """Commit every file below `directory` (a checkpoint keeps its own file set: `files` is empty)."""
        files = {p.relative_to(directory).as_posix(): p for p in sorted(directory.rglob("*")) if p.is_file()}
        if self.files:
            self._check(list(files), metadata)
        store.commit(self.prefix(**where), files, metadata.to_json())

    def save_documents(self, store: ArtifactStore, files: Mapping[str, Any], metadata: M, **where: int) -> None:
        """Commit JSON documents (bytes are written as they are)."""
        self._check(list(files), metadata)
        payload = {
            name: value if isinstance(value, bytes) else (json.dumps(value, indent=2) + "\n").encode()
            for name, value in files.items()
        }
        store.commit(self.prefix(**where), payload, metadata.to_json())

    def fetch(self, store: ArtifactStore, **where: int) -> Path:
        return store.fetch(self.prefix(**where))

    def load_array(self, store: ArtifactStore, name: str, *, mmap: bool = True, **where: int) -> np.ndarray:
        return store.load_array(self.prefix(**where), name, mmap=mmap)

    def load_json(self, store: ArtifactStore, name: str, **where: int) -> Any:
        return store.load_json(self.prefix(**where), name)


WARMUP_CHECKPOINT = ArtifactKind(
    "warmup checkpoint", "warmup/checkpoint-{epoch:03d}", (), CheckpointMetadata, lambda f: f.warmup
)
VALIDATION_FEATURES = ArtifactKind(
    "validation features", "features/validation/checkpoint-{epoch:03d}", (FEATURES_FILE,),
    ValidationFeaturesMetadata, lambda f: f.validation,
)
TRAIN_FEATURES = ArtifactKind(
    "train features", "features/train/checkpoint-{epoch:03d}/{shard_name}", (FEATURES_FILE,),
    TrainFeaturesMetadata, lambda f: f.train,
)
SCORES = ArtifactKind("scores", "scores/{shard_name}", (SCORES_FILE,), ScoresMetadata, lambda f: f.scores)
# Influence distillation: under features/ and scores/ like the gradient artifacts, so the
# artifact URIs reported in the resource status cover them too.
EMBEDDINGS = ArtifactKind(  # JVP embeddings of the shard's rows, (rows, E) float32
    "embeddings", "features/embeddings/{shard_name}", (EMBEDDINGS_FILE,), EmbeddingsMetadata,
    lambda f: f.embeddings,
)
LANDMARK_FEATURES = ArtifactKind(  # the shard's landmark slice: fp16 unit rows and their pool indices
    "landmark features", "features/landmarks/checkpoint-{epoch:03d}/{shard_name}",
    (FEATURES_FILE, LANDMARKS_FILE), LandmarkFeaturesMetadata, lambda f: f.landmarks,
)
DISTILLED_SCORES = ArtifactKind(  # p_hat (N x M float32) and p_L (L x M) beside it
    "distilled scores", DISTILLED_SCORES_PREFIX, (SCORES_FILE, LANDMARK_SCORES_FILE), DistilledScoresMetadata,
    lambda f: f.distilled_scores, replace_stale=True,
)
SELECTION = ArtifactKind(
    "selection", SELECTION_PREFIX, (SELECTION_FILE, SUBSET_FILE), SelectionMetadata,
    lambda f: f.selection, replace_stale=True,
)
KINDS = (
    WARMUP_CHECKPOINT, VALIDATION_FEATURES, TRAIN_FEATURES, SCORES, EMBEDDINGS, LANDMARK_FEATURES,
    DISTILLED_SCORES, SELECTION,
)


def status_layout(root: str) -> dict[str, str]:
    """The artifact URIs a DataSelection's status reports, for a store rooted at `root`."""
    return {
        "root": root,
        "checkpoints": f"{root}/warmup",
        "features": f"{root}/features",
        "scores": f"{root}/scores",
        "selection": f"{root}/{SELECTION_PREFIX}/{SELECTION_FILE}",
        "subset": f"{root}/{SELECTION_PREFIX}/{SUBSET_FILE}",
    }
