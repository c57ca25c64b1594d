"""The KubeEmulator's server-side behaviour, through real HTTP and the official client."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import kubernetes
import pytest

from tests.support.kube_emulator import LabelSelector, match_fields

CM = "/api/v1/namespaces/default/configmaps"
JOBS = "/apis/batch/v1/namespaces/default/jobs"
PODS = "/api/v1/namespaces/default/pods"
MERGE = {"Content-Type": "application/merge-patch+json"}
# The smallest pod template the API server accepts in a Job.
TEMPLATE = {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}


async def call(kube, method: str, path: str, body: Any = None, headers: dict | None = None, **params: str):
    async with kube.request(method, path, json=body, headers=headers, params=params or None) as response:
        return response.status, await response.json(content_type=None)


def config_map(name: str, labels: dict | None = None, **meta: Any) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels or {}, **meta},
            "data": {"k": "v"}}


async def test_create_fills_server_side_metadata_and_answers_201(kube):
    code, created = await call(kube, "POST", CM, {"metadata": {"name": "a"}, "data": {"k": "v"}})
    assert code == 201
    meta = created["metadata"]
    assert meta["namespace"] == "default" and meta["generation"] == 1
    assert meta["uid"] and meta["creationTimestamp"] and int(meta["resourceVersion"]) > 0
    assert created["apiVersion"] == "v1" and created["kind"] == "ConfigMap"
    code, again = await call(kube, "POST", CM, {"metadata": {"name": "a"}})
    assert code == 409 and again["reason"] == "AlreadyExists"


async def test_official_client_gets_the_created_object(kube, api):
    core = kubernetes.client.CoreV1Api(api)
    created = await asyncio.to_thread(core.create_namespaced_config_map, "default", config_map("b"))
    assert created is not None and created.metadata.uid  # a 200 instead of 201 would give None


async def test_generate_name_gives_distinct_names(kube):
    names = set()
    for _ in range(3):
        code, body = await call(kube, "POST", CM, {"metadata": {"generateName": "ev-"}})
        assert code == 201
        names.add(body["metadata"]["name"])
    assert len(names) == 3 and all(n.startswith("ev-") and len(n) == 8 for n in names)


async def test_resource_versions_conflicts_and_no_op_writes(kube):
    _, created = await call(kube, "POST", CM, config_map("c"))
    rv = created["metadata"]["resourceVersion"]
    code, patched = await call(kube, "PATCH", f"{CM}/c", {"data": {"k": "w"}}, MERGE)
    assert code == 200 and int(patched["metadata"]["resourceVersion"]) > int(rv)
    code, stale = await call(kube, "PATCH", f"{CM}/c", {"metadata": {"resourceVersion": rv}, "data": {"k": "x"}}, MERGE)
    assert code == 409 and stale["reason"] == "Conflict"
    code, same = await call(kube, "PATCH", f"{CM}/c", {"data": {"k": "w"}}, MERGE)
    assert same["metadata"]["resourceVersion"] == patched["metadata"]["resourceVersion"]
    current = patched["metadata"]["resourceVersion"]
    code, replaced = await call(kube, "PUT", f"{CM}/c", {**patched, "data": {"k": "y"}})
    assert code == 200 and replaced["data"] == {"k": "y"}
    code, _ = await call(kube, "PUT", f"{CM}/c", {**patched, "metadata": {**patched["metadata"], "resourceVersion": current}})
    assert code == 409


async def test_json_patch_is_applied(kube):
    await call(kube, "POST", CM, config_map("d"))
    code, patched = await call(kube, "PATCH", f"{CM}/d", [{"op": "add", "path": "/data/x", "value": "1"}],
                               {"Content-Type": "application/json-patch+json"})
    assert code == 200 and patched["data"] == {"k": "v", "x": "1"}


async def test_status_subresource_is_isolated_and_generation_tracks_spec(kube):
    job = {"metadata": {"name": "j"}, "spec": {"parallelism": 1, "template": TEMPLATE}, "status": {"active": 5}}
    _, created = await call(kube, "POST", JOBS, job)
    assert "status" not in created  # status is ignored on create
    _, patched = await call(kube, "PATCH", f"{JOBS}/j", {"status": {"active": 1}, "metadata": {"labels": {"a": "b"}}}, MERGE)
    assert "status" not in patched and patched["metadata"]["generation"] == 1  # labels are metadata
    _, patched = await call(kube, "PATCH", f"{JOBS}/j/status", {"status": {"active": 2}, "spec": {"parallelism": 9}}, MERGE)
    assert patched["status"] == {"active": 2} and patched["spec"]["parallelism"] == 1
    assert patched["metadata"]["generation"] == 1
    _, patched = await call(kube, "PATCH", f"{JOBS}/j", {"spec": {"parallelism": 3}}, MERGE)
    assert patched["metadata"]["generation"] == 2 and patched["status"] == {"active": 2}


async def test_label_and_field_selectors_filter_lists(kube):
    for name, labels in [("p", {"app": "x", "tier": "a"}), ("q", {"app": "y"}), ("r", {"tier": "b"})]:
        await call(kube, "POST", CM, config_map(name, labels))

    async def names(**params: str) -> list[str]:
        code, found = await call(kube, "GET", CM, **params)
        assert code == 200 and found["kind"] == "ConfigMapList"
        return sorted(i["metadata"]["name"] for i in found["items"])

    assert await names(labelSelector="app=x") == ["p"]
    assert await names(labelSelector="app!=x") == ["q", "r"]
    assert await names(labelSelector="app in (x, y)") == ["p", "q"]
    assert await names(labelSelector="tier notin (a)") == ["q", "r"]
    assert await names(labelSelector="tier") == ["p", "r"]
    assert await names(labelSelector="!tier") == ["q"]
    assert await names(labelSelector="app,tier=a") == ["p"]
    assert await names(fieldSelector="metadata.name=q") == ["q"]
    assert await names(fieldSelector="metadata.name!=q") == ["p", "r"]
    code, error = await call(kube, "GET", CM, labelSelector="a b c")
    assert code == 400


def test_selector_parsing():
    assert LabelSelector("a in (1,2),b!=3,!c").matches({"a": "2", "b": "4"})
    assert not LabelSelector("a in (1,2)").matches({"a": "3"})
    assert LabelSelector("").matches({})
    assert match_fields("status.phase=Failed", {"status": {"phase": "Failed"}})
    assert not match_fields("status.phase=Failed", {"status": {}})


async def read_events(response, count: int, timeout: float = 5) -> list[dict]:
    events = []
    while len(events) < count:
        line = await asyncio.wait_for(response.content.readline(), timeout)
        if line.strip():
            events.append(json.loads(line))
    return events


async def test_watch_understands_true_replays_from_a_version_and_filters(kube):
    _, first = await call(kube, "POST", CM, config_map("w1", {"app": "x"}))
    since = first["metadata"]["resourceVersion"]
    await call(kube, "POST", CM, config_map("w2", {"app": "y"}))
    await call(kube, "PATCH", f"{CM}/w1", {"data": {"k": "changed"}}, MERGE)
    params = {"watch": "True", "resourceVersion": since, "labelSelector": "app=x"}
    async with kube.get(CM, params=params) as response:
        (event,) = await read_events(response, 1)
        assert event["type"] == "MODIFIED" and event["object"]["data"] == {"k": "changed"}
        await call(kube, "DELETE", f"{CM}/w2")
        await call(kube, "DELETE", f"{CM}/w1")
        (event,) = await read_events(response, 1)
        assert event["type"] == "DELETED" and event["object"]["metadata"]["name"] == "w1"


async def test_watch_without_version_starts_with_what_exists_and_times_out(kube):
    await call(kube, "POST", CM, config_map("e1"))
    async with kube.get(CM, params={"watch": "1", "timeoutSeconds": "1"}) as response:
        (event,) = await read_events(response, 1)
        assert event["type"] == "ADDED" and event["object"]["metadata"]["name"] == "e1"
        assert await asyncio.wait_for(response.content.read(), 5) == b""  # closed by the server
    async with kube.get(CM, params={"watch": "true", "timeoutSeconds": "1"}) as response:  # watches keep working
        assert (await read_events(response, 1))[0]["type"] == "ADDED"


def owner_ref(obj: dict) -> dict:
    meta = obj["metadata"]
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


async def test_deleting_an_owner_cascades_to_dependents(kube):
    _, owner = await call(kube, "POST", CM, config_map("owner"))
    _, other = await call(kube, "POST", CM, config_map("other-owner"))
    _, job = await call(kube, "POST", JOBS, {"metadata": {"name": "child", "ownerReferences": [owner_ref(owner)]},
                                             "spec": {"template": TEMPLATE}})
    _, pod = await call(kube, "POST", PODS, {"metadata": {"name": "grandchild", "ownerReferences": [owner_ref(job)]}})
    shared_refs = [owner_ref(owner), {**owner_ref(other), "controller": False}]
    await call(kube, "POST", CM, config_map("shared", ownerReferences=shared_refs))
    code, _ = await call(kube, "DELETE", f"{CM}/owner")
    assert code == 200
    assert not kube.live_objects("batch/v1/jobs") and not kube.live_objects("v1/pods")
    (shared,) = [o for o in kube.live_objects("v1/configmaps") if o["metadata"]["name"] == "shared"]
    assert [r["name"] for r in shared["metadata"]["ownerReferences"]] == ["other-owner"]


async def test_orphan_propagation_keeps_dependents(kube):
    _, owner = await call(kube, "POST", CM, config_map("boss"))
    await call(kube, "POST", JOBS, {"metadata": {"name": "kept", "ownerReferences": [owner_ref(owner)]}, "spec": {"template": TEMPLATE}})
    await call(kube, "DELETE", f"{CM}/boss", {"propagationPolicy": "Orphan"})
    assert [j["metadata"]["name"] for j in kube.live_objects("batch/v1/jobs")] == ["kept"]


async def test_finalizers_hold_deletion_until_removed(kube):
    _, owner = await call(kube, "POST", CM, config_map("held", finalizers=["test/keep"]))
    await call(kube, "POST", JOBS, {"metadata": {"name": "dependent", "ownerReferences": [owner_ref(owner)]},
                                    "spec": {"template": TEMPLATE}})
    code, marked = await call(kube, "DELETE", f"{CM}/held")
    assert code == 200 and marked["metadata"]["deletionTimestamp"]
    assert kube.live_objects("batch/v1/jobs")
    await call(kube, "PATCH", f"{CM}/held", {"metadata": {"finalizers": None}}, MERGE)
    code, _ = await call(kube, "GET", f"{CM}/held")
    assert code == 404 and not kube.live_objects("batch/v1/jobs")


async def test_posted_crd_becomes_discoverable(kube):
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
                 "names": {"plural": "widgets", "kind": "Widget", "singular": "widget"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}}}]},
    }
    code, _ = await call(kube, "GET", "/apis/example.com/v1/namespaces/default/widgets")
    assert code == 404
    code, _ = await call(kube, "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    assert code == 201
    code, discovery = await call(kube, "GET", "/apis/example.com/v1")
    assert code == 200 and {"widgets", "widgets/status"} <= {r["name"] for r in discovery["resources"]}
    code, _ = await call(kube, "POST", "/apis/example.com/v1/namespaces/default/widgets", {"metadata": {"name": "w"}})
    assert code == 201


async def test_namespaces_can_be_listed(kube):
    await call(kube, "POST", "/api/v1/namespaces/team-a/configmaps", config_map("x"))
    code, found = await call(kube, "GET", "/api/v1/namespaces")
    assert code == 200 and {"default", "team-a"} <= {i["metadata"]["name"] for i in found["items"]}


async def test_unknown_subresources_and_missing_objects_are_404(kube):
    assert (await call(kube, "GET", f"{CM}/missing"))[0] == 404
    assert (await call(kube, "GET", f"{PODS}/missing/log"))[0] == 404
    assert (await call(kube, "DELETE", f"{CM}/missing"))[0] == 404
    assert (await call(kube, "PATCH", f"{CM}/missing", {"data": {}}, MERGE))[0] == 404


@pytest.mark.parametrize("watch_param", ["true", "True", "1"])
async def test_the_official_watch_is_a_watch(kube, api, watch_param):
    _, created = await call(kube, "POST", CM, config_map("seen"))
    async with kube.get(CM, params={"watch": watch_param, "timeoutSeconds": "1"}) as response:
        (event,) = await read_events(response, 1)
    assert event["object"]["metadata"]["uid"] == created["metadata"]["uid"]


def job_with(name: str = "j", **pod: Any) -> dict:
    template = {"metadata": {"labels": pod.pop("labels", {})},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox", **pod.pop("container", {})}],
                         **pod}}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": {"template": template}}


async def test_invalid_fields_answer_422_with_the_api_servers_causes(kube):
    body = job_with(
        tolerations=[{"key": "gpu", "operator": "Exists", "value": "yes"},
                     {"key": "gpu", "operator": "Equal", "value": "a", "effect": "NoSchedule", "tolerationSeconds": 5}],
        nodeSelector={"pool name": "a100"}, labels={"kueue.x-k8s.io/queue-name": "team a"},
    )
    code, refused = await call(kube, "POST", JOBS, body)
    assert code == 422 and refused["kind"] == "Status" and refused["reason"] == "Invalid"
    assert refused["details"]["name"] == "j" and refused["details"]["kind"] == "Job"
    assert refused["details"]["group"] == "batch"
    causes = {(c["field"], c["reason"]) for c in refused["details"]["causes"]}
    assert causes == {
        ("spec.template.metadata.labels", "FieldValueInvalid"),
        ("spec.template.spec.nodeSelector", "FieldValueInvalid"),
        ("spec.template.spec.tolerations[0].operator", "FieldValueInvalid"),
        ("spec.template.spec.tolerations[1].effect", "FieldValueInvalid"),
    }
    assert refused["message"].startswith('Job.batch "j" is invalid: [')
    assert "effect must be 'NoExecute' when `tolerationSeconds` is set" in refused["message"]
    assert "value must be empty when `operator` is 'Exists'" in refused["message"]
    assert not kube.live_objects("batch/v1/jobs")
    code, refused = await call(kube, "POST", JOBS, job_with("x" * 64))
    assert code == 422 and refused["message"] == (
        f'Job.batch "{"x" * 64}" is invalid: metadata.name: Invalid value: "{"x" * 64}": '
        "must be no more than 63 characters")
    code, refused = await call(kube, "POST", CM, config_map("Bad_Name"))
    assert code == 422 and refused["message"].startswith('ConfigMap "Bad_Name" is invalid: metadata.name: ')


@pytest.mark.parametrize("quantity", ["4 cores", "32GB ", "1.5 Gi", "lots"])
async def test_quantities_that_do_not_decode_answer_400(kube, quantity):
    code, refused = await call(kube, "POST", JOBS, job_with(container={"resources": {"requests": {"cpu": quantity}}}))
    assert code == 400 and refused["reason"] == "BadRequest" and "details" not in refused
    assert refused["message"] == ('Job in version "v1" cannot be handled as a Job: quantities must match the '
                                  "regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")


async def test_valid_quantities_labels_and_tolerations_are_accepted(kube):
    body = job_with(container={"resources": {"requests": {"cpu": "500m", "memory": "32Gi"}, "limits": {"nvidia.com/gpu": "1"}}},
                    tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30},
                                 {"operator": "Exists"}],
                    nodeSelector={"cloud.google.com/gke-accelerator": "nvidia-a100"}, labels={"team": "a.b-c_d"})
    code, created = await call(kube, "POST", JOBS, body)
    assert code == 201, created


async def test_numbers_come_back_as_gos_encoding_writes_them(kube):
    code, created = await call(kube, "POST", CM, {"metadata": {"name": "n"}, "data": {}, "extra": {
        "one": 1.0, "half": 0.5, "big": 1e21, "list": [2.0, 3]}})
    assert code == 201
    assert created["extra"] == {"one": 1, "half": 0.5, "big": 1e21, "list": [2, 3]}
    assert isinstance(created["extra"]["one"], int)
    code, fetched = await call(kube, "GET", f"{CM}/n")
    assert json.dumps(fetched["extra"]["one"]) == "1"


async def test_a_pod_naming_a_missing_service_account_is_forbidden(kube):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"serviceAccountName": "worker", "containers": [{"name": "c", "image": "busybox"}]}}
    code, refused = await call(kube, "POST", PODS, pod)
    assert code == 403 and refused["reason"] == "Forbidden"
    assert refused["message"] == ('pods "p" is forbidden: error looking up service account default/worker: '
                                  'serviceaccount "worker" not found')
    await call(kube, "POST", "/api/v1/namespaces/default/serviceaccounts", {"metadata": {"name": "worker"}})
    code, _ = await call(kube, "POST", PODS, pod)
    assert code == 201
