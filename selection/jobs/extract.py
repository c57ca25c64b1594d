"""Stage 2: per-example gradient features of one training shard, for every warmup checkpoint.

Validation features (plain gradients) are computed once per checkpoint and shared by all
shards; any shard that finds them missing computes them, and identical commits are harmless.
"""

from __future__ import annotations

import functools
import io
from typing import Any, Callable

import numpy as np

from selection import artifacts, data
from selection.artifacts import TRAIN_FEATURES, VALIDATION_FEATURES, WARMUP_CHECKPOINT
from selection.files import NpyRowWriter
from selection.gradients import health
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


def _write_train_features(ctx: StageContext, model, examples, where: dict[str, int], metadata, **options) -> None:
    """Stream one checkpoint's features of a shard to disk batch by batch, with their feature
    health statistics, and commit both: memory stays at one batch whatever the shard's size."""
    from selection.gradients.features import iter_features  # deferred: torch (see selection/jobs/__init__.py)

    directory = TRAIN_FEATURES.staging(ctx.artifacts, **where)
    dim = options["projector"].output_dim
    statistics = health.FeatureStatistics.empty(dim)
    with NpyRowWriter(directory / artifacts.FEATURES_FILE, (len(examples), dim), np.float16) as writer:
        for block in iter_features(model, examples, **options):
            writer.write(block)
            statistics.add(block)
    np.save(directory / artifacts.FEATURE_SUM_FILE, statistics.total, allow_pickle=False)
    TRAIN_FEATURES.commit_staged(ctx.artifacts, metadata(health=statistics.to_json()), **where)


def run(ctx: StageContext, shard: int, progress: Callable[[int], None] | None = None) -> None:
    """Features of shard `shard` for every checkpoint; finished (checkpoint, shard) pairs are skipped."""
    from selection import warmup  # deferred: torch (see selection/jobs/__init__.py)
    from selection.gradients.features import default_extractor  # deferred: torch (see selection/jobs/__init__.py)
    from selection.gradients.preconditioners import training_preconditioner  # deferred: torch (see selection/jobs/__init__.py)

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
        precondition = training_preconditioner(g.train_type, checkpoint, ctx.spec.warmup)
        _write_train_features(
            ctx, model, examples, dict(epoch=epoch, shard=shard, shards=g.shards),
            functools.partial(
                artifacts.TrainFeaturesMetadata, fingerprint=fingerprints.train, epoch=epoch,
                start=rows.start, stop=rows.stop, answerless=answerless,
            ),
            extractor=default_extractor(), projector=projector, precondition=precondition,
            batch_size=g.batch_size, pad_token_id=tokenizer.pad_token_id, progress=progress,
        )


def feature_health(ctx: StageContext) -> dict[str, Any] | None:
    """selection.json's "featureHealth": every checkpoint's statistics summed exactly over the
    shards (docs/algorithms.md §18.4). None when a shard's features were committed without them
    (by an older version) or deleted after scoring: the scores do not need them."""
    g = ctx.spec.gradients
    checkpoints = []
    for epoch in ctx.epochs:
        parts = []
        for shard in range(g.shards):
            where = dict(epoch=epoch, shard=shard, shards=g.shards)
            if ctx.artifacts.manifest(TRAIN_FEATURES.prefix(**where)) is None:
                return None
            recorded = TRAIN_FEATURES.metadata(ctx.artifacts, **where).health
            if recorded is None:
                return None
            vector = np.load(io.BytesIO(TRAIN_FEATURES.read_file(ctx.artifacts, artifacts.FEATURE_SUM_FILE, **where)))
            parts.append(health.FeatureStatistics.from_json(recorded, vector))
        checkpoints.append(health.CheckpointHealth(epoch, functools.reduce(health.FeatureStatistics.merge, parts)))
    return health.feature_health(checkpoints, g.train_type)


def main(argv: list[str] | None = None) -> int:
    return runner.run_stage("extract", lambda ctx: run(ctx, ctx.args.required_shard("extract")), argv)


if __name__ == "__main__":
    raise SystemExit(main())
