"""Shared entrypoint plumbing: read the arguments, run a stage, turn known errors into exit 2."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

from selection.contract import EXIT_BAD_INPUT, JobArgs, JobArgumentError, read_job_args
from selection.jobs.context import StageContext

EXIT_UNEXPECTED = 1  # Kubernetes retries it (backoffLimitPerIndex): it may be transient
TERMINATION_LOG = Path("/dev/termination-log")  # Kubernetes shows it in the pod's status

log = logging.getLogger("dsel.jobs")


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input or a refused rerun: reported in one line, exit code 2."""
    from selection import artifacts, data, spec, storage
    from selection.models import ModelLoadError
    from selection.output import OutputError
    from selection.reduce import ReductionError

    return (
        spec.SpecError, data.DataError, JobArgumentError, storage.StorageError,
        ModelLoadError, artifacts.StaleArtifactError, ReductionError, OutputError,
    )


class _RedactingFilter(logging.Filter):
    """Logs reach `kubectl logs` and log collectors: strip credentials like stderr does."""

    def filter(self, record: logging.LogRecord) -> bool:
        from selection.redact import redact

        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install_log_redaction() -> None:
    """Redact every record the root handlers emit (idempotent)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _RedactingFilter) for f in handler.filters):
            handler.addFilter(_RedactingFilter())


def report_failure(stage: str, message: str) -> None:
    """Print the reason and leave it where Kubernetes puts it into the pod status."""
    from selection.redact import redact

    line = redact(f"dsel {stage}: error: {message}")
    print(line, file=sys.stderr, flush=True)
    try:
        if TERMINATION_LOG.parent.is_dir() and TERMINATION_LOG.exists():
            TERMINATION_LOG.write_text(line[-4000:])
    except OSError:
        pass


def run_stage(stage: str, body: Callable[[StageContext], Any], argv: list[str] | None = None) -> int:
    """`python -m selection.jobs.<stage> <args.json>`: exit 0 on success, 2 on bad input."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_redaction()
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(f"usage: python -m selection.jobs.{stage} <args.json | inline JSON>", file=sys.stderr)
        return EXIT_BAD_INPUT
    errors = user_errors()
    try:
        args: JobArgs = read_job_args(argv[0])
        ctx = StageContext(args)
        started = time.monotonic()
        try:
            body(ctx)
        finally:
            ctx.close()
    except errors as error:
        report_failure(stage, str(error))
        return EXIT_BAD_INPUT
    except Exception as error:  # a bug or an outage: retried (exit 1), but never printed with secrets
        import traceback

        from selection.redact import redact

        print(redact(traceback.format_exc()), file=sys.stderr, end="", flush=True)
        report_failure(stage, f"unexpected {type(error).__name__}: {error}")
        return EXIT_UNEXPECTED
    log.info("stage %s finished in %.1f s", stage, time.monotonic() - started)
    return 0
