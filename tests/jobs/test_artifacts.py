"""Artifact declarations: typed metadata round trips, and each manifest is read once (one GET on S3)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from selection import artifacts, storage
from selection.artifacts import SCORES, ArtifactStore
from selection.jobs import score
from selection.contract import JobArgs, StorageLocation
from selection.jobs.context import StageContext

from tests.jobs.conftest import DEMO_DIR, demo_resource


class CountingStore:
    """An ObjectStore that counts the reads of each key and passes everything on."""

    def __init__(self, inner: storage.ObjectStore):
        self.inner = inner
        self.reads: Counter[str] = Counter()

    def get_bytes(self, key: str) -> bytes:
        self.reads[key] += 1
        return self.inner.get_bytes(key)

    def get_file(self, key: str, path) -> None:
        self.reads[key] += 1
        self.inner.get_file(key, path)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture
def ctx(tmp_path):
    shards = 3
    context = StageContext(
        JobArgs(resource=demo_resource(**{"gradients.shards": shards}), storage=StorageLocation(str(tmp_path / "store")),
                base_dir=str(DEMO_DIR)),
        scratch_root=tmp_path / "scratch",
    )
    counting = CountingStore(storage.open_store(str(tmp_path / "store")))
    context.__dict__["artifacts"] = ArtifactStore(counting, tmp_path / "scratch" / "artifacts")
    yield context
    context.close()


def commit_scores(ctx: StageContext) -> np.ndarray:
    """Score shards of the pool's row layout, filled with seeded numbers; returns the whole matrix."""
    g = ctx.spec.gradients
    pool = len(ctx.train_examples)
    matrix = np.random.default_rng(0).standard_normal((pool, 4)).astype(np.float32)
    for shard in range(g.shards):
        rows = ctx.shard_range(shard)
        SCORES.save_arrays(
            ctx.artifacts,
            {artifacts.SCORES_FILE: matrix[rows.start : rows.stop]},
            artifacts.ScoresMetadata(fingerprint=ctx.fingerprints.scores, start=rows.start, stop=rows.stop, columns=4),
            shard=shard, shards=g.shards,
        )
    return matrix


def test_gathering_the_scores_reads_each_manifest_once(ctx):
    expected = commit_scores(ctx)
    store = ctx.artifacts.store
    fresh = ArtifactStore(store, ctx.scratch / "fresh")  # nothing cached from the commits
    ctx.__dict__["artifacts"] = fresh
    store.reads.clear()
    matrix, checksums = score.gather(ctx)
    np.testing.assert_array_equal(np.asarray(matrix), expected)
    g = ctx.spec.gradients
    prefixes = [SCORES.prefix(shard=s, shards=g.shards) for s in range(g.shards)]
    assert sorted(checksums) == sorted(prefixes)
    for prefix in prefixes:
        assert store.reads[f"{prefix}/{storage.MANIFEST_NAME}"] == 1
        assert store.reads[f"{prefix}/{artifacts.SCORES_FILE}"] == 1


def test_metadata_round_trips_with_its_json_keys(ctx):
    commit_scores(ctx)
    meta = SCORES.metadata(ctx.artifacts, shard=1, shards=3)
    rows = ctx.shard_range(1)
    assert meta == artifacts.ScoresMetadata(
        fingerprint=ctx.fingerprints.scores, start=rows.start, stop=rows.stop, columns=4
    )
    distilled = artifacts.DistilledScoresMetadata(
        fingerprint="f", epoch=1, rows=3, columns=2, landmarks=2, sigma=0.5, ridge=0.01, embedding_dim=8, blocks=2
    )
    document = distilled.to_json()
    assert document["lambda"] == 0.01 and "ridge" not in document
    assert artifacts.DistilledScoresMetadata.from_json(document, "here") == distilled
    with pytest.raises(storage.CorruptArtifact, match="'lambda'"):
        artifacts.DistilledScoresMetadata.from_json({k: v for k, v in document.items() if k != "lambda"}, "here")


def test_a_kind_refuses_files_it_does_not_declare(ctx):
    meta = artifacts.ScoresMetadata(fingerprint="f", start=0, stop=1, columns=1)
    with pytest.raises(ValueError, match="expected files"):
        SCORES.save_arrays(ctx.artifacts, {"other.npy": np.zeros((1, 1))}, meta, shard=0, shards=3)


def test_layout_of_each_kind():
    assert artifacts.TRAIN_FEATURES.prefix(epoch=2, shard=1, shards=4) == (
        "features/train/checkpoint-002/shard-00001-of-00004"
    )
    assert artifacts.WARMUP_CHECKPOINT.prefix(epoch=0) == "warmup/checkpoint-000"
    assert artifacts.LANDMARK_FEATURES.prefix(epoch=1, shard=0, shards=1) == (
        "features/landmarks/checkpoint-001/shard-00000-of-00001"
    )
    assert artifacts.EMBEDDINGS.prefix(shard=0, shards=2) == "features/embeddings/shard-00000-of-00002"
    assert artifacts.SCORES.prefix(shard=3, shards=4) == "scores/shard-00003-of-00004"
    assert artifacts.DISTILLED_SCORES.prefix() == "scores/distilled"
    assert artifacts.SELECTION.prefix() == "selection"
    root = "s3://bucket/run"
    assert artifacts.status_layout(root)["selection"] == f"{root}/selection/selection.json"
