"""Flat memory: the traced peak allocation of extraction, scoring and gathering the scores does not
grow with the pool beyond a small fraction of what the stage writes (issue 14 item 2).

Each stage runs on a pool of N and of 4N examples; tracemalloc sees numpy's buffers (and every
Python object), not torch's tensors, so the peak measures the arrays a stage holds. Before the
outputs were streamed to disk, extraction held the whole shard plus two copies for saving (about
3x its output), scoring likewise, and gathering concatenated the shards in memory; these bounds
reject all three.
"""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from selection import artifacts, influence
from selection.artifacts import SCORES, TRAIN_FEATURES, VALIDATION_FEATURES, WARMUP_CHECKPOINT
from selection.contract import JobArgs, StorageLocation
from selection.jobs import extract, score, warmup
from selection.jobs.context import StageContext
from selection.reduce import matrix as reduce_matrix

from tests.jobs.conftest import DEMO_DIR, demo_resource

pytestmark = pytest.mark.slow
TRAIN_LINES = (DEMO_DIR / "train.jsonl").read_text().splitlines(keepends=True)
# Memory growth from N to 4N allowed per byte of output growth, plus a fixed slack for
# bookkeeping: what grows with N besides the output is the shard's tokenized examples
# (~1 KB each against 16 KB of features per row) and the row indices of the shard.
GROWTH_PER_OUTPUT_BYTE = 0.15
SLACK_BYTES = 64 * 1024


def measured(run) -> int:
    """Peak traced bytes above the start while `run()` runs."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        run()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def context(tmp_path: Path, rows: int, lines: list[str], **overrides) -> StageContext:
    pool = tmp_path / f"pool-{rows}.jsonl"
    pool.write_text("".join(lines[i % len(lines)] for i in range(rows)))
    resource = demo_resource(**{"data.train": str(pool), "warmup.epochs": 1, **overrides})
    return StageContext(
        JobArgs(resource=resource, storage=StorageLocation(str(tmp_path / f"store-{rows}")), base_dir=str(DEMO_DIR)),
        scratch_root=tmp_path / f"scratch-{rows}",
    )


def assert_flat(stage: str, small: tuple[int, int], large: tuple[int, int], n: int) -> None:
    (peak_n, out_n), (peak_4n, out_4n) = small, large
    print(f"{stage}: peak traced {peak_n:,} B at N={n}, {peak_4n:,} B at 4N (writes {out_n:,} B / {out_4n:,} B)")
    assert out_4n > 3 * out_n  # the output did grow with the pool
    assert peak_4n - peak_n <= GROWTH_PER_OUTPUT_BYTE * (out_4n - out_n) + SLACK_BYTES, (
        f"{stage}: peak memory grew by {peak_4n - peak_n:,} B from N to 4N while its output grew by "
        f"{out_4n - out_n:,} B"
    )


def extraction_peak(tmp_path: Path, rows: int) -> tuple[int, int]:
    """(peak traced bytes, bytes written) of extracting a one-shard pool of `rows` demo lines."""
    ctx = context(tmp_path, rows, TRAIN_LINES[:rows], **{
        "gradients.shards": 1, "gradients.projectionDim": 8192, "gradients.projection": "countsketch",
        "warmup.lora.r": 16,  # 14,336 LoRA parameters: enough for 8192 projected dimensions
    })
    try:
        warmup.run(ctx)
        assert ctx.train_examples  # the pool is the stage's input, read before measuring
        peak = measured(lambda: extract.run(ctx, 0))
        local = ctx.artifacts.scratch / TRAIN_FEATURES.prefix(epoch=0, shard=0, shards=1)
        return peak, (local / artifacts.FEATURES_FILE).stat().st_size
    finally:
        ctx.close()


def test_extraction_peak_memory_does_not_grow_with_the_pool(tmp_path):
    n = 64
    assert_flat("extract", extraction_peak(tmp_path, n), extraction_peak(tmp_path, 4 * n), n)


def commit_inputs(ctx: StageContext, dim: int, columns: int) -> None:
    """Seeded unit features of every shard, validation features and a checkpoint manifest."""
    rng = np.random.default_rng(0)
    store, f, g = ctx.artifacts, ctx.fingerprints, ctx.spec.gradients

    def unit(rows: int) -> np.ndarray:
        x = rng.standard_normal((rows, dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)

    directory = ctx.scratch / "checkpoint"
    directory.mkdir()
    (directory / "state.json").write_text("{}")
    WARMUP_CHECKPOINT.save_directory(
        store, directory, artifacts.CheckpointMetadata(fingerprint=f.warmup, epoch=0, step=1, mean_lr=1e-3,
                                                       warmup_examples=1), epoch=0,
    )
    VALIDATION_FEATURES.save_arrays(
        store, {artifacts.FEATURES_FILE: unit(columns)},
        artifacts.ValidationFeaturesMetadata(fingerprint=f.validation, epoch=0, rows=columns, tasks=["t"] * columns),
        epoch=0,
    )
    for shard in range(g.shards):
        rows = ctx.shard_range(shard)
        features = unit(rows.stop - rows.start)
        TRAIN_FEATURES.save_arrays(
            store, {artifacts.FEATURES_FILE: features, artifacts.FEATURE_SUM_FILE: features.sum(0, dtype=np.float64)},
            artifacts.TrainFeaturesMetadata(fingerprint=f.train, epoch=0, start=rows.start, stop=rows.stop),
            epoch=0, shard=shard, shards=g.shards,
        )


def scoring_peaks(tmp_path: Path, rows: int) -> dict[str, tuple[int, int]]:
    """(peak traced bytes, bytes written) of scoring shard 0 of 2 and of gathering both shards."""
    ctx = context(tmp_path, rows, TRAIN_LINES, **{"gradients.shards": 2})
    try:
        commit_inputs(ctx, dim=64, columns=256)
        assert ctx.train_examples
        peaks = {"score": measured(lambda: score.run(ctx, 0))}
        score.run(ctx, 1)
        peaks["gather"] = measured(lambda: score.gather(ctx))
        written = (ctx.artifacts.scratch / SCORES.prefix(shard=0, shards=2) / artifacts.SCORES_FILE).stat().st_size
        return {"score": (peaks["score"], written),
                "gather": (peaks["gather"], (ctx.scratch / "scores-all.npy").stat().st_size)}
    finally:
        ctx.close()


def test_scoring_and_gathering_peak_memory_does_not_grow_with_the_pool(tmp_path, monkeypatch):
    # Blocks of 64 rows stand in for the 8192 of a real pool, so a small pool spans many blocks.
    monkeypatch.setattr(influence, "ROW_BLOCK", 64)
    monkeypatch.setattr(reduce_matrix, "ASSEMBLY_ROWS", 64)
    n = 2048  # outputs of MBs: above the 1 MiB chunks in which the store copies and hashes files
    small, large = scoring_peaks(tmp_path, n), scoring_peaks(tmp_path, 4 * n)
    for stage in small:
        assert_flat(stage, small[stage], large[stage], n)
