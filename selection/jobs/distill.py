"""Influence distillation's stages (docs/algorithms.md §14): what `shard` and `reduce` run for it.

When `spec.uses_distillation` (selection.method influence-distillation, or selection.influence
distilled), the extraction Indexed Job's completions run `run_shard` instead of extract+score,
and the reduce Job builds the distilled matrix with `ensure_distilled_scores` before reducing.
So the operator needs no special case: "the landmark gradient job" is these same completions.

Shard k of K (all at the LAST warmup checkpoint, `ctx.distillation_epoch`, whose step count t
enters the bias correction):
1. validation features of that checkpoint, if missing (the warmup stage normally writes them;
   plain gradients, projected, unit rows: the same artifact gradient extraction uses);
2. landmark features: the landmarks are drawn from the whole pool with distillation.seed
   (`selection.distill.landmarks.draw_landmarks`, sorted); shard k takes the landmark *positions*
   `shard_range(L, batch_size, k, K)`, so each shard gets whole batches that start at global
   multiples of the batch size, and the features do not depend on the layout. Adam-aware with the
   bias-corrected preconditioner (gradients.trainType adam; plain g with sgd), projected with the
   gradient projector, unit rows, fp16;
3. JVP embeddings of its rows `ctx.shard_range(k)` (same row layout as extraction), float32.
Reduce: p_L = G_L V^T (L x M, float64), the kernel ridge regression of
`selection.distill.propagate`, p_hat (N x M float32) committed as one artifact
(`artifacts.DISTILLED_SCORES_PREFIX`, with p_L beside it), memory-mapped by the reduction.
"""

from __future__ import annotations

import shutil
from typing import Any, Callable

import numpy as np

from selection import artifacts
from selection.contract import ShardRange, shard_range
from selection.jobs import extract
from selection.jobs.context import StageContext


def landmarks(ctx: StageContext) -> np.ndarray:
    """Sorted pool indices of the landmarks (the same in every process)."""
    from selection.distill.landmarks import draw_landmarks

    d = ctx.spec.distillation
    return draw_landmarks(len(ctx.train_examples), d.landmarks, d.seed)


def landmark_range(ctx: StageContext, shard: int) -> ShardRange:
    """Positions [start, stop) in the sorted landmark list that shard `shard` computes."""
    g = ctx.spec.gradients
    return shard_range(len(landmarks(ctx)), g.batch_size, shard, g.shards)


def embedder(ctx: StageContext):
    from selection.distill.embeddings import JvpEmbedder

    d = ctx.spec.distillation
    return JvpEmbedder(blocks=d.blocks, tangents=d.tangents, embed_dim=d.embed_dim, seed=d.seed)


def work_items(ctx: StageContext) -> int:
    """Examples the shards will process (embeddings, landmarks, missing validation), for progress bars."""
    missing = not ctx.artifacts.is_done(
        artifacts.validation_features_prefix(ctx.distillation_epoch), ctx.validation_fingerprint
    )
    return len(ctx.train_examples) + len(landmarks(ctx)) + (len(ctx.validation_examples) if missing else 0)


def _landmark_projector(ctx: StageContext, model, checkpoint):
    from selection.distill.landmarks import BiasCorrectedAdamPreconditioner

    projector = extract._projector(ctx, model)
    if ctx.spec.gradients.train_type == "sgd":
        return projector
    w = ctx.spec.warmup
    preconditioner = BiasCorrectedAdamPreconditioner.from_checkpoint(checkpoint, w.beta1, w.beta2, w.eps)
    # Diagonal: folded into the projection so the gradient engine keeps streaming per layer.
    return preconditioner.fold_into(projector)


def run_shard(ctx: StageContext, shard: int, progress: Callable[[int], None] | None = None) -> None:
    """Validation features (if missing), landmark features and embeddings of shard `shard`.

    Finished artifacts are skipped, so a retried or resumed completion redoes only what is missing.
    """
    g = ctx.spec.gradients
    store, epoch = ctx.artifacts, ctx.distillation_epoch
    need_validation = not store.is_done(artifacts.validation_features_prefix(epoch), ctx.validation_fingerprint)
    need_landmarks = not store.is_done(
        artifacts.landmark_features_prefix(epoch, shard, g.shards), ctx.landmark_fingerprint
    )
    need_embeddings = not store.is_done(artifacts.embeddings_prefix(shard, g.shards), ctx.embeddings_fingerprint)
    if not (need_validation or need_landmarks or need_embeddings):
        return
    loaded = load_model(ctx)
    if need_validation:
        model, tokenizer, _ = loaded
        extract.ensure_validation_features(ctx, model, tokenizer, progress, epochs=[epoch])
    if need_landmarks:
        save_landmark_features(ctx, loaded, shard, progress)
    if need_embeddings:
        save_embeddings(ctx, loaded, shard, progress)


def load_model(ctx: StageContext):
    """(model, tokenizer, checkpoint): the LoRA model with the distillation checkpoint applied."""
    from selection import warmup

    model, tokenizer = extract._feature_model(ctx)
    checkpoint = extract._checkpoint(ctx, ctx.distillation_epoch)
    warmup.apply_adapter(model, checkpoint)
    return model, tokenizer, checkpoint


def save_landmark_features(
    ctx: StageContext, loaded, shard: int, progress: Callable[[int], None] | None = None
) -> None:
    """Adam-aware (bias-corrected) projected gradient features of the shard's landmark slice."""
    from selection.gradients.features import compute_features, default_extractor

    model, tokenizer, checkpoint = loaded
    g, epoch = ctx.spec.gradients, ctx.distillation_epoch
    positions = landmark_range(ctx, shard)
    indices = landmarks(ctx)[positions.start : positions.stop]
    features = compute_features(
        model, ctx.tokenize(tokenizer, [ctx.train_examples[i] for i in indices]),
        extractor=default_extractor(), projector=_landmark_projector(ctx, model, checkpoint),
        precondition=None, batch_size=g.batch_size, pad_token_id=tokenizer.pad_token_id, progress=progress,
    )
    ctx.artifacts.save_arrays(
        artifacts.landmark_features_prefix(epoch, shard, g.shards),
        {artifacts.FEATURES_FILE: features, artifacts.LANDMARKS_FILE: indices},
        {"fingerprint": ctx.landmark_fingerprint, "epoch": epoch, "step": checkpoint.step,
         "start": positions.start, "stop": positions.stop, "rows": len(indices)},
    )


def save_embeddings(ctx: StageContext, loaded, shard: int, progress: Callable[[int], None] | None = None) -> None:
    """JVP embeddings of the shard's rows (the extraction row layout)."""
    model, tokenizer, _ = loaded
    g = ctx.spec.gradients
    rows = ctx.shard_range(shard)
    embed = embedder(ctx)
    embeddings = embed(
        model, ctx.tokenize(tokenizer, ctx.train_examples[rows.start : rows.stop]),
        batch_size=g.batch_size, pad_token_id=tokenizer.pad_token_id, progress=progress,
    )
    ctx.artifacts.save_arrays(
        artifacts.embeddings_prefix(shard, g.shards),
        {artifacts.EMBEDDINGS_FILE: embeddings},
        {"fingerprint": ctx.embeddings_fingerprint, "epoch": ctx.distillation_epoch, "start": rows.start,
         "stop": rows.stop, "rows": rows.stop - rows.start, "blocks": embed.kept_blocks(model),
         "dim": int(embeddings.shape[1])},
    )


def _finished(ctx: StageContext, prefix: str, fingerprint: str, what: str) -> dict[str, Any]:
    if not ctx.artifacts.is_done(prefix, fingerprint):
        raise artifacts.StaleArtifactError(f"{ctx.artifacts.uri(prefix)}: {what} not finished")
    return ctx.artifacts.metadata(prefix)


def _array(ctx: StageContext, prefix: str, name: str, rows: int) -> np.ndarray:
    # numpy cannot memory-map an empty array (a shard without rows or landmarks)
    return ctx.artifacts.load_array(prefix, name, mmap=rows > 0)


def ensure_distilled_scores(ctx: StageContext, progress: Callable[[int], None] | None = None) -> None:
    """p_hat (N x M) from the finished shards, unless already committed with this fingerprint.

    Recomputed, not refused, when committed from other inputs (e.g. a changed ridge): it is
    derived only from fingerprinted artifacts, and cheap next to them.
    """
    from numpy.lib.format import open_memmap

    from selection.distill import propagate

    g, d = ctx.spec.gradients, ctx.spec.distillation
    store, epoch = ctx.artifacts, ctx.distillation_epoch
    prefix = artifacts.DISTILLED_SCORES_PREFIX
    if store.is_done(prefix, ctx.distilled_scores_fingerprint, replace_stale=True):
        return
    chosen = landmarks(ctx)
    features, indices = [], []
    for shard in range(g.shards):
        part = artifacts.landmark_features_prefix(epoch, shard, g.shards)
        rows = _finished(ctx, part, ctx.landmark_fingerprint, f"landmark features of shard {shard}")["rows"]
        features.append(np.asarray(_array(ctx, part, artifacts.FEATURES_FILE, rows), dtype=np.float64))
        indices.append(np.asarray(_array(ctx, part, artifacts.LANDMARKS_FILE, rows)))
    if not np.array_equal(np.concatenate(indices), chosen):
        raise artifacts.StaleArtifactError("landmark feature shards do not cover the drawn landmarks in order")
    validation_prefix = artifacts.validation_features_prefix(epoch)
    _finished(ctx, validation_prefix, ctx.validation_fingerprint, "validation features")
    validation = np.asarray(store.load_array(validation_prefix, artifacts.FEATURES_FILE), dtype=np.float64)
    landmark_scores = np.concatenate(features) @ validation.T  # p_L: cosines of unit rows

    parts, blocks = [], None
    for shard in range(g.shards):
        part = artifacts.embeddings_prefix(shard, g.shards)
        meta = _finished(ctx, part, ctx.embeddings_fingerprint, f"embeddings of shard {shard}")
        parts.append(_array(ctx, part, artifacts.EMBEDDINGS_FILE, meta["rows"]))
        blocks = meta["blocks"]
    embeddings = propagate.ConcatenatedRows(parts)
    pool = len(ctx.train_examples)
    if embeddings.shape[0] != pool:
        raise artifacts.StaleArtifactError(
            f"embedding rows ({embeddings.shape[0]}) do not match the training pool ({pool} lines)"
        )
    model = propagate.fit(embeddings.take(chosen), landmark_scores, d.ridge)
    directory = ctx.scratch / "distilled-scores"
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    scores = open_memmap(directory / artifacts.SCORES_FILE, mode="w+", dtype=np.float32,
                         shape=(pool, landmark_scores.shape[1]))
    propagate.propagate(model, embeddings, scores, progress=progress)
    scores.flush()
    del scores
    np.save(directory / artifacts.LANDMARK_SCORES_FILE, landmark_scores.astype(np.float32), allow_pickle=False)
    store.save_directory(
        prefix,
        directory,
        {"fingerprint": ctx.distilled_scores_fingerprint, "epoch": epoch, "rows": pool,
         "columns": int(landmark_scores.shape[1]), "landmarks": int(len(chosen)), "sigma": model.sigma,
         "lambda": model.ridge, "embedding_dim": int(embeddings.shape[1]), "blocks": blocks},
    )


def distilled_matrix(ctx: StageContext) -> tuple[np.ndarray, dict[str, str], dict[str, Any]]:
    """The distilled N x M matrix (memory-mapped), its checksum, and what the selection reports."""
    ensure_distilled_scores(ctx)
    store, prefix = ctx.artifacts, artifacts.DISTILLED_SCORES_PREFIX
    meta = store.metadata(prefix)
    matrix = store.load_array(prefix, artifacts.SCORES_FILE, mmap=meta["rows"] > 0)
    d = ctx.spec.distillation
    summary = {
        "kind": "distilled", "checkpoint": meta["epoch"], "landmarks": meta["landmarks"],
        "sigma": meta["sigma"], "lambda": meta["lambda"], "blocks": meta["blocks"], "tangents": d.tangents,
        "embeddingDim": meta["embedding_dim"], "seed": d.seed,
    }
    return matrix, {prefix: store.checksums(prefix)[artifacts.SCORES_FILE]}, summary
