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
* the Job status is written the way the Job controller writes it: startTime, active,
  succeeded, failed, completedIndexes/failedIndexes, and the terminal conditions
  (SuccessCriteriaMet + Complete, or FailureTarget + Failed with reason BackoffLimitExceeded,
  FailedIndexes or PodFailurePolicy). Retries follow backoffLimit / backoffLimitPerIndex and
  the podFailurePolicy's onExitCodes rules (FailJob, FailIndex, Ignore, Count);
* with terminationMessagePolicy FallbackToLogsOnError the termination message of a failed
  container is the tail of its output, as the kubelet does;
* deleting a Job kills its processes; suspended Jobs wait until unsuspended.

Not emulated: scheduling and resources, readiness, pod deletion by the Job controller,
activeDeadlineSeconds, backoff delays (retries start after `retry_delay` seconds).
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
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.kube_emulator import KubeEmulator

__all__ = ["LocalJobRunner", "PodRun", "index_ranges"]

# The kubelet keeps at most this much of the log as a fallback termination message.
TERMINATION_MESSAGE_BYTES = 2048
TERMINATION_MESSAGE_LINES = 80
_PASSTHROUGH_ENV = ("PATH", "LANG", "LC_ALL", "SYSTEMROOT")
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

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


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
    ):
        self.kube = kube
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
        backoff_limit = int(spec["backoffLimit"]) if spec.get("backoffLimit") is not None else (
            2**31 - 1 if per_index is not None else 6)
        rules = (spec.get("podFailurePolicy") or {}).get("rules") or []
        state = {"active": 0, "failed": 0, "succeeded": 0, "completed": set(), "failed_indexes": set()}
        job_slots = asyncio.Semaphore(parallelism)

        async def publish(extra: Mapping[str, Any] | None = None) -> None:
            status: dict[str, Any] = {
                "active": state["active"], "ready": state["active"], "terminating": 0,
                "succeeded": state["succeeded"], "failed": state["failed"], "uncountedTerminatedPods": {},
            }
            if indexed:
                status["completedIndexes"] = index_ranges(state["completed"])
                if per_index is not None:
                    status["failedIndexes"] = index_ranges(state["failed_indexes"])
            status.update(extra or {})
            await self._patch_status(path, status)

        async def complete_index(index: int) -> None:
            attempt = 0
            failures = 0
            while True:
                async with job_slots, self._slots:
                    state["active"] += 1
                    await publish()
                    try:
                        code, pod = await self._run_pod(job, index if indexed else None, attempt)
                    finally:
                        state["active"] -= 1
                if code == 0:
                    state["succeeded"] += 1
                    state["completed"].add(index)
                    await publish()
                    return
                action = _policy_action(rules, code)
                if action != "Ignore":
                    state["failed"] += 1
                if action == "FailJob":
                    raise _JobFailed(
                        "PodFailurePolicy",
                        f"Container worker for pod {meta['namespace']}/{pod} failed with exit code {code} "
                        f"matching FailJob rule at index {rules.index(_matching_rule(rules, code))}",
                    )
                if action != "Ignore":
                    failures += 1
                    if per_index is not None and (action == "FailIndex" or failures > int(per_index)):
                        state["failed_indexes"].add(index)
                        await publish()
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
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            now = _now()
            await publish({"active": 0, "ready": 0, "conditions": [
                {"type": "FailureTarget", "status": "True", "reason": failure.reason, "message": failure.message,
                 "lastProbeTime": now, "lastTransitionTime": now},
                {"type": "Failed", "status": "True", "reason": failure.reason, "message": failure.message,
                 "lastProbeTime": now, "lastTransitionTime": now},
            ]})
            return
        except asyncio.CancelledError:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        now = _now()
        message = "Reached expected number of succeeded pods"
        await publish({"completionTime": now, "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached", "message": message,
             "lastProbeTime": now, "lastTransitionTime": now},
            {"type": "Complete", "status": "True", "reason": "CompletionsReached", "message": message,
             "lastProbeTime": now, "lastTransitionTime": now},
        ]})

    # --- the kubelet ------------------------------------------------------------------------
    async def _run_pod(self, job: Mapping[str, Any], index: int | None, attempt: int) -> tuple[int, str]:
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
        pods = f"/api/v1/namespaces/{namespace}/pods"
        await self._call("POST", pods, pod)
        pod_path = f"{pods}/{pod_name}"
        container = template["spec"]["containers"][0]
        pod_dir = self.workdir / namespace / pod_name
        pod_dir.mkdir(parents=True, exist_ok=True)
        run = PodRun(namespace, job_name, pod_name, index, attempt, [], log_path=pod_dir / "output.log")
        self.runs.append(run)
        started = _now()
        try:
            argv, env = await self._prepare(template["spec"], container, namespace, pod_dir, index)
        except LookupError as error:  # a missing Secret/ConfigMap: the kubelet would not start it
            run.log_path.write_text(f"{error}\n")
            code = 1
        else:
            if self.command_override is not None:
                argv = self.command_override(job, index, attempt, argv) or argv
            run.argv = argv
            await self._patch_status(pod_path, {"phase": "Running", "startTime": started, "containerStatuses": [
                {"name": container["name"], "ready": True, "restartCount": 0, "state": {"running": {"startedAt": started}}}
            ]})
            run.started = time.monotonic()
            code = await self._execute(argv, env, pod_dir, run.log_path)
            run.finished = time.monotonic()
        run.exit_code = code
        terminated: dict[str, Any] = {
            "exitCode": code, "reason": "Completed" if code == 0 else "Error",
            "startedAt": started, "finishedAt": _now(),
        }
        if code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            lines = run.log.splitlines()[-TERMINATION_MESSAGE_LINES:]
            terminated["message"] = "\n".join(lines)[-TERMINATION_MESSAGE_BYTES:]
        await self._patch_status(pod_path, {"phase": "Succeeded" if code == 0 else "Failed", "containerStatuses": [
            {"name": container["name"], "ready": False, "restartCount": 0, "state": {"terminated": terminated}}
        ]})
        return code, pod_name

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
                if config_map is None:
                    raise LookupError(f"configmap {source['configMap']['name']!r} not found")
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
                    raise LookupError(f"{plural[:-1]} {ref['name']!r} has no key {ref['key']!r}")
                value = data[ref["key"]]
                env[entry["name"]] = base64.b64decode(value).decode() if kind == "secretKeyRef" else value
        if index is not None:
            env["JOB_COMPLETION_INDEX"] = str(index)
        env.update(self.extra_env)
        argv = [localize(str(a)) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
        if argv and argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        return argv, env

    async def _execute(self, argv: list[str], env: Mapping[str, str], cwd: Path, log_path: Path) -> int:
        with open(log_path, "ab") as log:
            process = await asyncio.create_subprocess_exec(
                *argv, env=dict(env), cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
                stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
            )
        self._processes.add(process)
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


def _matching_rule(rules: list[Mapping[str, Any]], code: int) -> Mapping[str, Any] | None:
    for rule in rules:
        on = rule.get("onExitCodes")
        if not on:
            continue
        values = set(on.get("values") or ())
        if (code in values) == (on.get("operator", "In") == "In"):
            return rule
    return None


def _policy_action(rules: list[Mapping[str, Any]], code: int) -> str:
    rule = _matching_rule(rules, code)
    return rule.get("action", "Count") if rule else "Count"

