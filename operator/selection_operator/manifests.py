"""Pure builders of the objects a DataSelection owns: its arguments ConfigMap and stage Jobs.

Nothing here talks to the cluster; `reconciler` adopts the results (owner reference, namespace)
and creates them. Names are deterministic so that creating an existing object is a no-op.

Every pod runs `python -m selection.jobs <entrypoint> /etc/dsel/args.json`, where args.json is
the `selection.contract.JobArgs` document of the resource as it started, mounted from the
ConfigMap; which stages exist and how each one runs is the table `selection.contract.STAGES`.
S3 credentials reach the pods only as `secretKeyRef` env vars; the operator reads the named
Secret only to fetch selection.json as the pods would (reconciler.storage_credentials).
"""

from __future__ import annotations

import json
from typing import Any

from selection import contract
from selection import spec as spec_module
from selection.contract import EXIT_BAD_INPUT, JobArgs, StorageLocation

from selection_operator.settings import OperatorSettings

LABEL_SELECTION = "dsel.dev/selection"
LABEL_STAGE = "dsel.dev/stage"
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
COMMON_LABELS = {"app.kubernetes.io/name": "dsel", "app.kubernetes.io/managed-by": "dsel-operator"}

CONTAINER_NAME = "worker"
ARGS_FILE = "args.json"
ARGS_DIR = "/etc/dsel"
CACHE_DIR = "/var/cache/dsel"
SCRATCH_DIR = "/tmp"
# Non-root uid/gid of the job pods: the worker image's own user (images/worker.Dockerfile), set
# explicitly so `runAsNonRoot` holds; the pods only write to their emptyDir volumes and /home/dsel.
WORKER_UID = 65532
# The ConfigMap annotation keeping the storage location's credentials Secret (not in args.json).
CREDENTIALS_SECRET_ANNOTATION = "dsel.dev/credentials-secret"
SECRET_KEYS = {"AWS_ACCESS_KEY_ID": True, "AWS_SECRET_ACCESS_KEY": True, "AWS_SESSION_TOKEN": False}


def job_name(selection: str, stage: str) -> str:
    return f"{selection}-{stage}"


def config_map_name(selection: str) -> str:
    return f"{selection}-args"


def labels(selection: str, stage: str | None = None) -> dict[str, str]:
    found = {**COMMON_LABELS, LABEL_SELECTION: selection}
    if stage is not None:
        found[LABEL_STAGE] = stage
        found["app.kubernetes.io/component"] = stage
    return found


def resolve_storage(resource: spec_module.DataSelection, settings: OperatorSettings) -> StorageLocation:
    """The spec's storage section, with the operator's defaults for what it leaves open.

    Raises SpecError naming `spec.storage.uri` when there is no S3 location: job pods on
    different nodes share artifacts only through S3.
    """
    storage = resource.spec.storage
    uri = storage.uri
    if uri is None and settings.default_storage_uri:
        uri = f"{settings.default_storage_uri}/{resource.metadata.namespace or 'default'}/{resource.name}"
    if uri is None:
        raise spec_module.SpecError(
            [("spec.storage.uri", "no artifact location: set it, or configure the operator's DSEL_DEFAULT_STORAGE_URI")]
        )
    if not uri.startswith("s3://") or uri.rstrip("/") == "s3:/":
        raise spec_module.SpecError(
            [("spec.storage.uri", f"must be an s3:// URI on Kubernetes (job pods share artifacts through S3), got {uri!r}")]
        )
    return StorageLocation(
        uri=uri.rstrip("/"),
        endpoint=storage.endpoint or settings.s3_endpoint,
        region=storage.region or settings.s3_region,
        credentials_secret=storage.credentials_secret or settings.s3_credentials_secret,
    )


def cluster_problems(resource: spec_module.DataSelection) -> list[tuple[str, str]]:
    """Spec values that are valid for `dsel run` but cannot work in a pod: relative data paths."""
    problems = []
    data = resource.spec.data
    paths = [("spec.data.train", data.train)]
    paths += [(f"spec.data.validation[{i}].uri", v.uri) for i, v in enumerate(data.validation)]
    for path, uri in paths:
        if not uri.startswith(("s3://", "/", "file:///")):
            problems.append((path, f"relative path {uri!r} cannot be read by a pod; use an s3:// URI"))
    return problems


def started_resource(resource: spec_module.DataSelection) -> spec_module.DataSelection:
    """The resource as jobs see it: name, namespace and spec, nothing of the live metadata."""
    manifest = resource.to_manifest()
    manifest["metadata"] = {"name": resource.name, "namespace": resource.metadata.namespace}
    return spec_module.parse_selection(manifest)


def arguments_document(resource: spec_module.DataSelection, storage: StorageLocation) -> dict[str, Any]:
    """The JobArgs document every stage reads (shard comes from JOB_COMPLETION_INDEX)."""
    return JobArgs(resource=started_resource(resource), storage=storage).to_document()


def build_config_map(resource: spec_module.DataSelection, storage: StorageLocation) -> dict[str, Any]:
    """The arguments ConfigMap; immutable, so it also records the spec the selection started with."""
    document = arguments_document(resource, storage)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": config_map_name(resource.name),
            "namespace": resource.metadata.namespace,
            "labels": labels(resource.name),
            "annotations": {CREDENTIALS_SECRET_ANNOTATION: storage.credentials_secret or ""},
        },
        "immutable": True,
        "data": {ARGS_FILE: json.dumps(document, indent=2, sort_keys=True) + "\n"},
    }


def _env(storage: StorageLocation) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "DSEL_CACHE_DIR", "value": CACHE_DIR},
        {"name": "HOME", "value": SCRATCH_DIR},
        {"name": "TMPDIR", "value": SCRATCH_DIR},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if storage.credentials_secret:
        for key, required in SECRET_KEYS.items():
            reference = {"name": storage.credentials_secret, "key": key}
            if not required:
                reference["optional"] = True
            env.append({"name": key, "valueFrom": {"secretKeyRef": reference}})
    return env


def _container_resources(resources: spec_module.ResourcesSpec) -> dict[str, Any]:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if resources.cpu:
        requests["cpu"] = resources.cpu
    if resources.memory:
        requests["memory"] = resources.memory
    if resources.gpus:
        limits["nvidia.com/gpu"] = str(resources.gpus)  # extended resources: request == limit
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def _pod_failure_policy(stage: contract.Stage) -> dict[str, Any]:
    """Bad input fails at once; evictions and preemptions do not count against the retries."""
    return {
        "rules": [
            {
                "action": stage.failure_action,
                "onExitCodes": {"containerName": CONTAINER_NAME, "operator": "In", "values": [EXIT_BAD_INPUT]},
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def build_job(
    stage_name: str,
    resource: spec_module.DataSelection,
    storage: StorageLocation,
    settings: OperatorSettings,
) -> dict[str, Any]:
    """One stage's Job; an indexed stage (extraction) has one completion per shard."""
    stage = contract.stage_named(stage_name)
    spec = resource.spec
    res = spec.resources
    name = job_name(resource.name, stage.name)
    job_labels = labels(resource.name, stage.name)
    if res.queue_name:
        job_labels[LABEL_QUEUE] = res.queue_name
    container = {
        "name": CONTAINER_NAME,
        "image": res.image or settings.worker_image,
        "command": ["python", "-m", "selection.jobs"],
        "args": [stage.entrypoint, f"{ARGS_DIR}/{ARGS_FILE}"],
        "env": _env(storage),
        "volumeMounts": [
            {"name": "args", "mountPath": ARGS_DIR, "readOnly": True},
            {"name": "cache", "mountPath": CACHE_DIR},
            {"name": "scratch", "mountPath": SCRATCH_DIR},
        ],
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
        },
        # The stages write their one-line error to /dev/termination-log; when a crash leaves it
        # empty, the kubelet uses the log tail instead, so the operator can always quote a reason.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    resources = _container_resources(res)
    if resources:
        container["resources"] = resources
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "fsGroup": WORKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {
                "name": "args",
                "configMap": {"name": config_map_name(resource.name), "items": [{"key": ARGS_FILE, "path": ARGS_FILE}]},
            },
            {"name": "cache", "emptyDir": {}},
            {"name": "scratch", "emptyDir": {}},
        ],
    }
    if res.node_selector:
        pod_spec["nodeSelector"] = dict(res.node_selector)
    if res.tolerations:
        pod_spec["tolerations"] = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in res.tolerations]
    if settings.worker_service_account:
        pod_spec["serviceAccountName"] = settings.worker_service_account
    job_spec: dict[str, Any] = {
        "template": {"metadata": {"labels": dict(job_labels)}, "spec": pod_spec},
        "podFailurePolicy": _pod_failure_policy(stage),
    }
    completions = stage.completions(spec.gradients.shards)
    job_spec.update(completions=completions, parallelism=completions)
    job_spec[stage.retry_limit_field] = res.backoff_limit_per_index
    if stage.indexed:
        job_spec["completionMode"] = "Indexed"
        # Every shard is needed: the first one failed for good fails the Job, the others stop.
        job_spec["maxFailedIndexes"] = 0
    if res.queue_name:
        job_spec["suspend"] = True  # Kueue admits (unsuspends) the Job when its quota allows
    if settings.job_ttl_seconds is not None:
        job_spec["ttlSecondsAfterFinished"] = settings.job_ttl_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": resource.metadata.namespace, "labels": job_labels},
        "spec": job_spec,
    }
