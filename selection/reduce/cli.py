"""`dsel reduce`: select training examples from an attribution matrix file.

Wired into `dsel` by `add_reduce_parser`; also runs alone as `python -m selection.reduce.cli`.
Exit status: 0 on success, 2 on bad input (with a message naming the option, file and place).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from selection.contract import EXIT_BAD_INPUT
from selection.output import OutputError, check_output_path, write_output
from selection.reduce import ReductionError, load_matrix, load_tasks, reduce_matrix, resolve_budget
from selection.reduce.base import GRANULARITIES
from selection.reduce.registry import ALL_METHODS
from selection.redact import redact

# What --budget accepts, before Python's int()/Decimal() (which take '1_0' and non-ASCII digits).
_BUDGET_TEXT = re.compile(r"^\s*(?:[0-9]+|[0-9]*\.[0-9]+(?:[eE][-+]?[0-9]+)?|[0-9]+(?:\.[0-9]*)?[eE][-+]?[0-9]+)\s*$", re.ASCII)

DESCRIPTION = """\
Select training examples from an attribution matrix A (N training examples x M validation
examples) with one of the reductions of docs/algorithms.md §9-§14, and write the ordered
selection as JSON. The result is exactly that of the plain loop (kept in selection.reduce.naive
as the oracle), computed much faster."""

EPILOG = """\
inputs:
  --matrix   a .npy file holding an N x M float16, float32 or float64 matrix (C or Fortran
             order), memory-mapped and read in blocks; or a directory of row-shard .npy files
             (directly inside it, symlinks followed), concatenated in file-name order - row
             order when shard numbers are zero-padded, as the pipeline writes them
             (shard-00000-of-00004.npy, ...). Every entry must be finite.
  --tasks    a UTF-8 text file with one task label per line, line j labelling column j of A
             (M lines; surrounding whitespace is stripped; blank lines are errors).

methods:
  bids    BIDS: z-score each column of A over the N examples (population std; a constant
          column becomes 0), then repeat B times: pick the unselected example maximizing
          max_j (Ã_ij - r_j), where r is the mean of the rows picked so far (ties: lowest
          index). --granularity task first averages Ã's columns within each task;
          --no-normalize skips the z-scores; --no-iterative keeps r = 0.
  less    LESS task-max: score s_i = max over tasks of the mean of A_ij over the task's
          columns (raw A); the B highest scores (ties: lowest index).
  quota   round robin over tasks in sorted-name order, each taking its highest remaining
          example by its task-mean Ã (ties: lowest index), until B: floor(B/K) or one more
          per task.
  random  numpy.random.default_rng(SEED).choice(N, size=B, replace=False), in drawn order.
  influence-distillation
          round robin over the M columns of A as is (Influence Distillation's selection, for
          its distilled matrix): each round visits the columns in a fresh order
          numpy.random.default_rng(SEED).permutation(M); each column takes its highest
          not-yet-selected example (ties: lowest index), until B are selected.
  All arithmetic is float64 (see selection/reduce/normalize.py for its exact definition).

output (JSON, to --output or standard output):
  {"method": ..., "budget": B, "indices": [selected rows of A, 0-based, in selection order],
   "composition": {task: how many selected examples have their largest task-mean Ã in that
   task (ties: first task by name); every task listed},
   "parameters": {"method": ..., and the switches that applied}}

exit status: 0 success; 2 bad input (missing or unreadable file, matrix that is not 2-D or
not float, NaN/inf (first one named by row and column), task count != matrix columns, budget
out of range, unknown method)."""


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; seeds are integers >= 0")
    return value


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--matrix", required=True, metavar="PATH",
        help="attribution matrix: N x M .npy file, or directory of row-shard .npy files",
    )
    parser.add_argument(
        "--tasks", required=True, metavar="PATH", help="text file, one task label per matrix column"
    )
    parser.add_argument(
        "--method", choices=ALL_METHODS, default="bids", help="reduction method (default: %(default)s)"
    )
    parser.add_argument(
        "--budget", required=True, metavar="B",
        help=(
            "how many examples: a fraction in (0, 1] written with a decimal point (count = "
            "floor(fraction x N), at least 1), or an integer count in [1, N]"
        ),
    )
    parser.add_argument(
        "--output", metavar="PATH", default="-",
        help="where to write the selection JSON (written atomically; default: standard output)",
    )
    bids = parser.add_argument_group("bids switches (ignored by the other methods)")
    bids.add_argument(
        "--granularity", choices=GRANULARITIES, default="instance",
        help=(
            "balance over validation examples (instance: the M columns) or over tasks (task: "
            "the K task-mean columns); default: %(default)s"
        ),
    )
    bids.add_argument(
        "--no-normalize", dest="normalize", action="store_false",
        help="ablation: run on raw A instead of column z-scores",
    )
    bids.add_argument(
        "--no-iterative", dest="iterative", action="store_false",
        help="ablation: keep r = 0 (pick the B largest row maxima)",
    )
    parser.add_argument(
        "--seed", type=_seed, default=0,
        help="seed of the random method and of the influence-distillation round-robin orders (default: %(default)s)"
    )


def add_reduce_parser(subparsers) -> argparse.ArgumentParser:
    """Add `reduce` to a `dsel` argparse subparsers object; its handler is `run_reduce`."""
    parser = subparsers.add_parser(
        "reduce",
        help="select examples from an attribution matrix (bids, less, quota, random, influence-distillation)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    parser.set_defaults(handler=run_reduce)
    return parser


def _fail(message: str) -> int:
    print(redact(f"dsel reduce: error: {message}"), file=sys.stderr)
    return EXIT_BAD_INPUT


def run_reduce(args: argparse.Namespace) -> int:
    """Run `dsel reduce` for parsed arguments; returns the exit status."""
    started = time.perf_counter()
    output = None if args.output in (None, "-") else Path(args.output)
    if output is not None and not output.parent.is_dir():
        return _fail(f"--output {output}: directory {output.parent} does not exist")
    try:
        if output is not None:
            check_output_path(output)
    except OutputError as error:
        return _fail(str(error))
    if not _BUDGET_TEXT.match(str(args.budget)):
        return _fail(
            f"--budget {args.budget!r} is not a number written in ASCII digits: a count like 150 "
            "or a fraction like 0.05 (no '_', no other digits)"
        )
    try:
        matrix = load_matrix(args.matrix)
        tasks = load_tasks(args.tasks)
    except ReductionError as error:
        option = "--matrix" if error.input == "matrix" else "--tasks"
        return _fail(f"{option} {error}")
    n, m = matrix.shape
    if len(tasks) != m:
        return _fail(
            f"--tasks {args.tasks} has {len(tasks)} labels (lines) but --matrix {args.matrix} "
            f"has {m} columns (shape {n} x {m}); give one task label per column"
        )
    try:
        budget = resolve_budget(args.budget, n)
    except ReductionError as error:
        return _fail(f"--{error}")  # "--budget 0 must be ..."
    try:
        result = reduce_matrix(
            matrix, tasks, method=args.method, budget=budget, granularity=args.granularity,
            normalize=args.normalize, iterative=args.iterative, seed=args.seed,
        )
    except ReductionError as error:
        where: dict[str | None, str] = {"matrix": f"--matrix {args.matrix}: ", "tasks": f"--tasks {args.tasks}: "}
        return _fail(f"{where.get(error.input, '')}{error}")
    text = json.dumps(result.to_json_dict()) + "\n"
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        try:
            write_output(output, text)
        except OutputError as error:
            return _fail(str(error))
    print(
        f"dsel reduce: {result.method} selected {result.budget} of {n} examples "
        f"in {time.perf_counter() - started:.2f} s"
        + (f" -> {output}" if output is not None else ""),
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dsel reduce",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    return run_reduce(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
