"""Extract then score one shard: what each completion of the Indexed extraction Job runs.

With influence distillation (`spec.uses_distillation`) a completion computes the shard's JVP
embeddings and its slice of the landmark gradients instead (`selection.jobs.distill.run_shard`).
"""

from __future__ import annotations

from selection.jobs import extract, runner, score
from selection.jobs.context import StageContext


def run(ctx: StageContext, shard: int) -> None:
    if ctx.spec.uses_distillation:
        from selection.jobs import distill

        distill.run_shard(ctx, shard)
        return
    extract.run(ctx, shard)
    score.run(ctx, shard)


def main(argv: list[str] | None = None) -> int:
    return runner.run_stage("shard", lambda ctx: run(ctx, ctx.args.required_shard("shard")), argv)


if __name__ == "__main__":
    raise SystemExit(main())
