"""Influence distillation end to end on the demo: `dsel run`, the Job entrypoints, shard layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from selection import artifacts, storage
from selection.contract import JobArgs, StorageLocation
from selection.jobs.__main__ import main as jobs_main
from selection.local import run_selection

from tests.jobs.conftest import DEMO_DIR, demo_resource
from tests.support.models import one_thread  # noqa: F401  (autouse)

pytestmark = pytest.mark.slow
TRAIN_LINES = (DEMO_DIR / "train.jsonl").read_text().splitlines()
DISTILLED = {"selection.method": "influence-distillation", "distillation.landmarks": 64}


def manifests(store, prefix: str) -> dict[str, bytes]:
    return {k: store.get_bytes(k) for k in store.list_keys(prefix) if k.endswith("MANIFEST.json")}


def distilled_scores(store_dir) -> np.ndarray:
    store = artifacts.ArtifactStore(storage.open_store(str(store_dir)), store_dir.parent / "scratch")
    return np.array(store.load_array(artifacts.DISTILLED_SCORES_PREFIX, artifacts.SCORES_FILE))


@pytest.fixture(scope="module")
def three_shard_run(tmp_path_factory):
    """`dsel run`'s executor on the demo with 3 shards, as a newcomer runs it."""
    root = tmp_path_factory.mktemp("distill3")
    document = run_selection(
        demo_resource(**DISTILLED), storage_uri=str(root / "store"), base_dir=DEMO_DIR, progress=False
    )
    return root, document


def test_selects_the_budget_without_full_extraction(three_shard_run):
    root, document = three_shard_run
    indices = document["indices"]
    assert document["method"] == "influence-distillation" and document["budget"] == 45
    assert len(indices) == 45 and len(set(indices)) == 45 and all(0 <= i < 300 for i in indices)
    assert sum(document["composition"].values()) == 45
    assert document["parameters"] == {"method": "influence-distillation", "seed": 0}
    influence = document["influence"]
    assert influence["kind"] == "distilled" and influence["landmarks"] == 64
    assert influence["blocks"] == 2 and influence["embeddingDim"] == 128  # 2-layer model: capped; 2 x hidden 64
    assert influence["checkpoint"] == 1 and influence["lambda"] == pytest.approx(1e-2) and influence["sigma"] > 0
    assert list(document["inputs"]) == [artifacts.DISTILLED_SCORES_PREFIX]
    store = storage.open_store(str(root / "store"))
    assert not store.list_keys("features/train") and not store.list_keys("scores/shard-")  # no full extraction
    assert len(manifests(store, "features/embeddings")) == 3
    assert len(manifests(store, "features/landmarks")) == 3
    assert "features/validation/checkpoint-001/MANIFEST.json" in manifests(store, "features/validation")
    subset = (root / "store" / "selection" / "selected.jsonl").read_text().splitlines()
    assert subset == [TRAIN_LINES[i] for i in indices]
    scores = distilled_scores(root / "store")
    assert scores.shape == (300, 20) and scores.dtype == np.float32 and np.isfinite(scores).all()


def test_job_entrypoints_with_one_shard_give_the_same_scores_and_selection(three_shard_run, tmp_path):
    """The operator's flow (warmup, each Indexed Job completion, reduce) with another layout."""
    root, three = three_shard_run
    args = JobArgs(
        resource=demo_resource(**{**DISTILLED, "gradients.shards": 1}),
        storage=StorageLocation(str(tmp_path / "store")), base_dir=str(DEMO_DIR),
    ).to_document()
    assert jobs_main(["warmup", json.dumps(args)]) == 0
    assert jobs_main(["shard", json.dumps({**args, "shard": 0})]) == 0
    assert jobs_main(["reduce", json.dumps(args)]) == 0
    one = json.loads((tmp_path / "store" / "selection" / "selection.json").read_text())
    assert one["indices"] == three["indices"]
    assert one["composition"] == three["composition"]
    np.testing.assert_array_equal(distilled_scores(tmp_path / "store"), distilled_scores(root / "store"))


def test_bids_on_the_distilled_matrix_reuses_it(three_shard_run):
    root, _ = three_shard_run
    store = storage.open_store(str(root / "store"))
    before = manifests(store, "features") | manifests(store, "scores")
    document = run_selection(
        demo_resource(**{**DISTILLED, "selection.method": "bids", "selection.influence": "distilled"}),
        storage_uri=str(root / "store"), base_dir=DEMO_DIR, progress=False,
    )
    assert document["method"] == "bids" and len(set(document["indices"])) == 45
    assert document["influence"]["kind"] == "distilled"
    assert manifests(store, "features") | manifests(store, "scores") == before  # nothing recomputed


def test_changed_ridge_recomputes_only_the_propagation(three_shard_run):
    root, first = three_shard_run
    store = storage.open_store(str(root / "store"))
    features = manifests(store, "features")
    scores = manifests(store, "scores")
    document = run_selection(
        demo_resource(**{**DISTILLED, "distillation.ridge": 0.5}), storage_uri=str(root / "store"),
        base_dir=DEMO_DIR, progress=False,
    )
    assert document["influence"]["lambda"] == pytest.approx(0.5)
    assert manifests(store, "features") == features
    assert manifests(store, "scores") != scores
    assert len(set(document["indices"])) == 45


def test_changed_landmark_count_is_refused_not_mixed(three_shard_run):
    root, _ = three_shard_run
    with pytest.raises(artifacts.StaleArtifactError, match="produced by a different spec"):
        run_selection(
            demo_resource(**{**DISTILLED, "distillation.landmarks": 32}), storage_uri=str(root / "store"),
            base_dir=DEMO_DIR, progress=False,
        )
