"""Stage 4: the selection from the attribution matrix, plus the selected subset as JSONL.

`selection.json` holds the ordered indices, method, parameters, per-task composition and the
checksums of the score shards it read; `selected.jsonl` holds the selected training lines in
selection order, ready for the user's fine-tuning step. Both are committed together.
With influence distillation the matrix is the distilled one, built here first
(`selection.jobs.distill`), and `selection.json` also carries an "influence" summary.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from typing import Any

from selection import artifacts, spec as spec_module
from selection.jobs import runner
from selection.jobs.context import StageContext

log = logging.getLogger("dsel.jobs.reduce")


def _gather_scores(ctx: StageContext):
    """The score shards as one memory-mapped matrix, in row order."""
    from selection.reduce import load_matrix

    g = ctx.spec.gradients
    store = ctx.artifacts
    directory = ctx.scratch / "scores-all"
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    checksums = {}
    for shard in range(g.shards):
        prefix = artifacts.scores_prefix(shard, g.shards)
        if not store.is_done(prefix, ctx.scores_fingerprint):
            raise artifacts.StaleArtifactError(f"{store.uri(prefix)}: scores of shard {shard} are not finished")
        local = store.fetch(prefix) / artifacts.SCORES_FILE
        (directory / f"{artifacts.shard_name(shard, g.shards)}.npy").symlink_to(local.resolve())
        checksums[prefix] = store.checksums(prefix)[artifacts.SCORES_FILE]
    return load_matrix(directory), checksums


def _finished_selection(store: artifacts.ArtifactStore, fingerprint: str) -> dict[str, Any] | None:
    """The finished selection document, when both its files still match their manifest.

    A corrupt selection.json or selected.jsonl is cheap to recompute from the scores, so it is
    recomputed (with a warning) rather than served or failing every rerun.
    """
    from selection import storage

    prefix = artifacts.SELECTION_PREFIX
    try:
        if not store.is_done(prefix, fingerprint, replace_stale=True):
            return None
        storage.read_artifact_file(store.store, prefix, artifacts.SUBSET_FILE)  # verifies it
        return store.load_json(prefix, artifacts.SELECTION_FILE)
    except (storage.CorruptArtifact, ValueError) as error:
        log.warning("recomputing the selection: %s", error)
        return None


def _answerless_rows(ctx: StageContext, distilled: bool) -> list[int]:
    """Rows whose answer maxLength truncated away, as the stage that tokenized them recorded."""
    g = ctx.spec.gradients
    prefixes = [
        artifacts.embeddings_prefix(shard, g.shards) if distilled
        else artifacts.train_features_prefix(ctx.epochs[0], shard, g.shards)
        for shard in range(g.shards)
    ]
    return sorted(row for p in prefixes for row in ctx.artifacts.metadata(p).get("answerless", []))


def _rows_to_select_from(pool: int, excluded: list[int], budget: int):
    """Row numbers without the excluded ones (None when nothing is excluded)."""
    import numpy as np

    if not excluded:
        return None
    kept = np.setdiff1d(np.arange(pool), np.asarray(excluded, dtype=np.int64))
    if budget > len(kept):
        raise spec_module.SpecError([(
            "spec.selection.budget",
            f"{budget} examples requested, but only {len(kept)} of {pool} keep an assistant token "
            f"within maxLength ({len(excluded)} excluded); raise data.maxLength or lower the budget",
        )])
    return kept


def run(ctx: StageContext) -> dict[str, Any]:
    """Reduce (unless this exact selection is finished) and return the selection document."""
    from selection.reduce import reduce_matrix, resolve_budget

    distilled = ctx.spec.uses_distillation
    store = ctx.artifacts
    fingerprint = ctx.distilled_selection_fingerprint if distilled else ctx.selection_fingerprint
    prefix = artifacts.SELECTION_PREFIX
    finished = _finished_selection(store, fingerprint)
    if finished is not None:
        return finished
    influence = None
    if distilled:
        from selection.jobs import distill

        matrix, checksums, influence = distill.distilled_matrix(ctx)
    else:
        matrix, checksums = _gather_scores(ctx)
    pool = ctx.train_examples
    if matrix.shape[0] != len(pool):
        raise artifacts.StaleArtifactError(
            f"score rows ({matrix.shape[0]}) do not match the training pool ({len(pool)} lines)"
        )
    tasks = [e.task for e in ctx.validation_examples]
    sel = ctx.spec.selection
    budget = resolve_budget(sel.budget, len(pool))
    excluded = _answerless_rows(ctx, distilled)
    kept = _rows_to_select_from(len(pool), excluded, budget)
    result = reduce_matrix(
        matrix if kept is None else matrix[kept], tasks, method=sel.method, budget=budget,
        granularity=sel.granularity, normalize=sel.normalize, iterative=sel.iterative, seed=sel.seed,
    )
    if kept is not None:
        result = dataclasses.replace(result, indices=[int(kept[i]) for i in result.indices])
    document = result.to_json_dict()
    document.update(
        {
            "name": ctx.args.resource.name,
            "poolSize": len(pool),
            "requestedBudget": sel.budget,
            "tasks": sorted(set(tasks)),
            "inputs": checksums,
            "subsetUri": store.uri(prefix, artifacts.SUBSET_FILE),
        }
    )
    if excluded:
        document["excludedNoAnswer"] = excluded
    if influence is not None:
        document["influence"] = influence
    subset = "".join(pool[i].raw + "\n" for i in result.indices).encode()
    store.save_json_files(
        prefix,
        {artifacts.SELECTION_FILE: document, artifacts.SUBSET_FILE: subset},
        {"fingerprint": fingerprint, "count": len(result.indices)},
    )
    return document


def main(argv: list[str] | None = None) -> int:
    return runner.run_stage("reduce", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
