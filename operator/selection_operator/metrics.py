"""Prometheus metrics, derived from status transitions.

Counters move by the difference between the status before and after a reconcile, and the status
is persisted in the resource, so an operator restart neither loses nor double-counts a retry.

    dsel_selections{phase}                      DataSelections currently in each phase
    dsel_stage_duration_seconds{stage,outcome}  wall time of finished stages (Job start to end)
    dsel_shard_retries_total{stage}             failed pods that the Job retried
    dsel_shard_failures_total{stage}            shards (indexes) that failed for good
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from selection import contract

from selection_operator import phases

# Stages run from seconds (tiny demos) to many hours (gradients of a large pool).
DURATION_BUCKETS = (10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
PHASES = (phases.PENDING, phases.WARMUP, phases.EXTRACTING, phases.REDUCING, phases.SUCCEEDED, phases.FAILED)


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    try:
        first = datetime.datetime.fromisoformat(start.replace("Z", "+00:00"))
        last = datetime.datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max((last - first).total_seconds(), 0.0)


class Metrics:
    """One registry per operator run, so in-process tests do not share counters."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.selections = Gauge(
            "dsel_selections", "DataSelections by phase.", ["phase"], registry=self.registry
        )
        self.stage_duration = Histogram(
            "dsel_stage_duration_seconds", "Duration of finished stages (Job start to completion or failure).",
            ["stage", "outcome"], buckets=DURATION_BUCKETS, registry=self.registry,
        )
        self.shard_retries = Counter(
            "dsel_shard_retries", "Failed pods of a stage that the Job retried.", ["stage"], registry=self.registry
        )
        self.shard_failures = Counter(
            "dsel_shard_failures", "Shards (Job indexes) that failed for good.", ["stage"], registry=self.registry
        )
        self._phases: dict[tuple[str, str], str] = {}
        self._server: Any = None
        self._thread: Any = None
        for phase in PHASES:
            self.selections.labels(phase=phase).set(0)

    def serve(self, port: int, address: str) -> None:
        """Expose /metrics on `address:port` (a daemon thread); port 0 means no endpoint."""
        if port:
            self._server, self._thread = start_http_server(port, addr=address, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None

    def set_phase(self, namespace: str, name: str, phase: str | None) -> None:
        key = (namespace, name)
        if phase:
            self._phases[key] = phase
        else:
            self._phases.pop(key, None)
        counts = dict.fromkeys(PHASES, 0)
        for value in self._phases.values():
            counts[value] = counts.get(value, 0) + 1
        for value, count in counts.items():
            self.selections.labels(phase=value).set(count)

    def record(self, old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> None:
        """Count what changed between two statuses of one DataSelection."""
        old_stages = (old or {}).get("stages") or {}
        for stage in contract.STAGE_NAMES:
            before = old_stages.get(stage) or {}
            after = (new.get("stages") or {}).get(stage) or {}
            if not after:
                continue
            pods = int(after.get("podFailures") or 0) - int(before.get("podFailures") or 0)
            shards = int((after.get("shards") or {}).get("failed") or 0) - int((before.get("shards") or {}).get("failed") or 0)
            if shards > 0:
                self.shard_failures.labels(stage=stage).inc(shards)
            if pods - max(shards, 0) > 0:
                self.shard_retries.labels(stage=stage).inc(pods - max(shards, 0))
            state = after.get("state")
            if state in (phases.STATE_SUCCEEDED, phases.STATE_FAILED) and before.get("state") != state:
                seconds = _seconds_between(after.get("startTime"), after.get("completionTime"))
                if seconds is not None:
                    self.stage_duration.labels(stage=stage, outcome=state.lower()).observe(seconds)
