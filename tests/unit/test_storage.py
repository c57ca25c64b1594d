"""Object stores and committed artifacts, against a local directory and a real S3 server."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from selection import storage
from tests.support.s3server import SeaweedS3

BAD_KEYS = ["../x", "a/../../x", "a/..", "..", "/etc/passwd", "a\\b", ""]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> storage.ObjectStore:
    """The same behaviour is required of both stores; S3 gets a key prefix to exercise it."""
    if request.param == "local":
        return storage.open_store(str(tmp_path / "store"))
    _server, bucket = request.getfixturevalue("s3_bucket")
    return storage.open_store(f"s3://{bucket}/root")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -------------------------------------------------------------------------------------------
# Store behaviour


def test_put_get_exists(store: storage.ObjectStore) -> None:
    assert not store.exists("a/b/c.bin")
    store.put_bytes("a/b/c.bin", b"\x00payload")
    assert store.exists("a/b/c.bin")
    assert store.get_bytes("a/b/c.bin") == b"\x00payload"
    assert not store.exists("a/b")  # a directory-like prefix is not a key


def test_overwrite_replaces_content(store: storage.ObjectStore) -> None:
    store.put_bytes("k.txt", b"first version, longer")
    store.put_bytes("k.txt", b"second")
    assert store.get_bytes("k.txt") == b"second"
    assert store.list_keys() == ["k.txt"]


def test_put_file_get_file_streams_large_files(
    store: storage.ObjectStore, tmp_path: Path
) -> None:
    # 9 MiB is above boto3's 8 MiB multipart threshold, so S3 takes the multipart path.
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(1024) * (9 * 1024))
    store.put_file("shards/big.bin", source)
    target = tmp_path / "out" / "nested" / "big.bin"
    store.get_file("shards/big.bin", target)
    assert target.read_bytes() == source.read_bytes()
    assert [p.name for p in target.parent.iterdir()] == ["big.bin"]  # no temp files left


def test_list_keys_is_sorted_relative_and_directory_like(store: storage.ObjectStore) -> None:
    for key in ["b", "ab/3", "a/2", "a/1", "a/sub/4"]:
        store.put_bytes(key, key.encode())
    assert store.list_keys() == ["a/1", "a/2", "a/sub/4", "ab/3", "b"]
    assert store.list_keys("a") == ["a/1", "a/2", "a/sub/4"]  # not "ab/3"
    assert store.list_keys("a/") == ["a/1", "a/2", "a/sub/4"]
    assert store.list_keys("a/sub") == ["a/sub/4"]
    assert store.list_keys("missing") == []


def test_delete_prefix_and_delete(store: storage.ObjectStore) -> None:
    for key in ["a/1", "a/sub/2", "ab/3", "b"]:
        store.put_bytes(key, b"x")
    store.delete_prefix("a")
    assert store.list_keys() == ["ab/3", "b"]
    store.delete_prefix("nothing/here")  # deleting nothing is fine
    store.delete("b")
    store.delete("b")  # idempotent
    assert store.list_keys() == ["ab/3"]
    store.delete_prefix("")
    assert store.list_keys() == []


def test_missing_key_raises_artifact_not_found(
    store: storage.ObjectStore, tmp_path: Path
) -> None:
    with pytest.raises(storage.ArtifactNotFound, match="nope/x.bin"):
        store.get_bytes("nope/x.bin")
    existing = tmp_path / "keep.bin"
    existing.write_bytes(b"old")
    with pytest.raises(storage.ArtifactNotFound, match="nope/x.bin"):
        store.get_file("nope/x.bin", existing)
    assert existing.read_bytes() == b"old"  # a failed download leaves the target alone
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["keep.bin"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_keys_escaping_the_root_are_rejected(store: storage.ObjectStore, key: str) -> None:
    message = re.escape(f"storage key '{key}' escapes the store root {store.uri}")
    for call in (
        lambda: store.put_bytes(key, b"x"),
        lambda: store.get_bytes(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
    ):
        with pytest.raises(storage.StorageError, match=message):
            call()
    if key:  # '' is the whole store for listing and deleting
        with pytest.raises(storage.StorageError, match="escapes the store root"):
            store.list_keys(key)
        with pytest.raises(storage.StorageError, match="escapes the store root"):
            store.delete_prefix(key)


def test_uri_for(store: storage.ObjectStore, tmp_path: Path) -> None:
    if isinstance(store, storage.LocalStore):
        assert store.uri == (tmp_path / "store").as_uri()
        assert store.uri_for("a/b") == (tmp_path / "store" / "a" / "b").as_uri()
    else:
        assert store.uri.startswith("s3://test-") and store.uri.endswith("/root")
        assert store.uri_for("a/b") == f"{store.uri}/a/b"
    assert store.uri_for("") == store.uri


# -------------------------------------------------------------------------------------------
# Local store specifics


def test_local_writes_are_atomic_for_readers(tmp_path: Path) -> None:
    local = storage.LocalStore(tmp_path)
    payloads = [b"A" * 2_000_000, b"B" * 1_000_000]
    local.put_bytes("shard.bin", payloads[0])
    seen: set[bytes] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            data = local.get_bytes("shard.bin")
            seen.add(data[:1] + str(len(data)).encode())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(60):
            local.put_bytes("shard.bin", payloads[i % 2])
    finally:
        stop.set()
        reader.join()
    assert seen <= {b"A2000000", b"B1000000"}
    assert local.list_keys() == ["shard.bin"]


def test_local_failed_write_keeps_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = storage.LocalStore(tmp_path)
    local.put_bytes("x.json", b"old")

    def crash(*_args: object) -> None:
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(storage.os, "replace", crash)
    with pytest.raises(storage.StorageError, match="simulated crash"):
        local.put_bytes("x.json", b"new")
    monkeypatch.undo()
    assert local.get_bytes("x.json") == b"old"
    assert sorted(os.listdir(tmp_path)) == ["x.json"]


def test_local_symlink_out_of_root_is_rejected(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    local = storage.LocalStore(root)
    with pytest.raises(storage.StorageError, match="'link/secret' escapes the store root"):
        local.get_bytes("link/secret")
    with pytest.raises(storage.StorageError, match="escapes the store root"):
        local.put_bytes("link/new", b"x")
    assert not (outside / "new").exists()


def test_open_store_local_forms(tmp_path: Path) -> None:
    by_path = storage.open_store(str(tmp_path / "s"))
    by_uri = storage.open_store((tmp_path / "s").as_uri())
    assert isinstance(by_path, storage.LocalStore) and by_path.uri == by_uri.uri
    by_path.put_bytes("k", b"v")
    assert by_uri.get_bytes("k") == b"v"
    assert isinstance(by_path, storage.ObjectStore)
    with pytest.raises(storage.StorageError, match="unsupported storage URI 'gs://b/x'"):
        storage.open_store("gs://b/x")
    with pytest.raises(storage.StorageError, match="invalid S3 bucket name 'ab'"):
        storage.open_store("s3://ab/prefix")


# -------------------------------------------------------------------------------------------
# S3 specifics


def test_unreachable_endpoint_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unused")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unused")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("DSEL_S3_ENDPOINT", endpoint)
    started = time.monotonic()
    with pytest.raises(storage.StorageError, match=f"cannot reach S3 endpoint {endpoint}"):
        storage.open_store("s3://some-bucket/x")
    assert time.monotonic() - started < 10


def test_endpoint_argument_and_dsel_variable_take_precedence(
    s3_bucket: tuple[SeaweedS3, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, bucket = s3_bucket
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    store = storage.open_store(f"s3://{bucket}")  # DSEL_S3_ENDPOINT (set by the fixture)
    assert store.endpoint_url == server.endpoint_url
    monkeypatch.setenv("DSEL_S3_ENDPOINT", "")
    store = storage.open_store(f"s3://{bucket}", endpoint_url=server.endpoint_url)
    store.put_bytes("k", b"v")


def test_missing_bucket_is_a_clear_error(s3_bucket: tuple[SeaweedS3, str]) -> None:
    server, _bucket = s3_bucket
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(storage.StorageError, match=f"S3 bucket '{missing}' does not exist at"):
        storage.open_store(f"s3://{missing}/p")
    unchecked = storage.S3Store(missing, "p", endpoint_url=server.endpoint_url)
    with pytest.raises(storage.StorageError, match=f"S3 bucket '{missing}' does not exist"):
        unchecked.put_bytes("k", b"v")
    unchecked.ensure_bucket()
    unchecked.ensure_bucket()  # idempotent
    unchecked.put_bytes("k", b"v")
    assert storage.open_store(f"s3://{missing}/p").get_bytes("k") == b"v"


def test_wrong_credentials_are_a_clear_error(
    s3_bucket: tuple[SeaweedS3, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _server, bucket = s3_bucket
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    store = storage.open_store(f"s3://{bucket}")
    with pytest.raises(storage.StorageError, match="S3 access denied .*AWS_ACCESS_KEY_ID"):
        store.put_bytes("k", b"v")


# -------------------------------------------------------------------------------------------
# Committed artifacts


def _commit_example(store: storage.ObjectStore, tmp_path: Path) -> storage.Manifest:
    source = tmp_path / "features.bin"
    source.write_bytes(b"f" * 5000)
    return storage.commit_artifact(
        store,
        "runs/r1/shard-0",
        {"features.bin": source, "meta/index.json": b'{"n": 3}'},
        metadata={"shard": 0, "model": "tiny", "layers": ("q", "v")},
    )


def test_commit_fetch_and_read(store: storage.ObjectStore, tmp_path: Path) -> None:
    assert not storage.is_committed(store, "runs/r1/shard-0")
    assert storage.read_manifest(store, "runs/r1/shard-0") is None
    manifest = _commit_example(store, tmp_path)
    assert manifest.files["features.bin"] == storage.FileEntry(
        5000, hashlib.sha256(b"f" * 5000).hexdigest()
    )
    assert manifest.metadata == {"shard": 0, "model": "tiny", "layers": ["q", "v"]}
    assert manifest.created.endswith("+00:00")
    assert storage.is_committed(store, "runs/r1/shard-0")
    assert storage.read_manifest(store, "runs/r1/shard-0/") == manifest

    dest = tmp_path / "fetched"
    assert storage.fetch_artifact(store, "runs/r1/shard-0", dest) == manifest
    assert (dest / "features.bin").read_bytes() == b"f" * 5000
    assert (dest / "meta" / "index.json").read_bytes() == b'{"n": 3}'
    # The download is itself a committed local artifact.
    assert storage.read_manifest(storage.LocalStore(dest), "") == manifest
    data = storage.read_artifact_file(store, "runs/r1/shard-0", "meta/index.json")
    assert json.loads(data) == {"n": 3}
    with pytest.raises(storage.ArtifactNotFound, match="has no file 'other.bin'"):
        storage.read_artifact_file(store, "runs/r1/shard-0", "other.bin")


class _RecordingStore:
    """Passes calls through to a real store, recording the order of writes."""

    def __init__(self, inner: storage.ObjectStore) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.writes: list[str] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.writes.append(key)
        self.inner.put_bytes(key, data)

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        self.writes.append(key)
        self.inner.put_file(key, path)


def test_manifest_is_written_last(store: storage.ObjectStore, tmp_path: Path) -> None:
    recording = _RecordingStore(store)
    _commit_example(recording, tmp_path)  # type: ignore[arg-type]
    assert recording.writes[-1] == "runs/r1/shard-0/MANIFEST.json"
    assert sorted(recording.writes[:-1]) == [
        "runs/r1/shard-0/features.bin",
        "runs/r1/shard-0/meta/index.json",
    ]


def test_files_without_manifest_are_not_committed(
    store: storage.ObjectStore, tmp_path: Path
) -> None:
    store.put_bytes("runs/r1/shard-0/features.bin", b"partial upload of a crashed job")
    assert not storage.is_committed(store, "runs/r1/shard-0")
    with pytest.raises(storage.ArtifactNotFound, match="is not committed"):
        storage.fetch_artifact(store, "runs/r1/shard-0", tmp_path / "dest")
    with pytest.raises(storage.ArtifactNotFound, match="is not committed"):
        storage.read_artifact_file(store, "runs/r1/shard-0", "features.bin")


def test_recommit_overwrites(store: storage.ObjectStore, tmp_path: Path) -> None:
    _commit_example(store, tmp_path)
    second = storage.commit_artifact(store, "runs/r1/shard-0", {"features.bin": b"v2"})
    assert storage.read_manifest(store, "runs/r1/shard-0") == second
    assert set(second.files) == {"features.bin"}
    assert storage.read_artifact_file(store, "runs/r1/shard-0", "features.bin") == b"v2"


def test_corrupted_file_is_detected(store: storage.ObjectStore, tmp_path: Path) -> None:
    _commit_example(store, tmp_path)
    store.put_bytes("runs/r1/shard-0/features.bin", b"f" * 4999 + b"X")
    dest = tmp_path / "fetched"
    with pytest.raises(storage.CorruptArtifact, match="file 'features.bin' of artifact .*shard-0"):
        storage.fetch_artifact(store, "runs/r1/shard-0", dest)
    assert not (dest / "features.bin").exists()
    assert not (dest / storage.MANIFEST_NAME).exists()
    with pytest.raises(storage.CorruptArtifact, match="'features.bin'"):
        storage.read_artifact_file(store, "runs/r1/shard-0", "features.bin")
    # verify=False is the escape hatch for inspecting a damaged artifact.
    storage.fetch_artifact(store, "runs/r1/shard-0", dest, verify=False)
    assert (dest / "features.bin").read_bytes().endswith(b"X")


def test_missing_listed_file_is_corrupt(store: storage.ObjectStore, tmp_path: Path) -> None:
    _commit_example(store, tmp_path)
    store.delete("runs/r1/shard-0/meta/index.json")
    with pytest.raises(storage.CorruptArtifact, match="'meta/index.json' .* missing"):
        storage.fetch_artifact(store, "runs/r1/shard-0", tmp_path / "dest")


@pytest.mark.parametrize(
    "text", [b"not json", b"[]", b'{"format": "dsel-artifact/1"}', b'{"format": "other/9"}']
)
def test_unreadable_manifest_is_corrupt(store: storage.ObjectStore, text: bytes) -> None:
    store.put_bytes("art/MANIFEST.json", text)
    with pytest.raises(storage.CorruptArtifact, match="unreadable manifest .*art/MANIFEST.json"):
        storage.read_manifest(store, "art")
    with pytest.raises(storage.CorruptArtifact):
        storage.is_committed(store, "art")


def test_manifest_with_escaping_file_name_is_corrupt(store: storage.ObjectStore) -> None:
    manifest = {
        "format": storage.MANIFEST_FORMAT,
        "created": "2024-01-01T00:00:00+00:00",
        "metadata": {},
        "files": {"../../etc/passwd": {"size": 1, "sha256": "0" * 64}},
    }
    store.put_bytes("art/MANIFEST.json", json.dumps(manifest).encode())
    with pytest.raises(storage.CorruptArtifact, match="escapes the store root"):
        storage.read_manifest(store, "art")


def test_commit_rejects_bad_input_before_writing(tmp_path: Path) -> None:
    local = storage.LocalStore(tmp_path)
    with pytest.raises(storage.StorageError, match="escapes the store root"):
        storage.commit_artifact(local, "art", {"ok.bin": b"1", "../x": b"2"})
    with pytest.raises(storage.StorageError, match="'MANIFEST.json' .* is reserved"):
        storage.commit_artifact(local, "art", {storage.MANIFEST_NAME: b"{}"})
    with pytest.raises(storage.StorageError, match="not JSON-serializable"):
        storage.commit_artifact(local, "art", {"ok.bin": b"1"}, metadata={"x": object()})
    with pytest.raises(storage.StorageError, match="does not exist"):
        storage.commit_artifact(local, "art", {"ok.bin": b"1", "b.bin": tmp_path / "absent"})
    assert local.list_keys() == []
