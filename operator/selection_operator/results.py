"""Reading what the reduce stage wrote: selection.json in the artifact store (S3)."""

from __future__ import annotations

import json
from collections.abc import Mapping

from selection import artifacts, storage
from selection.redact import redact
from selection.contract import StorageLocation

from selection_operator.phases import SelectionRead


class CredentialsError(Exception):
    """The selection's credentials Secret cannot be used; the message names it."""


def read_selection(target: StorageLocation, credentials: Mapping[str, str] | None = None) -> SelectionRead:
    """selection.json, verified against its manifest; errors become a readable reason.

    Blocking (boto3): call it in a worker thread. With `credentials` (the AWS_* keys of the
    selection's credentials Secret) the operator reads as the selection's pods do, at the
    selection's endpoint; without, with its own environment (AWS_* or its cloud identity).
    """
    try:
        store = storage.open_store(target.uri, endpoint_url=target.endpoint, region=target.region,
                                   credentials=credentials)
        raw = storage.read_artifact_file(store, artifacts.SELECTION_PREFIX, artifacts.SELECTION_FILE)
        document = json.loads(raw)
    except storage.StorageError as error:
        return SelectionRead(error=redact(str(error)))
    except ValueError as error:
        return SelectionRead(error=f"{artifacts.SELECTION_FILE} is not valid JSON: {error}")
    if not isinstance(document, dict) or not isinstance(document.get("indices"), list):
        return SelectionRead(error=f"{artifacts.SELECTION_FILE} has no 'indices' list")
    return SelectionRead(document=document)
