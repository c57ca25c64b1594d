"""Stage 4: the selection from the attribution matrix, plus the selected subset as JSONL.

`selection.json` holds the ordered indices, method, parameters, per-task composition and the
checksums of the score shards it read; `selected.jsonl` holds the selected training lines in
selection order, ready for the user's fine-tuning step. Both are committed together.
With influence distillation the matrix is the distilled one, built here first
(`selection.jobs.distill`), and `selection.json` also carries an "influence" summary.
"""

from __future__ import annotations

import shutil
from typing import Any

from selection import artifacts
from selection.jobs import runner
from selection.jobs.context import StageContext


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


def run(ctx: StageContext) -> dict[str, Any]:
    """Reduce (unless this exact selection is finished) and return the selection document."""
    from selection.reduce import reduce_matrix, resolve_budget

    distilled = ctx.spec.uses_distillation
    store = ctx.artifacts
    fingerprint = ctx.distilled_selection_fingerprint if distilled else ctx.selection_fingerprint
    prefix = artifacts.SELECTION_PREFIX
    if store.is_done(prefix, fingerprint, replace_stale=True):
        return store.load_json(prefix, artifacts.SELECTION_FILE)
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
    result = reduce_matrix(
        matrix, tasks, method=sel.method, budget=budget, granularity=sel.granularity,
        normalize=sel.normalize, iterative=sel.iterative, seed=sel.seed, candidates=sel.candidates,
    )
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
