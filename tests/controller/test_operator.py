"""The operator against the API emulator, with the local job runner and a stub worker.

The stub obeys the stage contract in milliseconds (see stub_worker.py), so these tests check the
operator's behaviour (phases, status, retries, restarts, deletion, independence) quickly; the
real stages run in test_end_to_end.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from selection_operator import status as status_module
from tests.controller.harness import (
    pod_env, running_operator, selection_body, start_operator, use_stub_worker, wait_for,
)
from tests.support.kube_emulator import KubeEmulator
from tests.support.local_job_runner import LocalJobRunner

DSEL = "dsel.dev/v1alpha1/dataselections"
GROUP, VERSION, PLURAL = "dsel.dev", "v1alpha1", "dataselections"

def live(kube: KubeEmulator, name: str) -> dict[str, Any] | None:
    return next((o for o in kube.live_objects(DSEL) if o["metadata"]["name"] == name), None)


def events_of(kube: KubeEmulator, name: str) -> list[dict[str, Any]]:
    return [e for e in kube.live_objects("v1/events") if e.get("involvedObject", {}).get("name") == name]


async def create(api: Any, body: dict[str, Any]) -> None:
    objects = kubernetes.client.CustomObjectsApi(api)
    await asyncio.to_thread(objects.create_namespaced_custom_object, GROUP, VERSION, "default", PLURAL, body)


async def wait_phase(kube: KubeEmulator, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        obj = live(kube, name)
        return obj if obj and obj.get("status", {}).get("phase") == phase else None

    try:
        return await wait_for(reached, timeout, what=f"{name} phase {phase}")
    except TimeoutError as error:
        obj = live(kube, name) or {}
        raise TimeoutError(f"{error}; status: {json.dumps(obj.get('status'), indent=1)[:3000]}") from None


def stub_runner(kube: KubeEmulator, tmp_path: Path, **env: str) -> LocalJobRunner:
    return LocalJobRunner(kube, tmp_path / "pods", extra_env=pod_env(**env), command_override=use_stub_worker)


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return status_module.find_condition(obj.get("status", {}).get("conditions"), kind)


async def test_selection_runs_through_all_phases(kube, api, s3, tmp_path):
    await create(api, selection_body("alpha", s3["uri"], s3["endpoint"], shards=3))
    async with stub_runner(kube, tmp_path) as runner, running_operator() as operator:
        obj = await wait_phase(kube, "alpha", "Succeeded")
        metrics = operator.context.metrics.registry
    status = obj["status"]
    assert status["selection"]["indices"] == [0, 1, 2, 3, 4, 5]
    assert status["selection"]["encoding"] == "list"
    assert status["selection"]["count"] == 6
    assert status["selection"]["uri"] == f"{s3['uri']}/selection/selection.json"
    assert status["observedGeneration"] == 1 and status["startTime"] and status["completionTime"]
    assert condition(obj, "Complete")["status"] == "True"
    assert condition(obj, "Running")["status"] == "False"
    assert status["stages"]["extract"]["shards"] == {"total": 3, "succeeded": 3, "failed": 0}
    assert all(status["stages"][s]["state"] == "Succeeded" for s in ("warmup", "extract", "reduce"))
    # One pod per stage and shard, with the shard from JOB_COMPLETION_INDEX.
    assert sorted((r.job, r.index) for r in runner.runs) == [
        ("alpha-extract", 0), ("alpha-extract", 1), ("alpha-extract", 2), ("alpha-reduce", None), ("alpha-warmup", None)]
    reasons = [e["reason"] for e in events_of(kube, "alpha")]
    assert reasons.count("PhaseChanged") >= 4 and "Succeeded" in reasons
    # Credentials travel only as secretKeyRef: never in status, events or the arguments.
    secret_value = s3["secret_key"]
    config_map = kube.live_objects("v1/configmaps", "default")[0]
    for text in (json.dumps(obj), json.dumps(events_of(kube, "alpha")), json.dumps(config_map)):
        assert secret_value not in text
    assert metrics.get_sample_value("dsel_selections", {"phase": "Succeeded"}) == 1
    assert metrics.get_sample_value("dsel_stage_duration_seconds_count", {"stage": "extract", "outcome": "succeeded"}) == 1


async def test_failing_shard_retries_then_fails_naming_shard_and_error(kube, api, s3, tmp_path):
    await create(api, selection_body("beta", s3["uri"], s3["endpoint"], shards=3, backoffLimitPerIndex=1))
    async with stub_runner(kube, tmp_path, DSEL_STUB_FAIL="shard:1", DSEL_STUB_FAIL_DELAY="1") as runner, \
            running_operator() as operator:
        obj = await wait_phase(kube, "beta", "Failed")
        metrics = operator.context.metrics.registry
    failed = condition(obj, "Failed")
    assert failed["status"] == "True" and failed["reason"] == "StageFailed"
    assert "extract failed: shard 1" in failed["message"]
    assert "dsel shard: error: stub failure of shard 1: injected by the test" in failed["message"]
    assert "exit code 1" in failed["message"]
    assert obj["status"]["progress"] == "shard 1 failed"
    # backoffLimitPerIndex=1: shard 1 ran twice; the other shards once; no reduce.
    assert len(runner.runs_of("beta-extract", 1)) == 2
    assert len(runner.runs_of("beta-extract", 0)) == len(runner.runs_of("beta-extract", 2)) == 1
    assert not runner.runs_of("beta-reduce")
    assert obj["status"]["stages"]["extract"]["shards"] == {"total": 3, "succeeded": 2, "failed": 1}
    warnings = [e for e in events_of(kube, "beta") if e["type"] == "Warning"]
    assert {"PodFailed", "StageFailed"} <= {e["reason"] for e in warnings}
    assert metrics.get_sample_value("dsel_shard_retries_total", {"stage": "extract"}) == 1
    assert metrics.get_sample_value("dsel_shard_failures_total", {"stage": "extract"}) == 1
    assert metrics.get_sample_value("dsel_selections", {"phase": "Failed"}) == 1


async def test_bad_input_fails_the_stage_without_retries(kube, api, s3, tmp_path):
    await create(api, selection_body("gamma", s3["uri"], s3["endpoint"], backoffLimitPerIndex=3))
    async with stub_runner(kube, tmp_path, DSEL_STUB_FAIL="warmup", DSEL_STUB_EXIT="2") as runner, running_operator():
        obj = await wait_phase(kube, "gamma", "Failed")
    assert len(runner.runs_of("gamma-warmup")) == 1  # podFailurePolicy: exit code 2 fails the Job at once
    message = condition(obj, "Failed")["message"]
    assert message.startswith("warmup failed (pod gamma-warmup-") and "exit code 2" in message
    assert message.endswith("dsel warmup: error: stub failure: injected by the test")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda spec: spec["selection"].update(budget=0), "spec.selection.budget"),
        (lambda spec: spec["data"].update(train="train.jsonl"), "spec.data.train"),
        (lambda spec: spec["storage"].pop("uri"), "spec.storage.uri"),
        (lambda spec: spec["gradients"].update(shards="many"), "spec.gradients.shards"),
    ],
    ids=["budget", "relative-path", "no-storage", "wrong-type"],
)
async def test_invalid_spec_fails_with_the_field_path(kube, api, s3, change, field):
    body = selection_body("delta", s3["uri"], s3["endpoint"])
    change(body["spec"])
    await create(api, body)
    async with running_operator():
        obj = await wait_phase(kube, "delta", "Failed", timeout=30)
    failed = condition(obj, "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert f"{field}:" in failed["message"]
    assert not kube.live_objects("batch/v1/jobs") and not kube.live_objects("v1/configmaps")
    assert any(e["reason"] == "InvalidSpec" and e["type"] == "Warning" for e in events_of(kube, "delta"))


async def test_corrected_invalid_spec_starts(kube, api, s3, tmp_path):
    body = selection_body("epsilon", s3["uri"], s3["endpoint"])
    body["spec"]["selection"]["budget"] = 0
    await create(api, body)
    objects = kubernetes.client.CustomObjectsApi(api)
    async with stub_runner(kube, tmp_path), running_operator():
        await wait_phase(kube, "epsilon", "Failed", timeout=30)
        await asyncio.to_thread(
            objects.patch_namespaced_custom_object, GROUP, VERSION, "default", PLURAL, "epsilon",
            {"spec": {"selection": {"budget": 6}}},
        )
        obj = await wait_phase(kube, "epsilon", "Succeeded")
    assert obj["status"]["observedGeneration"] == 2
    assert condition(obj, "Failed") is None and condition(obj, "Complete")["status"] == "True"


async def test_spec_change_after_start_is_rejected(kube, api, s3, tmp_path):
    await create(api, selection_body("zeta", s3["uri"], s3["endpoint"], shards=2))
    objects = kubernetes.client.CustomObjectsApi(api)
    async with stub_runner(kube, tmp_path, DSEL_STUB_DELAY="1") as runner, running_operator():
        await wait_for(lambda: runner.runs_of("zeta-warmup"), 30, what="warmup started")
        await asyncio.to_thread(
            objects.patch_namespaced_custom_object, GROUP, VERSION, "default", PLURAL, "zeta",
            {"spec": {"gradients": {"shards": 5}}},
        )
        rejected = await wait_for(lambda: (o := live(kube, "zeta")) and condition(o, "SpecRejected") and o, 30)
        obj = await wait_phase(kube, "zeta", "Succeeded")
    message = condition(rejected, "SpecRejected")["message"]
    assert condition(rejected, "SpecRejected")["reason"] == "SpecImmutable"
    assert "generation 2" in message and "delete and recreate" in message
    assert condition(obj, "SpecRejected")["status"] == "True"
    # It finished with the spec it started with: two shards, not five.
    assert len(runner.runs_of("zeta-extract")) == 2
    assert obj["status"]["stages"]["extract"]["shards"]["total"] == 2
    assert any(e["reason"] == "SpecRejected" for e in events_of(kube, "zeta"))


async def test_two_selections_in_one_namespace_run_independently(kube, api, s3, tmp_path):
    await create(api, selection_body("one", f"{s3['uri']}/one", s3["endpoint"], shards=2))
    await create(api, selection_body("two", f"{s3['uri']}/two", s3["endpoint"], shards=3))
    async with stub_runner(kube, tmp_path, DSEL_STUB_FAIL="two/shard:2") as runner, running_operator() as operator:
        one = await wait_phase(kube, "one", "Succeeded")
        two = await wait_phase(kube, "two", "Failed")
        metrics = operator.context.metrics.registry
    assert one["status"]["selection"]["uri"] == f"{s3['uri']}/one/selection/selection.json"
    assert "shard 2" in condition(two, "Failed")["message"]
    assert condition(one, "Failed") is None
    jobs = {j["metadata"]["name"]: j for j in kube.live_objects("batch/v1/jobs")}
    assert set(jobs) == {"one-warmup", "one-extract", "one-reduce", "two-warmup", "two-extract"}
    for name, job in jobs.items():
        owner = job["metadata"]["ownerReferences"][0]
        assert owner["name"] == name.split("-")[0] and owner["controller"] is True
        assert job["metadata"]["labels"]["dsel.dev/selection"] == name.split("-")[0]
    assert len(runner.runs_of("one-extract")) == 2 and len(runner.runs_of("two-extract")) == 4
    assert metrics.get_sample_value("dsel_selections", {"phase": "Succeeded"}) == 1
    assert metrics.get_sample_value("dsel_selections", {"phase": "Failed"}) == 1


async def test_operator_restart_mid_extraction_recomputes_nothing(kube, api, s3, tmp_path):
    await create(api, selection_body("eta", s3["uri"], s3["endpoint"], shards=3))
    async with stub_runner(kube, tmp_path, DSEL_STUB_DELAY="1.5") as runner:
        operator = await start_operator()
        await wait_for(lambda: runner.runs_of("eta-extract"), 60, what="extraction started")
        job_uids = {j["metadata"]["name"]: j["metadata"]["uid"] for j in kube.live_objects("batch/v1/jobs")}
        await operator.kill()  # mid-extraction, without any goodbye
        await wait_for(lambda: any(r.exit_code == 0 for r in runner.runs_of("eta-extract")), 60)
        async with running_operator():
            obj = await wait_phase(kube, "eta", "Succeeded")
    for index in range(3):
        assert len(runner.runs_of("eta-extract", index)) == 1
    assert len(runner.runs_of("eta-warmup")) == 1 and len(runner.runs_of("eta-reduce")) == 1
    after = {j["metadata"]["name"]: j["metadata"]["uid"] for j in kube.live_objects("batch/v1/jobs")}
    assert {k: after[k] for k in job_uids} == job_uids  # the same Jobs, not recreated
    assert obj["status"]["selection"]["indices"] == [0, 1, 2, 3, 4, 5]


async def test_deletion_removes_jobs_configmaps_and_pods(kube, api, s3, tmp_path):
    await create(api, selection_body("theta", s3["uri"], s3["endpoint"], shards=2))
    objects = kubernetes.client.CustomObjectsApi(api)
    async with stub_runner(kube, tmp_path, DSEL_STUB_DELAY="30") as runner, running_operator():
        await wait_for(lambda: runner.runs_of("theta-warmup"), 30, what="warmup pod started")
        assert kube.live_objects("batch/v1/jobs") and kube.live_objects("v1/configmaps")
        await asyncio.to_thread(objects.delete_namespaced_custom_object, GROUP, VERSION, "default", PLURAL, "theta")
        await wait_for(lambda: live(kube, "theta") is None, 30, what="the DataSelection gone")
        await wait_for(lambda: not kube.live_objects("v1/pods"), 10, what="pods gone")
    assert not kube.live_objects("batch/v1/jobs")
    assert not kube.live_objects("v1/configmaps")
    assert all(r.exit_code != 0 for r in runner.runs)  # the running pod was killed, not finished


@pytest.mark.parametrize(
    ("order", "encoding"),
    [("ascending", status_module.ENCODING_COMPACT), ("shuffled", status_module.ENCODING_OMITTED)],
)
async def test_million_example_selection_keeps_the_resource_under_1mib(kube, api, s3, tmp_path, order, encoding):
    await create(api, selection_body("big", s3["uri"], s3["endpoint"], shards=1))
    env = {"DSEL_STUB_COUNT": "1000000", "DSEL_STUB_POOL_SIZE": "2000000", "DSEL_STUB_ORDER": order}
    async with stub_runner(kube, tmp_path, **env), running_operator():
        obj = await wait_phase(kube, "big", "Succeeded", timeout=120)
    fetched = await asyncio.to_thread(
        kubernetes.client.CustomObjectsApi(api).get_namespaced_custom_object, GROUP, VERSION, "default", PLURAL, "big"
    )
    assert len(json.dumps(fetched).encode()) < 1024 * 1024
    selection = obj["status"]["selection"]
    assert selection["count"] == 1_000_000 and selection["encoding"] == encoding
    assert selection["uri"].endswith("/selection/selection.json")
    if encoding == status_module.ENCODING_COMPACT:
        assert status_module.decode_indices(selection) == list(range(1_000_000))
    else:
        with pytest.raises(LookupError, match="selection.json"):
            status_module.decode_indices(selection)


async def test_kueue_queue_holds_the_job_suspended_until_admitted(kube, api, s3, tmp_path):
    await create(api, selection_body("iota", s3["uri"], s3["endpoint"], shards=1, queueName="team-a"))
    async with stub_runner(kube, tmp_path) as runner, running_operator():
        await wait_for(lambda: kube.live_objects("batch/v1/jobs"), 30, what="warmup Job")
        await wait_for(lambda: (live(kube, "iota") or {}).get("status", {}).get("progress") == "queued", 30)
        job = kube.live_objects("batch/v1/jobs")[0]
        assert job["spec"]["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
        assert not runner.runs and live(kube, "iota")["status"]["phase"] == "Pending"
        async with kube.patch(  # what Kueue does on admission
            "/apis/batch/v1/namespaces/default/jobs/iota-warmup", json={"spec": {"suspend": False}},
            headers={"Content-Type": "application/merge-patch+json"},
        ) as response:
            assert response.status == 200
        await wait_phase(kube, "iota", "Extracting", timeout=60)
