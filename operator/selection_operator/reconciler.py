"""Observe, decide, act: runs the pure state machine against the cluster for one DataSelection.

One long-lived loop per resource (a kopf daemon) is the only writer of its status. Job events
wake it at once; otherwise it re-checks every `resync_seconds` while the selection runs, and
sleeps until the spec changes once it has finished.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from selection import contract

from selection_operator import cluster as cluster_module
from selection_operator import manifests, phases, results
from selection_operator.metrics import Metrics
from selection_operator.settings import OperatorSettings

# Seconds between retries after an unexpected error, doubling up to `resync_seconds`.
ERROR_BACKOFF_S = 1.0


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Wakeups:
    """Per-resource wake-up events, so Job and spec changes reach the right loop at once."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, str], asyncio.Event] = {}
        self._generations: dict[tuple[str, str], Any] = {}

    def register(self, namespace: str, name: str) -> asyncio.Event:
        event = self._events.setdefault((namespace, name), asyncio.Event())
        return event

    def unregister(self, namespace: str, name: str, event: asyncio.Event) -> None:
        if self._events.get((namespace, name)) is event:
            del self._events[(namespace, name)]
        self._generations.pop((namespace, name), None)

    def poke(self, namespace: str, name: str) -> None:
        event = self._events.get((namespace, name))
        if event is not None:
            event.set()

    def poke_on_new_generation(self, namespace: str, name: str, generation: Any) -> None:
        """Wake the loop for spec changes, not for the status patches it makes itself."""
        key = (namespace, name)
        if self._generations.get(key) != generation:
            self._generations[key] = generation
            self.poke(namespace, name)


@dataclasses.dataclass
class Context:
    """What every handler shares within one operator run (kept in kopf's memo)."""

    cluster: cluster_module.Cluster
    settings: OperatorSettings
    metrics: Metrics
    wakeups: Wakeups = dataclasses.field(default_factory=Wakeups)

    @classmethod
    def create(cls, settings: OperatorSettings) -> "Context":
        metrics = Metrics()
        metrics.serve(settings.metrics_port, settings.metrics_address)
        return cls(cluster=cluster_module.Cluster.from_environment(), settings=settings, metrics=metrics)

    def close(self) -> None:
        self.metrics.close()
        self.cluster.close()


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
    jobs_by_stage: dict[str, dict] = {}
    for job in await ctx.cluster.list_owned("batch/v1", "Job", namespace, name):
        stage = (job.get("metadata", {}).get("labels") or {}).get(manifests.LABEL_STAGE)
        if stage in contract.STAGE_NAMES and owned_by(job, uid):
            jobs_by_stage[stage] = job
    started = secret = None
    config_map = await ctx.cluster.get("v1", "ConfigMap", namespace, manifests.config_map_name(name))
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
    )
    return observation, jobs_by_stage


async def apply(ctx: Context, resource: Mapping[str, Any], plan: phases.Plan, logger: logging.Logger) -> None:
    meta = resource["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    owner = dict(resource)
    if plan.create_config_map and plan.resource is not None and plan.storage is not None:
        config_map = manifests.build_config_map(plan.resource, plan.storage)
        kopf.adopt(config_map, owner=owner)
        if not await ctx.cluster.create(config_map):
            existing = await ctx.cluster.get("v1", "ConfigMap", namespace, config_map["metadata"]["name"])
            if existing is not None and not owned_by(existing, meta.get("uid")):
                # A namesake's leftover (deleted and recreated quickly): its Jobs would mount the
                # old arguments. Wait until garbage collection removes it.
                logger.warning("ConfigMap %s belongs to an earlier %s; waiting for its deletion",
                               config_map["metadata"]["name"], name)
                return
    for stage in plan.create_jobs:
        if plan.resource is None or plan.storage is None:
            break
        job = manifests.build_job(stage, plan.resource, plan.storage, ctx.settings)
        kopf.adopt(job, owner=owner)
        if await ctx.cluster.create(job):
            logger.info("created Job %s", job["metadata"]["name"])
    old = resource.get("status") or {}
    patch = phases.merge_patch(old, plan.status)
    if patch is not None:
        await ctx.cluster.patch_selection_status(namespace, name, patch)
    for event in plan.events:
        kopf.event(owner, type=event.type, reason=event.reason, message=event.message)
        (logger.warning if event.type == "Warning" else logger.info)("%s: %s", event.reason, event.message)
    ctx.metrics.record(old, plan.status)
    ctx.metrics.set_phase(namespace, name, plan.status.get("phase"))


async def reconcile(ctx: Context, namespace: str, name: str, logger: logging.Logger) -> bool:
    """One round for one resource: True when it is idle (finished, gone or being deleted)."""
    resource = await ctx.cluster.get_selection(namespace, name)
    if resource is None or resource.get("metadata", {}).get("deletionTimestamp"):
        return True  # kopf stops this loop when it sees the deletion
    observation, jobs = await observe(ctx, resource)
    plan = phases.decide(observation)
    if plan.needs is not None:
        if plan.needs.failure_of is not None:
            stage = plan.needs.failure_of
            detail = await failure_detail(ctx.cluster, namespace, observation.jobs[stage], stage)
            observation = dataclasses.replace(observation, failure=detail)
        if plan.needs.selection and plan.storage is not None:
            read = await asyncio.to_thread(results.read_selection, plan.storage)
            observation = dataclasses.replace(observation, selection=read)
        plan = phases.decide(observation)
    await apply(ctx, resource, plan, logger)
    return plan.idle


async def _sleep(wake: asyncio.Event, stopped: Any, timeout: float | None) -> None:
    """Until woken, stopped (kopf's daemon flag) or timed out, whichever comes first."""
    waiters = {asyncio.ensure_future(wake.wait())}
    if stopped is not None:
        waiters.add(asyncio.ensure_future(stopped.wait()))
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def watch_over(
    ctx: Context, namespace: str, name: str, logger: logging.Logger, stopped: Any = None
) -> None:
    """Reconcile on wake-ups, and periodically while the selection runs, until kopf stops it."""
    wake = ctx.wakeups.register(namespace, name)
    failures = 0
    try:
        while not stopped:
            wake.clear()
            try:
                idle = await reconcile(ctx, namespace, name, logger)
                failures = 0
            except cluster_module.ApiError as error:
                failures += 1
                logger.warning("reconcile failed (attempt %d): %s", failures, error)
                idle = False
            except Exception:  # a bug or an unexpected answer: keep the loop alive, say why
                failures += 1
                logger.exception("reconcile failed (attempt %d)", failures)
                idle = False
            timeout = None if idle else ctx.settings.resync_seconds
            if failures:
                timeout = min(ERROR_BACKOFF_S * 2 ** (failures - 1), ctx.settings.resync_seconds)
            await _sleep(wake, stopped, timeout)
    finally:
        ctx.wakeups.unregister(namespace, name, wake)


async def delete_children(ctx: Context, namespace: str, name: str, uid: str | None, logger: logging.Logger) -> int:
    """Delete the resource's Jobs (with their pods) and ConfigMaps; returns how many went."""
    deleted = 0
    for api_version, kind in (("batch/v1", "Job"), ("v1", "ConfigMap")):
        for obj in await ctx.cluster.list_owned(api_version, kind, namespace, name):
            if owned_by(obj, uid):
                child = obj["metadata"]["name"]
                if await ctx.cluster.delete(api_version, kind, namespace, child):
                    deleted += 1
                    logger.info("deleted %s %s", kind, child)
    ctx.metrics.set_phase(namespace, name, None)
    return deleted
