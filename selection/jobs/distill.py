"""Influence distillation's stages (docs/algorithms.md §14): what `shard` and `reduce` run for it.

`selection.jobs.methods.DISTILLED` wires these into the shard and reduce stages, so the
operator needs no special case: "the landmark gradient job" is the extraction Indexed Job's
completions. The numerical code is in `selection.distill`; this module reads and writes artifacts.

Shard k of K (all at the LAST warmup checkpoint, `Fingerprints.distillation_epoch()`, whose step
count t enters the bias correction):
1. validation features of that checkpoint, if missing (the warmup stage normally writes them;
   plain gradients, projected, unit rows: the same artifact gradient extraction uses);
2. landmark features: the landmarks are drawn from the whole pool with distillation.seed
   (`selection.distill.landmarks.draw_landmarks`, sorted); shard k takes the landmark *positions*
   `shard_range(L, batch_size, k, K)`, so each shard gets whole batches that start at global
   multiples of the batch size, and the features do not depend on the layout. Adam-aware with the
   bias-corrected preconditioner (gradients.trainType adam; plain g with sgd), projected with the
   gradient projector, unit rows, fp16;
3. JVP embeddings of its rows `ctx.shard_range(k)` (same row layout as extraction), float32.
Reduce: p_L and p_hat (`selection.distill.scores`) committed as one artifact
(`artifacts.DISTILLED_SCORES`), memory-mapped by the reduction.
"""

from __future__ import annotations

import shutil
from typing import Any, Callable

import numpy as np

from selection import artifacts, data
from selection.artifacts import DISTILLED_SCORES, EMBEDDINGS, LANDMARK_FEATURES, VALIDATION_FEATURES
from selection.contract import ShardRange, shard_range
from selection.jobs import extract
from selection.jobs.context import StageContext


def epoch(ctx: StageContext) -> int:
    """The checkpoint distillation reads: the last."""
    return ctx.fingerprints.distillation_epoch()


def landmarks(ctx: StageContext) -> np.ndarray:
    """Sorted pool indices of the landmarks (the same in every process)."""
    from selection.distill.landmarks import draw_landmarks  # deferred: torch (see selection/jobs/__init__.py)

    d = ctx.spec.distillation
    return draw_landmarks(len(ctx.train_examples), d.landmarks, d.seed)


def landmark_range(ctx: StageContext, shard: int) -> ShardRange:
    """Positions [start, stop) in the sorted landmark list that shard `shard` computes."""
    g = ctx.spec.gradients
    return shard_range(len(landmarks(ctx)), g.batch_size, shard, g.shards)


def embedder(ctx: StageContext):
    from selection.distill.embeddings import JvpEmbedder  # deferred: torch (see selection/jobs/__init__.py)

    d = ctx.spec.distillation
    return JvpEmbedder(blocks=d.blocks, tangents=d.tangents, embed_dim=d.embed_dim, seed=d.seed)


def work_items(ctx: StageContext) -> int:
    """Examples the shards will process (embeddings, landmarks, missing validation), for progress bars."""
    missing = not VALIDATION_FEATURES.exists(ctx.artifacts, ctx.fingerprints, epoch=epoch(ctx))
    return len(ctx.train_examples) + len(landmarks(ctx)) + (len(ctx.validation_examples) if missing else 0)


def _landmark_preconditioner(ctx: StageContext, checkpoint):
    """Bias-corrected Adam weighting (trainType adam) or none (sgd); the engine streams either way."""
    from selection.gradients.preconditioners import BiasCorrectedAdamPreconditioner  # deferred: torch (see selection/jobs/__init__.py)

    if ctx.spec.gradients.train_type == "sgd":
        return None
    w = ctx.spec.warmup
    return BiasCorrectedAdamPreconditioner.from_checkpoint(checkpoint, w.beta1, w.beta2, w.eps)


def run_shard(ctx: StageContext, shard: int, progress: Callable[[int], None] | None = None) -> None:
    """Validation features (if missing), landmark features and embeddings of shard `shard`.

    Finished artifacts are skipped, so a retried or resumed completion redoes only what is missing.
    """
    g = ctx.spec.gradients
    store, fingerprints, at = ctx.artifacts, ctx.fingerprints, epoch(ctx)
    need_validation = not VALIDATION_FEATURES.exists(store, fingerprints, epoch=at)
    need_landmarks = not LANDMARK_FEATURES.exists(store, fingerprints, epoch=at, shard=shard, shards=g.shards)
    need_embeddings = not EMBEDDINGS.exists(store, fingerprints, shard=shard, shards=g.shards)
    if not (need_validation or need_landmarks or need_embeddings):
        return
    loaded = load_model(ctx)
    if need_validation:
        model, tokenizer, _ = loaded
        extract.ensure_validation_features(ctx, [at], model, tokenizer, progress)
    if need_landmarks:
        save_landmark_features(ctx, loaded, shard, progress)
    if need_embeddings:
        save_embeddings(ctx, loaded, shard, progress)


def load_model(ctx: StageContext):
    """(model, tokenizer, checkpoint): the LoRA model with the distillation checkpoint applied."""
    from selection import warmup  # deferred: torch (see selection/jobs/__init__.py)

    model, tokenizer = extract._feature_model(ctx)
    checkpoint = extract._checkpoint(ctx, epoch(ctx))
    warmup.apply_adapter(model, checkpoint)
    return model, tokenizer, checkpoint


def save_landmark_features(
    ctx: StageContext, loaded, shard: int, progress: Callable[[int], None] | None = None
) -> None:
    """Adam-aware (bias-corrected) projected gradient features of the shard's landmark slice."""
    from selection.gradients.features import compute_features, default_extractor  # deferred: torch (see selection/jobs/__init__.py)

    model, tokenizer, checkpoint = loaded
    g, at = ctx.spec.gradients, epoch(ctx)
    positions = landmark_range(ctx, shard)
    indices = landmarks(ctx)[positions.start : positions.stop]
    features = compute_features(
        model, ctx.tokenize(tokenizer, [ctx.train_examples[i] for i in indices]),
        extractor=default_extractor(), projector=extract._projector(ctx, model),
        precondition=_landmark_preconditioner(ctx, checkpoint), batch_size=g.batch_size,
        pad_token_id=tokenizer.pad_token_id, progress=progress,
    )
    LANDMARK_FEATURES.save_arrays(
        ctx.artifacts,
        {artifacts.FEATURES_FILE: features, artifacts.LANDMARKS_FILE: indices},
        artifacts.LandmarkFeaturesMetadata(
            fingerprint=ctx.fingerprints.landmarks, epoch=at, step=checkpoint.step,
            start=positions.start, stop=positions.stop, rows=len(indices),
        ),
        epoch=at, shard=shard, shards=g.shards,
    )


def save_embeddings(ctx: StageContext, loaded, shard: int, progress: Callable[[int], None] | None = None) -> None:
    """JVP embeddings of the shard's rows (the extraction row layout)."""
    model, tokenizer, _ = loaded
    g = ctx.spec.gradients
    rows = ctx.shard_range(shard)
    embed = embedder(ctx)
    tokenized = ctx.tokenize(tokenizer, ctx.train_examples[rows.start : rows.stop])
    answerless = data.lines_without_answer(
        ctx.train_examples[rows.start : rows.stop], tokenized, ctx.spec.data.train, ctx.spec.data.max_length
    )
    embeddings = embed(
        model, tokenized, batch_size=g.batch_size, pad_token_id=tokenizer.pad_token_id, progress=progress,
    )
    EMBEDDINGS.save_arrays(
        ctx.artifacts,
        {artifacts.EMBEDDINGS_FILE: embeddings},
        artifacts.EmbeddingsMetadata(
            fingerprint=ctx.fingerprints.embeddings, epoch=epoch(ctx), start=rows.start, stop=rows.stop,
            rows=rows.stop - rows.start, blocks=embed.kept_blocks(model), dim=int(embeddings.shape[1]),
            answerless=answerless,
        ),
        shard=shard, shards=g.shards,
    )


def _rows(kind: artifacts.ArtifactKind, ctx: StageContext, name: str, rows: int, **where: int) -> np.ndarray:
    # numpy cannot memory-map an empty array (a shard without rows or landmarks)
    return kind.load_array(ctx.artifacts, name, mmap=rows > 0, **where)


def ensure_distilled_scores(ctx: StageContext, progress: Callable[[int], None] | None = None) -> None:
    """p_hat (N x M) from the finished shards, unless already committed with this fingerprint.

    Recomputed, not refused, when committed from other inputs (e.g. a changed ridge): it is
    derived only from fingerprinted artifacts, and cheap next to them.
    """
    from selection.distill import scores  # deferred: torch (see selection/jobs/__init__.py)

    g = ctx.spec.gradients
    store, fingerprints, at = ctx.artifacts, ctx.fingerprints, epoch(ctx)
    if DISTILLED_SCORES.exists(store, fingerprints):
        return
    chosen = landmarks(ctx)
    features, indices = [], []
    for shard in range(g.shards):
        where = dict(epoch=at, shard=shard, shards=g.shards)
        meta = LANDMARK_FEATURES.require(store, fingerprints, f"landmark features of shard {shard}", **where)
        features.append(_rows(LANDMARK_FEATURES, ctx, artifacts.FEATURES_FILE, meta.rows, **where))
        indices.append(_rows(LANDMARK_FEATURES, ctx, artifacts.LANDMARKS_FILE, meta.rows, **where))
    scores.check_cover(indices, chosen)
    VALIDATION_FEATURES.require(store, fingerprints, "validation features", epoch=at)
    validation = VALIDATION_FEATURES.load_array(store, artifacts.FEATURES_FILE, epoch=at)
    at_landmarks = scores.landmark_scores(features, validation)

    parts = []
    for shard in range(g.shards):
        where = dict(shard=shard, shards=g.shards)
        embedded = EMBEDDINGS.require(store, fingerprints, f"embeddings of shard {shard}", **where)
        parts.append(_rows(EMBEDDINGS, ctx, artifacts.EMBEDDINGS_FILE, embedded.rows, **where))
        blocks = embedded.blocks
    directory = ctx.scratch / "distilled-scores"
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    fitted = scores.write_distilled_scores(
        parts, chosen, at_landmarks, ctx.spec.distillation.ridge, len(ctx.train_examples),
        directory / artifacts.SCORES_FILE, directory / artifacts.LANDMARK_SCORES_FILE, progress=progress,
    )
    DISTILLED_SCORES.save_directory(
        store,
        directory,
        artifacts.DistilledScoresMetadata(
            fingerprint=fingerprints.distilled_scores, epoch=at, rows=fitted.rows, columns=fitted.columns,
            landmarks=int(len(chosen)), sigma=fitted.sigma, ridge=fitted.ridge,
            embedding_dim=fitted.embedding_dim, blocks=blocks,
        ),
    )


def distilled_matrix(ctx: StageContext) -> tuple[np.ndarray, dict[str, str], dict[str, Any]]:
    """The distilled N x M matrix (memory-mapped), its checksum, and what the selection reports."""
    ensure_distilled_scores(ctx)
    store = ctx.artifacts
    meta = DISTILLED_SCORES.metadata(store)
    matrix = DISTILLED_SCORES.load_array(store, artifacts.SCORES_FILE, mmap=meta.rows > 0)
    d = ctx.spec.distillation
    summary = {
        "kind": "distilled", "checkpoint": meta.epoch, "landmarks": meta.landmarks,
        "sigma": meta.sigma, "lambda": meta.ridge, "blocks": meta.blocks, "tangents": d.tangents,
        "embeddingDim": meta.embedding_dim, "seed": d.seed,
    }
    return matrix, {DISTILLED_SCORES.prefix(): DISTILLED_SCORES.checksum(store, artifacts.SCORES_FILE)}, summary
