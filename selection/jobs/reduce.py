"""Stage 4: the selection from the attribution matrix, plus the selected subset as JSONL.

`selection.json` holds the ordered indices, method, parameters, per-task composition and the
checksums of the score shards it read; `selected.jsonl` holds the selected training lines in
selection order, ready for the user's fine-tuning step. Both are committed together.
The matrix comes from the influence method (`selection.jobs.methods`): with influence
distillation it is the distilled one, built here first, and `selection.json` also carries an
"influence" summary.
"""

from __future__ import annotations

from typing import Any

from selection import artifacts
from selection.artifacts import SELECTION
from selection.jobs import runner
from selection.jobs.context import StageContext
from selection.jobs.methods import method_for


def run(ctx: StageContext) -> dict[str, Any]:
    """Reduce (unless this exact selection is finished) and return the selection document."""
    from selection.reduce import reduce_matrix, resolve_budget

    store = ctx.artifacts
    if SELECTION.exists(store, ctx.fingerprints):
        return SELECTION.load_json(store, artifacts.SELECTION_FILE)
    influence = method_for(ctx.spec).matrix(ctx)
    matrix = influence.matrix
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
        normalize=sel.normalize, iterative=sel.iterative, seed=sel.seed,
    )
    document = result.to_json_dict()
    document.update(
        {
            "name": ctx.args.resource.name,
            "poolSize": len(pool),
            "requestedBudget": sel.budget,
            "tasks": sorted(set(tasks)),
            "inputs": influence.inputs,
            "subsetUri": SELECTION.uri(store, artifacts.SUBSET_FILE),
        }
    )
    if influence.summary is not None:
        document["influence"] = influence.summary
    subset = "".join(pool[i].raw + "\n" for i in result.indices).encode()
    SELECTION.save_documents(
        store,
        {artifacts.SELECTION_FILE: document, artifacts.SUBSET_FILE: subset},
        artifacts.SelectionMetadata(fingerprint=ctx.fingerprints.selection, count=len(result.indices)),
    )
    return document


def main(argv: list[str] | None = None) -> int:
    return runner.run_stage("reduce", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
