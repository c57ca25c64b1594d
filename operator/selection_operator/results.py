"""Reading what the reduce stage wrote: selection.json in the artifact store (S3)."""

from __future__ import annotations

import json

from selection import artifacts, storage
from selection.contract import StorageLocation

from selection_operator.phases import SelectionRead


def read_selection(target: StorageLocation) -> SelectionRead:
    """selection.json, verified against its manifest; errors become a readable reason.

    Blocking (boto3): call it in a worker thread. Credentials come from the operator's own
    environment (AWS_* or the pod's cloud identity).
    """
    try:
        store = storage.open_store(target.uri, endpoint_url=target.endpoint, region=target.region)
        raw = storage.read_artifact_file(store, artifacts.SELECTION_PREFIX, artifacts.SELECTION_FILE)
        document = json.loads(raw)
    except storage.StorageError as error:
        return SelectionRead(error=str(error))
    except ValueError as error:
        return SelectionRead(error=f"{artifacts.SELECTION_FILE} is not valid JSON: {error}")
    if not isinstance(document, dict) or not isinstance(document.get("indices"), list):
        return SelectionRead(error=f"{artifacts.SELECTION_FILE} has no 'indices' list")
    return SelectionRead(document=document)
