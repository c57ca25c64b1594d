"""Reading what the reduce stage wrote: selection.json in the artifact store (S3)."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hashlib
import json
import threading
from collections.abc import Mapping
from typing import Any

from selection import artifacts, storage
from selection.redact import redact
from selection.contract import StorageLocation

from selection_operator.phases import SelectionRead

# Distinct (endpoint, region, credentials) kept: one per credentials Secret in use is typical;
# the least recently used goes beyond this, so rotated keys do not pile up.
S3_CLIENTS_KEPT = 64
# selection.json reads in flight at once (threads; botocore keeps 10 connections per client).
# Each read waits on S3 for two round trips: with 100 selections finishing together, asyncio's
# default pool (cores + 4 threads) made the reads queue for threads.
S3_READ_CONCURRENCY = 10


class CredentialsError(Exception):
    """The selection's credentials Secret cannot be used; the message names it."""


class S3Clients:
    """boto3 clients reused across reads, one per (endpoint, region, credentials).

    Making a client loads botocore's service model (tens of ms of CPU, measured as most of the
    operator's CPU with 100 selections in flight); a client is thread-safe once made. Changed
    keys (a rotated Secret) make a new client; the credentials are part of the key only as a
    digest. Safe to call from worker threads."""

    def __init__(self, kept: int = S3_CLIENTS_KEPT):
        self.kept = kept
        self._clients: collections.OrderedDict[tuple[str | None, str | None, str | None], Any] = (
            collections.OrderedDict())
        self._lock = threading.Lock()

    @staticmethod
    def _digest(credentials: Mapping[str, str] | None) -> str | None:
        if credentials is None:
            return None  # the operator's own environment (AWS_* or its cloud identity)
        return hashlib.sha256(json.dumps(sorted(credentials.items())).encode()).hexdigest()

    def client(self, endpoint: str | None, region: str | None, credentials: Mapping[str, str] | None) -> Any:
        key = (endpoint, region, self._digest(credentials))
        with self._lock:  # held while making one: two threads never make the same client twice
            found = self._clients.get(key)
            if found is None:
                found = self._clients[key] = storage.s3_client(endpoint, region, credentials)
                while len(self._clients) > self.kept:
                    self._clients.popitem(last=False)
            self._clients.move_to_end(key)
            return found

    def __len__(self) -> int:
        return len(self._clients)


def read_selection(
    target: StorageLocation, credentials: Mapping[str, str] | None, clients: S3Clients
) -> SelectionRead:
    """selection.json, verified against its manifest; errors become a readable reason.

    Blocking (boto3): call it in a worker thread. With `credentials` (the AWS_* keys of the
    selection's credentials Secret) the operator reads as the selection's pods do, at the
    selection's endpoint; without, with its own environment (AWS_* or its cloud identity).
    """
    try:
        s3 = target.uri.startswith("s3://")
        client = clients.client(target.endpoint, target.region, credentials) if s3 else None
        store = storage.open_store(target.uri, client=client, check=False)  # a missing bucket: the read says so
        raw = storage.read_artifact_file(store, artifacts.SELECTION_PREFIX, artifacts.SELECTION_FILE)
        document = json.loads(raw)
    except storage.StorageError as error:
        return SelectionRead(error=redact(str(error)))
    except ValueError as error:
        return SelectionRead(error=f"{artifacts.SELECTION_FILE} is not valid JSON: {error}")
    if not isinstance(document, dict) or not isinstance(document.get("indices"), list):
        return SelectionRead(error=f"{artifacts.SELECTION_FILE} has no 'indices' list")
    return SelectionRead(document=document)


class SelectionReader:
    """Reads selection.json off the event loop, on threads of its own, with reused clients."""

    def __init__(self) -> None:
        self.clients = S3Clients()
        self._threads = concurrent.futures.ThreadPoolExecutor(S3_READ_CONCURRENCY, thread_name_prefix="dsel-s3")

    async def read(self, target: StorageLocation, credentials: Mapping[str, str] | None) -> SelectionRead:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, read_selection, target, credentials, self.clients)

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
