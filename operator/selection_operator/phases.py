"""The pure state machine: from what exists (the resource, its ConfigMap and Jobs) to what to do.

    Pending -> Warmup -> Extracting -> Reducing -> Succeeded
    (any of them) ---------------------------------> Failed

`decide(observation)` returns a `Plan`: the complete new status, the objects to create and the
Events to post. It does no I/O, so restarts are safe by construction: whatever the operator
finds (Jobs finished while it was down, a Job it created just before dying) leads to the same
plan, and creating an existing object is a no-op. A stage whose status record says Succeeded is
never run again, even when its Job is gone (ttlSecondsAfterFinished).

The spec a selection started with is the one in its immutable arguments ConfigMap; later spec
changes are reported in a `SpecRejected` condition and otherwise ignored.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

from selection import artifacts, contract
from selection import spec as spec_module
from selection.contract import StorageLocation

from selection_operator import manifests, status as conditions
from selection_operator.settings import OperatorSettings

PENDING = "Pending"
WARMUP, EXTRACTING, REDUCING = (stage.phase for stage in contract.STAGES)  # while each stage runs
SUCCEEDED = "Succeeded"
FAILED = "Failed"
TERMINAL = (SUCCEEDED, FAILED)

# Stage record states in status.stages.<stage>.state
STATE_PENDING = "Pending"
STATE_RUNNING = "Running"
STATE_SUCCEEDED = "Succeeded"
STATE_FAILED = "Failed"


def parse_index_ranges(text: str | None) -> frozenset[int]:
    """Job's completedIndexes/failedIndexes notation, e.g. "0-2,5" -> {0, 1, 2, 5}."""
    found: set[int] = set()
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        first, _, last = part.partition("-")
        found.update(range(int(first), int(last or first) + 1))
    return frozenset(found)


@dataclasses.dataclass(frozen=True)
class JobState:
    """What the machine needs from one child Job, read from its status."""

    name: str
    suspended: bool = False
    start_time: str | None = None
    completion_time: str | None = None
    active: int = 0
    succeeded: int = 0
    failed: int = 0  # failed pods, retried ones included
    completed_indexes: frozenset[int] = frozenset()
    failed_indexes: frozenset[int] = frozenset()
    complete: bool = False
    failed_for_good: bool = False
    failure_reason: str | None = None
    failure_message: str | None = None
    failure_time: str | None = None

    @classmethod
    def from_job(cls, job: Mapping[str, Any]) -> "JobState":
        status = job.get("status") or {}
        by_type = {c.get("type"): c for c in status.get("conditions") or () if c.get("status") == "True"}
        failed = by_type.get("Failed")
        return cls(
            name=job.get("metadata", {}).get("name", ""),
            suspended=bool((job.get("spec") or {}).get("suspend")),
            start_time=status.get("startTime"),
            completion_time=status.get("completionTime"),
            active=int(status.get("active") or 0),
            succeeded=int(status.get("succeeded") or 0),
            failed=int(status.get("failed") or 0),
            completed_indexes=parse_index_ranges(status.get("completedIndexes")),
            failed_indexes=parse_index_ranges(status.get("failedIndexes")),
            complete="Complete" in by_type,
            failed_for_good=failed is not None,
            failure_reason=failed.get("reason") if failed else None,
            failure_message=failed.get("message") if failed else None,
            failure_time=failed.get("lastTransitionTime") if failed else None,
        )


@dataclasses.dataclass(frozen=True)
class FailureDetail:
    """Why a stage failed, read from its failed pod (termination message or log tail)."""

    pod: str | None = None
    shard: int | None = None
    exit_code: int | None = None
    line: str | None = None


@dataclasses.dataclass(frozen=True)
class SelectionRead:
    """selection.json as read from the artifact store, or why it could not be read."""

    document: Mapping[str, Any] | None = None
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class Observation:
    """Everything `decide` looks at; the reconciler gathers it."""

    resource: Mapping[str, Any]  # the live DataSelection
    started: Mapping[str, Any] | None  # the JobArgs document in the arguments ConfigMap
    started_secret: str | None  # the credentials Secret recorded in that ConfigMap
    jobs: Mapping[str, JobState]  # by stage, only Jobs owned by this resource
    settings: OperatorSettings
    now: str  # RFC 3339, UTC
    failure: FailureDetail | None = None
    selection: SelectionRead | None = None


@dataclasses.dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Needs:
    """Details `decide` asks for before it can finish: only fetched when they matter."""

    failure_of: str | None = None  # the stage whose failed pod to read
    selection: bool = False  # read selection.json


@dataclasses.dataclass(frozen=True)
class Plan:
    status: dict[str, Any]
    resource: spec_module.DataSelection | None = None  # the spec as started, for building Jobs
    storage: StorageLocation | None = None
    create_config_map: bool = False
    create_jobs: tuple[str, ...] = ()
    events: tuple[Event, ...] = ()
    needs: Needs | None = None
    idle: bool = False  # terminal: nothing happens until the spec changes


class _Stop(Exception):
    """Internal: the draft reached a state where nothing further is decided this round."""


def _problems_text(problems: list[tuple[str, str]]) -> str:
    return "; ".join(f"{path}: {message}" for path, message in problems)


class _Draft:
    def __init__(self, obs: Observation):
        self.obs = obs
        meta = obs.resource.get("metadata") or {}
        self.name: str = meta.get("name", "")
        self.generation: int | None = meta.get("generation")
        self.old: dict[str, Any] = copy.deepcopy(dict(obs.resource.get("status") or {}))
        self.status: dict[str, Any] = copy.deepcopy(self.old)
        self.events: list[Event] = []
        self.create_jobs: list[str] = []
        self.create_config_map = False
        self.resource: spec_module.DataSelection | None = None
        self.storage: StorageLocation | None = None
        self.needs: Needs | None = None
        self.idle = False

    # --- helpers ------------------------------------------------------------------------
    def _condition(self, kind: str, value: bool, reason: str, message: str) -> None:
        self.status["conditions"] = conditions.set_condition(
            self.status.get("conditions"), kind, value,
            reason=reason, message=message, generation=self.generation, now=self.obs.now,
        )

    def _set_phase(self, phase: str, message: str, progress: str) -> None:
        previous = self.old.get("phase")
        self.status["phase"] = phase
        self.status["progress"] = progress
        self._condition(conditions.RUNNING, phase != PENDING, phase, message)
        if phase != previous:
            self.events.append(Event("Normal", "PhaseChanged", f"{previous or 'New'} -> {phase}: {message}"))

    def _fail(self, reason: str, message: str, progress: str) -> None:
        self.status["phase"] = FAILED
        self.status["progress"] = progress
        self.status.setdefault("completionTime", self.obs.now)
        self._condition(conditions.FAILED, True, reason, message)
        self._condition(conditions.RUNNING, False, FAILED, message)
        self.status["conditions"] = conditions.remove_condition(self.status["conditions"], conditions.COMPLETE)
        self.events.append(Event("Warning", reason, message))
        raise _Stop

    def _job_name(self, stage: str) -> str:
        return manifests.job_name(self.name, stage)

    # --- the decision -------------------------------------------------------------------
    def run(self) -> None:
        self.status["observedGeneration"] = self.generation
        if self.old.get("phase") in TERMINAL and not self._validation_may_be_retried():
            self.idle = True
            self._check_spec_unchanged()
            return
        self._load_or_start()
        self._check_spec_unchanged()
        self._walk_stages()

    def _validation_may_be_retried(self) -> bool:
        """A spec that failed validation never started; a corrected one may start."""
        failed = conditions.find_condition(self.old.get("conditions"), conditions.FAILED)
        return (
            self.old.get("phase") == FAILED
            and failed is not None
            and failed.get("reason") == "InvalidSpec"
            and self.obs.started is None
            and self.generation != self.old.get("observedGeneration")
        )

    def _started_resource(self) -> spec_module.DataSelection:
        started = self.obs.started or {}
        try:
            return spec_module.parse_selection(started.get("resource"), source="arguments ConfigMap")
        except spec_module.SpecError as error:
            self._fail(
                "ArgumentsUnreadable",
                f"ConfigMap {manifests.config_map_name(self.name)} does not hold a usable spec: {error}",
                "failed",
            )
            raise  # unreachable: _fail raises _Stop

    def _load_or_start(self) -> None:
        if self.obs.started is not None:
            self.resource = self._started_resource()
            try:
                self.storage = StorageLocation.from_document(
                    self.obs.started.get("storage"), credentials_secret=self.obs.started_secret,
                    source=f"ConfigMap {manifests.config_map_name(self.name)}",
                )
            except contract.JobArgumentError as error:
                self._fail("ArgumentsUnreadable", str(error), "failed")
            return
        if self.old.get("startTime") and self.generation != self.old.get("startedGeneration"):
            self._fail(
                "ArgumentsLost",
                f"ConfigMap {manifests.config_map_name(self.name)} with the spec this selection started with "
                "is gone and the spec changed since; delete and recreate the DataSelection",
                "failed",
            )
        try:
            live = spec_module.parse_selection(dict(self.obs.resource), source=None)
            storage = manifests.resolve_storage(live, self.obs.settings)
        except spec_module.SpecError as error:
            self._fail("InvalidSpec", f"invalid spec: {_problems_text(error.problems)}", "invalid spec")
            raise  # unreachable
        problems = manifests.cluster_problems(live)
        if problems:
            self._fail("InvalidSpec", f"invalid spec: {_problems_text(problems)}", "invalid spec")
        self.resource, self.storage = live, storage
        self.create_config_map = True
        if not self.old.get("startTime"):
            self.status["startTime"] = self.obs.now
            self.status["startedGeneration"] = self.generation
        for stale in ("completionTime", "selection"):
            self.status.pop(stale, None)
        self.status["conditions"] = conditions.remove_condition(self.status.get("conditions"), conditions.FAILED)
        root = storage.uri
        self.status["artifacts"] = {
            "root": root,
            "checkpoints": f"{root}/warmup",
            "features": f"{root}/features",
            "scores": f"{root}/scores",
            "selection": f"{root}/{artifacts.SELECTION_PREFIX}/{artifacts.SELECTION_FILE}",
            "subset": f"{root}/{artifacts.SELECTION_PREFIX}/{artifacts.SUBSET_FILE}",
        }

    def _check_spec_unchanged(self) -> None:
        if self.obs.started is None:
            return
        try:
            started = spec_module.parse_selection(self.obs.started.get("resource")).spec_dict()
        except spec_module.SpecError:
            return
        try:
            live = spec_module.parse_selection(dict(self.obs.resource)).spec_dict()
        except spec_module.SpecError:
            live = None
        previous = conditions.find_condition(self.old.get("conditions"), conditions.SPEC_REJECTED)
        if live == started:
            if previous is not None:
                self.status["conditions"] = conditions.remove_condition(
                    self.status.get("conditions"), conditions.SPEC_REJECTED
                )
            return
        message = (
            f"spec changed (generation {self.generation}) after the selection started "
            f"(generation {self.old.get('startedGeneration', '?')}): the spec is immutable once started, "
            "so the selection continues with its original spec; delete and recreate the DataSelection "
            "to change it"
        )
        self._condition(conditions.SPEC_REJECTED, True, "SpecImmutable", message)
        if previous is None or previous.get("observedGeneration") != self.generation:
            self.events.append(Event("Warning", "SpecRejected", message))

    def _walk_stages(self) -> None:
        if self.resource is None or self.storage is None:
            return
        shards = self.resource.spec.gradients.shards
        stages = self.status.setdefault("stages", {})
        for stage in contract.STAGES:
            total = stage.completions(shards)
            record = stages.setdefault(stage.name, {})
            record.setdefault("job", self._job_name(stage.name))
            record.setdefault("state", STATE_PENDING)
            record.setdefault("shards", {"total": total, "succeeded": 0, "failed": 0})
            record.setdefault("podFailures", 0)
            if record["state"] == STATE_SUCCEEDED:
                continue
            job = self.obs.jobs.get(stage.name)
            if job is None:
                self.create_jobs.append(stage.name)
                record["state"] = STATE_PENDING
                self._running(stage, None)
                return
            self._record_job(stage, record, job, total)
            if job.complete:
                record["state"] = STATE_SUCCEEDED
                continue
            if job.failed_for_good:
                record["state"] = STATE_FAILED
                self._stage_failed(stage, job)  # raises _Stop
            record["state"] = STATE_RUNNING if job.start_time and not job.suspended else STATE_PENDING
            self._running(stage, job)
            return
        self._finish()

    def _record_job(self, stage: contract.Stage, record: dict[str, Any], job: JobState, total: int) -> None:
        if stage.indexed:
            succeeded = len(job.completed_indexes) if job.completed_indexes else min(job.succeeded, total)
            failed = len(job.failed_indexes)
        else:
            succeeded = 1 if job.complete else 0
            failed = 1 if job.failed_for_good else 0
        record["shards"] = {"total": total, "succeeded": succeeded, "failed": failed}
        previous = int(record.get("podFailures") or 0)
        if job.failed > previous:
            limit = self.resource.spec.resources.backoff_limit_per_index if self.resource else "?"
            self.events.append(Event(
                "Warning", "PodFailed",
                f"{stage.name}: {job.failed - previous} more failed pod(s) in Job {job.name} "
                f"({job.failed} in total; {stage.retry_limit_field}={limit})",
            ))
            record["podFailures"] = job.failed
        for key, value in (("startTime", job.start_time), ("completionTime", job.completion_time or job.failure_time)):
            if value:
                record[key] = value

    def _running(self, stage: contract.Stage, job: JobState | None) -> None:
        name = self._job_name(stage.name)
        if stage.indexed:
            record = self.status["stages"][stage.name]["shards"]
            progress = f"{record['succeeded']}/{record['total']} {stage.progress}"
        else:
            progress = stage.progress
        if job is None:
            message = f"creating Job {name}"
        elif job.suspended:
            queue = self.resource.spec.resources.queue_name if self.resource else None
            message = f"Job {name} is suspended" + (f" (waiting for admission to queue {queue})" if queue else "")
            progress = "queued"
        elif not job.start_time:
            message = f"waiting for Job {name} to start"
        else:
            message = f"Job {name} is running" + (f": {progress} done" if stage.indexed else "")
        phase = stage.phase
        # Until its first Job starts, the selection as a whole is still pending.
        if stage is contract.STAGES[0] and (job is None or job.suspended or not job.start_time):
            phase = PENDING
            progress = "queued" if job is not None and job.suspended else "pending"
        self._set_phase(phase, message, progress)

    def _stage_failed(self, stage: contract.Stage, job: JobState) -> None:
        detail = self.obs.failure
        if detail is None:
            self.needs = Needs(failure_of=stage.name)
            raise _Stop
        shard = detail.shard
        if shard is None and stage.indexed and job.failed_indexes:
            shard = min(job.failed_indexes)
        where = f"{stage.name} failed" + (f": shard {shard}" if shard is not None else "")
        facts = [f"pod {detail.pod}"] if detail.pod else [f"Job {job.name}"]
        if detail.exit_code is not None:
            facts.append(f"exit code {detail.exit_code}")
        reason = detail.line or ": ".join(x for x in (job.failure_reason, job.failure_message) if x) or "no reason given"
        progress = f"shard {shard} failed" if shard is not None else f"{stage.name} failed"
        self._fail("StageFailed", f"{where} ({', '.join(facts)}): {reason}", progress)

    def _finish(self) -> None:
        read = self.obs.selection
        if read is None:
            self.needs = Needs(selection=True)
            raise _Stop
        uri = self.status.get("artifacts", {}).get("selection") or (
            f"{self.storage.uri}/{artifacts.SELECTION_PREFIX}/{artifacts.SELECTION_FILE}" if self.storage else ""
        )
        if read.document is None:
            message = f"reduce finished but {uri} cannot be read: {read.error}"
            previous = conditions.find_condition(self.old.get("conditions"), conditions.RUNNING)
            self.status["phase"] = REDUCING
            self.status["progress"] = "reading result"
            self._condition(conditions.RUNNING, True, "SelectionUnreadable", message)
            if previous is None or previous.get("message") != message:
                self.events.append(Event("Warning", "SelectionUnreadable", message))
            return
        summary = conditions.selection_summary(read.document, uri)
        self.status["selection"] = summary
        self.status["phase"] = SUCCEEDED
        self.status["progress"] = "done"
        self.status.setdefault("completionTime", self.obs.now)
        message = (
            f"selected {summary['count']} of {summary.get('poolSize', '?')} examples "
            f"(method {summary.get('method')}); {uri}"
        )
        self._condition(conditions.COMPLETE, True, "SelectionWritten", message)
        self._condition(conditions.RUNNING, False, SUCCEEDED, message)
        self.events.append(Event("Normal", "Succeeded", message))

    def plan(self) -> Plan:
        return Plan(
            status=self.status,
            resource=self.resource,
            storage=self.storage,
            create_config_map=self.create_config_map,
            create_jobs=tuple(self.create_jobs),
            events=tuple(self.events),
            needs=self.needs,
            idle=self.idle,
        )


def decide(observation: Observation) -> Plan:
    """The next status and actions. When `plan.needs` is set, fetch those details and ask again."""
    draft = _Draft(observation)
    try:
        draft.run()
    except _Stop:
        pass
    return draft.plan()


def merge_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON merge patch (RFC 7386) turning `old` into `new`, or None when they are equal."""
    old = old or {}
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            nested = merge_patch(before, value)
            if nested is not None:
                patch[key] = nested
        elif key not in old or before != value:
            patch[key] = copy.deepcopy(value)
    patch.update({key: None for key in old if key not in new})
    return patch or None
