"""Observe, decide, act: runs the pure state machine against the cluster for one DataSelection.

One long-lived loop per resource (started by the `Supervisor`, without a finalizer) is the only
writer of its status. Job events wake it at once (all but the echo of its own create, see
`Wakeups`); otherwise it re-checks every `resync_seconds` while the selection runs, and sleeps
until the spec changes once it has finished. Each round observes (the resource, then its
ConfigMap and Jobs together; pods, Events, Workloads, the failed pod's message or selection.json
only when the plan asks), decides (`phases.decide`) and applies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import traceback
from collections.abc import Mapping
from typing import Any, cast

import kopf

from selection import contract
from selection.redact import redact

from selection_operator import cluster as cluster_module
from selection_operator import manifests, phases, results
from selection_operator.metrics import Metrics
from selection_operator.settings import OperatorSettings

# Seconds between retries after an unexpected error, doubling up to `resync_seconds`.
ERROR_BACKOFF_S = 1.0


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Wakeups:
    """Per-resource wake-up events, so Job and spec changes reach the right loop at once.

    The watch event of a Job the loop has just created (its ADDED event carrying the very
    resourceVersion the create returned) tells the loop nothing it does not know, so it wakes
    nobody: the Job controller's first status update does. That halves the rounds per stage; a
    Job created suspended (Kueue) still wakes the loop, which then reports why it waits."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, str], asyncio.Event] = {}
        self._generations: dict[tuple[str, str], Any] = {}
        self._created: dict[tuple[str, str], dict[str, str]] = {}  # job name -> resourceVersion

    def register(self, namespace: str, name: str) -> asyncio.Event:
        event = self._events.setdefault((namespace, name), asyncio.Event())
        return event

    def unregister(self, namespace: str, name: str, event: asyncio.Event) -> None:
        if self._events.get((namespace, name)) is event:
            del self._events[(namespace, name)]
        self._generations.pop((namespace, name), None)
        self._created.pop((namespace, name), None)

    def poke(self, namespace: str, name: str) -> None:
        event = self._events.get((namespace, name))
        if event is not None:
            event.set()

    def created_job(self, namespace: str, name: str, job: Mapping[str, Any]) -> None:
        """Note a Job the loop of `name` created, as the API server returned it."""
        meta = job.get("metadata") or {}
        if meta.get("name") and meta.get("resourceVersion") and not (job.get("spec") or {}).get("suspend"):
            self._created.setdefault((namespace, name), {})[meta["name"]] = meta["resourceVersion"]

    def poke_for_job(self, namespace: str, name: str, event_type: str | None, job: Mapping[str, Any]) -> None:
        """Wake the loop of selection `name` for a Job event, unless it is the echo of its own create."""
        meta = job.get("metadata") or {}
        created = self._created.get((namespace, name)) or {}
        version = created.pop(str(meta.get("name")), None)  # only the first event after the create may be its echo
        if event_type == "ADDED" and version is not None and version == meta.get("resourceVersion"):
            return
        self.poke(namespace, name)

    def poke_on_new_generation(self, namespace: str, name: str, generation: Any) -> None:
        """Wake the loop for spec changes, not for the status patches it makes itself."""
        key = (namespace, name)
        if self._generations.get(key) != generation:
            self._generations[key] = generation
            self.poke(namespace, name)


class LatestSelections:
    """The newest body of each DataSelection that the watch delivered, read instead of a GET.

    A body serves a round only while it is the version the operator last knew from the API
    server itself (its last status write's answer, or its last GET), i.e. once the watch has
    delivered the echo of that write; until then the round GETs. A change made since (a spec
    edit, a deletion) arrives as a later event that replaces the body and wakes the loop, just as
    a GET racing with that change would have missed it. The first round uses the event that
    started the loop."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], Mapping[str, Any]] = {}
        self._known: dict[tuple[str, str], str | None] = {}

    @staticmethod
    def _version(body: Mapping[str, Any] | None) -> str | None:
        return ((body or {}).get("metadata") or {}).get("resourceVersion")

    def seen(self, namespace: str, name: str, body: Mapping[str, Any]) -> None:
        """A watch event's body (events arrive in the order of the API server's changes)."""
        self._seen[(namespace, name)] = body

    def known(self, namespace: str, name: str, body: Mapping[str, Any] | None) -> None:
        """A body the API server answered with (GET, or the status write's answer)."""
        self._known[(namespace, name)] = self._version(body)

    def fresh(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The watched body when it is at least as new as the operator's own last read or write."""
        key = (namespace, name)
        body = self._seen.get(key)
        if body is None or self._version(body) is None:
            return None
        if key in self._known and self._known[key] != self._version(body):
            return None
        return body

    def forget(self, namespace: str, name: str) -> None:
        self._seen.pop((namespace, name), None)
        self._known.pop((namespace, name), None)


@dataclasses.dataclass
class Context:
    """What every handler shares within one operator run (kept in kopf's memo)."""

    cluster: cluster_module.Cluster
    settings: OperatorSettings
    metrics: Metrics
    wakeups: Wakeups = dataclasses.field(default_factory=Wakeups)
    selections: LatestSelections = dataclasses.field(default_factory=LatestSelections)
    selection_reader: results.SelectionReader = dataclasses.field(default_factory=results.SelectionReader)
    supervisor: "Supervisor" = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.supervisor = Supervisor(self)

    @classmethod
    def create(cls, settings: OperatorSettings) -> "Context":
        metrics = Metrics()
        metrics.serve(settings.metrics_port, settings.metrics_address)
        return cls(cluster=cluster_module.Cluster.from_environment(), settings=settings, metrics=metrics)

    async def close(self) -> None:
        await self.supervisor.close()
        self.metrics.close()
        self.cluster.close()
        self.selection_reader.close()


def owned_by(obj: Mapping[str, Any], uid: str | None) -> bool:
    """True when `obj` is controlled by the resource with `uid` (not a leftover of a namesake)."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return uid is not None and any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


def _last_line(text: str | None) -> str | None:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else None


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    for container in (pod.get("status") or {}).get("containerStatuses") or ():
        if container.get("name") == manifests.CONTAINER_NAME:
            state = container.get("state") or {}
            return state.get("terminated") or (container.get("lastState") or {}).get("terminated") or {}
    return {}


async def failure_detail(
    cluster: cluster_module.Cluster, namespace: str, job: phases.JobState, stage: str
) -> phases.FailureDetail:
    """The failed pod of a stage and the last line of its error (termination message or log)."""
    selector = f"job-name={job.name}"
    indexed = contract.stage_named(stage).indexed
    shard = min(job.failed_indexes) if indexed and job.failed_indexes else None
    if shard is not None:
        selector += f",batch.kubernetes.io/job-completion-index={shard}"
    pods = [p for p in await cluster.list_pods(namespace, selector) if (p.get("status") or {}).get("phase") == "Failed"]
    if not pods:
        return phases.FailureDetail(shard=shard)

    def finished(pod: Mapping[str, Any]) -> str:
        return str(_terminated(pod).get("finishedAt") or pod.get("metadata", {}).get("creationTimestamp") or "")

    pod = max(pods, key=finished)
    pod_name = pod.get("metadata", {}).get("name")
    terminated = _terminated(pod)
    line = _last_line(terminated.get("message"))
    if line is None and pod_name:
        line = _last_line(await cluster.pod_log_tail(namespace, pod_name, manifests.CONTAINER_NAME))
    if shard is None and indexed:
        index = (pod.get("metadata", {}).get("labels") or {}).get("batch.kubernetes.io/job-completion-index")
        shard = int(index) if index is not None and str(index).isdigit() else None
    exit_code = terminated.get("exitCode")
    return phases.FailureDetail(
        pod=pod_name, shard=shard, exit_code=int(exit_code) if exit_code is not None else None, line=line
    )


async def observe(ctx: Context, resource: Mapping[str, Any]) -> tuple[phases.Observation, dict[str, dict]]:
    meta = resource["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta.get("uid")
    jobs, config_map = await asyncio.gather(  # two round trips at once
        ctx.cluster.list_owned("batch/v1", "Job", namespace, name),
        ctx.cluster.get("v1", "ConfigMap", namespace, manifests.config_map_name(name)),
    )
    jobs_by_stage: dict[str, dict] = {}
    for job in jobs:
        stage = (job.get("metadata", {}).get("labels") or {}).get(manifests.LABEL_STAGE)
        if stage in contract.STAGE_NAMES and owned_by(job, uid):
            jobs_by_stage[stage] = job
    started = secret = None
    if config_map is not None and owned_by(config_map, uid):
        started = json.loads((config_map.get("data") or {}).get(manifests.ARGS_FILE) or "null")
        annotations = config_map["metadata"].get("annotations") or {}
        secret = annotations.get(manifests.CREDENTIALS_SECRET_ANNOTATION) or None
    observation = phases.Observation(
        resource=resource,
        started=started,
        started_secret=secret,
        jobs={stage: phases.JobState.from_job(job) for stage, job in jobs_by_stage.items()},
        settings=ctx.settings,
        now=now_rfc3339(),
        specs=phases.read_specs(resource, started),
    )
    return observation, jobs_by_stage


def _pod_waiting(pod: Mapping[str, Any]) -> phases.Waiting | None:
    """Why one pod does not run: unschedulable, or its worker container waiting to start."""
    name = (pod.get("metadata") or {}).get("name", "?")
    status = pod.get("status") or {}
    if status.get("phase") not in (None, "Pending"):
        return None
    for condition in status.get("conditions") or ():
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return phases.Waiting(condition.get("reason") or "Unschedulable", condition.get("message") or "",
                                  f"pod {name}")
    for container in status.get("containerStatuses") or ():
        waiting = (container.get("state") or {}).get("waiting") or {}
        # ContainerCreating and PodInitializing are what every pod passes through.
        if waiting.get("reason") and waiting["reason"] not in ("ContainerCreating", "PodInitializing"):
            return phases.Waiting(waiting["reason"], waiting.get("message") or "", f"pod {name}")
    return None


def _workload_waiting(workloads: list[dict[str, Any]] | None, job: phases.JobState, queue: str | None) -> phases.Waiting | None:
    """Kueue's reason for not admitting a suspended Job (its Workload's conditions)."""
    if not queue:
        return None
    if workloads is None:
        return None  # no Kueue here (or no right to read it): the Running condition says "suspended"
    if not workloads:
        return phases.Waiting("NoWorkload", f"Kueue has no Workload for Job {job.name} yet: is LocalQueue "
                              f"{queue} served by a Kueue controller?", f"Job {job.name}")
    workload = workloads[0]
    name = (workload.get("metadata") or {}).get("name", "?")
    by_type = {c.get("type"): c for c in (workload.get("status") or {}).get("conditions") or ()}
    for kind in ("QuotaReserved", "Admitted"):
        condition = by_type.get(kind)
        if condition is not None and condition.get("status") == "False":
            return phases.Waiting(condition.get("reason") or "Pending", condition.get("message") or "",
                                  f"Workload {name} (queue {queue})")
    if "QuotaReserved" not in by_type:
        return phases.Waiting("Pending", "not yet considered for admission", f"Workload {name} (queue {queue})")
    return None


async def waiting_detail(
    ctx: Context, namespace: str, job: phases.JobState, raw_job: Mapping[str, Any], queue: str | None
) -> phases.Waiting | None:
    """Why the stage's pods do not run (or its Job is not admitted), else None."""
    if job.suspended:
        uid = (raw_job.get("metadata") or {}).get("uid", "")
        return _workload_waiting(await ctx.cluster.list_workloads(namespace, uid), job, queue)
    pods = await ctx.cluster.list_pods(namespace, f"batch.kubernetes.io/job-name={job.name}")
    for pod in sorted(pods, key=lambda p: (p.get("metadata") or {}).get("name", "")):
        found = _pod_waiting(pod)
        if found is not None:
            return found
    if job.active == 0:  # no pod at all: the Job controller says why it could not create one
        events = [e for e in await ctx.cluster.list_events(namespace, "Job", job.name)
                  if e.get("reason") == "FailedCreate"]
        if events:
            latest = max(events, key=_event_time)
            newest_pod = max((str((p.get("metadata") or {}).get("creationTimestamp") or "") for p in pods), default="")
            # An Event outlives its cause (an hour by default): one older than the Job's newest
            # pod is about a failure that has since gone away.
            if _event_time(latest) >= newest_pod:
                return phases.Waiting("FailedCreate", latest.get("message") or "", f"Job {job.name}")
    return None


def _event_time(event: Mapping[str, Any]) -> str:
    return str(event.get("lastTimestamp") or event.get("eventTime") or (event.get("metadata") or {}).get(
        "creationTimestamp") or "")


async def storage_credentials(ctx: Context, namespace: str, secret: str | None) -> dict[str, str] | None:
    """The S3 keys of the selection's credentials Secret, read as its pods get them; None means
    the operator's own credentials (no Secret named)."""
    if not secret:
        return None
    data = await ctx.cluster.get_secret_data(namespace, secret)
    if data is None:
        raise results.CredentialsError(f"credentials Secret {namespace}/{secret} not found")
    missing = [key for key, required in manifests.SECRET_KEYS.items() if required and not data.get(key)]
    if missing:
        raise results.CredentialsError(f"credentials Secret {namespace}/{secret} has no {', '.join(missing)}")
    return {key: data[key] for key in manifests.SECRET_KEYS if data.get(key)}


async def _read_selection(ctx: Context, namespace: str, storage: contract.StorageLocation) -> phases.SelectionRead:
    try:
        credentials = await storage_credentials(ctx, namespace, storage.credentials_secret)
    except results.CredentialsError as error:
        return phases.SelectionRead(error=str(error))
    return await ctx.selection_reader.read(storage, credentials)


async def gather_needs(
    ctx: Context, observation: phases.Observation, jobs: Mapping[str, Mapping[str, Any]], plan: phases.Plan
) -> phases.Observation:
    """The observation with the details the plan asked for."""
    needs = plan.needs
    assert needs is not None
    namespace = observation.resource["metadata"]["namespace"]
    if needs.failure_of is not None:
        stage = needs.failure_of
        detail = await failure_detail(ctx.cluster, namespace, observation.jobs[stage], stage)
        observation = dataclasses.replace(observation, failure=detail)
    if needs.waiting_of is not None:
        stage = needs.waiting_of
        queue = plan.resource.spec.resources.queue_name if plan.resource is not None else None
        waiting = await waiting_detail(ctx, namespace, observation.jobs[stage], jobs[stage], queue)
        observation = dataclasses.replace(observation, waiting=waiting, waiting_checked=True)
    if needs.selection and plan.storage is not None:
        observation = dataclasses.replace(observation, selection=await _read_selection(ctx, namespace, plan.storage))
    return observation


async def _create(ctx: Context, obj: dict[str, Any], owner: Mapping[str, Any]) -> dict[str, Any] | None:
    manifests.adopt(obj, owner)  # not kopf.adopt: the owner's labels must not leak onto children
    return await ctx.cluster.create(obj)


async def apply(
    ctx: Context, resource: Mapping[str, Any], observation: phases.Observation, plan: phases.Plan,
    logger: kopf.Logger,
) -> phases.Plan:
    """Create what the plan names, then write its status and Events, even when a create failed.

    A create the API server refuses for good (a 4xx other than 403/408/409/429) fails the
    selection with the API's message; other errors are raised after the status is written, so
    the loop retries with backoff."""
    meta = resource["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    transient: cluster_module.ApiError | None = None
    try:
        await _create_children(ctx, resource, plan, logger)
    except cluster_module.ApiError as error:
        if not error.permanent or error.kind is None:
            transient = error
        else:
            plan = phases.refused(observation, plan, error.kind, error.name or "?", error.status, error.message)
    if plan.suspend_jobs:
        for stage in plan.suspend_jobs:
            await ctx.cluster.suspend_job(namespace, manifests.job_name(name, stage))
    old = resource.get("status") or {}
    patch = phases.merge_patch(old, plan.status)
    if patch is not None:
        ctx.selections.known(namespace, name, await ctx.cluster.patch_selection_status(namespace, name, patch))
    for event in plan.events:
        owner = kopf.Body(cast(kopf.RawBody, dict(resource)))  # a raw object from the API: kopf's view of it
        kopf.event(owner, type=event.type, reason=event.reason, message=redact(event.message))
        (logger.warning if event.type == "Warning" else logger.info)("%s: %s", event.reason, redact(event.message))
    ctx.metrics.record(old, plan.status)
    ctx.metrics.set_phase(namespace, name, plan.status.get("phase"))
    if transient is not None:
        raise transient
    return plan


async def _create_children(
    ctx: Context, resource: Mapping[str, Any], plan: phases.Plan, logger: kopf.Logger
) -> None:
    meta = resource["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    if plan.resource is None or plan.storage is None:
        return
    if plan.create_config_map:
        config_map = manifests.build_config_map(plan.resource, plan.storage)
        if await _create(ctx, config_map, resource) is None:
            existing = await ctx.cluster.get("v1", "ConfigMap", namespace, config_map["metadata"]["name"])
            if existing is not None and not owned_by(existing, meta.get("uid")):
                # A namesake's leftover (deleted and recreated quickly): its Jobs would mount the
                # old arguments. Wait until garbage collection removes it.
                logger.warning("ConfigMap %s belongs to an earlier %s; waiting for its deletion",
                               config_map["metadata"]["name"], name)
                return
    for stage in plan.create_jobs:
        job = manifests.build_job(stage, plan.resource, plan.storage, ctx.settings)
        created = await _create(ctx, job, resource)
        if created is not None:
            ctx.wakeups.created_job(namespace, name, created)
            logger.info("created Job %s", job["metadata"]["name"])


async def reconcile(ctx: Context, namespace: str, name: str, logger: kopf.Logger) -> bool:
    """One round for one resource: True when it is idle (finished, gone or being deleted)."""
    resource = ctx.selections.fresh(namespace, name)
    if resource is None:
        resource = await ctx.cluster.get_selection(namespace, name)
        ctx.selections.known(namespace, name, resource)
    if resource is None or resource.get("metadata", {}).get("deletionTimestamp"):
        return True  # the supervisor stops this loop when it sees the deletion
    observation, jobs = await observe(ctx, resource)
    plan = phases.decide(observation)
    if plan.needs is not None:  # decide again with the details; the specs are not parsed again
        observation = await gather_needs(ctx, observation, jobs, plan)
        plan = phases.decide(observation)
    plan = await apply(ctx, resource, observation, plan, logger)
    return plan.idle


async def _sleep(wake: asyncio.Event, stopped: asyncio.Event, timeout: float | None) -> None:
    """Until woken, stopped or timed out, whichever comes first."""
    waiters = {asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stopped.wait())}
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def watch_over(
    ctx: Context, namespace: str, name: str, logger: kopf.Logger, stopped: asyncio.Event
) -> None:
    """Reconcile on wake-ups, and periodically while the selection runs, until stopped."""
    wake = ctx.wakeups.register(namespace, name)
    failures = 0
    try:
        while not stopped.is_set():
            wake.clear()
            try:
                idle = await reconcile(ctx, namespace, name, logger)
                failures = 0
            except cluster_module.ApiError as error:
                failures += 1
                logger.warning("reconcile failed (attempt %d): %s", failures, redact(str(error)))
                idle = False
            except Exception:  # a bug or an unexpected answer: keep the loop alive, say why (redacted)
                failures += 1
                logger.error("reconcile failed (attempt %d): %s", failures, redact(traceback.format_exc()))
                idle = False
            timeout = None if idle else ctx.settings.resync_seconds
            if failures:
                timeout = min(ERROR_BACKOFF_S * 2 ** (failures - 1), ctx.settings.resync_seconds)
            await _sleep(wake, stopped, timeout)
    finally:
        ctx.wakeups.unregister(namespace, name, wake)


class Supervisor:
    """One reconcile loop per DataSelection, started by its first event and stopped by its deletion.

    kopf's daemons would do this too, but each puts a finalizer on its resource, and then deleting
    a DataSelection (its namespace, the CRD) hangs while the operator is down or uninstalled.
    These loops need none: the children go by garbage collection (owner references), and a loop
    whose resource is gone simply ends."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._loops: dict[tuple[str, str], tuple[asyncio.Task, asyncio.Event]] = {}

    def ensure(self, namespace: str, name: str, generation: Any, logger: kopf.Logger) -> None:
        """Start the resource's loop unless it runs; wake it when the spec changed."""
        key = (namespace, name)
        running = self._loops.get(key)
        if running is None or running[0].done():
            stopped = asyncio.Event()
            task = asyncio.create_task(watch_over(self.ctx, namespace, name, logger, stopped),
                                       name=f"dsel/{namespace}/{name}")
            self._loops[key] = (task, stopped)
            self.ctx.wakeups.poke_on_new_generation(namespace, name, generation)  # records it
            return
        self.ctx.wakeups.poke_on_new_generation(namespace, name, generation)

    def stop(self, namespace: str, name: str) -> None:
        self.ctx.selections.forget(namespace, name)
        running = self._loops.pop((namespace, name), None)
        if running is not None:
            running[1].set()
            running[0].cancel()

    async def close(self) -> None:
        loops = list(self._loops.values())
        self._loops.clear()
        for task, stopped in loops:
            stopped.set()
            task.cancel()
        await asyncio.gather(*(task for task, _ in loops), return_exceptions=True)
