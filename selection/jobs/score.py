"""Stage 3: the attribution-matrix rows of one shard (docs/algorithms.md §7)."""

from __future__ import annotations

from selection import artifacts
from selection.influence import attribution_rows, checkpoint_weights
from selection.jobs import runner
from selection.jobs.context import StageContext


def run(ctx: StageContext, shard: int) -> None:
    g = ctx.spec.gradients
    store, fingerprint = ctx.artifacts, ctx.scores_fingerprint
    prefix = artifacts.scores_prefix(shard, g.shards)
    if store.is_done(prefix, fingerprint):
        return
    rates = [store.metadata(artifacts.checkpoint_prefix(e))["mean_lr"] for e in ctx.epochs]
    train = [
        store.load_array(artifacts.train_features_prefix(e, shard, g.shards), artifacts.FEATURES_FILE)
        for e in ctx.epochs
    ]
    validation = [
        store.load_array(artifacts.validation_features_prefix(e), artifacts.FEATURES_FILE) for e in ctx.epochs
    ]
    rows = ctx.shard_range(shard)
    scores = attribution_rows(train, validation, checkpoint_weights(rates))
    store.save_arrays(
        prefix,
        {artifacts.SCORES_FILE: scores},
        {"fingerprint": fingerprint, "start": rows.start, "stop": rows.stop, "columns": scores.shape[1]},
    )


def main(argv: list[str] | None = None) -> int:
    return runner.run_stage("score", lambda ctx: run(ctx, ctx.args.required_shard("score")), argv)


if __name__ == "__main__":
    raise SystemExit(main())
