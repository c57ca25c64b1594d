"""Network faults are not bad input: a stage retries them in the pod, then exits EXIT_RETRYABLE.

Exit 2 makes the Job's pod failure policy fail the shard for good, so only deterministic bad
input may use it. The faults here are real: a SeaweedFS S3 server behind a fault-injecting
botocore hook (SlowDown 503s), an endpoint nobody listens on, and a Hugging Face hub that
answers 429, reached through transformers in a real stage process."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from selection import spec as spec_module
from selection import storage
from selection.jobs import runner

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo"
SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


def arguments(train: str, validation: str, storage_uri: str, endpoint: str | None, budget: int = 5) -> str:
    resource = spec_module.parse_selection({
        "apiVersion": "dsel.dev/v1alpha1", "kind": "DataSelection", "metadata": {"name": "faults"},
        "spec": {"model": {"source": "tiny:llama-demo"},
                 "data": {"train": train, "validation": [{"task": "arithmetic", "uri": validation}]},
                 "warmup": {"lora": {"r": 8, "alpha": 32}},  # fits the tiny model: 32-wide layers
                 "gradients": {"projectionDim": 512},  # below its 7168 LoRA parameters
                 "selection": {"budget": budget}},
    })
    return json.dumps({"resource": resource.to_manifest(),
                       "storage": {"uri": storage_uri, "endpoint": endpoint, "region": "us-east-1"}})


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runner.RETRY_ATTEMPTS_ENV, "3")
    monkeypatch.setenv(runner.RETRY_BACKOFF_ENV, "0.05")


@pytest.fixture
def demo_bucket(s3_bucket) -> tuple[Any, str]:
    server, bucket = s3_bucket
    client = server.client()
    client.upload_file(str(DEMO / "train.jsonl"), bucket, "demo/train.jsonl")
    client.upload_file(str(DEMO / "validation" / "arithmetic.jsonl"), bucket, "demo/arithmetic.jsonl")
    return server, bucket


def inject_slow_down(monkeypatch: pytest.MonkeyPatch, failures: int) -> list[str]:
    """Every S3 client dsel creates answers its first `failures` requests with 503 SlowDown."""
    from botocore.awsrequest import AWSResponse

    class Raw:
        def stream(self, **_: Any):
            yield SLOW_DOWN

    injected: list[str] = []
    real = storage._make_s3_client

    def faulty(*args: Any, **kwargs: Any) -> Any:
        client = real(*args, **kwargs)

        def before_send(request: Any, **_: Any) -> Any:
            if len(injected) < failures:
                injected.append(request.url)
                return AWSResponse(request.url, 503, {"Content-Type": "application/xml"}, Raw())
            return None

        client.meta.events.register("before-send.s3", before_send)
        return client

    monkeypatch.setattr(storage, "_make_s3_client", faulty)
    return injected


def preflight_stage(document: str) -> int:
    """A real stage body: read and check the pool and validation set from S3."""
    return runner.run_stage("faults", lambda ctx: ctx.preflight(), [document])


def test_slow_down_from_s3_is_retried_in_the_pod_and_the_stage_succeeds(demo_bucket, monkeypatch, fast_retries,
                                                                         caplog):
    server, bucket = demo_bucket
    # More faults than botocore's own attempts per request: the stage itself must retry.
    injected = inject_slow_down(monkeypatch, failures=storage.S3_MAX_ATTEMPTS + 1)
    document = arguments(f"s3://{bucket}/demo/train.jsonl", f"s3://{bucket}/demo/arithmetic.jsonl",
                         f"s3://{bucket}/artifacts", server.endpoint_url)
    assert preflight_stage(document) == 0
    assert len(injected) == storage.S3_MAX_ATTEMPTS + 1
    assert "transient fault (attempt 1 of 3)" in caplog.text


def test_lasting_slow_down_exits_retryable_not_bad_input(demo_bucket, monkeypatch, fast_retries, capsys):
    server, bucket = demo_bucket
    inject_slow_down(monkeypatch, failures=10**6)
    document = arguments(f"s3://{bucket}/demo/train.jsonl", f"s3://{bucket}/demo/arithmetic.jsonl",
                         f"s3://{bucket}/artifacts", server.endpoint_url)
    assert preflight_stage(document) == runner.EXIT_RETRYABLE != runner.EXIT_BAD_INPUT
    assert "transient fault, still failing after 3 attempts" in capsys.readouterr().err


def test_unreachable_endpoint_exits_retryable(tmp_path, monkeypatch, fast_retries):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    document = arguments("s3://bucket/train.jsonl", "s3://bucket/v.jsonl", str(tmp_path / "store"), closed)
    monkeypatch.setenv("DSEL_S3_ENDPOINT", closed)
    assert preflight_stage(document) == runner.EXIT_RETRYABLE


def test_deterministic_bad_input_still_exits_2_at_once(demo_bucket, monkeypatch, fast_retries, caplog):
    server, bucket = demo_bucket
    document = arguments(f"s3://{bucket}/demo/train.jsonl", f"s3://{bucket}/demo/arithmetic.jsonl",
                         f"s3://{bucket}/artifacts", server.endpoint_url, budget=10**6)  # more than the pool
    assert preflight_stage(document) == runner.EXIT_BAD_INPUT
    missing = arguments(f"s3://{bucket}/demo/nothing.jsonl", f"s3://{bucket}/demo/arithmetic.jsonl",
                        f"s3://{bucket}/artifacts", server.endpoint_url)
    assert preflight_stage(missing) == runner.EXIT_BAD_INPUT
    assert "transient fault" not in caplog.text


class TooManyRequests(http.server.BaseHTTPRequestHandler):
    """A Hugging Face hub that is rate limiting everyone."""

    requests = 0

    def do_GET(self) -> None:
        self._answer()

    def do_HEAD(self) -> None:
        self._answer()

    def _answer(self) -> None:
        type(self).requests += 1
        self.send_response(429)
        self.send_header("Retry-After", "0")
        self.send_header("Content-Length", "2")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(b"{}")

    def log_message(self, *_: Any) -> None:
        pass


def test_hub_rate_limit_is_retried_then_exits_retryable(tmp_path):
    hub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TooManyRequests)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    try:
        resource = spec_module.parse_selection({
            "apiVersion": "dsel.dev/v1alpha1", "kind": "DataSelection", "metadata": {"name": "hub"},
            "spec": {"model": {"source": "example-org/some-model"},
                     "data": {"train": str(DEMO / "train.jsonl"),
                              "validation": [{"task": "arithmetic", "uri": str(DEMO / "validation" / "arithmetic.jsonl")}]},
                     "warmup": {"fraction": 0.1, "epochs": 1}, "selection": {"budget": 5}},
        })
        args = tmp_path / "args.json"
        args.write_text(json.dumps({"resource": resource.to_manifest(), "storage": {"uri": str(tmp_path / "store")}}))
        env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{hub.server_port}", "HF_HOME": str(tmp_path / "hf"),
               "DSEL_CACHE_DIR": str(tmp_path / "cache"), runner.RETRY_ATTEMPTS_ENV: "2",
               runner.RETRY_BACKOFF_ENV: "0.05", "OMP_NUM_THREADS": "1"}
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            env.pop(name, None)
        done = subprocess.run([sys.executable, "-m", "selection.jobs", "warmup", str(args)], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=600)
    finally:
        hub.shutdown()
        hub.server_close()
    assert done.returncode == runner.EXIT_RETRYABLE, done.stderr[-2000:]
    assert "transient fault (attempt 1 of 2)" in done.stderr
    assert TooManyRequests.requests >= 2  # asked again after the first refusal
