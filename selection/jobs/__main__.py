"""`python -m selection.jobs <stage> <args.json>`: the worker image's entrypoint."""

from __future__ import annotations

import sys

from selection.contract import ENTRYPOINTS, EXIT_BAD_INPUT
from selection.jobs import extract, reduce, score, shard, warmup

# One main per entrypoint of the contract, in its order.
MAINS = dict(zip(ENTRYPOINTS, (warmup.main, extract.main, score.main, shard.main, reduce.main), strict=True))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in MAINS:
        print(f"usage: python -m selection.jobs {{{','.join(ENTRYPOINTS)}}} <args.json>", file=sys.stderr)
        return EXIT_BAD_INPUT
    return MAINS[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
