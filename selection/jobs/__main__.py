"""`python -m selection.jobs <stage> <args.json>`: the worker image's entrypoint."""

from __future__ import annotations

import sys

from selection.jobs import extract, reduce, score, shard, warmup

STAGES = {"warmup": warmup.main, "extract": extract.main, "score": score.main, "shard": shard.main,
          "reduce": reduce.main}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in STAGES:
        print(f"usage: python -m selection.jobs {{{','.join(STAGES)}}} <args.json>", file=sys.stderr)
        return 2
    return STAGES[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
