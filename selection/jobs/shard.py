"""One shard of the influence method: what each completion of the Indexed extraction Job runs.

Gradient influence extracts then scores the shard; influence distillation computes the shard's
JVP embeddings and its slice of the landmark gradients (`selection.jobs.methods`).
"""

from __future__ import annotations

from selection.jobs import runner
from selection.jobs.context import StageContext
from selection.jobs.methods import method_for


def run(ctx: StageContext, shard: int) -> None:
    method_for(ctx.spec).fill_shard(ctx, shard)


def main(argv: list[str] | None = None) -> int:
    return runner.run_stage("shard", lambda ctx: run(ctx, ctx.args.required_shard("shard")), argv)


if __name__ == "__main__":
    raise SystemExit(main())
