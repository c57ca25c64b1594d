"""A local stand-in for the Job controller and the kubelet, for tests against `KubeEmulator`.

`LocalJobRunner` watches Jobs through the emulator's HTTP API and runs each pod's container
command as a local process:

* the pod gets a Pod object (labels `job-name`, `batch.kubernetes.io/job-completion-index`, ...,
  owned by its Job) whose status moves Pending -> Running -> Succeeded/Failed with the
  container's exit code and termination message;
* volumes become per-pod directories: configMap volumes hold the ConfigMap's keys, emptyDirs
  are empty, and every argument or env value under a mount path is rewritten to the directory;
* env comes from the container's `env` (`value`, `secretKeyRef`, `configMapKeyRef`), plus
  `JOB_COMPLETION_INDEX` for Indexed Jobs, plus `extra_env` (e.g. DSEL_CACHE_DIR); nothing of
  the test process's own environment leaks in except PATH and locale;
* `python` as the command runs this interpreter;
* the Job status is written the way the Job controller (1.31+) writes it: startTime, active,
  ready (pods whose container runs), succeeded, failed, completedIndexes/failedIndexes, and the
  terminal conditions in two writes: SuccessCriteriaMet, then Complete; FailureTarget (while the
  other pods are stopped), then Failed, with reason BackoffLimitExceeded, FailedIndexes,
  MaxFailedIndexesExceeded or PodFailurePolicy. Retries follow backoffLimit /
  backoffLimitPerIndex / maxFailedIndexes and the podFailurePolicy's rules, `onExitCodes` and
  `onPodConditions` (FailJob, FailIndex, Ignore, Count);
* a pod the API refuses (e.g. a missing service account) is not created: the Job gets a Warning
  Event `FailedCreate` with the API's message, and creation is retried;
* the scheduler: a pod that does not fit the `Node` (nodeSelector, taints, resources; by default
  no GPUs) stays Pending with PodScheduled=False, reason Unschedulable, and the scheduler's message;
* the kubelet: a container it cannot start stays waiting, with the kubelet's reason and message,
  and is retried every `kubelet_retry` seconds (nothing runs, nothing exits): a missing Secret or
  key is CreateContainerConfigError, a missing ConfigMap volume ContainerCreating, an unparsable
  image InvalidImageName, an image of a private registry without its pull Secret
  ImagePullBackOff;
* `evict(pod)` kills a running pod the way the kubelet's eviction does: phase Failed, reason
  Evicted, a DisruptionTarget condition (which podFailurePolicy rules can match), exit code 137;
* with terminationMessagePolicy FallbackToLogsOnError the termination message of a failed
  container is the tail of its output, as the kubelet does;
* deleting a Job kills its processes; suspended Jobs wait until unsuspended.

Not emulated: readiness probes, pod deletion by the Job controller, activeDeadlineSeconds,
backoff delays (retries start after `retry_delay` seconds), more than one node.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime
import json
import os
import random
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.kube_emulator import KubeEmulator

__all__ = ["LocalJobRunner", "Node", "PodOutcome", "PodRun", "index_ranges", "parse_quantity"]

# The kubelet keeps at most this much of the log as a fallback termination message.
TERMINATION_MESSAGE_BYTES = 2048
TERMINATION_MESSAGE_LINES = 80
_PASSTHROUGH_ENV = ("PATH", "LANG", "LC_ALL", "SYSTEMROOT")
# How long the kubelet waits before it retries a container it could not start (its sync period
# is 10 s; shorter here so tests see a fixed Secret quickly).
KUBELET_RETRY_S = 0.5
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")
_QUANTITY_SUFFIXES = {
    "": 1.0, "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60,
}
# A container image reference as the container runtime parses it: [registry[:port]/]path[:tag][@digest],
# path components lower case.
_IMAGE_REFERENCE = re.compile(
    r"^(?:(?:[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)*(?::[0-9]+)?)/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)
CommandOverride = Callable[[Mapping[str, Any], "int | None", int, list[str]], "list[str] | None"]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def index_ranges(indexes: set[int]) -> str:
    """The Job status notation for a set of indexes: {0, 1, 2, 5} -> "0-2,5"."""
    ranges: list[list[int]] = []
    for index in sorted(indexes):
        if ranges and ranges[-1][1] == index - 1:
            ranges[-1][1] = index
        else:
            ranges.append([index, index])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


@dataclasses.dataclass
class PodRun:
    """One executed pod: which Job, index and attempt, and how it ended."""

    namespace: str
    job: str
    pod: str
    index: int | None
    attempt: int
    argv: list[str]
    exit_code: int | None = None
    started: float = 0.0
    finished: float = 0.0
    log_path: Path | None = None
    evicted: tuple[str, str] | None = None  # (DisruptionTarget reason, message)
    process: asyncio.subprocess.Process | None = dataclasses.field(default=None, repr=False)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


@dataclasses.dataclass(frozen=True)
class PodOutcome:
    """How a pod ended: what the Job controller's pod failure policy looks at."""

    pod: str
    exit_code: int
    conditions: tuple[tuple[str, str], ...] = ()  # (type, status)


class _ContainerWaiting(Exception):
    """The kubelet cannot start the container yet: it waits (and retries) with this reason."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


def parse_quantity(text: str) -> float:
    """A Kubernetes quantity as a number ('500m' -> 0.5, '2Gi' -> 2147483648)."""
    match = _QUANTITY.match(str(text).strip())
    if not match:
        raise ValueError(f"not a quantity: {text!r}")
    number, suffix = match.groups()
    if suffix and suffix[0] in "eE":
        return float(number + suffix)
    return float(number) * _QUANTITY_SUFFIXES[suffix or ""]


@dataclasses.dataclass(frozen=True)
class Node:
    """The one node pods are scheduled to: its labels, taints and allocatable resources.

    The default has no GPUs (like this machine): a pod requesting `nvidia.com/gpu` stays Pending
    with the scheduler's Unschedulable message, as on a cluster without GPU nodes."""

    labels: Mapping[str, str] = dataclasses.field(default_factory=lambda: {
        "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": "local-node"})
    allocatable: Mapping[str, str] = dataclasses.field(default_factory=lambda: {
        "cpu": "64", "memory": "256Gi", "ephemeral-storage": "1Ti", "pods": "110"})
    taints: tuple[Mapping[str, str], ...] = ()

    def why_unschedulable(self, pod_spec: Mapping[str, Any]) -> str | None:
        """The scheduler's message when the pod does not fit this node, else None."""
        selector = pod_spec.get("nodeSelector") or {}
        if any(self.labels.get(k) != v for k, v in selector.items()):
            return ("0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. preemption: "
                    "0/1 nodes are available: 1 Preemption is not helpful for scheduling.")
        tolerations = pod_spec.get("tolerations") or ()
        for taint in self.taints:
            if taint.get("effect") in ("NoSchedule", "NoExecute") and not any(
                    _tolerates(t, taint) for t in tolerations):
                return (f"0/1 nodes are available: 1 node(s) had untolerated taint {{{taint['key']}: "
                        f"{taint.get('value', '')}}}. preemption: 0/1 nodes are available: 1 Preemption is not "
                        "helpful for scheduling.")
        wanted: dict[str, float] = {}
        for container in pod_spec.get("containers") or ():
            resources = container.get("resources") or {}
            for name, value in {**(resources.get("limits") or {}), **(resources.get("requests") or {})}.items():
                wanted[name] = wanted.get(name, 0.0) + parse_quantity(value)
        short = sorted(n for n, v in wanted.items() if v > parse_quantity(self.allocatable.get(n, "0")))
        if short:
            listed = ", ".join(f"1 Insufficient {n}" for n in short)
            return (f"0/1 nodes are available: {listed}. preemption: 0/1 nodes are available: "
                    "1 No preemption victims found for incoming pod.")
        return None


def _tolerates(toleration: Mapping[str, Any], taint: Mapping[str, str]) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    if toleration.get("operator") == "Exists":
        return not toleration.get("key") or toleration["key"] == taint.get("key")
    return toleration.get("key") == taint.get("key") and toleration.get("value", "") == taint.get("value", "")


class _JobFailed(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


class LocalJobRunner:
    """Runs the Jobs of a KubeEmulator as local processes; use as an async context manager."""

    def __init__(
        self,
        kube: KubeEmulator,
        workdir: Path,
        *,
        extra_env: Mapping[str, str] | None = None,
        max_parallel: int = 2,
        retry_delay: float = 0.0,
        command_override: CommandOverride | None = None,
        node: Node | None = None,
        private_registries: Mapping[str, str] | None = None,
        kubelet_retry: float = KUBELET_RETRY_S,
    ):
        """`private_registries` maps a registry host to the pull Secret a pod must name (and the
        namespace must hold) to pull images from it; other images always pull."""
        self.kube = kube
        self.node = node or Node()
        self.private_registries = dict(private_registries or {})
        self.kubelet_retry = kubelet_retry
        self._pods: dict[str, PodRun] = {}
        self.workdir = Path(workdir)
        self.extra_env = dict(extra_env or {})
        self.retry_delay = retry_delay
        self.command_override = command_override
        self.runs: list[PodRun] = []
        self._slots = asyncio.Semaphore(max_parallel)
        self._jobs: dict[str, asyncio.Task] = {}  # by Job uid
        self._watch: asyncio.Task | None = None
        self._processes: set[asyncio.subprocess.Process] = set()

    async def __aenter__(self) -> "LocalJobRunner":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._watch = asyncio.create_task(self._watch_jobs(), name="local-job-runner")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        tasks = [t for t in [self._watch, *self._jobs.values()] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for process in list(self._processes):
            self._kill(process)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(process.wait(), 10)  # reaped, so no "still running" warning

    def runs_of(self, job: str, index: int | None = None) -> list[PodRun]:
        return [r for r in self.runs if r.job == job and (index is None or r.index == index)]

    # --- API access ------------------------------------------------------------------------
    async def _call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        headers = {"Content-Type": content_type}
        async with self.kube.request(method, path, json=body, headers=headers) as response:
            data = await response.json(content_type=None)
            if response.status >= 400:
                raise RuntimeError(f"{method} {path}: {response.status} {data}")
            return data

    async def _get_or_none(self, path: str) -> Any:
        async with self.kube.get(path) as response:
            return await response.json(content_type=None) if response.status == 200 else None

    async def _patch_status(self, path: str, status: Mapping[str, Any]) -> None:
        await self._call("PATCH", f"{path}/status", {"status": status}, "application/merge-patch+json")

    # --- watching --------------------------------------------------------------------------
    async def _watch_jobs(self) -> None:
        since = ""
        while True:
            params = {"watch": "true", **({"resourceVersion": since} if since else {})}
            no_timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
            async with self.kube.get("/apis/batch/v1/jobs", params=params, timeout=no_timeout) as response:
                async for line in response.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    job = event["object"]
                    since = job.get("metadata", {}).get("resourceVersion", since)
                    self._on_job_event(event["type"], job)

    def _on_job_event(self, kind: str, job: Mapping[str, Any]) -> None:
        uid = job["metadata"]["uid"]
        if kind == "DELETED":
            task = self._jobs.pop(uid, None)
            if task is not None:
                task.cancel()
            return
        if uid in self._jobs or job.get("spec", {}).get("suspend"):
            return
        finished = {c.get("type") for c in (job.get("status") or {}).get("conditions") or () if c.get("status") == "True"}
        if finished & {"Complete", "Failed"}:
            return
        self._jobs[uid] = asyncio.create_task(self._run_job(job), name=f"job-{job['metadata']['name']}")

    # --- the Job controller ---------------------------------------------------------------
    async def _run_job(self, job: Mapping[str, Any]) -> None:
        meta, spec = job["metadata"], job["spec"]
        path = f"/apis/batch/v1/namespaces/{meta['namespace']}/jobs/{meta['name']}"
        indexed = spec.get("completionMode") == "Indexed"
        completions = int(spec.get("completions") or 1)
        parallelism = int(spec.get("parallelism") or 1)
        per_index = spec.get("backoffLimitPerIndex") if indexed else None
        max_failed_indexes = spec.get("maxFailedIndexes") if per_index is not None else None
        backoff_limit = int(spec["backoffLimit"]) if spec.get("backoffLimit") is not None else (
            2**31 - 1 if per_index is not None else 6)
        rules = (spec.get("podFailurePolicy") or {}).get("rules") or []
        state = {"active": 0, "ready": 0, "failed": 0, "succeeded": 0, "completed": set(), "failed_indexes": set()}
        job_slots = asyncio.Semaphore(parallelism)

        async def publish(extra: Mapping[str, Any] | None = None) -> None:
            status: dict[str, Any] = {
                "active": state["active"], "ready": state["ready"], "terminating": 0,
                "succeeded": state["succeeded"], "failed": state["failed"], "uncountedTerminatedPods": {},
            }
            if indexed:
                status["completedIndexes"] = index_ranges(state["completed"])
                if per_index is not None:
                    status["failedIndexes"] = index_ranges(state["failed_indexes"])
            status.update(extra or {})
            await self._patch_status(path, status)

        async def pod_changed(change: str) -> None:
            """The pod was created, its container started or stopped: the counts follow."""
            state[{"created": "active", "started": "ready", "stopped": "ready"}[change]] += -1 if change == "stopped" else 1
            await publish()

        async def complete_index(index: int) -> None:
            attempt = 0
            failures = 0
            while True:
                async with job_slots:
                    this_pod = {"created": False}

                    async def changed(change: str, this_pod: dict[str, bool] = this_pod) -> None:
                        this_pod["created"] = this_pod["created"] or change == "created"
                        await pod_changed(change)

                    try:
                        outcome = await self._run_pod(job, index if indexed else None, attempt, changed)
                    finally:
                        if this_pod["created"]:
                            state["active"] -= 1
                if outcome.exit_code == 0:
                    state["succeeded"] += 1
                    state["completed"].add(index)
                    await publish()
                    return
                rule = _matching_rule(rules, outcome)
                action = rule.get("action", "Count") if rule else "Count"
                if action != "Ignore":
                    state["failed"] += 1
                if action == "FailJob":
                    raise _JobFailed(
                        "PodFailurePolicy",
                        f"Container worker for pod {meta['namespace']}/{outcome.pod} failed with exit code "
                        f"{outcome.exit_code} matching FailJob rule at index {rules.index(rule)}",
                    )
                if action != "Ignore":
                    failures += 1
                    if per_index is not None and (action == "FailIndex" or failures > int(per_index)):
                        state["failed_indexes"].add(index)
                        await publish()
                        if max_failed_indexes is not None and len(state["failed_indexes"]) > int(max_failed_indexes):
                            raise _JobFailed("MaxFailedIndexesExceeded",
                                             "Job has exceeded the specified maximal number of failed indexes")
                        return
                    if per_index is None and state["failed"] > backoff_limit:
                        raise _JobFailed("BackoffLimitExceeded", "Job has reached the specified backoff limit")
                await publish()
                attempt += 1
                await asyncio.sleep(self.retry_delay)

        await publish({"startTime": _now()})
        workers = [asyncio.create_task(complete_index(i)) for i in range(completions)]
        try:
            await asyncio.gather(*workers)
            if state["failed_indexes"]:
                raise _JobFailed("FailedIndexes", "Job has failed indexes")
        except _JobFailed as failure:
            # 1.31+: FailureTarget first, while the remaining pods terminate; Failed once they are gone.
            now = _now()
            target = {"type": "FailureTarget", "status": "True", "reason": failure.reason, "message": failure.message,
                      "lastProbeTime": now, "lastTransitionTime": now}
            await publish({"conditions": [target]})
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            now = _now()
            await publish({"active": 0, "ready": 0, "conditions": [target, {
                "type": "Failed", "status": "True", "reason": failure.reason, "message": failure.message,
                "lastProbeTime": now, "lastTransitionTime": now}]})
            return
        except asyncio.CancelledError:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        now = _now()
        message = "Reached expected number of succeeded pods"
        criteria = {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
                    "message": message, "lastProbeTime": now, "lastTransitionTime": now}
        await publish({"conditions": [criteria]})
        await publish({"completionTime": _now(), "conditions": [criteria, {
            "type": "Complete", "status": "True", "reason": "CompletionsReached", "message": message,
            "lastProbeTime": now, "lastTransitionTime": now}]})

    async def _create_pod(self, job: Mapping[str, Any], pod: Mapping[str, Any]) -> None:
        """POST the pod; while the API refuses it, report FailedCreate on the Job and retry."""
        meta = job["metadata"]
        pods = f"/api/v1/namespaces/{meta['namespace']}/pods"
        event_path: str | None = None
        count = 0
        while True:
            async with self.kube.post(pods, json=pod) as response:
                if response.status < 400:
                    return
                refusal = await response.json(content_type=None)
            if response.status not in (403, 422):
                raise RuntimeError(f"POST {pods}: {response.status} {refusal}")
            count += 1
            now = _now()
            message = f"Error creating: {refusal.get('message')}"
            if event_path is None:
                event = {
                    "apiVersion": "v1", "kind": "Event",
                    "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
                    "involvedObject": {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                       "namespace": meta["namespace"], "uid": meta["uid"]},
                    "type": "Warning", "reason": "FailedCreate", "message": message,
                    "source": {"component": "job-controller"}, "count": count,
                    "firstTimestamp": now, "lastTimestamp": now,
                }
                created = await self._call("POST", f"/api/v1/namespaces/{meta['namespace']}/events", event)
                event_path = f"/api/v1/namespaces/{meta['namespace']}/events/{created['metadata']['name']}"
            else:
                await self._call("PATCH", event_path, {"count": count, "lastTimestamp": now},
                                 "application/merge-patch+json")
            await asyncio.sleep(self.kubelet_retry)

    # --- the scheduler and the kubelet ------------------------------------------------------
    async def _run_pod(
        self, job: Mapping[str, Any], index: int | None, attempt: int, pod_changed: Callable[[str], Any]
    ) -> "PodOutcome":
        meta = job["metadata"]
        namespace, job_name = meta["namespace"], meta["name"]
        template = job["spec"]["template"]
        suffix = "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))
        pod_name = f"{job_name}-{index}-{suffix}" if index is not None else f"{job_name}-{suffix}"
        labels = {
            **(template.get("metadata", {}).get("labels") or {}),
            "job-name": job_name, "batch.kubernetes.io/job-name": job_name,
            "controller-uid": meta["uid"], "batch.kubernetes.io/controller-uid": meta["uid"],
        }
        annotations = {}
        if index is not None:
            labels["batch.kubernetes.io/job-completion-index"] = str(index)
            annotations["batch.kubernetes.io/job-completion-index"] = str(index)
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": pod_name, "namespace": namespace, "labels": labels, "annotations": annotations,
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name, "uid": meta["uid"],
                                     "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": template["spec"],
        }
        await self._create_pod(job, pod)
        pod_path = f"/api/v1/namespaces/{namespace}/pods/{pod_name}"
        pod_spec = template["spec"]
        container = pod_spec["containers"][0]
        pod_dir = self.workdir / namespace / pod_name
        pod_dir.mkdir(parents=True, exist_ok=True)
        run = PodRun(namespace, job_name, pod_name, index, attempt, [], log_path=pod_dir / "output.log")
        self.runs.append(run)
        self._pods[pod_name] = run
        await pod_changed("created")

        unschedulable = self.node.why_unschedulable(pod_spec)
        if unschedulable is not None:
            await self._patch_status(pod_path, {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable,
                 "lastTransitionTime": _now()}]})
            await asyncio.Event().wait()  # the scheduler retries, but this node never fits the pod
        scheduled = {"type": "PodScheduled", "status": "True", "lastTransitionTime": _now()}
        waiting_reported: tuple[str, str] | None = None
        while True:  # the kubelet retries a container it cannot start, every sync period
            waiting = await self._pull_problem(pod_spec, container, namespace)
            argv: list[str] = []
            env: dict[str, str] = {}
            if waiting is None:
                try:
                    argv, env = await self._prepare(pod_spec, container, namespace, pod_dir, index)
                except _ContainerWaiting as problem:
                    waiting = (problem.reason, problem.message)
            if waiting is None:
                break
            if waiting != waiting_reported:
                waiting_reported = waiting
                await self._patch_status(pod_path, {"phase": "Pending", "conditions": [scheduled, {
                    "type": "Ready", "status": "False", "reason": "ContainersNotReady",
                    "message": f"containers with unready status: [{container['name']}]"}],
                    "containerStatuses": [{"name": container["name"], "ready": False, "restartCount": 0,
                                           "image": container.get("image"),
                                           "state": {"waiting": {"reason": waiting[0], "message": waiting[1]}}}]})
            await asyncio.sleep(self.kubelet_retry)
        # Only running containers take one of the runner's local slots (`max_parallel`): a pod
        # that waits (unschedulable, image, config) blocks no other pod, as on a cluster; a pod
        # waiting for a slot is Pending in ContainerCreating.
        async with self._slots:
            if self.command_override is not None:
                argv = self.command_override(job, index, attempt, argv) or argv
            run.argv = argv
            started = _now()
            await self._patch_status(pod_path, {"phase": "Running", "startTime": started, "conditions": [
                scheduled, {"type": "Ready", "status": "True"}], "containerStatuses": [
                {"name": container["name"], "ready": True, "restartCount": 0, "state": {"running": {"startedAt": started}}}
            ]})
            await pod_changed("started")
            try:
                run.started = time.monotonic()
                code = await self._execute(argv, env, pod_dir, run)
                if code < 0:  # killed by a signal: the runtime reports 128 + the signal number
                    code = 128 - code
                run.finished = time.monotonic()
            finally:
                await pod_changed("stopped")
        run.exit_code = code
        terminated: dict[str, Any] = {
            "exitCode": code, "reason": "Completed" if code == 0 else "Error",
            "startedAt": started, "finishedAt": _now(),
        }
        if code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            lines = run.log.splitlines()[-TERMINATION_MESSAGE_LINES:]
            terminated["message"] = "\n".join(lines)[-TERMINATION_MESSAGE_BYTES:]
        final: dict[str, Any] = {"phase": "Succeeded" if code == 0 else "Failed", "containerStatuses": [
            {"name": container["name"], "ready": False, "restartCount": 0, "state": {"terminated": terminated}}
        ]}
        conditions: list[dict[str, Any]] = [scheduled, {"type": "Ready", "status": "False", "reason": "PodCompleted"}]
        if run.evicted is not None:
            reason, message = run.evicted
            final.update(reason="Evicted", message=message)
            conditions.append({"type": "DisruptionTarget", "status": "True", "reason": reason, "message": message,
                               "lastTransitionTime": _now()})
        final["conditions"] = conditions
        await self._patch_status(pod_path, final)
        return PodOutcome(pod=pod_name, exit_code=code, conditions=tuple(
            (c["type"], c["status"]) for c in conditions))

    async def evict(self, pod: str, reason: str = "TerminationByKubelet",
                    message: str = "The node was low on resource: ephemeral-storage.") -> None:
        """Evict a running pod as the kubelet (or the Eviction API) does: SIGKILL and a DisruptionTarget."""
        run = self._pods[pod]
        run.evicted = (reason, message)
        if run.process is not None:
            self._kill(run.process)

    async def _pull_problem(
        self, pod_spec: Mapping[str, Any], container: Mapping[str, Any], namespace: str
    ) -> tuple[str, str] | None:
        """(reason, message) when the image cannot be pulled: an unparsable name or a registry refusal."""
        image = str(container.get("image") or "")
        if not _IMAGE_REFERENCE.match(image):
            return ("InvalidImageName",
                    f'Failed to apply default image tag "{image}": couldn\'t parse image name "{image}": '
                    "invalid reference format")
        registry = image.split("/", 1)[0] if "/" in image and any(c in image.split("/", 1)[0] for c in ".:") else None
        required = self.private_registries.get(registry) if registry else None
        if required is None:
            return None
        offered = {s.get("name") for s in pod_spec.get("imagePullSecrets") or ()}
        if required in offered and await self._get_or_none(
                f"/api/v1/namespaces/{namespace}/secrets/{required}") is not None:
            return None
        return "ImagePullBackOff", f'Back-off pulling image "{image}"'

    async def _prepare(
        self, pod_spec: Mapping[str, Any], container: Mapping[str, Any], namespace: str, pod_dir: Path,
        index: int | None,
    ) -> tuple[list[str], dict[str, str]]:
        volumes = {v["name"]: v for v in pod_spec.get("volumes") or ()}
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts") or ():
            local = pod_dir / "volumes" / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            source = volumes.get(mount["name"], {})
            if "configMap" in source:
                config_map = await self._get_or_none(
                    f"/api/v1/namespaces/{namespace}/configmaps/{source['configMap']['name']}")
                if config_map is None:  # the kubelet keeps the pod in ContainerCreating (FailedMount)
                    raise _ContainerWaiting("ContainerCreating", "")
                items = source["configMap"].get("items") or [{"key": k, "path": k} for k in config_map.get("data") or {}]
                for item in items:
                    (local / item["path"]).write_text(config_map["data"][item["key"]])
            mounts[mount["mountPath"].rstrip("/")] = local

        def localize(value: str) -> str:
            for mount_path, local in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
                if value == mount_path or value.startswith(mount_path + "/"):
                    return str(local) + value[len(mount_path):]
            return value

        env = {k: os.environ[k] for k in _PASSTHROUGH_ENV if k in os.environ}
        for entry in container.get("env") or ():
            if "value" in entry:
                env[entry["name"]] = localize(str(entry["value"]))
                continue
            reference = entry.get("valueFrom") or {}
            for kind, plural in (("secretKeyRef", "secrets"), ("configMapKeyRef", "configmaps")):
                if kind not in reference:
                    continue
                ref = reference[kind]
                found = await self._get_or_none(f"/api/v1/namespaces/{namespace}/{plural}/{ref['name']}")
                data = (found or {}).get("data") or {}
                if ref["key"] not in data:
                    if ref.get("optional"):
                        break
                    # What the kubelet reports; the container is not started (and nothing exits).
                    kind_name = "Secret" if kind == "secretKeyRef" else "ConfigMap"
                    message = (f'{plural[:-1]} "{ref["name"]}" not found' if found is None else
                               f"couldn't find key {ref['key']} in {kind_name} {namespace}/{ref['name']}")
                    raise _ContainerWaiting("CreateContainerConfigError", message)
                value = data[ref["key"]]
                env[entry["name"]] = base64.b64decode(value).decode() if kind == "secretKeyRef" else value
        if index is not None:
            env["JOB_COMPLETION_INDEX"] = str(index)
        env.update(self.extra_env)
        argv = [localize(str(a)) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
        if argv and argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        return argv, env

    async def _execute(self, argv: list[str], env: Mapping[str, str], cwd: Path, run: PodRun) -> int:
        assert run.log_path is not None
        with open(run.log_path, "ab") as log:
            process = await asyncio.create_subprocess_exec(
                *argv, env=dict(env), cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
                stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
            )
        self._processes.add(process)
        run.process = process
        try:
            return await process.wait()
        finally:
            if process.returncode is None:
                self._kill(process)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(process.wait(), 10)
            self._processes.discard(process)

    @staticmethod
    def _kill(process: asyncio.subprocess.Process) -> None:
        """Kill the pod's process group (only processes this runner started)."""
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)


def _matching_rule(rules: list[Mapping[str, Any]], outcome: PodOutcome) -> Mapping[str, Any] | None:
    """The first podFailurePolicy rule matching a failed pod (its exit code or its conditions)."""
    for rule in rules:
        on_codes = rule.get("onExitCodes")
        if on_codes:
            values = set(on_codes.get("values") or ())
            if (outcome.exit_code in values) == (on_codes.get("operator", "In") == "In"):
                return rule
        for pattern in rule.get("onPodConditions") or ():
            if (pattern.get("type"), pattern.get("status", "True")) in outcome.conditions:
                return rule
    return None
