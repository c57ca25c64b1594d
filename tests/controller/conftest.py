"""Fixtures for operator tests: the API emulator, a kubeconfig for it, an API client."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import kmock
import pytest
import yaml
import pytest_asyncio

from selection.crd import build_crd
from tests.controller.harness import CLIENT_TOKEN, write_kubeconfig
from tests.support.kube_emulator import KubeEmulator


@pytest_asyncio.fixture
async def kube() -> AsyncIterator[KubeEmulator]:
    """A fresh KubeEmulator on 127.0.0.1 (random port) with the DataSelection CRD installed.

    strict: a request the emulator failed on (a 500, not an API error it answered) fails the test.
    """
    async with KubeEmulator(strict=True) as emulator, kmock.Server(emulator):
        emulator.declare(build_crd())
        yield emulator


@pytest.fixture
def kubeconfig(kube: KubeEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$KUBECONFIG pointing at the emulator; operator settings from a clean DSEL_* environment."""
    path = write_kubeconfig(tmp_path / "kubeconfig", str(kube.url).rstrip("/"))
    monkeypatch.setenv("KUBECONFIG", str(path))
    for name in ("DSEL_WORKER_IMAGE", "DSEL_DEFAULT_STORAGE_URI", "DSEL_S3_ENDPOINT", "DSEL_S3_REGION",
                 "DSEL_S3_CREDENTIALS_SECRET", "DSEL_LOG_LEVEL", "DSEL_WORKER_SERVICE_ACCOUNT",
                 "DSEL_JOB_TTL_SECONDS", "DSEL_METRICS_ADDRESS", "DSEL_POD_START_GRACE_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DSEL_METRICS_PORT", "0")
    monkeypatch.setenv("DSEL_RESYNC_SECONDS", "2")
    return path


@pytest.fixture
def api(kubeconfig: Path) -> Iterator[object]:
    """A `kubernetes` ApiClient for the emulator (as the test, not the operator: its own token);
    call it via asyncio.to_thread (it blocks)."""
    import kubernetes

    server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    own = write_kubeconfig(kubeconfig.with_name("client-kubeconfig"), server, token=CLIENT_TOKEN)
    client = kubernetes.config.new_client_from_config(config_file=str(own))
    with contextlib.closing(client):
        yield client


@pytest_asyncio.fixture
async def s3(kube: KubeEmulator, s3_bucket: tuple) -> AsyncIterator[dict]:
    """A fresh S3 bucket and the Secret with its credentials in the emulator's default namespace."""
    from tests.controller.harness import credentials_secret

    server, bucket = s3_bucket
    # The pods' credentials, not the operator's own (those are in this process's AWS_* env).
    async with kube.post("/api/v1/namespaces/default/secrets",
                         json=credentials_secret(*server.identity("pods"))) as response:
        if response.status != 201:
            raise RuntimeError(f"cannot create the credentials Secret: {response.status} {await response.text()}")
    yield {"server": server, "bucket": bucket, "endpoint": server.endpoint_url, "uri": f"s3://{bucket}/dsel",
           "secret_key": server.identity("pods")[1]}
