"""The seam between the stages and an influence method: how it fills the extraction shards and
builds the N x M matrix the reduction reads.

Two methods exist. `GRADIENT` (LESS): each shard extracts Adam-aware gradient features for every
warmup checkpoint and scores its rows against every checkpoint's validation features.
`DISTILLED` (Influence Distillation, `selection.jobs.distill`): each shard computes its slice of
the landmark gradients and the JVP embeddings of its rows, at the last checkpoint only; the
reduce stage propagates the landmarks' influence to every row. `method_for(spec)` is the one
place that decides which one a spec uses; the shard, reduce and local-run code just call it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from selection.artifacts import EMBEDDINGS, TRAIN_FEATURES
from selection.jobs import distill, extract, score
from selection.jobs.context import StageContext

Progress = Callable[[int], None]


@dataclass(frozen=True)
class InfluenceMatrix:
    """What the reduction reads: the N x M matrix, the checksums of the artifacts it came from,
    and (distilled only) a summary for selection.json's "influence"."""

    matrix: np.ndarray
    inputs: dict[str, str]
    summary: dict[str, Any] | None = None


class InfluenceMethod(Protocol):
    name: str  # the progress label of `dsel run`

    def validation_epochs(self, ctx: StageContext) -> list[int]:
        """Checkpoints whose validation features the method reads (the warmup stage writes them)."""
        ...

    def work_items(self, ctx: StageContext) -> int:
        """Examples all shards will process, for a progress bar."""
        ...

    def fill_shard(self, ctx: StageContext, shard: int, progress: Progress | None = None) -> None:
        """What one completion of the extraction Indexed Job computes (finished parts are skipped)."""
        ...

    def matrix(self, ctx: StageContext) -> InfluenceMatrix:
        """The N x M matrix from the finished shards (built first when the method needs it)."""
        ...

    def answerless_rows(self, ctx: StageContext) -> list[int]:
        """Rows whose answer maxLength truncated away, as the shards that tokenized them
        recorded (their matrix rows are made up; the selection excludes them)."""
        ...


class GradientInfluence:
    name = "gradients"

    def validation_epochs(self, ctx: StageContext) -> list[int]:
        return ctx.epochs

    def work_items(self, ctx: StageContext) -> int:
        return len(ctx.epochs) * len(ctx.train_examples)  # validation features came with the warmup

    def fill_shard(self, ctx: StageContext, shard: int, progress: Progress | None = None) -> None:
        extract.run(ctx, shard, progress=progress)
        score.run(ctx, shard)

    def matrix(self, ctx: StageContext) -> InfluenceMatrix:
        matrix, checksums = score.gather(ctx)
        return InfluenceMatrix(matrix, checksums)

    def answerless_rows(self, ctx: StageContext) -> list[int]:
        g = ctx.spec.gradients
        return sorted(
            row
            for shard in range(g.shards)
            for row in TRAIN_FEATURES.metadata(ctx.artifacts, epoch=ctx.epochs[0], shard=shard, shards=g.shards).answerless
        )


class DistilledInfluence:
    name = "distillation"

    def validation_epochs(self, ctx: StageContext) -> list[int]:
        return [distill.epoch(ctx)]

    def work_items(self, ctx: StageContext) -> int:
        return distill.work_items(ctx)

    def fill_shard(self, ctx: StageContext, shard: int, progress: Progress | None = None) -> None:
        distill.run_shard(ctx, shard, progress=progress)

    def matrix(self, ctx: StageContext) -> InfluenceMatrix:
        matrix, checksums, summary = distill.distilled_matrix(ctx)
        return InfluenceMatrix(matrix, checksums, summary)

    def answerless_rows(self, ctx: StageContext) -> list[int]:
        g = ctx.spec.gradients
        return sorted(
            row
            for shard in range(g.shards)
            for row in EMBEDDINGS.metadata(ctx.artifacts, shard=shard, shards=g.shards).answerless
        )


GRADIENT: InfluenceMethod = GradientInfluence()
DISTILLED: InfluenceMethod = DistilledInfluence()


def method_for(spec) -> InfluenceMethod:
    """The influence method of a spec: distilled for selection.method influence-distillation or
    selection.influence distilled, gradient otherwise."""
    return DISTILLED if spec.uses_distillation else GRADIENT
