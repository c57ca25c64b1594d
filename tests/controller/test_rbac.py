"""RBAC grants exactly what the operator calls: recorded on the emulator, compared with the chart.

One operator run drives every path that makes an API call of its own kind: a selection that
succeeds (reading its credentials Secret and selection.json), one whose shard fails without a
termination message (its pod's log is read), pods that cannot be created (the Job's FailedCreate
Events) and then cannot be scheduled (the stage fails and its Job is suspended), a Kueue-queued
Job (its Workloads are listed), and the deletion of a resource that still carries the old
finalizer. Every (verb, group, resource, subresource) the operator sent must be granted by the
rules the chart renders, and every rule must have been used: in the cluster-wide mode (a
ClusterRole) and in the namespaced mode (`--namespace`: a Role per namespace, and the read-only
CRD ClusterRole for kopf).
"""

from __future__ import annotations

import asyncio
from typing import Any

import helm_python
import kubernetes
import pytest

from tests.chart.helmchart import CHART_DIR, manifests
from tests.controller.harness import (
    OPERATOR_TOKEN, pod_env, running_operator, selection_body, use_stub_worker, wait_for,
)
from tests.controller.test_operator import GROUP, PLURAL, VERSION, create, live, wait_phase
from tests.support.local_job_runner import LocalJobRunner

# Rules that no request uses by design: with the OwnerReferencesPermissionEnforcement admission
# plugin (OpenShift), setting blockOwnerDeletion on a child needs `update` on the owner's
# finalizers subresource; the API server checks it, the operator never calls it.
GRANTED_FOR_ADMISSION = {("update", "dsel.dev", "dataselections", "finalizers")}
# In the namespaced mode kopf still tries to list and watch namespaces; the chart does not grant
# it (a team's operator has no business seeing every namespace), and kopf then logs once that it
# may not, and serves exactly the namespaces it was given.
DENIED_ON_PURPOSE_NAMESPACED = {("list", "", "namespaces", None), ("watch", "", "namespaces", None)}
WORKLOADS = {"spec": {"group": "kueue.x-k8s.io", "scope": "Namespaced",
                      "names": {"plural": "workloads", "singular": "workload", "kind": "Workload"},
                      "versions": [{"name": "v1beta1", "served": True, "subresources": {"status": {}}}]}}


def rules_of(role: dict[str, Any]) -> set[tuple[str, str, str, str | None]]:
    """(verb, group, resource, subresource) for every combination a role's rules grant."""
    found = set()
    for rule in role["rules"]:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                plural, _, subresource = resource.partition("/")
                found.update((verb, group, plural, subresource or None) for verb in rule["verbs"])
    return found


def operator_roles(objects: list[dict[str, Any]]) -> tuple[set, set]:
    """(cluster-wide grants, per-namespace grants) of the operator's ServiceAccount."""
    account = next(o for o in objects if o["kind"] == "ServiceAccount")["metadata"]["name"]
    roles = {(o["kind"], o["metadata"]["name"]): o for o in objects if o["kind"] in ("Role", "ClusterRole")}
    cluster: set = set()
    namespaced: set = set()
    for binding in (o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == account for s in binding["subjects"]):
            continue
        granted = rules_of(roles[(binding["roleRef"]["kind"], binding["roleRef"]["name"])])
        if binding["roleRef"]["kind"] == "ClusterRole" and binding["kind"] == "ClusterRoleBinding":
            cluster |= granted
        else:
            namespaced |= granted
    return cluster, namespaced


async def drive_every_path(kube, api, s3, tmp_path) -> None:
    kube.declare(WORKLOADS)
    await create(api, selection_body("ok", f"{s3['uri']}/ok", s3["endpoint"], shards=1))
    await create(api, selection_body("bad", f"{s3['uri']}/bad", s3["endpoint"], shards=2, backoffLimitPerIndex=0))
    await create(api, selection_body("gpu", f"{s3['uri']}/gpu", s3["endpoint"], shards=1, gpus=1))
    await create(api, selection_body("queued", f"{s3['uri']}/queued", s3["endpoint"], shards=1, queueName="team-a"))
    legacy = selection_body("legacy", f"{s3['uri']}/legacy", s3["endpoint"], shards=1)
    legacy["metadata"]["finalizers"] = ["dsel.dev/cleanup"]
    await create(api, legacy)

    def silent_failure(job, index, attempt, argv):
        if job["metadata"]["name"] == "bad-extract" and index == 1:  # no termination message: log is read
            return [argv[0], "-c", "import sys; sys.exit(3)"]
        return use_stub_worker(job, index, attempt, argv)

    runner = LocalJobRunner(kube, tmp_path / "pods", extra_env=pod_env(), command_override=silent_failure)
    async with runner:
        await wait_for(lambda: (live(kube, "ok") or {}).get("status", {}).get("waiting") == "FailedCreate", 30,
                       what="FailedCreate reported")
        async with kube.post("/api/v1/namespaces/default/serviceaccounts",
                             json={"metadata": {"name": "dsel-worker"}}) as response:
            assert response.status == 201
        await wait_phase(kube, "ok", "Succeeded", timeout=60)
        await wait_phase(kube, "bad", "Failed", timeout=60)
        await wait_phase(kube, "gpu", "Failed", timeout=60)
        await wait_for(lambda: (live(kube, "queued") or {}).get("status", {}).get("waiting") == "NoWorkload", 30)
        objects = kubernetes.client.CustomObjectsApi(api)
        await asyncio.to_thread(objects.delete_namespaced_custom_object, GROUP, VERSION, "default", PLURAL, "legacy")
        await wait_for(lambda: live(kube, "legacy") is None, 30, what="legacy deleted")


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
async def test_rbac_grants_exactly_what_the_operator_calls(kube, api, s3, tmp_path, monkeypatch, mode):
    namespaces = ("default",) if mode == "namespaced" else ()
    monkeypatch.setenv("DSEL_WORKER_SERVICE_ACCOUNT", "dsel-worker")  # missing at first: FailedCreate
    # Long enough for the others to start once the account exists, even on a loaded machine.
    monkeypatch.setenv("DSEL_POD_START_GRACE_SECONDS", "20")
    async with running_operator(namespaces):
        await drive_every_path(kube, api, s3, tmp_path)
    sent = [c for c in kube.calls if c.token == OPERATOR_TOKEN]
    cluster_calls = {(c.verb, c.group, c.resource, c.subresource) for c in sent if c.namespace is None}
    namespaced_calls = {(c.verb, c.group, c.resource, c.subresource) for c in sent if c.namespace is not None}

    values = {"watchNamespaces": list(namespaces)} if namespaces else {}
    with helm_python.Chart.load(CHART_DIR) as chart:
        cluster_rules, namespace_rules = operator_roles(manifests(chart, values))
    if mode == "namespaced":
        # Namespaced calls are granted by the Role in each namespace; only kopf's CRD reads are cluster-wide.
        assert not {c.namespace for c in sent} - {None, "default"}
        assert cluster_calls - cluster_rules - DENIED_ON_PURPOSE_NAMESPACED == set(), "calls without a rule"
        assert namespaced_calls - namespace_rules == set(), "calls without a rule"
        assert cluster_rules - cluster_calls == set(), "rules no call uses"
        assert namespace_rules - namespaced_calls - GRANTED_FOR_ADMISSION == set(), "rules no call uses"
    else:
        # A ClusterRole grants its rules in every namespace and for cluster-wide lists.
        assert not namespace_rules
        assert (cluster_calls | namespaced_calls) - cluster_rules == set(), "calls without a rule"
        assert cluster_rules - cluster_calls - namespaced_calls - GRANTED_FOR_ADMISSION == set(), "rules no call uses"
