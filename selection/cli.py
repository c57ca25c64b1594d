"""`dsel`: run a selection on this machine, validate specs, reduce a score matrix, print the CRD."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from selection.contract import EXIT_BAD_INPUT, JobArgs, StorageLocation
from selection.crd import add_crd_parser
from selection.jobs.context import StageContext
from selection.output import check_output_path, write_output
from selection.jobs.runner import user_errors
from selection.reduce.cli import add_reduce_parser
from selection.redact import redact
from selection.spec import SpecError, load_selection
from selection.threads import configure_threads


def _summary(document: dict[str, Any]) -> str:
    indices = document["indices"]
    composition = document.get("composition", {})
    width = max((len(task) for task in composition), default=4)
    requested = document.get("requestedBudget", document["budget"])
    budget = f"{requested} -> {document['budget']}" if requested != document["budget"] else requested
    lines = [
        f"Selected {len(indices)} of {document.get('poolSize', '?')} examples "
        f"(method {document['method']}, budget {budget})",
        "Per-task composition (examples closest to each task):",
    ]
    lines += [f"  {task:<{width}}  {count:>6}" for task, count in sorted(composition.items())]
    left_out = [
        f"{len(document[key])} {why}"
        for key, why in (("excludedDuplicates", "exact duplicates"), ("excludedNoAnswer", "without an answer token"))
        if document.get(key)
    ]
    if left_out:
        lines.append(f"Left out before selecting: {', '.join(left_out)} (selection.json lists their lines)")
    lines += _feature_health_lines(document.get("featureHealth"))
    if "artifacts" in document:
        lines.append(f"Artifacts: {document['artifacts']}")
    if "subsetUri" in document:
        lines.append(f"Selected subset (JSONL, in selection order): {document['subsetUri']}")
    head = ", ".join(str(i) for i in indices[:12]) + (", ..." if len(indices) > 12 else "")
    lines.append(f"First indices: {head}")
    return "\n".join(lines)


def _feature_health_lines(health: dict[str, Any] | None) -> list[str]:
    """Per checkpoint: mean pairwise cosine and common-direction share of the training features."""
    if not health:
        return []

    def figure(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    lines = [f"Training-feature health (degenerate above mean pairwise cosine {health['threshold']}):"]
    for c in health["checkpoints"]:
        flag = "  DEGENERATE" if c["degenerate"] else ""
        lines.append(
            f"  checkpoint {c['checkpoint']}: mean pairwise cosine {figure(c['meanPairwiseCosine'])}, "
            f"common-direction share {figure(c['commonDirectionShare'])}{flag}"
        )
    return lines


def _write_output(path: str, document: dict[str, Any]) -> None:
    """Write atomically (a reader never sees a half-written selection); see selection.output."""
    write_output(path, json.dumps(document, indent=2) + "\n", "--output")


@contextmanager
def _naming_spec_file(spec_path: str) -> Iterator[None]:
    """Problems found after parsing (the budget against the pool, LoRA against the model)
    name the spec file too, like the ones the parser finds."""
    try:
        yield
    except SpecError as error:
        if error.source is not None:
            raise
        raise SpecError(error.problems, spec_path) from None


def _run(args: argparse.Namespace) -> int:
    from selection.local import run_selection  # deferred: only `dsel run` needs every stage module

    resource = load_selection(args.spec)
    if args.output:
        check_output_path(args.output, "--output")  # before hours of work, not after
    with _naming_spec_file(args.spec):
        document = run_selection(
            resource,
            storage_uri=args.storage,
            base_dir=Path(args.spec).resolve().parent,
            cache_dir=args.cache_dir,
            progress=not args.quiet,
        )
    if args.output:
        _write_output(args.output, document)
    print(_summary(document))
    if args.output:
        print(f"Selection written to {args.output}")
    warning = (document.get("featureHealth") or {}).get("warning")
    if warning:
        print(f"dsel run: warning: {warning}", file=sys.stderr)
    return 0


def _validate(args: argparse.Namespace) -> int:
    resource = load_selection(args.spec)
    if args.check_data:
        storage = resource.spec.storage
        location = StorageLocation(uri="unused", endpoint=storage.endpoint, region=storage.region)
        ctx = StageContext(JobArgs(resource, location, base_dir=str(Path(args.spec).resolve().parent)))
        try:
            with _naming_spec_file(args.spec):
                budget = ctx.preflight()  # the same checks `dsel run` makes before its first stage
        finally:
            ctx.close()
        print(f"{args.spec}: {len(ctx.train_examples)} training examples, "
              f"{len(ctx.validation_examples)} validation examples, budget {budget} examples")
    sel = resource.spec.selection
    print(f"{args.spec}: valid DataSelection '{resource.name}' (method {sel.method}, budget {sel.budget})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsel",
        description="Pick a capability-balanced subset of an instruction-tuning pool (LESS + BIDS).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", help="run a DataSelection spec on this machine",
        description="Run warmup, gradient extraction, scoring and reduction in this process. "
        "Finished artifacts are reused, so rerunning after an interruption resumes.",
    )
    run.add_argument("spec", help="DataSelection YAML (the same file kubectl applies)")
    run.add_argument("--output", "-o", help="also write selection.json here")
    run.add_argument("--storage", help="artifact root (directory or s3://bucket/prefix); "
                     "default: the spec's storage.uri, else .dsel/<name>")
    run.add_argument("--cache-dir", help="model cache (default $DSEL_CACHE_DIR or ~/.cache/dsel)")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    run.set_defaults(handler=_run)

    validate = commands.add_parser(
        "validate", help="check a spec and report every problem with its field path",
        description="Exit 0 when valid; otherwise list each problem as 'field.path: message', exit 2.",
    )
    validate.add_argument("spec", help="DataSelection YAML")
    validate.add_argument("--check-data", action="store_true", help="also read and check the JSONL files")
    validate.set_defaults(handler=_validate)

    add_reduce_parser(commands)
    add_crd_parser(commands)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    configure_threads()  # before anything imports torch (the stages import it lazily): OpenMP reads these once

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except user_errors() as error:
        print(redact(f"dsel {args.command}: error: {error}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from finished artifacts", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
