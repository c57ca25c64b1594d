"""Object stores (S3 and a local directory) and committed multi-file artifacts.

Every stage of a selection run exchanges its results through an :class:`ObjectStore`, so the
same code runs on one machine (``file://`` or a plain path) and on a cluster (``s3://``).
Two guarantees make restarts safe:

* a single object is never seen half-written (S3 objects appear whole; local files are written
  to a temporary file in the same directory and renamed into place);
* a multi-file artifact counts as present only once its ``MANIFEST.json`` exists, and the
  manifest is written after every file, with sizes and SHA-256 digests that readers verify.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import re
import shutil
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from selection.files import TMP_PREFIX, replace_atomically, staged

__all__ = [
    "MANIFEST_NAME",
    "ArtifactNotFound",
    "CorruptArtifact",
    "FileEntry",
    "LocalStore",
    "Manifest",
    "ObjectStore",
    "S3Store",
    "StorageError",
    "commit_artifact",
    "fetch_artifact",
    "is_committed",
    "open_store",
    "read_artifact_file",
    "read_manifest",
    "s3_client",
]

MANIFEST_NAME = "MANIFEST.json"
"""The file whose presence marks a multi-file artifact as complete."""

MANIFEST_FORMAT = "dsel-artifact/1"
"""Written into every manifest so a future layout change can be recognised instead of misread."""

# Seconds to wait for a TCP connection to S3: long enough for a cluster-local service, short
# enough that a wrong endpoint fails a job within seconds instead of hanging.
S3_CONNECT_TIMEOUT_S = 3.0
# Seconds to wait for data on an open connection; generous because large parts upload slowly.
S3_READ_TIMEOUT_S = 60.0
# Total attempts per request (botocore "standard" retry mode): absorbs a transient 5xx without
# stretching the failure time of an unreachable endpoint.
S3_MAX_ATTEMPTS = 3
# Chunk size for hashing and copying local files, so large shards never sit in memory whole.
_CHUNK = 1 << 20
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


class StorageError(Exception):
    """Any storage problem; the message says what failed and where (URI or key)."""


class ArtifactNotFound(StorageError):
    """The key or artifact does not exist (yet)."""


class CorruptArtifact(StorageError):
    """A stored file does not match its manifest, or the manifest itself is unreadable."""


def _corrupt(message: str, artifact_uri: str) -> CorruptArtifact:
    """CorruptArtifact with the way out: every rerun would fail on it the same way."""
    return CorruptArtifact(
        f"{message}; delete the artifact {artifact_uri} (everything under it) and rerun, "
        "and it is recomputed"
    )


@runtime_checkable
class ObjectStore(Protocol):
    """A flat key -> bytes store addressed by relative POSIX keys under a root URI."""

    uri: str

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None: ...

    def get_file(self, key: str, path: str | os.PathLike[str]) -> None: ...

    def exists(self, key: str) -> bool: ...

    def list_keys(self, prefix: str = "") -> list[str]: ...

    def delete(self, key: str) -> None: ...

    def delete_prefix(self, prefix: str) -> None: ...

    def uri_for(self, key: str) -> str: ...


# --------------------------------------------------------------------------------------------
# Keys


def _check_key(key: str, root_uri: str) -> str:
    """Return ``key`` if it is a relative POSIX path that stays under the root, else raise.

    Keys come from specs and manifests, i.e. from users; a key such as ``../x`` must never
    reach a file or object outside the store.
    """
    if (
        not isinstance(key, str)
        or not key
        or key.startswith("/")
        or "\\" in key
        or "\x00" in key
        or ".." in key.split("/")
    ):
        raise StorageError(f"storage key '{key}' escapes the store root {root_uri}")
    if any(part in ("", ".") for part in key.split("/")):
        # Harmless locally but a different object on S3: refuse so both stores agree.
        raise StorageError(
            f"storage key {key!r} in {root_uri} is not a normalized path "
            "(empty or '.' segment)"
        )
    return key


def _check_prefix(prefix: str, root_uri: str) -> str:
    """Validate a directory-like prefix; '' means the whole store. Returns it without '/'."""
    if prefix == "":
        return ""
    stripped = prefix[:-1] if isinstance(prefix, str) and prefix.endswith("/") else prefix
    if stripped == "":
        raise StorageError(f"storage key '{prefix}' escapes the store root {root_uri}")
    return _check_key(stripped, root_uri)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def _copy_from(path: Path) -> Any:
    def write(fh: Any) -> None:
        with open(path, "rb") as src:
            shutil.copyfileobj(src, fh, _CHUNK)

    return write


def _check_source(path: str | os.PathLike[str]) -> Path:
    source = Path(path)
    if not source.is_file():
        raise StorageError(f"local file {source} does not exist or is not a regular file")
    return source


# --------------------------------------------------------------------------------------------
# Local directory store


class LocalStore:
    """A store rooted at a local directory (created on first write)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
        self.uri = self.root.as_uri()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        _check_key(key, self.uri)
        path = self.root.joinpath(*key.split("/"))
        # A symlink inside the root may point elsewhere; resolve and check the real location.
        real_root = os.path.realpath(self.root)
        real = os.path.realpath(path)
        if os.path.commonpath([real_root, real]) != real_root:
            raise StorageError(f"storage key '{key}' escapes the store root {self.uri}")
        return path

    def _dir(self, prefix: str) -> Path:
        prefix = _check_prefix(prefix, self.uri)
        return self._path(prefix) if prefix else self.root

    def uri_for(self, key: str) -> str:
        if key == "":
            return self.uri
        return self._path(key).as_uri()

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            replace_atomically(path, lambda fh: fh.write(data))
        except OSError as exc:
            raise StorageError(f"cannot write {self.uri_for(key)}: {exc}") from exc

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ArtifactNotFound(f"no object {self.uri_for(key)}") from exc
        except OSError as exc:
            raise StorageError(f"cannot read {self.uri_for(key)}: {exc}") from exc

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        target = self._path(key)
        source = _check_source(path)
        try:
            replace_atomically(target, _copy_from(source))
        except OSError as exc:
            raise StorageError(f"cannot write {self.uri_for(key)} from {source}: {exc}") from exc

    def get_file(self, key: str, path: str | os.PathLike[str]) -> None:
        source = self._path(key)
        if not source.is_file():
            raise ArtifactNotFound(f"no object {self.uri_for(key)}")
        try:
            replace_atomically(Path(path), _copy_from(source))
        except OSError as exc:
            raise StorageError(f"cannot copy {self.uri_for(key)} to {path}: {exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_keys(self, prefix: str = "") -> list[str]:
        """Keys under the directory-like ``prefix`` (``"a"`` lists ``a/...``, not ``ab``)."""
        base = self._dir(prefix)
        if not base.is_dir():
            return []
        keys = []
        for dirpath, _dirnames, filenames in os.walk(base):
            for name in filenames:
                if name.startswith(TMP_PREFIX):
                    continue
                rel = Path(dirpath, name).relative_to(self.root)
                keys.append(rel.as_posix())
        return sorted(keys)

    def delete(self, key: str) -> None:
        """Delete one key; a missing key is fine (deletes are retried after crashes)."""
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except IsADirectoryError:
            pass  # a directory is a prefix, not a key
        except OSError as exc:
            raise StorageError(f"cannot delete {self.uri_for(key)}: {exc}") from exc

    def delete_prefix(self, prefix: str) -> None:
        """Delete every key under the directory-like ``prefix`` ('' empties the store)."""
        base = self._dir(prefix)
        prefix = _check_prefix(prefix, self.uri)
        try:
            if base == self.root:
                if base.is_dir():
                    for child in base.iterdir():
                        if child.is_dir() and not child.is_symlink():
                            shutil.rmtree(child)
                        else:
                            child.unlink()
            elif base.is_dir() and not base.is_symlink():
                shutil.rmtree(base)
        except OSError as exc:
            raise StorageError(f"cannot delete {self.uri_for(prefix)}: {exc}") from exc


# --------------------------------------------------------------------------------------------
# S3 store


def _resolve_endpoint(endpoint_url: str | None) -> str | None:
    """The endpoint to use; refused when it embeds credentials (they would be printed)."""
    for source, value in (
        ("storage.endpoint", endpoint_url),
        ("DSEL_S3_ENDPOINT", os.environ.get("DSEL_S3_ENDPOINT")),
        ("AWS_ENDPOINT_URL", os.environ.get("AWS_ENDPOINT_URL")),
    ):
        if value:
            return check_endpoint(value, source)
    return None


def _make_s3_client(
    endpoint_url: str | None, region: str | None, credentials: Mapping[str, str] | None = None
) -> Any:
    import boto3  # deferred: local-only runs and the operator's pure modules need no boto3
    from botocore.config import Config

    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if endpoint_url and not region:
        # S3-compatible servers ignore the region but SigV4 needs one to sign with.
        region = "us-east-1"
    config = Config(
        connect_timeout=S3_CONNECT_TIMEOUT_S,
        read_timeout=S3_READ_TIMEOUT_S,
        retries={"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"},
        # Custom endpoints (MinIO, SeaweedFS, Ceph) rarely resolve bucket subdomains.
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    keys = credentials or {}
    session = boto3.session.Session(
        aws_access_key_id=keys.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=keys.get("AWS_SECRET_ACCESS_KEY"),
        aws_session_token=keys.get("AWS_SESSION_TOKEN"),
    )
    return session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def s3_client(
    endpoint_url: str | None = None, region: str | None = None, credentials: Mapping[str, str] | None = None
) -> Any:
    """A boto3 S3 client as `open_store` makes one (same endpoint resolution), for a caller that
    reuses it across stores (`open_store(..., client=...)`): making one costs tens of ms of CPU."""
    return _make_s3_client(_resolve_endpoint(endpoint_url), region, credentials)


def _parse_s3_uri(uri: str) -> tuple[str, str]:
    parsed = urllib.parse.urlparse(uri)
    bucket = parsed.netloc
    if not _BUCKET_RE.match(bucket or ""):
        raise StorageError(
            f"invalid S3 bucket name {bucket!r} in {uri!r} "
            "(3-63 lowercase letters, digits, '.' or '-')"
        )
    prefix = parsed.path.strip("/")
    if prefix:
        _check_key(prefix, f"s3://{bucket}")
    return bucket, prefix


class S3Store:
    """A store in an S3 bucket, optionally below a key prefix; talks to S3 through boto3."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
        credentials: Mapping[str, str] | None = None,
    ) -> None:
        prefix = prefix.strip("/")
        self.bucket, self.prefix = _parse_s3_uri(f"s3://{bucket}/{prefix}")
        self.uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.client = client if client is not None else _make_s3_client(endpoint_url, region, credentials)
        self.endpoint_url: str = self.client.meta.endpoint_url

    def __repr__(self) -> str:
        return f"S3Store({self.uri!r}, endpoint_url={self.endpoint_url!r})"

    def _key(self, key: str) -> str:
        return _join(self.prefix, _check_key(key, self.uri))

    def _dir_key(self, prefix: str) -> str:
        """The S3 string prefix for a directory-like store prefix (always ends in '/')."""
        prefix = _join(self.prefix, _check_prefix(prefix, self.uri))
        return f"{prefix}/" if prefix else ""

    def uri_for(self, key: str) -> str:
        if key == "":
            return self.uri
        return f"s3://{self.bucket}/{self._key(key)}"

    @contextlib.contextmanager
    def _errors(self, what: str, key: str | None = None) -> Iterator[None]:
        """Translate botocore failures into StorageError with the URI and endpoint in it."""
        from boto3.exceptions import S3UploadFailedError  # deferred with boto3 (see _make_s3_client)
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError as BotoConnectionError,
            NoCredentialsError,
        )

        where = self.uri_for(key) if key is not None else self.uri
        try:
            yield
        except ClientError as exc:
            raise self._client_error(exc, what, where, key) from exc
        except S3UploadFailedError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ClientError):
                raise self._client_error(cause, what, where, key) from exc
            raise StorageError(f"cannot {what} {where}: {exc}") from exc
        except BotoConnectionError as exc:
            raise StorageError(
                f"cannot reach S3 endpoint {self.endpoint_url} (while trying to {what} "
                f"{where}): {exc}"
            ) from exc
        except NoCredentialsError as exc:
            raise StorageError(
                f"no S3 credentials to {what} {where}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (on a cluster, from the Secret)"
            ) from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot {what} {where} at {self.endpoint_url}: {exc}") from exc

    def _client_error(self, exc: Any, what: str, where: str, key: str | None) -> StorageError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return StorageError(
                f"S3 bucket {self.bucket!r} does not exist at {self.endpoint_url} "
                f"(needed to {what} {where}); create it first"
            )
        if key is not None and (code in ("NoSuchKey", "404", "NotFound") or status == 404):
            return ArtifactNotFound(f"no object {where}")
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403") or (
            status == 403
        ):
            return StorageError(
                f"S3 access denied ({code}) to {what} {where} at {self.endpoint_url}; "
                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
            )
        return StorageError(f"cannot {what} {where} at {self.endpoint_url}: {exc}")

    def _head_bucket(self) -> int:
        """HTTP status of HeadBucket (200, 403 or 404); other failures raise StorageError."""
        from botocore.exceptions import ClientError  # deferred with boto3 (see _make_s3_client)

        with self._errors("open"):
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status in (403, 404):
                    return int(status)
                raise
        return 200

    def check(self) -> None:
        """Fail now, with a clear message, if the endpoint is unreachable or the bucket missing.

        A 403 is let through: credentials limited to a prefix may not be allowed HeadBucket
        yet can read and write their objects; real denials surface on the first operation.
        """
        if self._head_bucket() == 404:
            raise StorageError(
                f"S3 bucket {self.bucket!r} does not exist at {self.endpoint_url} "
                f"(opening {self.uri}); create it first"
            )

    def ensure_bucket(self) -> None:
        """Create the bucket if missing (tests and the demo; jobs expect it to exist)."""
        from botocore.exceptions import ClientError  # deferred with boto3 (see _make_s3_client)

        if self._head_bucket() != 404:
            return
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        region = self.client.meta.region_name
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        with self._errors("create bucket for"):
            try:
                self.client.create_bucket(**kwargs)
            except ClientError as exc:
                # Someone else (a parallel test, another job) created it first: fine.
                if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                    raise

    def put_bytes(self, key: str, data: bytes) -> None:
        full = self._key(key)
        with self._errors("write", key):
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data)

    def get_bytes(self, key: str) -> bytes:
        full = self._key(key)
        with self._errors("read", key):
            response = self.client.get_object(Bucket=self.bucket, Key=full)
            return response["Body"].read()

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        full = self._key(key)
        source = _check_source(path)
        with self._errors("upload", key):
            # upload_file streams and switches to multipart for large files; the object only
            # becomes visible once complete, so readers never see a partial upload.
            self.client.upload_file(os.fspath(source), self.bucket, full)

    def get_file(self, key: str, path: str | os.PathLike[str]) -> None:
        full = self._key(key)
        with staged(path) as temporary, self._errors("download", key):
            self.client.download_file(self.bucket, full, os.fspath(temporary))

    def exists(self, key: str) -> bool:
        full = self._key(key)
        try:
            with self._errors("check", key):
                self.client.head_object(Bucket=self.bucket, Key=full)
        except ArtifactNotFound:
            return False
        return True

    def _list_full(self, prefix: str) -> list[str]:
        s3_prefix = self._dir_key(prefix)
        prefix = _check_prefix(prefix, self.uri)
        keys: list[str] = []
        with self._errors("list", prefix or None):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=s3_prefix):
                for item in page.get("Contents", []):
                    if not item["Key"].endswith("/"):  # folder markers some servers return
                        keys.append(item["Key"])
        return keys

    def list_keys(self, prefix: str = "") -> list[str]:
        """Keys under the directory-like ``prefix`` (``"a"`` lists ``a/...``, not ``ab``)."""
        strip = len(self.prefix) + 1 if self.prefix else 0
        return sorted(full[strip:] for full in self._list_full(prefix))

    def list_versions(self) -> dict[str, str]:
        """Every key of the store with "<size>:<ETag>": changes whenever an object is rewritten."""
        strip = len(self.prefix) + 1 if self.prefix else 0
        versions: dict[str, str] = {}
        with self._errors("list", None):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._dir_key("")):
                for item in page.get("Contents", []):
                    if not item["Key"].endswith("/"):
                        versions[item["Key"][strip:]] = f"{item['Size']}:{item.get('ETag', '')}"
        return dict(sorted(versions.items()))

    def delete(self, key: str) -> None:
        """Delete one key; a missing key is fine (S3 deletes are idempotent)."""
        full = self._key(key)
        with self._errors("delete", key):
            self.client.delete_object(Bucket=self.bucket, Key=full)

    def delete_prefix(self, prefix: str) -> None:
        """Delete every key under the directory-like ``prefix`` ('' empties the store)."""
        keys = self._list_full(prefix)
        prefix = _check_prefix(prefix, self.uri)
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            with self._errors("delete", prefix or None):
                response = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            if response.get("Errors"):
                first = response["Errors"][0]
                raise StorageError(
                    f"cannot delete s3://{self.bucket}/{first.get('Key')}: "
                    f"{first.get('Code')} {first.get('Message')}"
                )


# --------------------------------------------------------------------------------------------
# Opening a store from a URI


def check_uri(uri: str) -> str:
    """Raise StorageError unless `uri` is a usable store or file location; no I/O.

    The spec validator calls it, so `dsel validate` refuses what `open_store` would refuse
    later (a bad bucket name, a key escaping its root, a remote file:// host, another scheme,
    credentials in the URI).
    """
    from selection.redact import userinfo_problem

    if not isinstance(uri, str) or not uri.strip():
        raise StorageError(f"empty storage URI {uri!r}")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", uri):
        problem = userinfo_problem(uri)
        if problem:
            raise StorageError(problem)
    if uri.startswith("s3://"):
        _parse_s3_uri(uri)
    elif uri.startswith("file://"):
        netloc = urllib.parse.urlparse(uri).netloc
        if netloc not in ("", "localhost"):
            raise StorageError(f"file URI {uri!r} names a remote host {netloc!r}")
    elif re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", uri):
        raise StorageError(f"unsupported storage URI {uri!r} (use a path, file:// or s3://)")
    return uri


def check_endpoint(endpoint: str, source: str = "endpoint") -> str:
    """Raise StorageError unless `endpoint` is an http(s) URL without credentials in it."""
    from selection.redact import redact, userinfo_problem

    problem = userinfo_problem(endpoint)
    if problem:
        raise StorageError(f"{source}: {problem}")
    parsed = urllib.parse.urlsplit(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise StorageError(f"{source}: {redact(endpoint)!r} is not an http:// or https:// URL")
    return endpoint


def open_store(
    uri: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    credentials: Mapping[str, str] | None = None,
    client: Any = None,
    check: bool = True,
) -> ObjectStore:
    """Open a plain path, ``file://`` URI or ``s3://bucket[/prefix]`` as a store.

    For S3 the endpoint is ``endpoint_url``, else ``$DSEL_S3_ENDPOINT``, else
    ``$AWS_ENDPOINT_URL``, else AWS itself; credentials are `credentials` (AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) when given, else boto3's default chain. A `client`
    (from `s3_client`) is used instead of making one; it stands for all three. The bucket is
    checked now (unless `check` is false: a reader whose first request names a missing bucket
    just as clearly) so a wrong endpoint or bucket fails at job start, not mid-run.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise StorageError(f"empty storage URI {uri!r}")
    check_uri(uri)
    if uri.startswith("s3://"):
        bucket, prefix = _parse_s3_uri(uri)
        if client is None:
            client = s3_client(endpoint_url, region, credentials)
        store = S3Store(bucket, prefix, client=client)
        if check:
            store.check()
        return store
    if uri.startswith("file://"):
        parsed = urllib.parse.urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"file URI {uri!r} names a remote host {parsed.netloc!r}")
        return LocalStore(urllib.parse.unquote(parsed.path))
    if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", uri):
        raise StorageError(f"unsupported storage URI {uri!r} (use a path, file:// or s3://)")
    return LocalStore(uri)


# --------------------------------------------------------------------------------------------
# Committed multi-file artifacts


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """Size in bytes and hex SHA-256 of one artifact file, as recorded at commit time."""

    size: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class Manifest:
    """The commit record of an artifact: its files, how it was produced, and when."""

    files: dict[str, FileEntry]
    metadata: dict[str, Any]
    created: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": MANIFEST_FORMAT,
                "created": self.created,
                "metadata": self.metadata,
                "files": {
                    name: {"size": entry.size, "sha256": entry.sha256}
                    for name, entry in sorted(self.files.items())
                },
            },
            indent=2,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> Manifest:
        """Parse and validate a manifest; ``where`` names it in error messages."""
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"format is not {MANIFEST_FORMAT!r}")
            created, metadata, raw_files = doc["created"], doc["metadata"], doc["files"]
            if not isinstance(created, str) or not isinstance(metadata, dict):
                raise ValueError("'created' must be a string and 'metadata' an object")
            if not isinstance(raw_files, dict):
                raise ValueError("'files' must be an object")
            files = {}
            for name, entry in raw_files.items():
                _check_key(name, where)
                size, digest = entry["size"], entry["sha256"]
                if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                    raise ValueError(f"file {name!r}: bad size {size!r}")
                if not isinstance(digest, str) or not _SHA256_RE.match(digest):
                    raise ValueError(f"file {name!r}: bad sha256 {digest!r}")
                files[name] = FileEntry(size=size, sha256=digest)
        except (ValueError, KeyError, TypeError, StorageError) as exc:
            artifact = where.removesuffix("/" + MANIFEST_NAME)
            raise _corrupt(f"unreadable manifest {where}: {exc}", artifact) from exc
        return cls(files=files, metadata=metadata, created=created)


def _sha256_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _check_artifact_name(name: str, where: str) -> None:
    _check_key(name, where)
    if name == MANIFEST_NAME:
        raise StorageError(f"artifact file name {name!r} in {where} is reserved")


def commit_artifact(
    store: ObjectStore,
    prefix: str,
    files: Mapping[str, str | os.PathLike[str] | bytes],
    metadata: dict[str, Any] | None = None,
) -> Manifest:
    """Upload ``files`` (name -> bytes or local path) under ``prefix``, then the manifest.

    Any previous manifest is removed first, so while a re-commit is in flight the artifact
    reads as absent rather than as old manifest plus new files. Files of an earlier commit
    that are not re-uploaded stay in the store but are no longer part of the artifact.
    """
    prefix = _check_prefix(prefix, store.uri)
    where = store.uri_for(prefix)
    try:
        # Round-trip now so the returned Manifest equals what read_manifest will give back
        # (tuples become lists), and a bad value fails before anything is written.
        metadata = json.loads(json.dumps(dict(metadata or {})))
    except (TypeError, ValueError) as exc:
        raise StorageError(
            f"metadata for artifact {where} is not JSON-serializable: {exc}"
        ) from exc
    for name, content in files.items():
        _check_artifact_name(name, where)
        if not isinstance(content, (bytes, bytearray, memoryview)):
            _check_source(content)

    manifest_key = _join(prefix, MANIFEST_NAME)
    store.delete(manifest_key)

    entries: dict[str, FileEntry] = {}
    for name, content in files.items():
        key = _join(prefix, name)
        if isinstance(content, (bytes, bytearray, memoryview)):
            data = bytes(content)
            entries[name] = FileEntry(len(data), hashlib.sha256(data).hexdigest())
            store.put_bytes(key, data)
        else:
            source = _check_source(content)
            size, digest = _sha256_file(source)
            entries[name] = FileEntry(size, digest)
            store.put_file(key, source)

    manifest = Manifest(
        files=entries,
        metadata=metadata,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    store.put_bytes(manifest_key, manifest.to_json().encode())
    return manifest


def read_manifest(store: ObjectStore, prefix: str) -> Manifest | None:
    """The artifact's manifest, or None if it was never (or not yet fully) committed."""
    prefix = _check_prefix(prefix, store.uri)
    key = _join(prefix, MANIFEST_NAME)
    try:
        text = store.get_bytes(key)
    except ArtifactNotFound:
        return None
    return Manifest.from_json(text, store.uri_for(key))


def is_committed(store: ObjectStore, prefix: str) -> bool:
    """True once the artifact's manifest exists (a corrupt manifest raises CorruptArtifact)."""
    return read_manifest(store, prefix) is not None


def _require_manifest(store: ObjectStore, prefix: str) -> Manifest:
    manifest = read_manifest(store, prefix)
    if manifest is None:
        raise ArtifactNotFound(
            f"artifact {store.uri_for(_check_prefix(prefix, store.uri))} is not committed "
            f"(no {MANIFEST_NAME})"
        )
    return manifest


def _mismatch(where: str, name: str, entry: FileEntry, size: int, digest: str) -> str:
    return (
        f"file {name!r} of artifact {where} does not match its manifest: expected "
        f"{entry.size} bytes sha256 {entry.sha256}, got {size} bytes sha256 {digest}"
    )


def fetch_artifact(
    store: ObjectStore,
    prefix: str,
    dest: str | os.PathLike[str],
    *,
    verify: bool = True,
    manifest: Manifest | None = None,
) -> Manifest:
    """Download every file of a committed artifact into ``dest`` and check it.

    The manifest is written to ``dest`` last, so ``dest`` is itself a committed artifact of a
    LocalStore and a half-finished download is never mistaken for a complete one. A file that
    fails verification is removed from ``dest`` before CorruptArtifact is raised. A caller that
    has already read the manifest passes it, saving a second read.
    """
    prefix = _check_prefix(prefix, store.uri)
    where = store.uri_for(prefix)
    manifest = manifest if manifest is not None else _require_manifest(store, prefix)
    local = LocalStore(dest)
    local.delete(MANIFEST_NAME)
    for name, entry in sorted(manifest.files.items()):
        target = local._path(name)
        try:
            store.get_file(_join(prefix, name), target)
        except ArtifactNotFound as exc:
            raise _corrupt(
                f"file {name!r} of artifact {where} is listed in its manifest but missing", where
            ) from exc
        if verify:
            size, digest = _sha256_file(target)
            if (size, digest) != (entry.size, entry.sha256):
                target.unlink(missing_ok=True)
                raise _corrupt(_mismatch(where, name, entry, size, digest), where)
    local.put_bytes(MANIFEST_NAME, manifest.to_json().encode())
    return manifest


def read_artifact_file(
    store: ObjectStore, prefix: str, name: str, *, verify: bool = True, manifest: Manifest | None = None
) -> bytes:
    """One file of a committed artifact, checked against the manifest (read unless given)."""
    prefix = _check_prefix(prefix, store.uri)
    where = store.uri_for(prefix)
    _check_artifact_name(name, where)
    manifest = manifest if manifest is not None else _require_manifest(store, prefix)
    entry = manifest.files.get(name)
    if entry is None:
        raise ArtifactNotFound(f"artifact {where} has no file {name!r}")
    try:
        data = store.get_bytes(_join(prefix, name))
    except ArtifactNotFound as exc:
        raise _corrupt(
            f"file {name!r} of artifact {where} is listed in its manifest but missing", where
        ) from exc
    if verify:
        digest = hashlib.sha256(data).hexdigest()
        if (len(data), digest) != (entry.size, entry.sha256):
            raise _corrupt(_mismatch(where, name, entry, len(data), digest), where)
    return data
