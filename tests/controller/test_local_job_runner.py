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


async def test_missing_secret_fails_the_pod(kube, tmp_path):
    await post(kube, "/api/v1/namespaces/default/configmaps",
               {"metadata": {"name": "args"}, "data": {"args.json": "{}"}})
    await post(kube, JOBS, job("no-secret", "pass", backoffLimit=0))
    async with LocalJobRunner(kube, tmp_path) as runner:
        await wait_for(lambda: finished(kube, "no-secret"), 30)
    assert "secret 'creds' has no key 'token'" in runner.runs[0].log
