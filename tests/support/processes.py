"""Stopping a server process the tests (or a benchmark) started: SIGTERM, a grace, then SIGKILL."""

from __future__ import annotations

import contextlib
import subprocess


def stop_process(process: subprocess.Popen, grace_seconds: float) -> None:
    """Terminate `process`, kill it if it outlives `grace_seconds`, and reap it either way."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait(timeout=10)
