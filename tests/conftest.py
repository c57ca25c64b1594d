"""Shared fixtures: a real S3 server (SeaweedFS on 127.0.0.1) for the whole session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.support.s3server import SeaweedS3


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 server per test session; its log stays in pytest's tmp dir."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> tuple[SeaweedS3, str]:
    """A fresh bucket, with AWS_* / DSEL_S3_ENDPOINT pointing boto3 at the test server."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    # A developer's ~/.aws profile must not change what the tests talk to.
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    bucket = s3_server.make_bucket(f"test-{uuid.uuid4().hex[:16]}")
    return s3_server, bucket


@pytest.fixture(scope="session", autouse=True)
def isolated_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests build and download models into a session tmp dir, never into ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DSEL_CACHE_DIR", str(tmp_path_factory.mktemp("model-cache")))
        yield
