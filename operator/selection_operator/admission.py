"""What a namespace's user may ask the operator for: checked before anything is created.

The operator creates Jobs with its own service account and reads results with its own S3
credentials, so a spec must not reach beyond its tenant: its artifact root and S3 endpoint are
confined by the operator's settings (issue: storage is not confined to a tenant), and images,
tolerations, node selection and shard counts are limited to what the platform team allows.
Every check returns (field path, message) pairs; the caller ends the resource in Failed with
reason InvalidSpec, the same way as for any other invalid spec.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from typing import Any

from selection import spec as spec_module

from selection_operator import manifests
from selection_operator.settings import OperatorSettings, storage_prefix_entry

Problem = tuple[str, str]

# Names and paths the operator's own pod template uses: an override must not replace them.
RESERVED_ENV = frozenset({
    "DSEL_CACHE_DIR", "HOME", "TMPDIR", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "HF_HOME",
    "TORCH_HOME", "XDG_CACHE_HOME", "TRITON_CACHE_DIR", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "JOB_COMPLETION_INDEX",
})
RESERVED_VOLUMES = frozenset({"args", "cache", "scratch"})
RESERVED_LABEL_PREFIXES = ("dsel.dev/", "batch.kubernetes.io/", "kueue.x-k8s.io/", "app.kubernetes.io/")


def _under(uri: str, prefix: str) -> bool:
    """Path-aware prefix test: s3://b/team-a holds s3://b/team-a/x but not s3://b/team-ab."""
    uri, prefix = uri.rstrip("/"), prefix.rstrip("/")
    return uri == prefix or uri.startswith(prefix + "/")


def allowed_roots(namespace: str, name: str, settings: OperatorSettings) -> list[str]:
    """The artifact roots a resource may use; empty when the settings leave roots open."""
    roots = []
    if settings.confine_storage and settings.default_storage_uri:
        roots.append(f"{settings.default_storage_uri}/{namespace}/{name}")
    for entry in settings.allowed_storage_prefixes:
        only, prefix = storage_prefix_entry(entry)
        if only is None or only == namespace:
            roots.append(prefix.replace("{namespace}", namespace).replace("{name}", name))
    return roots


def _endpoint_key(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url.strip())
    return parts.scheme.lower(), (parts.netloc or "").lower().rstrip("/")


def storage_problems(resource: spec_module.DataSelection, uri: str, settings: OperatorSettings) -> list[Problem]:
    """The resolved artifact root and the spec's endpoint against the confinement settings."""
    problems: list[Problem] = []
    namespace = resource.metadata.namespace or "default"
    roots = allowed_roots(namespace, resource.name, settings)
    confined = settings.confine_storage or bool(settings.allowed_storage_prefixes)
    if confined and not any(_under(uri, root) for root in roots):
        where = ", ".join(roots) if roots else "(nothing for this namespace)"
        problems.append((
            "spec.storage.uri",
            f"{uri} is outside the artifact roots this namespace may use: {where}",
        ))
    endpoint = resource.spec.storage.endpoint
    if endpoint and settings.allowed_s3_endpoints:
        allowed = {_endpoint_key(e) for e in settings.allowed_s3_endpoints}
        if settings.s3_endpoint:
            allowed.add(_endpoint_key(settings.s3_endpoint))
        if _endpoint_key(endpoint) not in allowed:
            problems.append((
                "spec.storage.endpoint",
                "this S3 endpoint is not in the operator's allow-list (DSEL_ALLOWED_S3_ENDPOINTS)",
            ))
    return problems


def _image_allowed(image: str, allowed: tuple[str, ...]) -> bool:
    for entry in allowed:
        if entry.endswith("/") and image.startswith(entry):
            return True
        if image == entry or image.startswith((entry + ":", entry + "@")):
            return True
    return False


def _node_affinity_keys(affinity: dict[str, Any] | None) -> Iterator[tuple[str, str]]:
    """(path, key) of every node label key a pod affinity's nodeAffinity terms match on."""
    node = (affinity or {}).get("nodeAffinity") or {}
    base = "spec.resources.pod.affinity.nodeAffinity"
    required = (node.get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or []
    terms = [(f"{base}.required...nodeSelectorTerms[{i}]", t) for i, t in enumerate(required)]
    preferred = node.get("preferredDuringSchedulingIgnoredDuringExecution") or []
    terms += [(f"{base}.preferred...[{i}].preference", (p or {}).get("preference") or {})
              for i, p in enumerate(preferred)]
    for path, term in terms:
        for field in ("matchExpressions", "matchFields"):
            for j, expression in enumerate((term or {}).get(field) or []):
                yield f"{path}.{field}[{j}].key", str((expression or {}).get("key", ""))


def policy_problems(resource: spec_module.DataSelection, settings: OperatorSettings) -> list[Problem]:
    """Images, tolerations, node selection and shard counts against the operator's limits."""
    problems: list[Problem] = []
    res = resource.spec.resources
    if res.image and settings.allowed_images and res.image != settings.worker_image:
        if not _image_allowed(res.image, settings.allowed_images):
            problems.append(("spec.resources.image",
                             f"{res.image!r} is not an allowed image ({', '.join(settings.allowed_images)})"))
    if settings.allowed_toleration_keys:
        for i, toleration in enumerate(res.tolerations):
            if toleration.key not in settings.allowed_toleration_keys:
                problems.append((f"spec.resources.tolerations[{i}].key",
                                 f"{toleration.key or '(every taint)'!s} may not be tolerated; allowed keys: "
                                 f"{', '.join(settings.allowed_toleration_keys)}"))
    if settings.allowed_node_selector_keys:
        keys = [(f"spec.resources.nodeSelector.{key}", key) for key in res.node_selector]
        keys += list(_node_affinity_keys(res.pod.affinity))
        for path, key in keys:
            if key not in settings.allowed_node_selector_keys:
                problems.append((path, f"node label {key!r} may not be selected on; allowed: "
                                       f"{', '.join(settings.allowed_node_selector_keys)}"))
    shards = resource.spec.gradients.shards
    if settings.max_shards is not None and shards > settings.max_shards:
        problems.append(("spec.gradients.shards", f"{shards} is more than this operator allows ({settings.max_shards})"))
    return problems


def pod_override_problems(resource: spec_module.DataSelection) -> list[Problem]:
    """Overrides that would replace what the operator's pod template relies on."""
    problems: list[Problem] = []
    pod = resource.spec.resources.pod
    base = "spec.resources.pod"
    for field, entries in (("env", pod.env), ("volumes", pod.volumes), ("volumeMounts", pod.volume_mounts)):
        for i, entry in enumerate(entries):
            if not isinstance(entry.get("name"), str) or not entry["name"]:
                problems.append((f"{base}.{field}[{i}].name", "required"))
    for i, variable in enumerate(pod.env):
        if variable.get("name") in RESERVED_ENV:
            problems.append((f"{base}.env[{i}].name", f"{variable['name']} is set by the operator"))
    for i, volume in enumerate(pod.volumes):
        if volume.get("name") in RESERVED_VOLUMES:
            problems.append((f"{base}.volumes[{i}].name", f"{volume['name']!r} is the operator's own volume"))
        if "hostPath" in volume:
            problems.append((f"{base}.volumes[{i}].hostPath", "hostPath volumes are not allowed"))
    for i, mount in enumerate(pod.volume_mounts):
        path = str(mount.get("mountPath", ""))
        if any(_under(path, reserved) for reserved in manifests.RESERVED_MOUNT_PATHS):
            problems.append((f"{base}.volumeMounts[{i}].mountPath", f"{path} is used by the operator"))
    for key in pod.labels:
        if key.startswith(RESERVED_LABEL_PREFIXES):
            problems.append((f"{base}.labels.{key}", "labels under this prefix are set by dsel or Kubernetes"))
    return problems


def admission_problems(
    resource: spec_module.DataSelection, storage_uri: str, settings: OperatorSettings
) -> list[Problem]:
    """Everything that keeps a valid spec from starting on this cluster under these settings."""
    return (
        manifests.cluster_problems(resource)
        + storage_problems(resource, storage_uri, settings)
        + policy_problems(resource, settings)
        + pod_override_problems(resource)
    )
