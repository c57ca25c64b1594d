"""The pure state machine: observations in, plans out (no cluster, no S3)."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from selection_operator import manifests, phases
from selection_operator.settings import OperatorSettings

NOW = "2030-01-01T00:00:00Z"
SETTINGS = OperatorSettings(worker_image="worker:test", s3_credentials_secret="default-secret")


def resource(generation: int = 1, status: dict | None = None, **spec_changes: Any) -> dict:
    spec = {
        "model": {"source": "tiny:llama-demo"},
        "data": {"train": "s3://bkt/data/train.jsonl", "validation": [{"task": "t", "uri": "s3://bkt/data/v.jsonl"}]},
        "gradients": {"shards": 2},
        "selection": {"budget": 3},
        "storage": {"uri": "s3://bkt/art"},
    }
    spec.update(spec_changes)
    return {
        "apiVersion": "dsel.dev/v1alpha1", "kind": "DataSelection",
        "metadata": {"name": "demo", "namespace": "ns", "uid": "u-1", "generation": generation},
        "spec": spec, "status": status or {},
    }


def started_document(body: dict) -> dict:
    from selection import spec as spec_module

    parsed = spec_module.parse_selection(body)
    return manifests.arguments_document(parsed, manifests.resolve_storage(parsed, SETTINGS))


def job(name: str, *, started: bool = True, complete: bool = False, gave_up: bool = False, **status: Any) -> phases.JobState:
    return phases.JobState(
        name=name, start_time="2030-01-01T00:00:00Z" if started else None,
        completion_time="2030-01-01T00:01:00Z" if complete else None,
        complete=complete, failed_for_good=gave_up, **status,
    )


def observe(body: dict, started: dict | None = None, jobs: dict | None = None, **extra: Any) -> phases.Observation:
    return phases.Observation(resource=body, started=started, started_secret="default-secret", jobs=jobs or {},
                              settings=SETTINGS, now=NOW, **extra)


def advance(body: dict, plan: phases.Plan) -> dict:
    """The resource after the plan's status was written."""
    after = copy.deepcopy(body)
    after["status"] = plan.status
    return after


def conditions(plan: phases.Plan) -> dict[str, dict]:
    return {c["type"]: c for c in plan.status.get("conditions", [])}


def test_a_new_resource_starts_with_its_configmap_and_warmup_job():
    plan = phases.decide(observe(resource()))
    assert plan.create_config_map and plan.create_jobs == ("warmup",)
    assert plan.status["phase"] == phases.PENDING and plan.status["startTime"] == NOW
    assert plan.status["startedGeneration"] == 1 and plan.status["observedGeneration"] == 1
    assert plan.status["artifacts"]["selection"] == "s3://bkt/art/selection/selection.json"
    assert plan.storage.credentials_secret == "default-secret"
    assert [e.reason for e in plan.events] == ["PhaseChanged"]


def test_stages_follow_each_other_and_report_progress():
    body = resource()
    started = started_document(body)
    body = advance(body, phases.decide(observe(body)))
    plan = phases.decide(observe(body, started, {"warmup": job("demo-warmup")}))
    assert plan.status["phase"] == phases.WARMUP and not plan.create_jobs and not plan.create_config_map
    body = advance(body, plan)
    plan = phases.decide(observe(body, started, {"warmup": job("demo-warmup", complete=True)}))
    assert plan.create_jobs == ("extract",) and plan.status["phase"] == phases.EXTRACTING
    assert plan.status["stages"]["warmup"]["state"] == phases.STATE_SUCCEEDED
    body = advance(body, plan)
    extract = job("demo-extract", completed_indexes=frozenset({1}), succeeded=1)
    plan = phases.decide(observe(body, started, {"warmup": job("demo-warmup", complete=True), "extract": extract}))
    assert plan.status["progress"] == "1/2 shards"
    assert plan.status["stages"]["extract"]["shards"] == {"total": 2, "succeeded": 1, "failed": 0}


def test_finished_stages_are_not_rerun_when_their_jobs_are_gone():
    """ttlSecondsAfterFinished deletes finished Jobs; the status record says they are done."""
    body = resource()
    started = started_document(body)
    body = advance(body, phases.decide(observe(body)))
    body = advance(body, phases.decide(observe(body, started, {"warmup": job("demo-warmup", complete=True)})))
    plan = phases.decide(observe(body, started, {}))  # both Jobs gone
    assert plan.create_jobs == ("extract",)  # extraction was never finished; warmup was


def test_success_needs_the_selection_then_reports_it():
    body = resource()
    started = started_document(body)
    body["status"] = {"phase": phases.REDUCING, "stages": {
        s: {"job": f"demo-{s}", "state": phases.STATE_SUCCEEDED} for s in ("warmup", "extract")}}
    jobs = {"reduce": job("demo-reduce", complete=True)}
    plan = phases.decide(observe(body, started, jobs))
    assert plan.needs == phases.Needs(selection=True)
    document = {"method": "bids", "budget": 3, "indices": [5, 1, 9], "composition": {"t": 3}, "poolSize": 20}
    plan = phases.decide(observe(body, started, jobs, selection=phases.SelectionRead(document=document)))
    assert plan.status["phase"] == phases.SUCCEEDED and plan.status["completionTime"] == NOW
    assert plan.status["selection"]["indices"] == [5, 1, 9] and plan.status["selection"]["count"] == 3
    assert conditions(plan)["Complete"]["status"] == "True" and conditions(plan)["Running"]["status"] == "False"


def test_unreadable_selection_keeps_reducing_with_a_reason():
    body = resource()
    body["status"] = {"phase": phases.REDUCING, "stages": {
        s: {"job": f"demo-{s}", "state": phases.STATE_SUCCEEDED} for s in ("warmup", "extract")}}
    plan = phases.decide(observe(body, started_document(body), {"reduce": job("demo-reduce", complete=True)},
                                 selection=phases.SelectionRead(error="access denied")))
    assert plan.status["phase"] == phases.REDUCING
    assert conditions(plan)["Running"]["reason"] == "SelectionUnreadable"
    assert "access denied" in conditions(plan)["Running"]["message"]
    assert [e.reason for e in plan.events] == ["SelectionUnreadable"]


def test_a_failed_shard_asks_for_its_pod_then_fails_naming_it():
    body = resource()
    started = started_document(body)
    body["status"] = {"phase": phases.EXTRACTING, "stages": {"warmup": {"state": phases.STATE_SUCCEEDED}}}
    extract = job("demo-extract", gave_up=True, failed_indexes=frozenset({1}), failed=3,
                  failure_reason="FailedIndexes", failure_message="Job has failed indexes")
    jobs = {"extract": extract}
    assert phases.decide(observe(body, started, jobs)).needs == phases.Needs(failure_of="extract")
    detail = phases.FailureDetail(pod="demo-extract-1-abcde", shard=1, exit_code=1, line="dsel shard: error: boom")
    plan = phases.decide(observe(body, started, jobs, failure=detail))
    failed = conditions(plan)["Failed"]
    assert plan.status["phase"] == phases.FAILED and failed["reason"] == "StageFailed"
    assert failed["message"] == "extract failed: shard 1 (pod demo-extract-1-abcde, exit code 1): dsel shard: error: boom"
    assert plan.status["stages"]["extract"]["podFailures"] == 3
    assert {e.reason for e in plan.events} == {"PodFailed", "StageFailed"}


def test_a_failure_without_pods_quotes_the_job_condition():
    body = resource()
    body["status"] = {"phase": phases.WARMUP}
    warmup = job("demo-warmup", gave_up=True, failure_reason="DeadlineExceeded", failure_message="too slow")
    plan = phases.decide(observe(body, started_document(body), {"warmup": warmup}, failure=phases.FailureDetail()))
    assert conditions(plan)["Failed"]["message"] == "warmup failed (Job demo-warmup): DeadlineExceeded: too slow"


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"selection": {"budget": -1}}, "spec.selection.budget"),
        ({"storage": {}}, "spec.storage.uri"),
        ({"storage": {"uri": "/data/out"}}, "spec.storage.uri"),
        ({"data": {"train": "train.jsonl", "validation": [{"task": "t", "uri": "s3://bkt/v.jsonl"}]}}, "spec.data.train"),
        ({"data": {"train": "s3://bkt/t.jsonl", "validation": [{"task": "t", "uri": "v.jsonl"}]}},
         "spec.data.validation[0].uri"),
    ],
)
def test_an_invalid_spec_fails_with_its_field_path(changes, path):
    plan = phases.decide(observe(resource(**changes)))
    failed = conditions(plan)["Failed"]
    assert plan.status["phase"] == phases.FAILED and failed["reason"] == "InvalidSpec"
    assert f"{path}:" in failed["message"]
    assert not plan.create_jobs and not plan.create_config_map


def test_the_default_storage_uri_names_namespace_and_resource():
    settings = OperatorSettings(default_storage_uri="s3://shared/dsel")
    obs = phases.Observation(resource=resource(storage={}), started=None, started_secret=None, jobs={},
                             settings=settings, now=NOW)
    assert phases.decide(obs).storage.uri == "s3://shared/dsel/ns/demo"


def test_spec_changes_after_start_are_rejected_and_ignored():
    body = resource()
    started = started_document(body)
    body = advance(body, phases.decide(observe(body)))
    changed = resource(generation=2, status=body["status"], gradients={"shards": 8})
    plan = phases.decide(observe(changed, started, {"warmup": job("demo-warmup")}))
    rejected = conditions(plan)["SpecRejected"]
    assert rejected["status"] == "True" and rejected["reason"] == "SpecImmutable"
    assert "generation 2" in rejected["message"] and "delete and recreate" in rejected["message"]
    assert plan.status["stages"]["warmup"]["shards"]["total"] == 1
    assert plan.status["observedGeneration"] == 2
    assert sorted(e.reason for e in plan.events) == ["PhaseChanged", "SpecRejected"]
    # Reported once per generation, not on every round.
    again = phases.decide(observe(advance(changed, plan), started, {"warmup": job("demo-warmup")}))
    assert not again.events


def test_terminal_resources_are_idle():
    body = resource(status={"phase": phases.SUCCEEDED, "observedGeneration": 1})
    plan = phases.decide(observe(body, started_document(resource())))
    assert plan.idle and not plan.create_jobs and not plan.events


def test_a_corrected_invalid_spec_is_revalidated():
    failed = phases.decide(observe(resource(selection={"budget": 0})))
    fixed = resource(generation=2, status=failed.status)
    plan = phases.decide(observe(fixed))
    assert plan.create_config_map and plan.status["phase"] == phases.PENDING
    assert "Failed" not in conditions(plan) and "completionTime" not in plan.status


def test_lost_configmap_with_a_changed_spec_fails():
    body = resource()
    body = advance(body, phases.decide(observe(body)))
    changed = resource(generation=3, status=body["status"])
    plan = phases.decide(observe(changed, None, {"warmup": job("demo-warmup")}))
    assert conditions(plan)["Failed"]["reason"] == "ArgumentsLost"


def test_parse_index_ranges():
    assert phases.parse_index_ranges("0-2,5") == {0, 1, 2, 5}
    assert phases.parse_index_ranges("") == frozenset()


def test_job_state_from_a_job_object():
    state = phases.JobState.from_job({
        "metadata": {"name": "x"}, "spec": {"suspend": True},
        "status": {"failed": 2, "completedIndexes": "0,2", "failedIndexes": "1", "conditions": [
            {"type": "FailureTarget", "status": "True"},
            {"type": "Failed", "status": "True", "reason": "FailedIndexes", "message": "m", "lastTransitionTime": "t"}]},
    })
    assert state.suspended and state.failed == 2 and state.failed_for_good and not state.complete
    assert state.completed_indexes == {0, 2} and state.failed_indexes == {1}
    assert (state.failure_reason, state.failure_message, state.failure_time) == ("FailedIndexes", "m", "t")


def test_merge_patch_is_minimal_and_removes_keys():
    old = {"phase": "A", "stages": {"warmup": {"state": "Running", "x": 1}}, "gone": 1}
    new = {"phase": "A", "stages": {"warmup": {"state": "Succeeded"}}}
    assert phases.merge_patch(old, new) == {"stages": {"warmup": {"state": "Succeeded", "x": None}}, "gone": None}
    assert phases.merge_patch(new, new) is None


def running_warmup_body() -> tuple[dict, dict]:
    body = resource()
    started = started_document(body)
    return advance(body, phases.decide(observe(body))), started


def test_a_refused_create_fails_with_the_api_message():
    body = resource()
    plan = phases.decide(observe(body))
    refused = phases.refused(observe(body), plan, "Job", "demo-warmup", 422, 'Job.batch "demo-warmup" is invalid: x')
    failed = conditions(refused)["Failed"]
    assert refused.status["phase"] == phases.FAILED and failed["reason"] == "CreateRefused"
    assert 'Job.batch "demo-warmup" is invalid: x' in failed["message"] and "(422)" in failed["message"]
    assert not refused.create_jobs and not refused.create_config_map
    assert [e.reason for e in refused.events] == ["PhaseChanged", "CreateRefused"]


def test_waiting_pods_are_reported_then_fail_after_the_grace_period():
    body, started = running_warmup_body()
    warmup = job("demo-warmup", active=1, ready=0)
    assert phases.decide(observe(body, started, {"warmup": warmup})).needs == phases.Needs(waiting_of="warmup")
    waiting = phases.Waiting("CreateContainerConfigError", 'secret "s" not found', "pod demo-warmup-x")
    plan = phases.decide(observe(body, started, {"warmup": warmup}, waiting=waiting, waiting_checked=True))
    assert plan.status["waiting"] == "CreateContainerConfigError" and plan.status["phase"] == phases.PENDING
    assert conditions(plan)["PodsReady"]["status"] == "False"
    assert conditions(plan)["PodsReady"]["message"] == 'pod demo-warmup-x: CreateContainerConfigError: secret "s" not found'
    assert not plan.suspend_jobs and "PodsNotReady" in [e.reason for e in plan.events]
    later = dataclasses.replace(observe(advance(body, plan), started, {"warmup": warmup}, waiting=waiting,
                                        waiting_checked=True), now="2030-01-01T00:15:00Z")
    failed = phases.decide(later)
    assert failed.status["phase"] == phases.FAILED and conditions(failed)["Failed"]["reason"] == "PodsNotStarted"
    assert failed.suspend_jobs == ("warmup",) and "waiting" not in failed.status


def test_a_queued_job_waits_for_kueue_without_a_deadline():
    body, started = running_warmup_body()
    warmup = job("demo-warmup", started=False, suspended=True)
    waiting = phases.Waiting("Pending", "insufficient quota", "Workload w (queue q)")
    obs = dataclasses.replace(observe(body, started, {"warmup": warmup}, waiting=waiting, waiting_checked=True),
                              now="2031-01-01T00:00:00Z")
    plan = phases.decide(obs)
    assert plan.status["phase"] == phases.PENDING and plan.status["waiting"] == "Pending"
    assert not plan.suspend_jobs


def test_credentials_in_a_failure_line_are_redacted():
    body, started = running_warmup_body()
    warmup = job("demo-warmup", gave_up=True)
    line = "dsel warmup: error: cannot reach http://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI@minio:9000/bucket"
    plan = phases.decide(observe(body, started, {"warmup": warmup}, failure=phases.FailureDetail(line=line)))
    message = conditions(plan)["Failed"]["message"]
    assert "wJalrXUtnFEMI" not in message and "AKIAIOSFODNN7EXAMPLE" not in message and "minio:9000" in message
    assert all("wJalrXUtnFEMI" not in e.message for e in plan.events)


def test_failure_target_alone_does_not_end_a_job():
    """1.31+: FailureTarget comes first while the Job controller stops the other pods; Failed follows."""
    state = phases.JobState.from_job({"metadata": {"name": "x"}, "status": {"active": 2, "ready": 1, "conditions": [
        {"type": "FailureTarget", "status": "True", "reason": "MaxFailedIndexesExceeded"}]}})
    assert not state.failed_for_good and not state.complete and state.ready == 1
