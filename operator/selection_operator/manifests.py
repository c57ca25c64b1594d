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
import math
from collections.abc import Mapping
from typing import Any

from selection import contract, kube_values
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
# The only writable paths of a worker (its root filesystem is read-only): pod overrides may not
# mount over them.
RESERVED_MOUNT_PATHS = (ARGS_DIR, CACHE_DIR, SCRATCH_DIR)
# Room for logs and the container's writable layer on top of the two sized volumes.
EPHEMERAL_STORAGE_HEADROOM = kube_values.quantity_value("1Gi")
# Non-root uid/gid of the job pods: the worker image's own user (images/worker.Dockerfile), set
# explicitly so `runAsNonRoot` holds; the root filesystem is read-only, the pods write only to
# their sized emptyDir volumes (HOME and TMPDIR point into them).
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


def adopt(child: dict[str, Any], owner: Mapping[str, Any]) -> dict[str, Any]:
    """Make `owner` the controller of `child`, in its namespace; the owner's labels stay behind.

    (kopf.adopt also copies the owner's labels, so Argo CD's instance label would mark the Jobs
    as Argo CD's own and get them pruned.)
    """
    meta = owner["metadata"]
    reference = {
        "apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"], "uid": meta["uid"],
        "controller": True, "blockOwnerDeletion": True,
    }
    child_meta = child.setdefault("metadata", {})
    child_meta["namespace"] = meta.get("namespace")
    references = [r for r in child_meta.get("ownerReferences", []) if r.get("uid") != meta["uid"]]
    child_meta["ownerReferences"] = [*references, reference]
    return child


def _env(storage: StorageLocation, pod: spec_module.PodOverridesSpec | None = None) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "DSEL_CACHE_DIR", "value": CACHE_DIR},
        # Every cache a library may fill lives on the sized cache volume, never on the root
        # filesystem (read-only) or in HOME.
        {"name": "HF_HOME", "value": f"{CACHE_DIR}/huggingface"},
        {"name": "TORCH_HOME", "value": f"{CACHE_DIR}/torch"},
        {"name": "XDG_CACHE_HOME", "value": f"{CACHE_DIR}/xdg"},
        {"name": "TRITON_CACHE_DIR", "value": f"{CACHE_DIR}/triton"},
        {"name": "HOME", "value": SCRATCH_DIR},
        {"name": "TMPDIR", "value": SCRATCH_DIR},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
    ]
    if storage.credentials_secret:
        for key, required in SECRET_KEYS.items():
            reference: dict[str, Any] = {"name": storage.credentials_secret, "key": key}
            if not required:
                reference["optional"] = True
            env.append({"name": key, "valueFrom": {"secretKeyRef": reference}})
    if pod is not None:
        env.extend(dict(variable) for variable in pod.env)
    return env


def _thread_env(cpu: str | None) -> list[dict[str, Any]]:
    """OpenMP threads that sleep when idle, and as many as the pod's CPU request (docs/performance.md).

    Spinning idle threads made 2-thread runs up to 25x slower on a shared node; torch would
    otherwise start one thread per core of the node, whatever the pod's share of it.
    """
    env = [{"name": "OMP_WAIT_POLICY", "value": "PASSIVE"}]
    cpus = _whole_cpus(cpu) if cpu else None
    if cpus is not None:
        env += [{"name": name, "value": str(cpus)} for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")]
    return env


def _whole_cpus(quantity: str) -> int | None:
    """A CPU quantity ('4', '2.5', '500m') rounded up to whole threads; None if not a plain number."""
    try:
        value = float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)
    except ValueError:
        return None
    return max(1, math.ceil(value)) if math.isfinite(value) and value > 0 else None


def _ephemeral_storage(resources: spec_module.ResourcesSpec) -> str:
    """Both sized volumes plus headroom, in bytes: the scheduler places the pod where it fits."""
    total = (
        kube_values.quantity_value(resources.cache_size)
        + kube_values.quantity_value(resources.scratch_size)
        + EPHEMERAL_STORAGE_HEADROOM
    )
    size = int(total.to_integral_value(rounding="ROUND_CEILING"))
    return f"{size // 2**20}Mi" if size % 2**20 == 0 else str(size)


def container_resources(
    resources: spec_module.ResourcesSpec, stage: contract.Stage, settings: OperatorSettings
) -> dict[str, Any]:
    """Requests and limits of one stage's pods: its stage override, else the spec's, else defaults.

    Memory is requested and limited alike (an over-consuming pod is OOM-killed, never the node's
    neighbours); the reduction gets no GPUs unless its own override asks for some.
    """
    override = getattr(resources.stages, stage.name)
    cpu = override.cpu or resources.cpu
    memory = override.memory or resources.memory or settings.worker_default_memory
    if override.gpus is not None:
        gpus = override.gpus
    else:
        gpus = resources.gpus if stage.uses_gpus else 0
    requests: dict[str, str] = {"ephemeral-storage": _ephemeral_storage(resources)}
    limits: dict[str, str] = {}
    if cpu:
        requests["cpu"] = cpu
    if memory:
        requests["memory"] = limits["memory"] = memory
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)  # extended resources: request == limit
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def _pod_failure_policy(stage: contract.Stage) -> dict[str, Any]:
    """Bad input fails at once; every other failure, evictions included, uses up a retry.

    No `Ignore` for DisruptionTarget: the kubelet sets that condition on node-pressure and
    over-limit evictions too, and an ignored one is retried forever (a pod that fills its disk
    would be evicted, recreated and evicted again without end).
    """
    return {
        "rules": [
            {
                "action": stage.failure_action,
                "onExitCodes": {"containerName": CONTAINER_NAME, "operator": "In", "values": [EXIT_BAD_INPUT]},
            },
            {"action": "Count", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
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
        "env": _env(storage, res.pod) + _thread_env(getattr(res.stages, stage.name).cpu or res.cpu),
        "volumeMounts": [
            {"name": "args", "mountPath": ARGS_DIR, "readOnly": True},
            {"name": "cache", "mountPath": CACHE_DIR},
            {"name": "scratch", "mountPath": SCRATCH_DIR},
            *(dict(mount) for mount in res.pod.volume_mounts),
        ],
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        # The stages write their one-line error to /dev/termination-log; when a crash leaves it
        # empty, the kubelet uses the log tail instead, so the operator can always quote a reason.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if res.pod.env_from:
        container["envFrom"] = [dict(source) for source in res.pod.env_from]
    container["resources"] = container_resources(res, stage, settings)
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
            {"name": "cache", "emptyDir": {"sizeLimit": res.cache_size}},
            {"name": "scratch", "emptyDir": {"sizeLimit": res.scratch_size}},
            *(dict(volume) for volume in res.pod.volumes),
        ],
    }
    if settings.worker_image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": secret} for secret in settings.worker_image_pull_secrets]
    if res.pod.affinity:
        pod_spec["affinity"] = dict(res.pod.affinity)
    if res.pod.priority_class_name:
        pod_spec["priorityClassName"] = res.pod.priority_class_name
    if res.pod.runtime_class_name:
        pod_spec["runtimeClassName"] = res.pod.runtime_class_name
    if res.node_selector:
        pod_spec["nodeSelector"] = dict(res.node_selector)
    if res.tolerations:
        pod_spec["tolerations"] = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in res.tolerations]
    if settings.worker_service_account:
        pod_spec["serviceAccountName"] = settings.worker_service_account
    template_metadata: dict[str, Any] = {"labels": {**res.pod.labels, **job_labels}}
    if res.pod.annotations:
        template_metadata["annotations"] = dict(res.pod.annotations)
    job_spec: dict[str, Any] = {
        "template": {"metadata": template_metadata, "spec": pod_spec},
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
