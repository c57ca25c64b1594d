"""Status building blocks: Job-style conditions and the selection summary with its indices.

Conditions follow the Job convention (type, status, reason, message, lastTransitionTime,
observedGeneration; `lastTransitionTime` moves only when `status` flips), so
`kubectl wait --for=condition=Complete dataselection/<name>` works like it does for a Job.

Selected indices in `status.selection.indices`
----------------------------------------------
`status.selection.encoding` says how to read `status.selection.indices`:

* ``list``: a JSON list of 0-based line numbers of the training pool, in selection order.
* ``zigzag-delta-varint+zlib+base64``: the same list, compacted because the plain list would
  make the resource too large. Decode: base64 -> zlib-decompress -> a byte string of unsigned
  LEB128 varints (7 bits per byte, low bits first, high bit set on all but the last byte of a
  number) -> zigzag-decode each (``(u >> 1) ^ -(u & 1)``) -> cumulative sum (the first number is
  the first index, every next one the difference to the previous index).
  `selection_operator.status.decode_indices` does exactly this.
* ``omitted``: even the compact form would exceed the size budget (e.g. a million indices in
  score order); read them from `status.selection.uri`.

`status.selection.uri` always points at the complete selection.json in the artifact store.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

COMPLETE = "Complete"
FAILED = "Failed"
RUNNING = "Running"
SPEC_REJECTED = "SpecRejected"
# Whether the running stage's pods run: False (with the kubelet's, scheduler's, Job controller's
# or Kueue's reason) while they wait; the reason is also `status.waiting` for `kubectl get`.
PODS_READY = "PodsReady"

ENCODING_LIST = "list"
ENCODING_COMPACT = "zigzag-delta-varint+zlib+base64"
ENCODING_OMITTED = "omitted"

# The whole object must stay well under Kubernetes' ~1.5 MiB request limit (etcd) and the 1 MiB
# we promise: the plain list is kept up to 256 KiB of JSON, the compact form up to 512 KiB of
# base64, which leaves ample room for spec, metadata and the rest of the status.
INLINE_LIMIT_BYTES = 256 * 1024
COMPACT_LIMIT_BYTES = 512 * 1024


def find_condition(conditions: Iterable[Mapping[str, Any]] | None, kind: str) -> Mapping[str, Any] | None:
    for condition in conditions or ():
        if condition.get("type") == kind:
            return condition
    return None


def set_condition(
    conditions: Sequence[Mapping[str, Any]] | None,
    kind: str,
    status: bool,
    *,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    """A new condition list with `kind` set; the transition time is kept unless status flips."""
    value = "True" if status else "False"
    previous = find_condition(conditions, kind)
    since = previous.get("lastTransitionTime") if previous and previous.get("status") == value else None
    updated: dict[str, Any] = {
        "type": kind,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since or now,
    }
    if generation is not None:
        updated["observedGeneration"] = generation
    result = [dict(c) for c in conditions or () if c.get("type") != kind]
    result.append(updated)
    return result


def remove_condition(conditions: Sequence[Mapping[str, Any]] | None, kind: str) -> list[dict[str, Any]]:
    return [dict(c) for c in conditions or () if c.get("type") != kind]


# --- indices ---------------------------------------------------------------------------------

def _varint_bytes(values: np.ndarray) -> bytes:
    """Unsigned LEB128 of non-negative int64 values, vectorised (a million values in ~50 ms)."""
    values = values.astype(np.uint64)
    widths = np.ones(len(values), dtype=np.int64)
    for shift in range(7, 64, 7):
        widths += values >= (np.uint64(1) << np.uint64(shift))
    starts = np.cumsum(widths) - widths
    out = np.zeros(int(widths.sum()), dtype=np.uint8)
    for byte in range(int(widths.max(initial=0))):
        mask = widths > byte
        chunk = (values[mask] >> np.uint64(7 * byte)) & np.uint64(0x7F)
        more = (widths[mask] > byte + 1).astype(np.uint64) << np.uint64(7)
        out[starts[mask] + byte] = (chunk | more).astype(np.uint8)
    return out.tobytes()


def _varint_values(data: bytes) -> np.ndarray:
    raw = np.frombuffer(data, dtype=np.uint8)
    if not len(raw):
        return np.zeros(0, dtype=np.uint64)
    if raw[-1] & 0x80:
        raise ValueError("truncated varint stream")
    ends = np.flatnonzero((raw & 0x80) == 0)
    starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64)
    group = np.repeat(np.arange(len(ends)), ends - starts + 1)
    position = np.arange(len(raw)) - starts[group]
    if position.max() > 9:
        raise ValueError("varint longer than 64 bits")
    parts = (raw & 0x7F).astype(np.uint64) << (np.uint64(7) * position.astype(np.uint64))
    return np.bitwise_or.reduceat(parts, starts)


def compact_indices(indices: Sequence[int]) -> str:
    """Encode with ENCODING_COMPACT (see the module docstring)."""
    array = np.asarray(indices, dtype=np.int64)
    deltas = np.diff(array, prepend=np.int64(0))
    zigzag = (deltas << 1) ^ (deltas >> 63)
    return base64.b64encode(zlib.compress(_varint_bytes(zigzag), 9)).decode("ascii")


def expand_indices(encoded: str) -> list[int]:
    """Decode ENCODING_COMPACT back to the ordered list."""
    zigzag = _varint_values(zlib.decompress(base64.b64decode(encoded, validate=True))).astype(np.int64)
    deltas = (zigzag >> 1) ^ -(zigzag & 1)
    return np.cumsum(deltas).tolist()


def encode_indices(indices: Sequence[int]) -> tuple[str, list[int] | str | None]:
    """(encoding, value) of the indices within the status size budget."""
    plain = [int(i) for i in indices]
    if len(json.dumps(plain, separators=(",", ":"))) <= INLINE_LIMIT_BYTES:
        return ENCODING_LIST, plain
    compact = compact_indices(plain)
    if len(compact) <= COMPACT_LIMIT_BYTES:
        return ENCODING_COMPACT, compact
    return ENCODING_OMITTED, None


def decode_indices(selection: Mapping[str, Any]) -> list[int]:
    """The ordered indices from `status.selection`; raises LookupError when they were omitted."""
    encoding = selection.get("encoding", ENCODING_LIST)
    value = selection.get("indices")
    if encoding == ENCODING_LIST and isinstance(value, list):
        return [int(i) for i in value]
    if encoding == ENCODING_COMPACT and isinstance(value, str):
        return expand_indices(value)
    if encoding == ENCODING_OMITTED:
        raise LookupError(f"indices omitted from the status (too many); read {selection.get('uri')}")
    raise ValueError(f"unknown indices encoding {encoding!r}")


def selection_summary(document: Mapping[str, Any], uri: str) -> dict[str, Any]:
    """`status.selection` from selection.json: everything but the bulky parameters and inputs
    (with the training features' health and its warning, when the run reported them)."""
    indices = document.get("indices") or []
    encoding, value = encode_indices(indices)
    summary: dict[str, Any] = {
        "method": document.get("method"),
        "budget": document.get("budget"),
        "count": len(indices),
        "poolSize": document.get("poolSize"),
        "composition": dict(document.get("composition") or {}),
        "uri": uri,
        "subsetUri": document.get("subsetUri"),
        "featureHealth": document.get("featureHealth"),
        "encoding": encoding,
    }
    if value is not None:
        summary["indices"] = value
    return {k: v for k, v in summary.items() if v is not None}
