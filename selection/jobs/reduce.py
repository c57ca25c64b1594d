"""Stage 4: the selection from the attribution matrix, plus the selected subset as JSONL.

`selection.json` holds the ordered indices, method, parameters, per-task composition and the
checksums of the score shards it read; `selected.jsonl` holds the selected training lines in
selection order, ready for the user's fine-tuning step. Both are committed together.
The matrix comes from the influence method (`selection.jobs.methods`): with influence
distillation it is the distilled one, built here first, and `selection.json` also carries an
"influence" summary; with gradient influence, a "featureHealth" of the training features.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from selection import artifacts, data, spec as spec_module, storage
from selection.artifacts import SELECTION
from selection.jobs import runner
from selection.jobs.context import StageContext
from selection.jobs.methods import method_for
from selection.reduce import reduce_matrix, resolve_budget

log = logging.getLogger("dsel.jobs.reduce")


def _finished_selection(ctx: StageContext) -> dict[str, Any] | None:
    """The finished selection document, when both its files still match their manifest.

    A corrupt selection.json or selected.jsonl is cheap to recompute from the scores, so it is
    recomputed (with a warning) rather than served or failing every rerun.
    """
    store = ctx.artifacts
    try:
        if not SELECTION.exists(store, ctx.fingerprints):
            return None
        prefix = SELECTION.prefix()
        storage.read_artifact_file(  # verifies it against the manifest
            store.store, prefix, artifacts.SUBSET_FILE, manifest=store.manifest(prefix)
        )
        return SELECTION.load_json(store, artifacts.SELECTION_FILE)
    except (storage.CorruptArtifact, ValueError) as error:
        log.warning("recomputing the selection: %s", error)
        return None


def _rows_to_select_from(pool: int, answerless: list[int], duplicates: list[int], budget: int):
    """Row numbers without the excluded ones (None when nothing is excluded)."""
    excluded = sorted(set(answerless) | set(duplicates))
    if not excluded:
        return None
    kept = np.setdiff1d(np.arange(pool), np.asarray(excluded, dtype=np.int64))
    if budget > len(kept):
        reasons, remedies = [], ["lower the budget"]
        if answerless:
            reasons.append(f"{len(answerless)} keep no assistant token within maxLength")
            remedies.append("raise data.maxLength")
        if duplicates:
            reasons.append(f"{len(duplicates)} repeat an earlier line (selection.deduplicate)")
            remedies.append("set selection.deduplicate: false")
        raise spec_module.SpecError([(
            "spec.selection.budget",
            f"{budget} examples requested, but only {len(kept)} of {pool} can be selected "
            f"({'; '.join(reasons)}); {', '.join(remedies)}",
        )])
    return kept


def run(ctx: StageContext) -> dict[str, Any]:
    """Reduce (unless this exact selection is finished) and return the selection document."""
    store = ctx.artifacts
    finished = _finished_selection(ctx)
    if finished is not None:
        return finished
    method = method_for(ctx.spec)
    influence = method.matrix(ctx)
    matrix = influence.matrix
    pool = ctx.train_examples
    if matrix.shape[0] != len(pool):
        raise artifacts.StaleArtifactError(
            f"score rows ({matrix.shape[0]}) do not match the training pool ({len(pool)} lines)"
        )
    tasks = ctx.validation_tasks
    sel = ctx.spec.selection
    budget = resolve_budget(sel.budget, len(pool))
    excluded = method.answerless_rows(ctx)
    duplicates = data.duplicate_lines(pool, ctx.spec.data.train) if sel.deduplicate else []
    kept = _rows_to_select_from(len(pool), excluded, duplicates, budget)
    result = reduce_matrix(
        matrix if kept is None else matrix[kept], tasks, method=sel.method, budget=budget,
        granularity=sel.granularity, normalize=sel.normalize, iterative=sel.iterative, seed=sel.seed,
        candidates=sel.candidates,
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
            "inputs": influence.inputs,
            "subsetUri": SELECTION.uri(store, artifacts.SUBSET_FILE),
        }
    )
    if excluded:
        document["excludedNoAnswer"] = excluded
    if duplicates:
        document["excludedDuplicates"] = duplicates
    if influence.summary is not None:
        document["influence"] = influence.summary
    if influence.feature_health is not None:
        document["featureHealth"] = influence.feature_health
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
