"""The pure builders of the ConfigMap and the Jobs."""

from __future__ import annotations

import json

import pytest

from selection import spec as spec_module
from selection.contract import JobArgs, StorageLocation
from selection_operator import manifests
from selection_operator.settings import OperatorSettings

SETTINGS = OperatorSettings(worker_image="registry/worker:1", worker_service_account="dsel-worker", job_ttl_seconds=600)


def resource(**resources) -> spec_module.DataSelection:
    return spec_module.parse_selection({
        "apiVersion": "dsel.dev/v1alpha1", "kind": "DataSelection",
        "metadata": {"name": "demo", "namespace": "ns", "annotations": {"kubectl": "noise"}, "uid": "u"},
        "spec": {
            "model": {"source": "tiny:llama-demo"},
            "data": {"train": "s3://bkt/t.jsonl", "validation": [{"task": "x", "uri": "s3://bkt/v.jsonl"}]},
            "gradients": {"shards": 4},
            "selection": {"budget": 0.1},
            "storage": {"uri": "s3://bkt/art/", "endpoint": "http://s3.local:9000", "credentialsSecret": "s3-creds"},
            "resources": resources,
        },
    })


STORAGE = StorageLocation("s3://bkt/art", "http://s3.local:9000", None, "s3-creds")


def pod(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def test_configmap_holds_the_job_arguments_document():
    config_map = manifests.build_config_map(resource(), STORAGE)
    assert config_map["metadata"]["name"] == "demo-args" and config_map["immutable"] is True
    assert config_map["metadata"]["labels"]["dsel.dev/selection"] == "demo"
    document = json.loads(config_map["data"]["args.json"])
    args = JobArgs.from_document(document)  # exactly what the worker will parse
    assert args.storage.uri == "s3://bkt/art" and args.storage.endpoint == "http://s3.local:9000" and args.shard is None
    assert args.resource.spec == resource().spec
    assert document["resource"]["metadata"] == {"name": "demo", "namespace": "ns"}  # no live metadata
    assert config_map["metadata"]["annotations"]["dsel.dev/credentials-secret"] == "s3-creds"


def test_extraction_is_an_indexed_job_with_per_index_retries():
    job = manifests.build_job("extract", resource(backoffLimitPerIndex=3), STORAGE, SETTINGS)
    spec = job["spec"]
    assert job["metadata"]["name"] == "demo-extract"
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 4, 4)
    assert spec["backoffLimitPerIndex"] == 3 and "backoffLimit" not in spec
    assert spec["podFailurePolicy"]["rules"][0] == {
        "action": "FailIndex", "onExitCodes": {"containerName": "worker", "operator": "In", "values": [2]}}
    container = pod(job)["containers"][0]
    assert container["command"] == ["python", "-m", "selection.jobs"]
    assert container["args"] == ["shard", "/etc/dsel/args.json"]
    assert spec["ttlSecondsAfterFinished"] == 600


@pytest.mark.parametrize(("stage", "entrypoint"), [("warmup", "warmup"), ("reduce", "reduce")])
def test_single_pod_stages_fail_the_job_on_bad_input(stage, entrypoint):
    job = manifests.build_job(stage, resource(backoffLimitPerIndex=1), STORAGE, SETTINGS)
    assert job["metadata"]["name"] == f"demo-{stage}"
    assert job["spec"]["completions"] == 1 and job["spec"]["backoffLimit"] == 1
    assert job["spec"]["podFailurePolicy"]["rules"][0]["action"] == "FailJob"
    assert pod(job)["containers"][0]["args"][0] == entrypoint


def test_pods_get_placement_resources_and_a_locked_down_security_context():
    job = manifests.build_job("warmup", resource(
        image="custom/worker:2", gpus=2, cpu="4", memory="32Gi", nodeSelector={"gpu": "a100"},
        tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}], queueName="team-q",
    ), STORAGE, SETTINGS)
    spec = pod(job)
    container = spec["containers"][0]
    assert container["image"] == "custom/worker:2"
    assert container["resources"] == {"requests": {"cpu": "4", "memory": "32Gi", "ephemeral-storage": "23552Mi"},
                                      "limits": {"memory": "32Gi", "nvidia.com/gpu": "2"}}
    assert spec["nodeSelector"] == {"gpu": "a100"}
    assert spec["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-q"
    assert job["spec"]["template"]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-q"
    assert job["spec"]["suspend"] is True
    assert container["securityContext"] == {
        "runAsNonRoot": True, "allowPrivilegeEscalation": False, "privileged": False, "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True}
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert spec["restartPolicy"] == "Never" and spec["serviceAccountName"] == "dsel-worker"
    assert spec["automountServiceAccountToken"] is False
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_defaults_leave_out_optional_fields():
    job = manifests.build_job("warmup", resource(), STORAGE, OperatorSettings(worker_image="w:1"))
    spec = pod(job)
    assert spec["containers"][0]["image"] == "w:1"
    assert spec["containers"][0]["resources"] == {"requests": {"ephemeral-storage": "23552Mi"}}  # the sized volumes only
    assert "imagePullSecrets" not in spec and "affinity" not in spec and "priorityClassName" not in spec
    assert "nodeSelector" not in spec and "tolerations" not in spec and "serviceAccountName" not in spec
    assert "suspend" not in job["spec"] and "ttlSecondsAfterFinished" not in job["spec"]
    assert "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]


def test_credentials_are_referenced_never_copied():
    job = manifests.build_job("reduce", resource(), STORAGE, SETTINGS)
    env = {e["name"]: e for e in pod(job)["containers"][0]["env"]}
    assert env["AWS_ACCESS_KEY_ID"] == {"name": "AWS_ACCESS_KEY_ID",
                                        "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}}}
    assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert all("value" not in e for e in env.values() if e["name"].startswith("AWS_"))
    no_secret = manifests.build_job("reduce", resource(), StorageLocation("s3://bkt", None, None, None), SETTINGS)
    assert not [e for e in pod(no_secret)["containers"][0]["env"] if e["name"].startswith("AWS_")]


def test_the_arguments_are_mounted_from_the_configmap():
    spec = pod(manifests.build_job("warmup", resource(), STORAGE, SETTINGS))
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["args"]["configMap"]["name"] == "demo-args"
    mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["args"] == "/etc/dsel"


def test_storage_resolution_uses_operator_defaults():
    settings = OperatorSettings(default_storage_uri="s3://shared/root", s3_endpoint="http://e", s3_region="r",
                                s3_credentials_secret="default")
    parsed = spec_module.parse_selection({
        "apiVersion": "dsel.dev/v1alpha1", "kind": "DataSelection", "metadata": {"name": "n", "namespace": "team"},
        "spec": {"model": {"source": "m"}, "data": {"train": "s3://bkt/t", "validation": [{"uri": "s3://bkt/v"}]},
                 "selection": {"budget": 1}},
    })
    assert manifests.resolve_storage(parsed, settings) == StorageLocation(
        "s3://shared/root/team/n", "http://e", "r", "default")
    with pytest.raises(spec_module.SpecError) as raised:
        manifests.resolve_storage(parsed, OperatorSettings())
    assert raised.value.problems[0][0] == "spec.storage.uri"


def test_unknown_stage_is_refused():
    with pytest.raises(ValueError, match="unknown stage"):
        manifests.build_job("train", resource(), STORAGE, SETTINGS)


@pytest.mark.parametrize(("cpu", "threads"), [("4", "4"), ("500m", "1"), ("2.5", "3"), ("1500m", "2"), (None, None)])
def test_worker_threads_sleep_when_idle_and_match_the_cpu_request(cpu, threads):
    job = manifests.build_job("extract", resource(**({"cpu": cpu} if cpu else {})), STORAGE, SETTINGS)
    env = {e["name"]: e.get("value") for e in pod(job)["containers"][0]["env"]}
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert env.get("OMP_NUM_THREADS") == threads and env.get("MKL_NUM_THREADS") == threads
