"""Where each artifact lives, how it is saved and loaded, and whether it is finished.

An artifact is a key prefix in the store with a manifest written last (see `selection.storage`),
so a half-written one never counts as done. Each manifest records the fingerprint of the
inputs that produced it; finding a finished artifact with another fingerprint is refused
rather than mixed into a new run.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from selection import storage

SELECTION_FILE = "selection.json"
SUBSET_FILE = "selected.jsonl"


class StaleArtifactError(RuntimeError):
    """A finished artifact exists but was produced from different inputs."""


def checkpoint_prefix(epoch: int) -> str:
    return f"warmup/checkpoint-{epoch:03d}"


def validation_features_prefix(epoch: int) -> str:
    return f"features/validation/checkpoint-{epoch:03d}"


def shard_name(shard: int, shards: int) -> str:
    return f"shard-{shard:05d}-of-{shards:05d}"


def train_features_prefix(epoch: int, shard: int, shards: int) -> str:
    return f"features/train/checkpoint-{epoch:03d}/{shard_name(shard, shards)}"


def scores_prefix(shard: int, shards: int) -> str:
    return f"scores/{shard_name(shard, shards)}"


SELECTION_PREFIX = "selection"
FEATURES_FILE = "features.npy"
SCORES_FILE = "scores.npy"


# Influence distillation (selection.jobs.distill). Under features/ and scores/ like the gradient
# artifacts, so the artifact URIs reported in the resource status cover them too.
def embeddings_prefix(shard: int, shards: int) -> str:
    """JVP embeddings of the shard's rows: EMBEDDINGS_FILE, (rows, E) float32."""
    return f"features/embeddings/{shard_name(shard, shards)}"


def landmark_features_prefix(epoch: int, shard: int, shards: int) -> str:
    """Projected Adam-aware gradient features of the shard's slice of the landmarks: FEATURES_FILE
    (fp16 unit rows) and LANDMARKS_FILE (their pool indices)."""
    return f"features/landmarks/checkpoint-{epoch:03d}/{shard_name(shard, shards)}"


DISTILLED_SCORES_PREFIX = "scores/distilled"  # SCORES_FILE (N x M float32) and LANDMARK_SCORES_FILE
EMBEDDINGS_FILE = "embeddings.npy"
LANDMARKS_FILE = "landmarks.npy"
LANDMARK_SCORES_FILE = "landmark-scores.npy"


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


class ArtifactStore:
    """Typed access to one run's artifacts: a store plus a local scratch directory for downloads."""

    def __init__(self, store: storage.ObjectStore, scratch: str | Path):
        self.store = store
        self.scratch = Path(scratch)

    def uri(self, prefix: str, name: str | None = None) -> str:
        return self.store.uri_for(f"{prefix}/{name}" if name else prefix)

    def is_done(self, prefix: str, fingerprint: str, *, replace_stale: bool = False) -> bool:
        """True when `prefix` is finished with this fingerprint; raise when finished with another.

        `replace_stale` is for cheap, final artifacts (the selection) that a changed spec may
        simply recompute.
        """
        manifest = storage.read_manifest(self.store, prefix)
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
        manifest = storage.read_manifest(self.store, prefix)
        if manifest is None:
            raise storage.ArtifactNotFound(f"{self.store.uri_for(prefix)}: artifact not finished")
        return dict(manifest.metadata)

    def checksums(self, prefix: str) -> dict[str, str]:
        manifest = storage.read_manifest(self.store, prefix)
        if manifest is None:
            raise storage.ArtifactNotFound(f"{self.store.uri_for(prefix)}: artifact not finished")
        return {name: entry.sha256 for name, entry in manifest.files.items()}

    def save_arrays(self, prefix: str, arrays: Mapping[str, np.ndarray], metadata: dict[str, Any]) -> None:
        storage.commit_artifact(self.store, prefix, {n: npy_bytes(a) for n, a in arrays.items()}, metadata)

    def load_array(self, prefix: str, name: str, *, mmap: bool = True) -> np.ndarray:
        """Download (verified) to scratch once, then memory-map."""
        local = self.fetch(prefix) / name
        return np.load(local, mmap_mode="r" if mmap else None, allow_pickle=False)

    def save_directory(self, prefix: str, directory: Path, metadata: dict[str, Any]) -> None:
        files = {p.relative_to(directory).as_posix(): p for p in sorted(directory.rglob("*")) if p.is_file()}
        storage.commit_artifact(self.store, prefix, files, metadata)

    def fetch(self, prefix: str) -> Path:
        """A verified local copy of the artifact's files (reused when already downloaded)."""
        target = self.scratch / prefix
        done = target / ".fetched"
        if done.exists():
            return target
        if target.exists():
            shutil.rmtree(target)
        storage.fetch_artifact(self.store, prefix, target)
        done.write_text("ok\n")
        return target

    def save_json_files(self, prefix: str, files: Mapping[str, Any], metadata: dict[str, Any]) -> None:
        payload = {}
        for name, value in files.items():
            payload[name] = value if isinstance(value, bytes) else (json.dumps(value, indent=2) + "\n").encode()
        storage.commit_artifact(self.store, prefix, payload, metadata)

    def load_json(self, prefix: str, name: str) -> Any:
        return json.loads(storage.read_artifact_file(self.store, prefix, name))
