"""The Job pod template against what clusters need: pull secrets, sized writable volumes, memory
limits, per-stage resources, pod overrides, labels that stay on their owner, and the admission
checks that keep a namespace's spec inside its tenant."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from selection import contract
from selection import spec as spec_module
from selection_operator import admission, manifests, phases
from selection_operator.settings import OperatorSettings

SETTINGS = OperatorSettings(worker_image="registry.example.com/ml/worker:1", worker_default_memory="4Gi")
STORAGE = contract.StorageLocation("s3://bkt/art", None, None, "s3-creds")
KUBE_VERSIONS = ["1.29", kubernetes_validate.utils.latest_version()]


def body(namespace: str = "ns", **spec_changes: Any) -> dict[str, Any]:
    spec = {
        "model": {"source": "tiny:llama-demo"},
        "data": {"train": "s3://bkt/t.jsonl", "validation": [{"task": "x", "uri": "s3://bkt/v.jsonl"}]},
        "gradients": {"shards": 4},
        "selection": {"budget": 10},
    }
    spec.update(spec_changes)
    return {"apiVersion": "dsel.dev/v1alpha1", "kind": "DataSelection",
            "metadata": {"name": "demo", "namespace": namespace, "uid": "u-1",
                         "labels": {"argocd.argoproj.io/instance": "ml-apps", "team": "ml"}},
            "spec": spec}


def resource(namespace: str = "ns", **spec_changes: Any) -> spec_module.DataSelection:
    return spec_module.parse_selection(body(namespace, **spec_changes))


FULL = dict(resources={
    "gpus": 2, "cpu": "8", "memory": "64Gi", "cacheSize": "100Gi", "scratchSize": "5Gi",
    "stages": {"reduce": {"cpu": "2", "memory": "16Gi"}, "warmup": {"gpus": 1}},
    "nodeSelector": {"nvidia.com/gpu.product": "A100-SXM4-80GB"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "queueName": "team-a",
    "pod": {
        "labels": {"team": "ml"}, "annotations": {"example.com/cost-center": "42"},
        "priorityClassName": "batch-high", "runtimeClassName": "nvidia",
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}]}]}}},
        "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}],
        "envFrom": [{"configMapRef": {"name": "proxy-settings"}}],
        "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "model-cache", "readOnly": True}}],
        "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}],
    },
})


def pod(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]


def worker(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod(job)["containers"]
    return container


@pytest.mark.parametrize("stage", contract.STAGE_NAMES)
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_jobs_with_every_override_are_valid_kubernetes(stage, version):
    settings = OperatorSettings(worker_image="w:1", worker_image_pull_secrets=("regcred",))
    job = manifests.build_job(stage, resource(**FULL), STORAGE, settings)
    kubernetes_validate.validate(manifests.adopt(job, body()), version, strict=True)


def test_worker_pods_get_the_pull_secrets():
    settings = OperatorSettings(worker_image="w:1", worker_image_pull_secrets=("regcred", "mirror"))
    for stage in contract.STAGE_NAMES:
        job = manifests.build_job(stage, resource(), STORAGE, settings)
        assert pod(job)["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]


def test_settings_read_the_pull_secrets_and_refuse_bad_names():
    from selection_operator.settings import SettingsError

    settings = OperatorSettings.from_env({"DSEL_WORKER_IMAGE_PULL_SECRETS": "regcred, mirror"})
    assert settings.worker_image_pull_secrets == ("regcred", "mirror")
    with pytest.raises(SettingsError, match="DSEL_WORKER_IMAGE_PULL_SECRETS"):
        OperatorSettings.from_env({"DSEL_WORKER_IMAGE_PULL_SECRETS": "Reg Cred"})


def test_every_writable_path_is_a_sized_volume_on_a_read_only_root():
    job = manifests.build_job("extract", resource(), STORAGE, SETTINGS)
    container = worker(job)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod(job)["volumes"]}
    writable = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"] if not m.get("readOnly")}
    for volume in writable.values():
        assert volume["emptyDir"]["sizeLimit"], volume
    env = {e["name"]: e.get("value") for e in container["env"]}
    for name in ("HF_HOME", "TORCH_HOME", "XDG_CACHE_HOME", "TRITON_CACHE_DIR", "HOME", "TMPDIR", "DSEL_CACHE_DIR"):
        assert any(env[name] == path or env[name].startswith(path + "/") for path in writable), (name, env[name])
    assert env["HF_HOME"].startswith(manifests.CACHE_DIR)  # downloads on the big cache volume, not /tmp
    requested = container["resources"]["requests"]["ephemeral-storage"]
    assert requested == "23552Mi"  # 20Gi cache + 2Gi scratch + 1Gi for logs and the writable layer


def test_evictions_count_against_the_retries_instead_of_being_ignored_forever():
    for stage in contract.STAGE_NAMES:
        rules = manifests.build_job(stage, resource(), STORAGE, SETTINGS)["spec"]["podFailurePolicy"]["rules"]
        for rule in rules:
            if any(c["type"] == "DisruptionTarget" for c in rule.get("onPodConditions", [])):
                assert rule["action"] != "Ignore", rule


def test_memory_is_limited_and_defaults_to_the_operators_setting():
    container = worker(manifests.build_job("warmup", resource(), STORAGE, SETTINGS))
    assert container["resources"]["requests"]["memory"] == container["resources"]["limits"]["memory"] == "4Gi"
    sized = worker(manifests.build_job("warmup", resource(resources={"memory": "32Gi"}), STORAGE, SETTINGS))
    assert sized["resources"]["limits"]["memory"] == "32Gi"


def test_each_stage_gets_its_own_resources_and_the_reduction_no_gpus():
    parsed = resource(**FULL)
    by_stage = {stage: worker(manifests.build_job(stage, parsed, STORAGE, SETTINGS))["resources"]
                for stage in contract.STAGE_NAMES}
    assert by_stage["warmup"]["limits"]["nvidia.com/gpu"] == "1"
    assert by_stage["extract"]["limits"]["nvidia.com/gpu"] == "2"
    assert "nvidia.com/gpu" not in by_stage["reduce"]["limits"]
    assert by_stage["reduce"]["requests"]["cpu"] == "2" and by_stage["reduce"]["limits"]["memory"] == "16Gi"
    assert by_stage["extract"]["requests"]["memory"] == "64Gi"
    gpu_reduce = resource(resources={"gpus": 1, "stages": {"reduce": {"gpus": 1}}})
    assert worker(manifests.build_job("reduce", gpu_reduce, STORAGE, SETTINGS))["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_pod_overrides_reach_the_pod_template():
    job = manifests.build_job("extract", resource(**FULL), STORAGE, SETTINGS)
    template = job["spec"]["template"]
    spec = template["spec"]
    assert spec["priorityClassName"] == "batch-high" and spec["runtimeClassName"] == "nvidia"
    assert spec["affinity"]["nodeAffinity"]
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "model-cache", "readOnly": True}} in spec["volumes"]
    container = worker(job)
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]
    env = {e["name"]: e for e in container["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
    assert container["envFrom"] == [{"configMapRef": {"name": "proxy-settings"}}]
    assert template["metadata"]["annotations"] == {"example.com/cost-center": "42"}
    assert template["metadata"]["labels"]["team"] == "ml"
    assert template["metadata"]["labels"][manifests.LABEL_SELECTION] == "demo"  # dsel's own labels stay


def test_children_carry_the_owner_reference_but_not_its_labels():
    owner = body()
    job = manifests.adopt(manifests.build_job("warmup", resource(), STORAGE, SETTINGS), owner)
    config_map = manifests.adopt(manifests.build_config_map(resource(), STORAGE), owner)
    for child in (job, config_map):
        (reference,) = child["metadata"]["ownerReferences"]
        assert reference == {"apiVersion": "dsel.dev/v1alpha1", "kind": "DataSelection", "name": "demo",
                             "uid": "u-1", "controller": True, "blockOwnerDeletion": True}
        assert "argocd.argoproj.io/instance" not in child["metadata"]["labels"]
        assert child["metadata"]["namespace"] == "ns"
    assert "argocd.argoproj.io/instance" not in job["spec"]["template"]["metadata"]["labels"]


# --- admission: tenant confinement and what a spec may set ------------------------------------


def admitted(parsed: spec_module.DataSelection, settings: OperatorSettings) -> dict[str, str]:
    storage = manifests.resolve_storage(parsed, settings)
    return dict(admission.admission_problems(parsed, storage.uri, settings))


CONFINED = OperatorSettings(default_storage_uri="s3://shared/tenants", confine_storage=True)


def test_confined_storage_accepts_the_namespace_default_and_refuses_another_tenant():
    assert admitted(resource("team-b"), CONFINED) == {}
    assert admitted(resource("team-b", storage={"uri": "s3://shared/tenants/team-b/demo/"}), CONFINED) == {}
    found = admitted(resource("team-b", storage={"uri": "s3://shared/tenants/team-a/run1"}), CONFINED)
    assert "s3://shared/tenants/team-b/demo" in found["spec.storage.uri"]
    assert "spec.storage.uri" in admitted(resource("team-b", storage={"uri": "s3://shared/tenants/team-b/demo2"}), CONFINED)


def test_storage_prefixes_per_namespace_and_with_placeholders():
    settings = OperatorSettings(allowed_storage_prefixes=("s3://data/{namespace}", "team-a=s3://team-a-bucket"))
    assert admitted(resource("team-a", storage={"uri": "s3://team-a-bucket/x"}), settings) == {}
    assert admitted(resource("team-b", storage={"uri": "s3://data/team-b/x"}), settings) == {}
    assert "spec.storage.uri" in admitted(resource("team-b", storage={"uri": "s3://team-a-bucket/x"}), settings)
    assert "spec.storage.uri" in admitted(resource("team-b", storage={"uri": "s3://data/team-bb/x"}), settings)


def test_endpoints_are_confined_to_the_allow_list():
    settings = OperatorSettings(s3_endpoint="http://minio.minio:9000", allowed_s3_endpoints=("https://s3.internal",))
    ok = {"uri": "s3://bkt/x", "endpoint": "https://s3.internal/"}
    assert admitted(resource(storage=ok), settings) == {}
    assert admitted(resource(storage={"uri": "s3://bkt/x", "endpoint": "http://minio.minio:9000"}), settings) == {}
    found = admitted(resource(storage={"uri": "s3://bkt/x", "endpoint": "http://169.254.169.254"}), settings)
    assert "allow-list" in found["spec.storage.endpoint"]


def test_policy_limits_images_tolerations_node_selection_and_shards():
    settings = OperatorSettings(
        worker_image="ghcr.io/acme/dsel-worker:1", allowed_images=("ghcr.io/acme/",),
        allowed_toleration_keys=("nvidia.com/gpu",), allowed_node_selector_keys=("nvidia.com/gpu.product",),
        max_shards=2, default_storage_uri="s3://bkt/r",
    )
    found = admitted(resource(**FULL, storage={}), settings)
    assert "spec.gradients.shards" in found  # 4 > 2
    assert any(path.startswith("spec.resources.pod.affinity.nodeAffinity") for path in found)
    bad = resource(resources={
        "image": "docker.io/evil/miner:latest",
        "tolerations": [{"operator": "Exists"}, {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}],
        "nodeSelector": {"node-role.kubernetes.io/control-plane": ""},
    })
    found = admitted(bad, settings)
    assert set(found) >= {"spec.resources.image", "spec.resources.tolerations[0].key",
                          "spec.resources.tolerations[1].key",
                          "spec.resources.nodeSelector.node-role.kubernetes.io/control-plane"}
    fine = resource(resources={"image": "ghcr.io/acme/dsel-worker:2", "nodeSelector": {"nvidia.com/gpu.product": "x"},
                               "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]},
                    gradients={"shards": 2})
    assert admitted(fine, settings) == {}


def test_overrides_may_not_replace_the_operators_own_parts():
    found = admitted(resource(resources={"pod": {
        "env": [{"name": "AWS_ACCESS_KEY_ID", "value": "x"}, {"value": "no name"}],
        "volumes": [{"name": "cache", "emptyDir": {}}, {"name": "host", "hostPath": {"path": "/"}}],
        "volumeMounts": [{"name": "host", "mountPath": "/tmp/x"}],
        "labels": {"dsel.dev/selection": "other"},
    }}, storage={"uri": "s3://bkt/x"}), OperatorSettings())
    assert set(found) == {
        "spec.resources.pod.env[0].name", "spec.resources.pod.env[1].name", "spec.resources.pod.volumes[0].name",
        "spec.resources.pod.volumes[1].hostPath", "spec.resources.pod.volumeMounts[0].mountPath",
        "spec.resources.pod.labels.dsel.dev/selection",
    }


def test_a_refused_spec_ends_failed_before_anything_is_created():
    observation = phases.Observation(
        resource=body("team-b", storage={"uri": "s3://shared/tenants/team-a/run1"}), started=None,
        started_secret=None, jobs={}, settings=CONFINED, now="2030-01-01T00:00:00Z")
    plan = phases.decide(observation)
    assert plan.status["phase"] == phases.FAILED and not plan.create_jobs and not plan.create_config_map
    failed = next(c for c in plan.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec" and "spec.storage.uri" in failed["message"]


def test_settings_read_the_confinement_and_policy_variables():
    from selection_operator.settings import SettingsError

    settings = OperatorSettings.from_env({
        "DSEL_DEFAULT_STORAGE_URI": "s3://bkt/t", "DSEL_CONFINE_STORAGE": "true",
        "DSEL_ALLOWED_STORAGE_PREFIXES": "s3://data/{namespace}, team-a=s3://a",
        "DSEL_ALLOWED_S3_ENDPOINTS": "https://s3.internal", "DSEL_ALLOWED_IMAGES": "ghcr.io/acme/",
        "DSEL_ALLOWED_TOLERATION_KEYS": "nvidia.com/gpu", "DSEL_ALLOWED_NODE_SELECTOR_KEYS": "gpu",
        "DSEL_MAX_SHARDS": "16", "DSEL_WORKER_DEFAULT_MEMORY": "8Gi",
    })
    assert settings.confine_storage and settings.max_shards == 16 and settings.worker_default_memory == "8Gi"
    assert settings.allowed_storage_prefixes == ("s3://data/{namespace}", "team-a=s3://a")
    for name, value in [("DSEL_CONFINE_STORAGE", "maybe"), ("DSEL_ALLOWED_STORAGE_PREFIXES", "/mnt/x"),
                        ("DSEL_ALLOWED_S3_ENDPOINTS", "minio:9000"), ("DSEL_MAX_SHARDS", "0"),
                        ("DSEL_WORKER_DEFAULT_MEMORY", "8 GB")]:
        with pytest.raises(SettingsError, match=name):
            OperatorSettings.from_env({"DSEL_DEFAULT_STORAGE_URI": "s3://bkt/t", name: value})
    with pytest.raises(SettingsError, match="DSEL_CONFINE_STORAGE"):
        OperatorSettings.from_env({"DSEL_CONFINE_STORAGE": "true"})


def test_the_spec_has_resources_for_every_stage_of_the_table():
    assert tuple(spec_module.StagesResourcesSpec.model_fields) == contract.STAGE_NAMES
    assert [stage.name for stage in contract.STAGES if not stage.uses_gpus] == ["reduce"]
