"""The pure state machine: from what exists (the resource, its ConfigMap and Jobs) to what to do.

    Pending -> Warmup -> Extracting -> Reducing -> Succeeded
    (any of them) ---------------------------------> Failed

`decide(observation)` returns a `Plan`: the complete new status, the objects to create and the
Events to post. It does no I/O, so restarts are safe by construction: whatever the operator
finds (Jobs finished while it was down, a Job it created just before dying) leads to the same
plan, and creating an existing object is a no-op. A stage whose status record says Succeeded is
never run again, even when its Job is gone (ttlSecondsAfterFinished). When the plan names
`needs` (a failed pod to read, pods that do not start, selection.json), the reconciler fetches
them and asks again; the spec is parsed once per round (`read_specs`), not per question.

The spec a selection started with is the one in its immutable arguments ConfigMap; later spec
changes are reported in a `SpecRejected` condition and otherwise ignored. `refused` turns a plan
whose object the API server rejected (a non-retryable 4xx) into a failed selection.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

from selection import artifacts, contract
from selection import spec as spec_module
from selection.contract import StorageLocation
from selection.redact import redact

from selection_operator import admission, manifests, status as conditions
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
    """What the machine needs from one child Job, read from its status.

    Only the `Failed` condition ends it: `FailureTarget` (1.31+) comes first, while the Job
    controller still stops the remaining pods."""

    name: str
    suspended: bool = False
    start_time: str | None = None
    completion_time: str | None = None
    active: int = 0
    ready: int | None = None  # pods whose containers run (None: the Job controller did not say)
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
            ready=int(status["ready"]) if status.get("ready") is not None else None,
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
class Waiting:
    """Why a running stage's pods do not run: a pod's waiting reason, Unschedulable, FailedCreate,
    or a Kueue Workload that is not admitted. `where` names the pod, Job or Workload."""

    reason: str
    message: str
    where: str


@dataclasses.dataclass(frozen=True)
class SelectionRead:
    """selection.json as read from the artifact store, or why it could not be read."""

    document: Mapping[str, Any] | None = None
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class Specs:
    """The round's parsed specs: the one the selection started with and the live one."""

    started: spec_module.DataSelection | None = None
    started_error: str | None = None
    live: spec_module.DataSelection | None = None
    live_problems: tuple[tuple[str, str], ...] = ()


def read_specs(resource: Mapping[str, Any], started: Mapping[str, Any] | None) -> Specs:
    """Parse the live spec and the started one (from the arguments ConfigMap) once."""
    started_spec = started_error = None
    if started is not None:
        try:
            started_spec = spec_module.parse_selection(started.get("resource"), source="arguments ConfigMap")
        except spec_module.SpecError as error:
            started_error = str(error)
    try:
        return Specs(started_spec, started_error, live=spec_module.parse_selection(dict(resource), source=None))
    except spec_module.SpecError as error:
        return Specs(started_spec, started_error, live_problems=tuple(error.problems))


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
    waiting: Waiting | None = None  # the running stage's pods, when asked for
    waiting_checked: bool = False  # `waiting` was looked for (None then means: nothing waits)
    specs: Specs | None = None  # parsed once per round; decide parses itself when absent


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
    waiting_of: str | None = None  # the stage whose pods (or Workload) to look at


@dataclasses.dataclass(frozen=True)
class Plan:
    status: dict[str, Any]
    resource: spec_module.DataSelection | None = None  # the spec as started, for building Jobs
    storage: StorageLocation | None = None
    create_config_map: bool = False
    create_jobs: tuple[str, ...] = ()
    suspend_jobs: tuple[str, ...] = ()  # stop their pods: the stage failed while they waited
    events: tuple[Event, ...] = ()
    needs: Needs | None = None
    idle: bool = False  # terminal: nothing happens until the spec changes


def _problems_text(problems: Any) -> str:
    return "; ".join(f"{path}: {message}" for path, message in problems)


def _seconds_since(then: str | None, now: str) -> float:
    def parse(text: str) -> datetime.datetime:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))

    if not then:
        return 0.0
    return (parse(now) - parse(then)).total_seconds()


@dataclasses.dataclass
class _Round:
    """The status being written this round and what goes with it (plain data, no decisions)."""

    obs: Observation
    specs: Specs
    name: str
    generation: int | None
    old: dict[str, Any]
    status: dict[str, Any]
    events: list[Event] = dataclasses.field(default_factory=list)
    resource: spec_module.DataSelection | None = None
    storage: StorageLocation | None = None
    create_config_map: bool = False

    def plan(self, **actions: Any) -> Plan:
        return Plan(status=self.status, resource=self.resource, storage=self.storage,
                    create_config_map=self.create_config_map, events=tuple(self.events), **actions)


def _condition(r: _Round, kind: str, value: bool, reason: str, message: str) -> None:
    r.status["conditions"] = conditions.set_condition(
        r.status.get("conditions"), kind, value,
        reason=reason, message=message, generation=r.generation, now=r.obs.now,
    )


def _set_phase(r: _Round, phase: str, message: str, progress: str) -> None:
    previous = r.old.get("phase")
    r.status["phase"] = phase
    r.status["progress"] = progress
    _condition(r, conditions.RUNNING, phase != PENDING, phase, message)
    if phase != previous:
        r.events.append(Event("Normal", "PhaseChanged", f"{previous or 'New'} -> {phase}: {message}"))


def _fail(r: _Round, reason: str, message: str, progress: str, **actions: Any) -> Plan:
    """The selection failed: terminal status, a Warning Event, and nothing more to create."""
    message = redact(message)
    r.status["phase"] = FAILED
    r.status["progress"] = progress
    r.status.setdefault("completionTime", r.obs.now)
    r.status.pop("waiting", None)
    _condition(r, conditions.FAILED, True, reason, message)
    _condition(r, conditions.RUNNING, False, FAILED, message)
    r.status["conditions"] = conditions.remove_condition(r.status["conditions"], conditions.COMPLETE)
    r.events.append(Event("Warning", reason, message))
    r.create_config_map = False
    return r.plan(**actions)


def _job_name(r: _Round, stage: str) -> str:
    return manifests.job_name(r.name, stage)


def decide(observation: Observation) -> Plan:
    """The next status and actions. When `plan.needs` is set, fetch those details and ask again."""
    obs = observation
    meta = obs.resource.get("metadata") or {}
    old = copy.deepcopy(dict(obs.resource.get("status") or {}))
    r = _Round(obs=obs, specs=obs.specs or read_specs(obs.resource, obs.started), name=meta.get("name", ""),
               generation=meta.get("generation"), old=old, status=copy.deepcopy(old))
    r.status["observedGeneration"] = r.generation
    if old.get("phase") in TERMINAL and not _validation_may_be_retried(r):
        _check_spec_unchanged(r)
        return r.plan(idle=True)
    failed = _load_or_start(r)
    if failed is not None:
        return failed
    _check_spec_unchanged(r)
    return _walk_stages(r)


def refused(observation: Observation, plan: Plan, kind: str, name: str, code: int, message: str) -> Plan:
    """`plan` after the API server refused to create `kind/name` for good (a non-retryable 4xx):
    the selection fails with the API's own message, and nothing else is created."""
    meta = observation.resource.get("metadata") or {}
    r = _Round(obs=observation, specs=observation.specs or Specs(), name=meta.get("name", ""),
               generation=meta.get("generation"), old=dict(observation.resource.get("status") or {}),
               status=copy.deepcopy(plan.status), events=list(plan.events),
               resource=plan.resource, storage=plan.storage)
    return _fail(r, "CreateRefused", f"the API server refused to create {kind} {name} ({code}): {message}; "
                 "fix the spec, then delete and recreate the DataSelection", "failed")


def _validation_may_be_retried(r: _Round) -> bool:
    """A spec that failed validation (ours or the API server's, before its arguments ConfigMap
    existed) never started; a corrected one may start."""
    failed = conditions.find_condition(r.old.get("conditions"), conditions.FAILED)
    return (
        r.old.get("phase") == FAILED
        and failed is not None
        and failed.get("reason") in ("InvalidSpec", "CreateRefused")
        and r.obs.started is None
        and r.generation != r.old.get("observedGeneration")
    )


def _load_or_start(r: _Round) -> Plan | None:
    """The spec and storage to run with: the started ones, or the live ones for a new start.
    Returns a failed plan when neither is usable."""
    obs, config_map = r.obs, manifests.config_map_name(r.name)
    if obs.started is not None:
        if r.specs.started is None:
            return _fail(r, "ArgumentsUnreadable",
                         f"ConfigMap {config_map} does not hold a usable spec: {r.specs.started_error}", "failed")
        r.resource = r.specs.started
        try:
            r.storage = StorageLocation.from_document(
                obs.started.get("storage"), credentials_secret=obs.started_secret, source=f"ConfigMap {config_map}")
        except contract.JobArgumentError as error:
            return _fail(r, "ArgumentsUnreadable", str(error), "failed")
        return None
    if r.old.get("startTime") and r.generation != r.old.get("startedGeneration"):
        return _fail(
            r, "ArgumentsLost",
            f"ConfigMap {config_map} with the spec this selection started with "
            "is gone and the spec changed since; delete and recreate the DataSelection",
            "failed",
        )
    live = r.specs.live
    if live is None:
        return _fail(r, "InvalidSpec", f"invalid spec: {_problems_text(r.specs.live_problems)}", "invalid spec")
    try:
        storage = manifests.resolve_storage(live, obs.settings)
    except spec_module.SpecError as error:
        return _fail(r, "InvalidSpec", f"invalid spec: {_problems_text(error.problems)}", "invalid spec")
    problems = admission.admission_problems(live, storage.uri, obs.settings)
    if problems:
        return _fail(r, "InvalidSpec", f"invalid spec: {_problems_text(problems)}", "invalid spec")
    r.resource, r.storage = live, storage
    r.create_config_map = True
    if not r.old.get("startTime"):
        r.status["startTime"] = obs.now
        r.status["startedGeneration"] = r.generation
    for stale in ("completionTime", "selection"):
        r.status.pop(stale, None)
    r.status["conditions"] = conditions.remove_condition(r.status.get("conditions"), conditions.FAILED)
    root = storage.uri
    r.status["artifacts"] = {
        "root": root,
        "checkpoints": f"{root}/warmup",
        "features": f"{root}/features",
        "scores": f"{root}/scores",
        "selection": f"{root}/{artifacts.SELECTION_PREFIX}/{artifacts.SELECTION_FILE}",
        "subset": f"{root}/{artifacts.SELECTION_PREFIX}/{artifacts.SUBSET_FILE}",
    }
    return None


def _check_spec_unchanged(r: _Round) -> None:
    if r.obs.started is None or r.specs.started is None:
        return
    started = r.specs.started.spec_dict()
    live = r.specs.live.spec_dict() if r.specs.live is not None else None
    previous = conditions.find_condition(r.old.get("conditions"), conditions.SPEC_REJECTED)
    if live == started:
        if previous is not None:
            r.status["conditions"] = conditions.remove_condition(r.status.get("conditions"), conditions.SPEC_REJECTED)
        return
    message = (
        f"spec changed (generation {r.generation}) after the selection started "
        f"(generation {r.old.get('startedGeneration', '?')}): the spec is immutable once started, "
        "so the selection continues with its original spec; delete and recreate the DataSelection "
        "to change it"
    )
    _condition(r, conditions.SPEC_REJECTED, True, "SpecImmutable", message)
    if previous is None or previous.get("observedGeneration") != r.generation:
        r.events.append(Event("Warning", "SpecRejected", message))


def _walk_stages(r: _Round) -> Plan:
    assert r.resource is not None and r.storage is not None
    shards = r.resource.spec.gradients.shards
    stages = r.status.setdefault("stages", {})
    for stage in contract.STAGES:
        total = stage.completions(shards)
        record = stages.setdefault(stage.name, {})
        record.setdefault("job", _job_name(r, stage.name))
        record.setdefault("state", STATE_PENDING)
        record.setdefault("shards", {"total": total, "succeeded": 0, "failed": 0})
        record.setdefault("podFailures", 0)
        if record["state"] == STATE_SUCCEEDED:
            continue
        job = r.obs.jobs.get(stage.name)
        if job is None:
            record["state"] = STATE_PENDING
            _running(r, stage, None)
            return r.plan(create_jobs=(stage.name,))
        _record_job(r, stage, record, job, total)
        if job.complete:
            record["state"] = STATE_SUCCEEDED
            continue
        if job.failed_for_good:
            record["state"] = STATE_FAILED
            return _stage_failed(r, stage, job)
        # Pods that may not run are looked at (one more round trip); until then, none wait.
        look = _may_wait(job) and not r.obs.waiting_checked
        waiting = r.obs.waiting if r.obs.waiting_checked else None
        # Started (startTime) is not running: until one of its pods runs, a waiting stage is pending.
        starting = waiting is not None and not job.ready and not job.succeeded
        record["state"] = STATE_RUNNING if job.start_time and not job.suspended and not starting else STATE_PENDING
        _running(r, stage, job, waiting if starting else None)
        plan = _report_waiting(r, stage, job, waiting)
        return dataclasses.replace(plan, needs=Needs(waiting_of=stage.name)) if look else plan
    return _finish(r)


def _record_job(r: _Round, stage: contract.Stage, record: dict[str, Any], job: JobState, total: int) -> None:
    if stage.indexed:
        succeeded = len(job.completed_indexes) if job.completed_indexes else min(job.succeeded, total)
        failed = len(job.failed_indexes)
    else:
        succeeded = 1 if job.complete else 0
        failed = 1 if job.failed_for_good else 0
    record["shards"] = {"total": total, "succeeded": succeeded, "failed": failed}
    previous = int(record.get("podFailures") or 0)
    if job.failed > previous:
        limit = r.resource.spec.resources.backoff_limit_per_index if r.resource else "?"
        r.events.append(Event(
            "Warning", "PodFailed",
            f"{stage.name}: {job.failed - previous} more failed pod(s) in Job {job.name} "
            f"({job.failed} in total; {stage.retry_limit_field}={limit})",
        ))
        record["podFailures"] = job.failed
    for key, value in (("startTime", job.start_time), ("completionTime", job.completion_time or job.failure_time)):
        if value:
            record[key] = value


def _running(r: _Round, stage: contract.Stage, job: JobState | None, starting: Waiting | None = None) -> None:
    name = _job_name(r, stage.name)
    if stage.indexed:
        record = r.status["stages"][stage.name]["shards"]
        progress = f"{record['succeeded']}/{record['total']} {stage.progress}"
    else:
        progress = stage.progress
    if job is None:
        message = f"creating Job {name}"
    elif job.suspended:
        queue = r.resource.spec.resources.queue_name if r.resource else None
        message = f"Job {name} is suspended" + (f" (waiting for admission to queue {queue})" if queue else "")
        progress = "queued"
    elif not job.start_time:
        message = f"waiting for Job {name} to start"
    elif starting is not None:
        message = f"the pods of Job {name} do not start: {starting.reason}"
    else:
        message = f"Job {name} is running" + (f": {progress} done" if stage.indexed else "")
    phase = stage.phase
    # Until its first Job starts, the selection as a whole is still pending.
    if stage is contract.STAGES[0] and (job is None or job.suspended or not job.start_time or starting):
        phase = PENDING
        progress = "queued" if job is not None and job.suspended else "pending"
    _set_phase(r, phase, message, progress)


def _may_wait(job: JobState) -> bool:
    """Whether some of the Job's pods may not be running: worth looking at them.

    A Job counts a pod active from its creation; `ready` only once its container runs. No active
    pod while the Job runs means pods are not even created (FailedCreate) or between retries. A
    suspended Job waits for its queue (Kueue)."""
    if job.suspended:
        return True
    if not job.start_time:
        return False
    return job.active == 0 or (job.ready is not None and job.ready < job.active)


def _report_waiting(r: _Round, stage: contract.Stage, job: JobState, waiting: Waiting | None) -> Plan:
    """Report pods that do not start (condition PodsReady, status.waiting); fail the stage once
    they have waited longer than the grace period, and stop its pods."""
    obs = r.obs
    if waiting is None:
        _pods_ready(r, job)
        return r.plan()
    message = redact(f"{waiting.where}: {waiting.reason}: {waiting.message}".rstrip(": "))
    _condition(r, conditions.PODS_READY, False, waiting.reason, message)
    r.status["waiting"] = waiting.reason
    since = (conditions.find_condition(r.status["conditions"], conditions.PODS_READY) or {}).get("lastTransitionTime")
    grace = obs.settings.pod_start_grace_seconds
    previous = conditions.find_condition(r.old.get("conditions"), conditions.PODS_READY)
    if previous is None or previous.get("status") != "False" or previous.get("reason") != waiting.reason:
        r.events.append(Event("Warning", "PodsNotReady", f"{stage.name}: {message}"))
    # A queued Job waits for Kueue, which decides when; the grace period is for pods that cannot start.
    if job.suspended or _seconds_since(since, obs.now) < grace:
        return r.plan()
    r.status["stages"][stage.name]["state"] = STATE_FAILED
    return _fail(
        r, "PodsNotStarted",
        f"{stage.name} failed: pods did not start within {grace:g} s (DSEL_POD_START_GRACE_SECONDS): {message}",
        f"{stage.name} failed", suspend_jobs=(stage.name,),
    )


def _pods_ready(r: _Round, job: JobState) -> None:
    r.status.pop("waiting", None)
    if job.start_time and not job.suspended:
        _condition(r, conditions.PODS_READY, True, "Running", f"the pods of Job {job.name} run")


def _stage_failed(r: _Round, stage: contract.Stage, job: JobState) -> Plan:
    detail = r.obs.failure
    if detail is None:
        return r.plan(needs=Needs(failure_of=stage.name))
    shard = detail.shard
    if shard is None and stage.indexed and job.failed_indexes:
        shard = min(job.failed_indexes)
    where = f"{stage.name} failed" + (f": shard {shard}" if shard is not None else "")
    facts = [f"pod {detail.pod}"] if detail.pod else [f"Job {job.name}"]
    if detail.exit_code is not None:
        facts.append(f"exit code {detail.exit_code}")
    reason = detail.line or ": ".join(x for x in (job.failure_reason, job.failure_message) if x) or "no reason given"
    progress = f"shard {shard} failed" if shard is not None else f"{stage.name} failed"
    return _fail(r, "StageFailed", f"{where} ({', '.join(facts)}): {reason}", progress)


def _finish(r: _Round) -> Plan:
    read = r.obs.selection
    if read is None:
        return r.plan(needs=Needs(selection=True))
    r.status.pop("waiting", None)
    uri = r.status.get("artifacts", {}).get("selection") or (
        f"{r.storage.uri}/{artifacts.SELECTION_PREFIX}/{artifacts.SELECTION_FILE}" if r.storage else ""
    )
    if read.document is None:
        message = redact(f"reduce finished but {uri} cannot be read: {read.error}")
        previous = conditions.find_condition(r.old.get("conditions"), conditions.RUNNING)
        r.status["phase"] = REDUCING
        r.status["progress"] = "reading result"
        _condition(r, conditions.RUNNING, True, "SelectionUnreadable", message)
        if previous is None or previous.get("message") != message:
            r.events.append(Event("Warning", "SelectionUnreadable", message))
        return r.plan()
    summary = conditions.selection_summary(read.document, uri)
    r.status["selection"] = summary
    r.status["phase"] = SUCCEEDED
    r.status["progress"] = "done"
    r.status.setdefault("completionTime", r.obs.now)
    message = (
        f"selected {summary['count']} of {summary.get('poolSize', '?')} examples "
        f"(method {summary.get('method')}); {uri}"
    )
    _condition(r, conditions.COMPLETE, True, "SelectionWritten", message)
    _condition(r, conditions.RUNNING, False, SUCCEEDED, message)
    r.events.append(Event("Normal", "Succeeded", message))
    return r.plan()


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
