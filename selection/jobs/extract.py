"""Stage 2: per-example gradient features of one training shard, for every warmup checkpoint.

Validation features (plain gradients) are computed once per checkpoint and shared by all
shards; any shard that finds them missing computes them, and identical commits are harmless.
"""

from __future__ import annotations

from typing import Callable

from selection import artifacts
from selection.jobs import runner
from selection.jobs.context import StageContext


def _feature_model(ctx: StageContext):
    """The base model wrapped with LoRA of the warmup's shape (weights come per checkpoint)."""
    from selection import warmup

    model, tokenizer = ctx.load_model()
    return warmup.attach_lora(model, ctx.spec.warmup.lora, ctx.spec.warmup.seed), tokenizer


def _projector(ctx: StageContext, model):
    from selection.gradients.features import lora_dim
    from selection.gradients.projection import make_projector

    g = ctx.spec.gradients
    return make_projector(g.projection, lora_dim(model), g.projection_dim, g.seed)


def _checkpoint(ctx: StageContext, epoch: int):
    from selection import warmup

    return warmup.load_checkpoint(ctx.artifacts.fetch(artifacts.checkpoint_prefix(epoch)))


def ensure_validation_features(
    ctx: StageContext, model=None, tokenizer=None, progress=None, epochs: list[int] | None = None
) -> None:
    """Plain validation features of `epochs` (default: every checkpoint) that are not finished.

    With distillation only the last checkpoint is used (`ctx.validation_epochs` says which).
    """
    from selection import warmup
    from selection.gradients.features import compute_features, default_extractor

    store, fingerprint = ctx.artifacts, ctx.validation_fingerprint
    wanted = ctx.validation_epochs if epochs is None else epochs
    todo = [e for e in wanted if not store.is_done(artifacts.validation_features_prefix(e), fingerprint)]
    if not todo:
        return
    if model is None:
        model, tokenizer = _feature_model(ctx)
    examples = ctx.tokenize(tokenizer, ctx.validation_examples)
    projector = _projector(ctx, model)
    for epoch in todo:
        warmup.apply_adapter(model, _checkpoint(ctx, epoch))
        features = compute_features(
            model, examples, extractor=default_extractor(), projector=projector, precondition=None,
            batch_size=ctx.spec.gradients.batch_size, pad_token_id=tokenizer.pad_token_id, progress=progress,
        )
        store.save_arrays(
            artifacts.validation_features_prefix(epoch),
            {artifacts.FEATURES_FILE: features},
            {"fingerprint": fingerprint, "epoch": epoch, "rows": len(examples),
             "tasks": [e.task for e in ctx.validation_examples]},
        )


def run(ctx: StageContext, shard: int, progress: Callable[[int], None] | None = None) -> None:
    """Features of shard `shard` for every checkpoint; finished (checkpoint, shard) pairs are skipped."""
    from selection import warmup
    from selection.gradients.features import compute_features, default_extractor, training_transform

    g = ctx.spec.gradients
    store, fingerprint = ctx.artifacts, ctx.train_fingerprint
    rows = ctx.shard_range(shard)
    todo = [
        e for e in ctx.epochs
        if not store.is_done(artifacts.train_features_prefix(e, shard, g.shards), fingerprint)
    ]
    if not todo:
        ensure_validation_features(ctx)
        return
    model, tokenizer = _feature_model(ctx)
    ensure_validation_features(ctx, model, tokenizer)
    examples = ctx.tokenize(tokenizer, ctx.train_examples[rows.start : rows.stop])
    projector = _projector(ctx, model)
    for epoch in todo:
        checkpoint = _checkpoint(ctx, epoch)
        warmup.apply_adapter(model, checkpoint)
        precondition, transformed = training_transform(g.train_type, checkpoint, ctx.spec.warmup, projector)
        features = compute_features(
            model, examples, extractor=default_extractor(), projector=transformed, precondition=precondition,
            batch_size=g.batch_size, pad_token_id=tokenizer.pad_token_id, progress=progress,
        )
        store.save_arrays(
            artifacts.train_features_prefix(epoch, shard, g.shards),
            {artifacts.FEATURES_FILE: features},
            {"fingerprint": fingerprint, "epoch": epoch, "start": rows.start, "stop": rows.stop},
        )


def main(argv: list[str] | None = None) -> int:
    return runner.run_stage("extract", lambda ctx: run(ctx, ctx.args.required_shard("extract")), argv)


if __name__ == "__main__":
    raise SystemExit(main())
