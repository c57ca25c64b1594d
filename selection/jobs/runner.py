"""Shared entrypoint plumbing: read the arguments, run a stage, turn known errors into exit codes.

Exit 2 means deterministic bad input: the Job's pod failure policy fails at once, since a retry
would fail the same way. A network fault (S3 unreachable, 5xx or SlowDown, a hub 429) is not bad
input: the stage is retried inside the pod with backoff (stages resume from their committed
artifacts), and if the fault outlasts that, the pod exits EXIT_RETRYABLE, which the Job retries.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from selection import artifacts, data, spec, storage
from selection.contract import EXIT_BAD_INPUT, EXIT_RETRYABLE, JobArgs, JobArgumentError, read_job_args
from selection.jobs.context import StageContext
from selection.models import ModelLoadError
from selection.output import OutputError
from selection.reduce import ReductionError
from selection.redact import redact

EXIT_UNEXPECTED = 1  # Kubernetes retries it (backoffLimitPerIndex): it may be transient
# In-pod retries of a stage that hit a transient fault, and the first wait (doubled each time,
# with jitter, capped): about two minutes in all before the pod gives up with EXIT_RETRYABLE.
RETRY_ATTEMPTS_ENV, DEFAULT_RETRY_ATTEMPTS = "DSEL_RETRY_ATTEMPTS", 4
RETRY_BACKOFF_ENV, DEFAULT_RETRY_BACKOFF_S = "DSEL_RETRY_BACKOFF_SECONDS", 5.0
MAX_BACKOFF_S = 60.0
# S3 error codes that mean "try again later", whatever their HTTP status.
_TRANSIENT_S3_CODES = frozenset({
    "SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError", "Throttling",
    "ThrottlingException", "RequestLimitExceeded", "TooManyRequests", "RequestTimeTooSkewed",
})
TERMINATION_LOG = Path("/dev/termination-log")  # Kubernetes shows it in the pod's status

log = logging.getLogger("dsel.jobs")


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input or a refused rerun: reported in one line, exit code 2."""
    return (
        spec.SpecError, data.DataError, JobArgumentError, storage.StorageError,
        ModelLoadError, artifacts.StaleArtifactError, ReductionError, OutputError,
    )


class _RedactingFilter(logging.Filter):
    """Logs reach `kubectl logs` and log collectors: strip credentials like stderr does."""

    def filter(self, record: logging.LogRecord) -> bool:
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


def _causes(error: BaseException) -> list[BaseException]:
    """The error and everything it was raised from or during (also through `from None`)."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain and len(chain) < 32:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _http_status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    else:  # requests / httpx HTTP errors (huggingface_hub's HfHubHTTPError is one)
        status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def is_transient(error: BaseException) -> bool:
    """True when a network fault, not the input, made the stage fail: retrying may succeed."""
    for cause in _causes(error):
        name = type(cause).__name__
        module = type(cause).__module__ or ""
        if isinstance(cause, (ConnectionError, TimeoutError)):
            return True  # builtin: refused, reset, timed out
        if module.startswith(("botocore", "urllib3", "requests", "httpx", "httpcore")) and (
            "Connection" in name or "Timeout" in name or name in ("ProtocolError", "IncompleteRead")
        ):
            return True
        status = _http_status(cause)
        if status is not None and (status == 429 or status >= 500):
            return True
        response = getattr(cause, "response", None)
        if isinstance(response, dict) and response.get("Error", {}).get("Code") in _TRANSIENT_S3_CODES:
            return True
    return False


def _retry_policy() -> tuple[int, float]:
    try:
        attempts = max(1, int(os.environ.get(RETRY_ATTEMPTS_ENV, DEFAULT_RETRY_ATTEMPTS)))
        backoff = max(0.0, float(os.environ.get(RETRY_BACKOFF_ENV, DEFAULT_RETRY_BACKOFF_S)))
    except ValueError:
        attempts, backoff = DEFAULT_RETRY_ATTEMPTS, DEFAULT_RETRY_BACKOFF_S
    return attempts, backoff


def report_failure(stage: str, message: str) -> None:
    """Print the reason and leave it where Kubernetes puts it into the pod status."""
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
    attempts, backoff = _retry_policy()
    started = time.monotonic()
    for attempt in range(1, attempts + 1):
        try:
            args: JobArgs = read_job_args(argv[0])
            ctx = StageContext(args)
            try:
                body(ctx)
            finally:
                ctx.close()
        except Exception as error:
            if is_transient(error):
                if attempt < attempts:
                    wait = min(MAX_BACKOFF_S, backoff * 2 ** (attempt - 1)) * random.uniform(0.8, 1.2)
                    log.warning("stage %s: transient fault (attempt %d of %d), retrying in %.1f s: %s",
                                stage, attempt, attempts, wait, redact(str(error)))
                    time.sleep(wait)
                    continue
                report_failure(stage, f"{error} (a transient fault, still failing after {attempts} attempts)")
                return EXIT_RETRYABLE
            if isinstance(error, errors):
                report_failure(stage, str(error))
                return EXIT_BAD_INPUT
            # A bug: retried by Kubernetes (exit 1), but never printed with secrets.
            print(redact(traceback.format_exc()), file=sys.stderr, end="", flush=True)
            report_failure(stage, f"unexpected {type(error).__name__}: {error}")
            return EXIT_UNEXPECTED
        break
    log.info("stage %s finished in %.1f s", stage, time.monotonic() - started)
    return 0
