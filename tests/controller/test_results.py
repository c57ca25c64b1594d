"""The operator's read of selection.json, with S3 clients reused across reads (real SeaweedFS)."""

from __future__ import annotations

import json

import pytest

from selection import artifacts, storage
from selection.contract import StorageLocation
from selection_operator import results

DOCUMENT = {"method": "bids", "budget": 2, "indices": [3, 1], "composition": {"t": 2}, "poolSize": 4}


def _keys(server, identity: str) -> dict[str, str]:
    access, secret = server.identity(identity)
    return {"AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret}


@pytest.fixture
def written(s3_bucket) -> tuple:
    server, bucket = s3_bucket
    store = storage.open_store(f"s3://{bucket}/sel")
    storage.commit_artifact(store, artifacts.SELECTION_PREFIX,
                            {artifacts.SELECTION_FILE: json.dumps(DOCUMENT).encode()}, {"fingerprint": "t"})
    return server, StorageLocation(uri=f"s3://{bucket}/sel", endpoint=server.endpoint_url, region="us-east-1")


def test_one_client_per_endpoint_region_and_credentials(written) -> None:
    server, target = written
    clients = results.S3Clients()
    pods = _keys(server, "pods")
    first = clients.client(target.endpoint, target.region, pods)
    assert clients.client(target.endpoint, target.region, dict(pods)) is first  # equal keys: reused
    assert clients.client(target.endpoint, target.region, None) is not first  # the operator's own
    assert clients.client(target.endpoint, "eu-west-1", pods) is not first
    assert clients.client(target.endpoint, target.region, {**pods, "AWS_SECRET_ACCESS_KEY": "rotated"}) is not first
    assert len(clients) == 4


def test_least_recently_used_client_goes_beyond_the_limit(written) -> None:
    server, target = written
    clients = results.S3Clients(kept=2)
    a = clients.client(target.endpoint, "r-a", None)
    b = clients.client(target.endpoint, "r-b", None)
    assert clients.client(target.endpoint, "r-a", None) is a  # now b is the least recently used
    clients.client(target.endpoint, "r-c", None)
    assert len(clients) == 2
    assert clients.client(target.endpoint, "r-a", None) is a
    assert clients.client(target.endpoint, "r-b", None) is not b


def test_the_key_holds_no_secret(written) -> None:
    server, target = written
    clients = results.S3Clients()
    keys = _keys(server, "pods")
    clients.client(target.endpoint, target.region, keys)
    assert keys["AWS_SECRET_ACCESS_KEY"] not in repr(list(clients._clients))


def test_reads_reuse_the_client_and_changed_credentials_take_effect(written) -> None:
    server, target = written
    clients = results.S3Clients()
    pods, outsider = _keys(server, "pods"), _keys(server, "outsider")
    assert results.read_selection(target, pods, clients).document == DOCUMENT
    assert results.read_selection(target, pods, clients).document == DOCUMENT
    assert len(clients) == 1
    # The Secret now holds keys that may not read the bucket: the read uses them, not the cached client.
    denied = results.read_selection(target, outsider, clients)
    assert denied.document is None and "access denied" in (denied.error or "")
    assert outsider["AWS_SECRET_ACCESS_KEY"] not in (denied.error or "")
    assert results.read_selection(target, pods, clients).document == DOCUMENT
    assert len(clients) == 2


def test_a_bad_endpoint_is_a_readable_error(written) -> None:
    _, target = written
    read = results.read_selection(StorageLocation(uri=target.uri, endpoint="ftp://nowhere"), None, results.S3Clients())
    assert read.document is None and "ftp://nowhere" in (read.error or "")


def test_a_missing_bucket_is_named_without_a_bucket_check(written) -> None:
    server, target = written
    missing = StorageLocation(uri="s3://dsel-no-such-bucket/sel", endpoint=target.endpoint, region=target.region)
    read = results.read_selection(missing, _keys(server, "pods"), results.S3Clients())
    assert read.document is None and "dsel-no-such-bucket" in (read.error or "") and "does not exist" in read.error
