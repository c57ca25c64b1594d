"""What a real cluster does that the first emulator did not: each test fails without its fix.

The API server refuses objects (422 Invalid, 400 BadRequest), pods wait instead of failing
(CreateContainerConfigError, ImagePullBackOff, FailedCreate, Unschedulable), Kueue may never
admit, one failed shard must stop the others, deleting must not need the operator, and the
operator reads results with the selection's own credentials.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kubernetes
import pytest

from tests.controller.harness import (
    pod_env, running_operator, selection_body, start_operator, use_stub_worker, wait_for,
)
from tests.controller.test_operator import (
    GROUP, PLURAL, VERSION, condition, create, events_of, live, stub_runner, wait_phase,
)
from tests.support.local_job_runner import LocalJobRunner


def jobs_named(kube, name: str) -> dict[str, Any] | None:
    return next((j for j in kube.live_objects("batch/v1/jobs") if j["metadata"]["name"] == name), None)


async def test_a_job_the_api_server_refuses_fails_the_selection_with_the_apis_message(
    kube, api, s3, tmp_path, monkeypatch
):
    """Item 1: dsel accepts the spec, the API server refuses the Job (here: the operator's worker
    service account setting is not a valid name), and the selection fails with the API's words."""
    monkeypatch.setenv("DSEL_WORKER_SERVICE_ACCOUNT", "Team_Workers")
    await create(api, selection_body("refused", s3["uri"], s3["endpoint"]))
    async with stub_runner(kube, tmp_path) as runner, running_operator():
        obj = await wait_phase(kube, "refused", "Failed", timeout=30)
    failed = condition(obj, "Failed")
    assert failed["reason"] == "CreateRefused"
    assert failed["message"].startswith("the API server refused to create Job refused-warmup (422): ")
    assert ('Job.batch "refused-warmup" is invalid: spec.template.spec.serviceAccountName: Invalid value: '
            '"Team_Workers": a lowercase RFC 1123 subdomain') in failed["message"]
    assert obj["status"]["observedGeneration"] == 1 and obj["status"]["completionTime"]
    assert any(e["reason"] == "CreateRefused" for e in events_of(kube, "refused"))
    assert not kube.live_objects("batch/v1/jobs") and not runner.runs


@pytest.mark.parametrize(
    ("case", "reason", "says"),
    [
        ("missing-secret", "CreateContainerConfigError", 'secret "absent-credentials" not found'),
        ("missing-service-account", "FailedCreate", 'serviceaccount "dsel-worker" not found'),
        ("unschedulable", "Unschedulable", "1 Insufficient nvidia.com/gpu"),
        ("private-image", "ImagePullBackOff", 'Back-off pulling image "registry.example.com/ml/worker:1"'),
    ],
)
async def test_pods_that_never_start_are_shown_then_fail_the_stage_after_the_grace_period(
    kube, api, s3, tmp_path, monkeypatch, case, reason, says
):
    """Item 2: the reason shows in PodsReady and status.waiting (the WAITING column), then fails."""
    monkeypatch.setenv("DSEL_POD_START_GRACE_SECONDS", "4")
    body = selection_body("stuck", s3["uri"], s3["endpoint"])
    if case == "missing-secret":
        body["spec"]["storage"]["credentialsSecret"] = "absent-credentials"
    elif case == "missing-service-account":
        monkeypatch.setenv("DSEL_WORKER_SERVICE_ACCOUNT", "dsel-worker")
    elif case == "unschedulable":
        body["spec"]["resources"]["gpus"] = 1
    else:
        body["spec"]["resources"]["image"] = "registry.example.com/ml/worker:1"
    await create(api, body)
    runner = stub_runner(kube, tmp_path)
    runner.private_registries["registry.example.com"] = "regcred"
    async with runner, running_operator():
        waiting = await wait_for(lambda: (o := live(kube, "stuck")) and o.get("status", {}).get("waiting") and o, 30,
                                 what="status.waiting")
        obj = await wait_phase(kube, "stuck", "Failed", timeout=30)
    pods_ready = condition(waiting, "PodsReady")
    assert waiting["status"]["waiting"] == reason
    assert pods_ready["status"] == "False" and pods_ready["reason"] == reason and says in pods_ready["message"]
    assert waiting["status"]["phase"] == "Pending"  # warmup never started running
    failed = condition(obj, "Failed")
    assert failed["reason"] == "PodsNotStarted" and says in failed["message"]
    assert failed["message"].startswith("warmup failed: pods did not start within 4 s")
    assert "waiting" not in obj["status"] and obj["status"]["stages"]["warmup"]["state"] == "Failed"
    # The stage's Job is suspended, so its waiting pods go; nothing ever ran.
    assert jobs_named(kube, "stuck-warmup")["spec"]["suspend"] is True
    assert all(r.exit_code is None for r in runner.runs)
    assert any(e["reason"] == "PodsNotReady" for e in events_of(kube, "stuck"))


async def test_pods_that_start_within_the_grace_period_clear_the_waiting_reason(kube, api, s3, tmp_path, monkeypatch):
    monkeypatch.setenv("DSEL_POD_START_GRACE_SECONDS", "600")
    body = selection_body("late", s3["uri"], s3["endpoint"], shards=1)
    body["spec"]["storage"]["credentialsSecret"] = "late-credentials"
    await create(api, body)
    async with stub_runner(kube, tmp_path), running_operator():
        await wait_for(lambda: (live(kube, "late") or {}).get("status", {}).get("waiting"), 30)
        secret = {**(next(s for s in kube.live_objects("v1/secrets") if s["metadata"]["name"] == "dsel-s3"))}
        secret["metadata"] = {"name": "late-credentials"}
        async with kube.post("/api/v1/namespaces/default/secrets", json=secret) as response:
            assert response.status == 201
        obj = await wait_phase(kube, "late", "Succeeded", timeout=60)
    assert "waiting" not in obj["status"]
    assert condition(obj, "PodsReady")["status"] == "True"


async def test_kueue_pending_reason_is_visible(kube, api, s3, tmp_path):
    """Kueue's Workload says why it does not admit; without any Workload that is said too."""
    kube.declare({"spec": {"group": "kueue.x-k8s.io", "scope": "Namespaced",
                           "names": {"plural": "workloads", "singular": "workload", "kind": "Workload"},
                           "versions": [{"name": "v1beta1", "served": True, "subresources": {"status": {}}}]}})
    await create(api, selection_body("queued", s3["uri"], s3["endpoint"], shards=1, queueName="team-a"))
    async with stub_runner(kube, tmp_path), running_operator():
        obj = await wait_for(lambda: (o := live(kube, "queued")) and o.get("status", {}).get("waiting") and o, 30)
        assert obj["status"]["waiting"] == "NoWorkload"
        job = jobs_named(kube, "queued-warmup")
        workload = {"apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "Workload",
                    "metadata": {"name": "job-queued-warmup-1a2b3",
                                 "labels": {"kueue.x-k8s.io/job-uid": job["metadata"]["uid"]}}}
        async with kube.post("/apis/kueue.x-k8s.io/v1beta1/namespaces/default/workloads", json=workload) as response:
            assert response.status == 201
        message = "couldn't assign flavors to pod set main: insufficient quota for nvidia.com/gpu in flavor a100"
        async with kube.patch(
            "/apis/kueue.x-k8s.io/v1beta1/namespaces/default/workloads/job-queued-warmup-1a2b3/status",
            json={"status": {"conditions": [{"type": "QuotaReserved", "status": "False", "reason": "Pending",
                                             "message": message}]}},
            headers={"Content-Type": "application/merge-patch+json"},
        ) as response:
            assert response.status == 200
        obj = await wait_for(lambda: (o := live(kube, "queued")) and o["status"].get("waiting") == "Pending" and o, 30)
    pods_ready = condition(obj, "PodsReady")
    assert message in pods_ready["message"] and "queue team-a" in pods_ready["message"]
    assert obj["status"]["phase"] == "Pending" and obj["status"]["progress"] == "queued"


async def test_one_shard_failed_for_good_stops_the_others(kube, api, s3, tmp_path):
    """Item 7: maxFailedIndexes=0, so the remaining shards never run (one pod at a time here)."""
    await create(api, selection_body("fast", s3["uri"], s3["endpoint"], shards=4, backoffLimitPerIndex=0))
    runner = LocalJobRunner(kube, tmp_path / "pods", extra_env=pod_env(DSEL_STUB_FAIL="shard:0"),
                            command_override=use_stub_worker, max_parallel=1)
    async with runner, running_operator():
        obj = await wait_phase(kube, "fast", "Failed", timeout=60)
    extract = jobs_named(kube, "fast-extract")
    assert extract["spec"]["maxFailedIndexes"] == 0
    assert extract["status"]["conditions"][-1]["reason"] == "MaxFailedIndexesExceeded"
    assert len([r for r in runner.runs_of("fast-extract") if r.exit_code is not None]) < 4  # the rest never ran
    assert "shard 0" in condition(obj, "Failed")["message"]


async def test_deleting_while_the_operator_is_down_does_not_hang(kube, api, s3, tmp_path):
    """Item 4: no finalizer, so deletion needs no operator; garbage collection takes the children."""
    await create(api, selection_body("kappa", s3["uri"], s3["endpoint"], shards=2))
    objects = kubernetes.client.CustomObjectsApi(api)
    async with stub_runner(kube, tmp_path, DSEL_STUB_DELAY="30") as runner:
        operator = await start_operator()
        await wait_for(lambda: runner.runs_of("kappa-warmup"), 30, what="warmup pod started")
        assert not (live(kube, "kappa")["metadata"].get("finalizers"))
        await operator.stop()  # helm uninstall, or replicaCount: 0
        await asyncio.to_thread(objects.delete_namespaced_custom_object, GROUP, VERSION, "default", PLURAL, "kappa")
        assert live(kube, "kappa") is None  # gone at once, not held for an operator that is not there
        await wait_for(lambda: not kube.live_objects("v1/pods"), 10, what="pods gone")
    assert not kube.live_objects("batch/v1/jobs") and not kube.live_objects("v1/configmaps")


async def test_a_resource_with_the_old_finalizer_is_released_on_deletion(kube, api, s3, tmp_path):
    """Upgrades: resources of an older operator carry `dsel.dev/cleanup`; the new one removes it."""
    body = selection_body("legacy", s3["uri"], s3["endpoint"])
    body["metadata"]["finalizers"] = ["dsel.dev/cleanup"]
    await create(api, body)
    objects = kubernetes.client.CustomObjectsApi(api)
    async with stub_runner(kube, tmp_path, DSEL_STUB_DELAY="30"), running_operator():
        await wait_for(lambda: kube.live_objects("batch/v1/jobs"), 30)
        await asyncio.to_thread(objects.delete_namespaced_custom_object, GROUP, VERSION, "default", PLURAL, "legacy")
        await wait_for(lambda: live(kube, "legacy") is None, 30, what="the DataSelection gone")


async def test_results_are_read_with_the_selections_credentials_not_the_operators(kube, api, s3, tmp_path, monkeypatch):
    """Item 9: the operator's own keys may not read the bucket; the spec's Secret may."""
    access, secret = s3["server"].identity("outsider")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    await create(api, selection_body("own-keys", s3["uri"], s3["endpoint"], shards=1))
    async with stub_runner(kube, tmp_path), running_operator():
        obj = await wait_phase(kube, "own-keys", "Succeeded", timeout=60)
    assert obj["status"]["selection"]["count"] == 6


async def test_the_operator_watches_only_dsel_jobs_server_side(kube, api, s3, tmp_path):
    """Item 10: every Job watch and list the operator sends carries the label selector."""
    async with running_operator():
        await wait_for(lambda: [c for c in kube.calls if c.resource == "jobs" and c.verb == "watch"], 30,
                       what="a Job watch")
    job_reads = [r for r in kube._requests if r.resource is not None and r.resource.plural == "jobs"]  # noqa: SLF001
    assert job_reads
    assert all(r.params.get("labelSelector", "").startswith("dsel.dev/selection") for r in job_reads)


async def test_an_evicted_pod_counts_against_the_retries(kube, api, s3, tmp_path):
    """The kubelet's eviction sets DisruptionTarget; the pod failure policy counts it (no endless
    evictions of a pod that fills its disk), so it is retried within backoffLimit."""
    await create(api, selection_body("evicted", s3["uri"], s3["endpoint"], shards=1, backoffLimitPerIndex=1))
    async with stub_runner(kube, tmp_path, DSEL_STUB_DELAY="2") as runner, running_operator():
        first = await wait_for(lambda: (runs := runner.runs_of("evicted-warmup")) and runs[0].process and runs[0], 30)
        await runner.evict(first.pod)
        obj = await wait_phase(kube, "evicted", "Succeeded", timeout=60)
    assert [r.exit_code for r in runner.runs_of("evicted-warmup")] == [137, 0]
    assert obj["status"]["stages"]["warmup"]["podFailures"] == 1
