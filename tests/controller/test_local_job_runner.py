"""The local job runner behaves like the Job controller and kubelet the operator relies on."""

from __future__ import annotations

import base64
import sys
from typing import Any

from tests.controller.harness import wait_for
from tests.support.local_job_runner import LocalJobRunner, index_ranges

JOBS = "/apis/batch/v1/namespaces/default/jobs"


async def post(kube, path: str, body: dict) -> dict:
    async with kube.post(path, json=body) as response:
        assert response.status == 201, await response.text()
        return await response.json()


def job(name: str, script: str, **spec: Any) -> dict:
    container = {
        "name": "worker", "image": "unused", "command": ["python", "-c", script],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "args", "mountPath": "/etc/dsel"}],
        "env": [{"name": "SECRET_VALUE", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                {"name": "ARGS", "value": "/etc/dsel/args.json"}],
    }
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [container], "volumes": [
            {"name": "args", "configMap": {"name": "args"}}]}}, **spec},
    }


def finished(kube, name: str) -> dict | None:
    for found in kube.live_objects("batch/v1/jobs"):
        conditions = {c["type"] for c in found.get("status", {}).get("conditions") or []}
        if found["metadata"]["name"] == name and conditions & {"Complete", "Failed"}:
            return found
    return None


async def setup_inputs(kube) -> None:
    await post(kube, "/api/v1/namespaces/default/configmaps",
               {"metadata": {"name": "args"}, "data": {"args.json": '{"hello": "world"}'}})
    await post(kube, "/api/v1/namespaces/default/secrets",
               {"metadata": {"name": "creds"}, "data": {"token": base64.b64encode(b"s3cret").decode()}})


def test_index_ranges():
    assert index_ranges({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert index_ranges(set()) == ""


async def test_indexed_job_runs_each_index_with_env_and_mounted_configmap(kube, tmp_path):
    await setup_inputs(kube)
    script = ("import json, os, sys; assert os.environ['SECRET_VALUE'] == 's3cret'; "
              "assert json.load(open(os.environ['ARGS'])) == {'hello': 'world'}; "
              "print('index', os.environ['JOB_COMPLETION_INDEX']); assert 'HOME' not in os.environ")
    await post(kube, JOBS, job("ok", script, completionMode="Indexed", completions=3, parallelism=3,
                               backoffLimitPerIndex=0))
    async with LocalJobRunner(kube, tmp_path) as runner:
        done = await wait_for(lambda: finished(kube, "ok"), 30)
    assert done["status"]["completedIndexes"] == "0-2" and done["status"]["succeeded"] == 3
    assert [c["type"] for c in done["status"]["conditions"]] == ["SuccessCriteriaMet", "Complete"]
    assert done["status"]["completionTime"] and done["status"]["startTime"]
    assert sorted(r.index for r in runner.runs) == [0, 1, 2]
    assert all(r.exit_code == 0 and r.argv[0] == sys.executable for r in runner.runs)
    pods = kube.live_objects("v1/pods")
    assert sorted(p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] for p in pods) == ["0", "1", "2"]
    assert all(p["status"]["phase"] == "Succeeded" and p["metadata"]["ownerReferences"][0]["kind"] == "Job" for p in pods)


async def test_failing_index_retries_per_index_then_fails_the_job(kube, tmp_path):
    await setup_inputs(kube)
    script = ("import os, sys; i = os.environ['JOB_COMPLETION_INDEX']\n"
              "if i == '1': print('line one', flush=True); print('boom in', i, file=sys.stderr); sys.exit(3)")
    await post(kube, JOBS, job("flaky", script, completionMode="Indexed", completions=3, parallelism=3,
                               backoffLimitPerIndex=2))
    async with LocalJobRunner(kube, tmp_path) as runner:
        done = await wait_for(lambda: finished(kube, "flaky"), 30)
    status = done["status"]
    assert status["completedIndexes"] == "0,2" and status["failedIndexes"] == "1" and status["failed"] == 3
    assert [c["type"] for c in status["conditions"]] == ["FailureTarget", "Failed"]
    assert status["conditions"][-1]["reason"] == "FailedIndexes"
    assert len(runner.runs_of("flaky", 1)) == 3
    failed = [p for p in kube.live_objects("v1/pods") if p["status"]["phase"] == "Failed"]
    terminated = failed[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3 and terminated["message"].splitlines()[-1] == "boom in 1"


async def test_pod_failure_policy_fails_the_job_at_once(kube, tmp_path):
    await setup_inputs(kube)
    policy = {"rules": [{"action": "FailJob", "onExitCodes": {"containerName": "worker", "operator": "In", "values": [2]}}]}
    await post(kube, JOBS, job("bad-input", "import sys; sys.exit(2)", backoffLimit=5, podFailurePolicy=policy))
    async with LocalJobRunner(kube, tmp_path) as runner:
        done = await wait_for(lambda: finished(kube, "bad-input"), 30)
    assert done["status"]["conditions"][-1]["reason"] == "PodFailurePolicy"
    assert len(runner.runs) == 1


async def test_backoff_limit_counts_failed_pods(kube, tmp_path):
    await setup_inputs(kube)
    await post(kube, JOBS, job("always-fails", "import sys; sys.exit(1)", backoffLimit=1))
    async with LocalJobRunner(kube, tmp_path) as runner:
        done = await wait_for(lambda: finished(kube, "always-fails"), 30)
    assert done["status"]["conditions"][-1]["reason"] == "BackoffLimitExceeded"
    assert done["status"]["failed"] == 2 and len(runner.runs) == 2


def job_status(kube, name: str) -> dict:
    found = [j for j in kube.live_objects("batch/v1/jobs") if j["metadata"]["name"] == name]
    return found[0].get("status", {}) if found else {}


def pods_of(kube, job_name: str) -> list[dict]:
    return [p for p in kube.live_objects("v1/pods") if p["metadata"]["labels"].get("job-name") == job_name]


def waiting_reason(kube, job_name: str) -> tuple[str, str] | None:
    for pod in pods_of(kube, job_name):
        for container in pod.get("status", {}).get("containerStatuses") or ():
            waiting = container.get("state", {}).get("waiting")
            if waiting:
                return waiting["reason"], waiting.get("message", "")
    return None


async def test_missing_secret_key_keeps_the_container_waiting_until_the_secret_appears(kube, tmp_path):
    await post(kube, "/api/v1/namespaces/default/configmaps",
               {"metadata": {"name": "args"}, "data": {"args.json": "{}"}})
    await post(kube, JOBS, job("no-secret", "print('started')", backoffLimit=0))
    async with LocalJobRunner(kube, tmp_path, kubelet_retry=0.1) as runner:
        reason = await wait_for(lambda: waiting_reason(kube, "no-secret"), 30)
        assert reason == ("CreateContainerConfigError", 'secret "creds" not found')
        await post(kube, "/api/v1/namespaces/default/secrets", {"metadata": {"name": "creds"}, "data": {}})
        await wait_for(lambda: waiting_reason(kube, "no-secret") == (
            "CreateContainerConfigError", "couldn't find key token in Secret default/creds"), 30)
        status = job_status(kube, "no-secret")
        # The Job counts the pod active, not ready, and nothing ran or failed.
        assert status["startTime"] and status["active"] == 1 and status["ready"] == 0 and status["failed"] == 0
        assert all(r.exit_code is None for r in runner.runs)
        async with kube.patch("/api/v1/namespaces/default/secrets/creds", json={"data": {"token": "eA=="}},
                              headers={"Content-Type": "application/merge-patch+json"}) as response:
            assert response.status == 200
        done = await wait_for(lambda: finished(kube, "no-secret"), 30)
    assert done["status"]["succeeded"] == 1 and [r.exit_code for r in runner.runs] == [0]


async def test_images_that_cannot_be_pulled_wait_with_the_kubelets_reason(kube, tmp_path):
    await setup_inputs(kube)
    bad_name, private = job("bad-name", "pass"), job("private", "pass")
    bad_name["spec"]["template"]["spec"]["containers"][0]["image"] = "Registry.example.com/Team/Worker:1"
    private["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.example.com/team/worker:1"
    await post(kube, JOBS, bad_name)
    await post(kube, JOBS, private)
    async with LocalJobRunner(kube, tmp_path, private_registries={"registry.example.com": "regcred"}) as runner:
        assert (await wait_for(lambda: waiting_reason(kube, "bad-name"), 30))[0] == "InvalidImageName"
        assert await wait_for(lambda: waiting_reason(kube, "private"), 30) == (
            "ImagePullBackOff", 'Back-off pulling image "registry.example.com/team/worker:1"')
    assert not runner.runs_of("bad-name")[0].argv and not runner.runs_of("private")[0].argv


async def test_missing_service_account_is_a_failed_create_event_on_the_job(kube, tmp_path):
    await setup_inputs(kube)
    body = job("no-account", "pass")
    body["spec"]["template"]["spec"]["serviceAccountName"] = "worker"
    await post(kube, JOBS, body)
    async with LocalJobRunner(kube, tmp_path, kubelet_retry=0.1):
        events = await wait_for(lambda: [e for e in kube.live_objects("v1/events") if e["reason"] == "FailedCreate"], 30)
        await wait_for(lambda: kube.live_objects("v1/events")[0].get("count", 0) >= 2, 30)
        assert not kube.live_objects("v1/pods")
        assert job_status(kube, "no-account")["startTime"] and job_status(kube, "no-account")["active"] == 0
        await post(kube, "/api/v1/namespaces/default/serviceaccounts", {"metadata": {"name": "worker"}})
        done = await wait_for(lambda: finished(kube, "no-account"), 30)
    event = events[0]
    assert event["involvedObject"]["kind"] == "Job" and event["involvedObject"]["name"] == "no-account"
    assert event["type"] == "Warning" and event["message"].startswith('Error creating: pods "no-account-')
    assert event["message"].endswith(
        'is forbidden: error looking up service account default/worker: serviceaccount "worker" not found')
    assert done["status"]["succeeded"] == 1


async def test_pods_that_fit_no_node_stay_pending_unschedulable(kube, tmp_path):
    await setup_inputs(kube)
    gpu = job("gpu", "pass")
    gpu["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "1"}}
    selector = job("selector", "pass")
    selector["spec"]["template"]["spec"]["nodeSelector"] = {"pool": "a100"}
    await post(kube, JOBS, gpu)
    await post(kube, JOBS, selector)

    def scheduled(name: str):
        pods = pods_of(kube, name)
        conditions = pods[0].get("status", {}).get("conditions") if pods else None
        return next((c for c in conditions or () if c["type"] == "PodScheduled"), None)

    async with LocalJobRunner(kube, tmp_path) as runner:
        gpu_condition = await wait_for(lambda: scheduled("gpu"), 30)
        selector_condition = await wait_for(lambda: scheduled("selector"), 30)
    assert gpu_condition["reason"] == "Unschedulable" and "1 Insufficient nvidia.com/gpu" in gpu_condition["message"]
    assert "didn't match Pod's node affinity/selector" in selector_condition["message"]
    assert all(not r.argv for r in runner.runs) and pods_of(kube, "gpu")[0]["status"]["phase"] == "Pending"


async def test_eviction_adds_disruption_target_which_the_policy_ignores(kube, tmp_path):
    await setup_inputs(kube)
    policy = {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]}
    await post(kube, JOBS, job("evicted", "import time; time.sleep(0.5)", backoffLimit=0, podFailurePolicy=policy))
    async with LocalJobRunner(kube, tmp_path) as runner:
        first = await wait_for(lambda: runner.runs_of("evicted") and runner.runs_of("evicted")[0].process
                               and runner.runs_of("evicted")[0], 30)
        await runner.evict(first.pod)
        done = await wait_for(lambda: finished(kube, "evicted"), 30)
    # backoffLimit 0, yet the evicted attempt did not count: the retry ran and the Job completed.
    assert done["status"]["succeeded"] == 1 and done["status"]["failed"] == 0
    assert [r.exit_code for r in runner.runs] == [137, 0]
    evicted = next(p for p in kube.live_objects("v1/pods") if p["metadata"]["name"] == first.pod)
    assert evicted["status"]["reason"] == "Evicted"
    assert {"type": "DisruptionTarget", "status": "True"}.items() <= next(
        c for c in evicted["status"]["conditions"] if c["type"] == "DisruptionTarget").items()


async def test_max_failed_indexes_fails_the_job_fast(kube, tmp_path):
    await setup_inputs(kube)
    script = "import os, sys; sys.exit(3 if os.environ['JOB_COMPLETION_INDEX'] == '0' else 0)"
    await post(kube, JOBS, job("fast", script, completionMode="Indexed", completions=4, parallelism=4,
                               backoffLimitPerIndex=0, maxFailedIndexes=0))
    async with LocalJobRunner(kube, tmp_path, max_parallel=1) as runner:
        done = await wait_for(lambda: finished(kube, "fast"), 30)
    conditions = done["status"]["conditions"]
    assert [c["type"] for c in conditions] == ["FailureTarget", "Failed"]
    assert conditions[-1]["reason"] == "MaxFailedIndexesExceeded"
    assert len([r for r in runner.runs if r.exit_code is not None]) < 4  # the remaining indexes never ran
