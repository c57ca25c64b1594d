"""Stage 2: per-example gradient features of one training shard, for every warmup checkpoint.

Validation features (plain gradients) are computed once per checkpoint and shared by all
shards; any shard that finds them missing computes them, and identical commits are harmless.
"""

from __future__ import annotations

from typing import Callable

from selection import artifacts, data
from selection.artifacts import TRAIN_FEATURES, VALIDATION_FEATURES, WARMUP_CHECKPOINT
from selection.jobs import runner
from selection.jobs.context import StageContext


def _feature_model(ctx: StageContext):
    """The base model wrapped with LoRA of the warmup's shape (weights come per checkpoint)."""
    from selection import warmup  # deferred: torch (see selection/jobs/__init__.py)

    model, tokenizer = ctx.load_model()
    return warmup.attach_lora(model, ctx.spec.warmup.lora, ctx.spec.warmup.seed), tokenizer


def _projector(ctx: StageContext, model):
    from selection.gradients.features import lora_dim  # deferred: torch (see selection/jobs/__init__.py)
    from selection.gradients.projection import make_projector  # deferred: torch (see selection/jobs/__init__.py)

    g = ctx.spec.gradients
    return make_projector(g.projection, lora_dim(model), g.projection_dim, g.seed)


def _checkpoint(ctx: StageContext, epoch: int):
    from selection import warmup  # deferred: torch (see selection/jobs/__init__.py)

    return warmup.load_checkpoint(WARMUP_CHECKPOINT.fetch(ctx.artifacts, epoch=epoch))


def ensure_validation_features(
    ctx: StageContext, epochs: list[int], model=None, tokenizer=None, progress=None
) -> None:
    """Plain validation features of the checkpoints `epochs` that are not finished.

    Gradient influence reads every checkpoint's, distillation only the last one's
    (`selection.jobs.methods.InfluenceMethod.validation_epochs`).
    """
    from selection import warmup  # deferred: torch (see selection/jobs/__init__.py)
    from selection.gradients.features import compute_features, default_extractor  # deferred: torch (see selection/jobs/__init__.py)

    store, fingerprints = ctx.artifacts, ctx.fingerprints
    todo = [e for e in epochs if not VALIDATION_FEATURES.exists(store, fingerprints, epoch=e)]
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
        VALIDATION_FEATURES.save_arrays(
            store,
            {artifacts.FEATURES_FILE: features},
            artifacts.ValidationFeaturesMetadata(
                fingerprint=fingerprints.validation, epoch=epoch, rows=len(examples),
                tasks=ctx.validation_tasks,
            ),
            epoch=epoch,
        )


def run(ctx: StageContext, shard: int, progress: Callable[[int], None] | None = None) -> None:
    """Features of shard `shard` for every checkpoint; finished (checkpoint, shard) pairs are skipped."""
    from selection import warmup  # deferred: torch (see selection/jobs/__init__.py)
    from selection.gradients.features import compute_features, default_extractor  # deferred: torch (see selection/jobs/__init__.py)
    from selection.gradients.preconditioners import AdamPreconditioner  # deferred: torch (see selection/jobs/__init__.py)

    g = ctx.spec.gradients
    store, fingerprints = ctx.artifacts, ctx.fingerprints
    rows = ctx.shard_range(shard)
    todo = [
        e for e in ctx.epochs
        if not TRAIN_FEATURES.exists(store, fingerprints, epoch=e, shard=shard, shards=g.shards)
    ]
    if not todo:
        ensure_validation_features(ctx, ctx.epochs)
        return
    model, tokenizer = _feature_model(ctx)
    ensure_validation_features(ctx, ctx.epochs, model, tokenizer)
    examples = ctx.tokenize(tokenizer, ctx.train_examples[rows.start : rows.stop])
    answerless = data.lines_without_answer(
        ctx.train_examples[rows.start : rows.stop], examples, ctx.spec.data.train, ctx.spec.data.max_length
    )
    projector = _projector(ctx, model)
    for epoch in todo:
        checkpoint = _checkpoint(ctx, epoch)
        warmup.apply_adapter(model, checkpoint)
        precondition = None
        if g.train_type == "adam":
            w = ctx.spec.warmup
            precondition = AdamPreconditioner.from_checkpoint(checkpoint, w.beta1, w.beta2)
        features = compute_features(
            model, examples, extractor=default_extractor(), projector=projector, precondition=precondition,
            batch_size=g.batch_size, pad_token_id=tokenizer.pad_token_id, progress=progress,
        )
        TRAIN_FEATURES.save_arrays(
            store,
            {artifacts.FEATURES_FILE: features},
            artifacts.TrainFeaturesMetadata(
                fingerprint=fingerprints.train, epoch=epoch, start=rows.start, stop=rows.stop,
                answerless=answerless,
            ),
            epoch=epoch, shard=shard, shards=g.shards,
        )


def main(argv: list[str] | None = None) -> int:
    return runner.run_stage("extract", lambda ctx: run(ctx, ctx.args.required_shard("extract")), argv)


if __name__ == "__main__":
    raise SystemExit(main())
