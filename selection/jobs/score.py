"""Stage 3: the attribution-matrix rows of one shard (docs/algorithms.md §7)."""

from __future__ import annotations

import shutil

import numpy as np

from selection import artifacts
from selection.artifacts import SCORES, TRAIN_FEATURES, VALIDATION_FEATURES, WARMUP_CHECKPOINT
from selection.influence import attribution_rows, checkpoint_weights
from selection.jobs import runner
from selection.jobs.context import StageContext
from selection.reduce import load_matrix


def run(ctx: StageContext, shard: int) -> None:
    g = ctx.spec.gradients
    store, fingerprints = ctx.artifacts, ctx.fingerprints
    if SCORES.exists(store, fingerprints, shard=shard, shards=g.shards):
        return
    rates = [WARMUP_CHECKPOINT.metadata(store, epoch=e).mean_lr for e in ctx.epochs]
    train = [
        TRAIN_FEATURES.load_array(store, artifacts.FEATURES_FILE, epoch=e, shard=shard, shards=g.shards)
        for e in ctx.epochs
    ]
    validation = [VALIDATION_FEATURES.load_array(store, artifacts.FEATURES_FILE, epoch=e) for e in ctx.epochs]
    rows = ctx.shard_range(shard)
    scores = attribution_rows(train, validation, checkpoint_weights(rates))
    SCORES.save_arrays(
        store,
        {artifacts.SCORES_FILE: scores},
        artifacts.ScoresMetadata(
            fingerprint=fingerprints.scores, start=rows.start, stop=rows.stop, columns=scores.shape[1]
        ),
        shard=shard, shards=g.shards,
    )


def gather(ctx: StageContext) -> tuple[np.ndarray, dict[str, str]]:
    """The finished score shards as one memory-mapped matrix in row order, and their checksums.

    Each shard's manifest is read once (a GET on S3) for the check, the download and the checksum.
    """
    g = ctx.spec.gradients
    store = ctx.artifacts
    directory = ctx.scratch / "scores-all"
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    checksums = {}
    for shard in range(g.shards):
        where = dict(shard=shard, shards=g.shards)
        SCORES.require(ctx.artifacts, ctx.fingerprints, f"scores of shard {shard}", **where)
        local = SCORES.fetch(store, **where) / artifacts.SCORES_FILE
        (directory / f"{artifacts.shard_name(shard, g.shards)}.npy").symlink_to(local.resolve())
        checksums[SCORES.prefix(**where)] = SCORES.checksum(store, artifacts.SCORES_FILE, **where)
    return load_matrix(directory), checksums


def main(argv: list[str] | None = None) -> int:
    return runner.run_stage("score", lambda ctx: run(ctx, ctx.args.required_shard("score")), argv)


if __name__ == "__main__":
    raise SystemExit(main())
