"""The running operator against the API emulator: what its children carry, and what a namespace
may not make it do (tenant confinement and spec policy, checked before anything is created)."""

from __future__ import annotations

import pytest

from tests.controller.harness import running_operator, selection_body
from tests.controller.test_operator import condition, create, stub_runner, wait_phase

ARGO_LABEL = "argocd.argoproj.io/instance"


async def test_jobs_and_configmaps_carry_the_owner_reference_not_its_labels(kube, api, s3, tmp_path):
    body = selection_body("owned", s3["uri"], s3["endpoint"], shards=2)
    body["metadata"]["labels"] = {ARGO_LABEL: "ml-apps", "team": "ml"}
    await create(api, body)
    async with stub_runner(kube, tmp_path), running_operator():
        obj = await wait_phase(kube, "owned", "Succeeded")
    children = kube.live_objects("batch/v1/jobs", "default") + kube.live_objects("v1/configmaps", "default")
    assert len(children) == 4  # three Jobs and the arguments ConfigMap
    for child in children:
        assert ARGO_LABEL not in child["metadata"].get("labels", {}), child["metadata"]
        assert "team" not in child["metadata"].get("labels", {})
        (reference,) = child["metadata"]["ownerReferences"]
        assert (reference["kind"], reference["name"], reference["uid"], reference["controller"]) == (
            "DataSelection", "owned", obj["metadata"]["uid"], True)


@pytest.mark.parametrize(("env", "change", "field"), [
    ({"DSEL_ALLOWED_STORAGE_PREFIXES": "s3://tenants/{namespace}"}, None, "spec.storage.uri"),
    # The operator's own endpoint is always allowed: here it is another one.
    ({"DSEL_ALLOWED_S3_ENDPOINTS": "https://s3.internal", "DSEL_S3_ENDPOINT": None}, None, "spec.storage.endpoint"),
    ({"DSEL_MAX_SHARDS": "2"}, None, "spec.gradients.shards"),
    ({"DSEL_ALLOWED_IMAGES": "ghcr.io/acme/"},
     lambda spec: spec["resources"].update(image="docker.io/someone/miner:1"), "spec.resources.image"),
    ({"DSEL_ALLOWED_TOLERATION_KEYS": "nvidia.com/gpu"},
     lambda spec: spec["resources"].update(tolerations=[{"operator": "Exists"}]), "spec.resources.tolerations[0].key"),
], ids=["storage-root", "endpoint", "shards", "image", "toleration"])
async def test_a_spec_beyond_the_operators_limits_fails_before_anything_is_created(
    kube, api, s3, monkeypatch, env, change, field
):
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    body = selection_body("tenant", s3["uri"], s3["endpoint"], shards=3)
    if change is not None:
        change(body["spec"])
    await create(api, body)
    async with running_operator():
        obj = await wait_phase(kube, "tenant", "Failed", timeout=30)
    failed = condition(obj, "Failed")
    assert failed["reason"] == "InvalidSpec" and f"{field}:" in failed["message"], failed
    assert not kube.live_objects("batch/v1/jobs") and not kube.live_objects("v1/configmaps")
