"""Credentials never reach a message: URLs with userinfo are refused, and every printed line is redacted."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from selection import storage
from selection.redact import redact
from selection.reduce.cli import main as reduce_main

SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"
KEY_ID = "AKIAIOSFODNN7EXAMPLE"


@pytest.mark.parametrize("text", [
    f"cannot reach http://{KEY_ID}:{SECRET}@host:9000/ now",
    f"s3://{KEY_ID}:{SECRET}@bucket/x is bad",
    f"https://h/o?X-Amz-Credential={KEY_ID}%2F2026&X-Amz-Signature={SECRET}",
    f"aws_secret_access_key={SECRET} and id {KEY_ID}",
    f"Authorization: AWS4-HMAC-SHA256 {SECRET}",
    f"'password': '{SECRET}'",
])
def test_redact_removes_userinfo_and_known_secret_shapes(text):
    cleaned = redact(text)
    assert SECRET not in cleaned and KEY_ID not in cleaned
    assert "***" in cleaned


def test_redact_keeps_ordinary_messages():
    message = "s3://dsel-runs/demo/selection: artifact not finished at http://127.0.0.1:9000 (line 3)"
    assert redact(message) == message


@pytest.mark.parametrize("source", ["DSEL_S3_ENDPOINT", "AWS_ENDPOINT_URL"])
def test_endpoint_from_the_environment_with_credentials_is_refused(monkeypatch, source):
    monkeypatch.delenv("DSEL_S3_ENDPOINT", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv(source, f"http://{KEY_ID}:{SECRET}@127.0.0.1:9/")
    with pytest.raises(storage.StorageError) as caught:
        storage.open_store("s3://bucket/prefix")
    message = str(caught.value)
    assert message.startswith(f"{source}: http://***@127.0.0.1:9/ embeds credentials")
    assert SECRET not in message and KEY_ID not in message


def test_job_entrypoint_refuses_and_redacts_an_endpoint_with_credentials(tmp_path):
    """What a pod prints (and Kubernetes copies into the pod status) carries no secret."""
    from tests.jobs.conftest import demo_resource

    resource = demo_resource().to_manifest()
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"resource": resource, "storage": {"uri": "s3://dsel-runs/demo"}}))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DSEL_S3_ENDPOINT": f"http://{KEY_ID}:{SECRET}@127.0.0.1:9/",
           "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "selection.jobs", "reduce", str(args)],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2, result.stderr
    assert "DSEL_S3_ENDPOINT: http://***@127.0.0.1:9/ embeds credentials" in result.stderr
    assert SECRET not in result.stderr + result.stdout and KEY_ID not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_reduce_cli_errors_are_redacted(tmp_path, capsys):
    missing = f"http://{KEY_ID}:{SECRET}@host/m.npy"
    tasks = tmp_path / "tasks.txt"
    tasks.write_text("a\n")
    assert reduce_main(["--matrix", missing, "--tasks", str(tasks), "--budget", "1"]) == 2
    err = capsys.readouterr().err
    assert "--matrix" in err and SECRET not in err and KEY_ID not in err


def test_stage_logs_are_redacted(caplog):
    from selection.jobs.runner import _RedactingFilter

    record = logging.LogRecord("dsel", logging.INFO, __file__, 1, "endpoint %s", (f"http://u:{SECRET}@h/",), None)
    assert _RedactingFilter().filter(record)
    assert record.getMessage() == "endpoint http://***@h/"


def test_unexpected_stage_error_is_redacted_and_retryable(tmp_path, monkeypatch, capsys):
    """Job pods use FallbackToLogsOnError: a traceback could otherwise carry a secret into status."""
    from selection.jobs import runner
    from tests.jobs.conftest import demo_resource

    args = tmp_path / "args.json"
    args.write_text(json.dumps({"resource": demo_resource().to_manifest(), "storage": {"uri": str(tmp_path / "s")}}))
    termination = tmp_path / "termination-log"
    termination.write_text("")
    monkeypatch.setattr(runner, "TERMINATION_LOG", termination)

    def body(ctx):
        raise RuntimeError(f"connection to https://user:{SECRET}@example.invalid/ reset")

    assert runner.run_stage("warmup", body, [str(args)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError" in err
    assert SECRET not in err and SECRET not in termination.read_text()
    assert termination.read_text() == "dsel warmup: error: unexpected RuntimeError: connection to https://***@example.invalid/ reset"
