"""The operator's settings: every one comes from an environment variable, all are optional.

The Helm chart sets these names (keep them stable):

    DSEL_WORKER_IMAGE             worker image for Jobs whose spec names none
    DSEL_DEFAULT_STORAGE_URI      s3://bucket/prefix; a resource without spec.storage.uri
                                  stores its artifacts under <this>/<namespace>/<name>
    DSEL_S3_ENDPOINT              S3 endpoint when the spec names none (MinIO, SeaweedFS, Ceph)
    DSEL_S3_REGION                S3 region when the spec names none
    DSEL_S3_CREDENTIALS_SECRET    Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for the
                                  pods when the spec names none
    DSEL_METRICS_PORT             Prometheus port (default 9090; 0 disables the endpoint)
    DSEL_METRICS_ADDRESS          address the metrics endpoint binds (default 0.0.0.0)
    DSEL_LOG_LEVEL                DEBUG, INFO, WARNING or ERROR (default: kopf's own level)
    DSEL_WORKER_SERVICE_ACCOUNT   serviceAccountName of the job pods
    DSEL_JOB_TTL_SECONDS          ttlSecondsAfterFinished of the Jobs (default: keep them)
    DSEL_RESYNC_SECONDS           how often a running selection is re-checked even without Job
                                  events (default 30)
    DSEL_POD_START_GRACE_SECONDS  how long a stage's pods may wait to start (missing Secret,
                                  image pull errors, no service account, unschedulable) before
                                  the stage fails (default 900)
    DSEL_WORKER_IMAGE_PULL_SECRETS  comma-separated Secret names: imagePullSecrets of the job pods
    DSEL_WORKER_DEFAULT_MEMORY    memory request and limit of job pods whose spec sets none
                                  (a quantity such as 8Gi; default: none)

Tenant confinement and what a spec may set (empty: unrestricted), enforced before anything is
created; a spec that breaks them ends Failed with reason InvalidSpec:

    DSEL_CONFINE_STORAGE          true: every artifact root is <DSEL_DEFAULT_STORAGE_URI>/<namespace>/
                                  <name>; a spec may leave storage.uri out or name exactly that
    DSEL_ALLOWED_STORAGE_PREFIXES comma-separated s3:// prefixes a storage.uri must lie under;
                                  {namespace} and {name} are replaced, and "<namespace>=<prefix>"
                                  applies an entry to one namespace only
    DSEL_ALLOWED_S3_ENDPOINTS     comma-separated endpoint URLs a spec's storage.endpoint may name
                                  (the operator's own DSEL_S3_ENDPOINT is always allowed)
    DSEL_ALLOWED_IMAGES           comma-separated images or registry/repository prefixes (ending
                                  in '/') spec.resources.image may name
    DSEL_ALLOWED_TOLERATION_KEYS  comma-separated taint keys a spec's tolerations may name (a
                                  toleration without a key is then refused)
    DSEL_ALLOWED_NODE_SELECTOR_KEYS  comma-separated node label keys nodeSelector and node
                                  affinity may use
    DSEL_MAX_SHARDS               the largest gradients.shards a spec may ask for

The operator process reads selection.json from S3 itself: with the keys of the credentials Secret
the selection names (as its pods do), else with its own environment's AWS_* credentials (the
chart passes them from DSEL_S3_CREDENTIALS_SECRET) or cloud identity.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import urllib.parse
from collections.abc import Mapping
from importlib import metadata
from typing import TypeVar

from selection import kube_values

from selection.redact import userinfo_problem

DEFAULT_METRICS_PORT = 9090
# A running selection is re-read this often even when no Job event arrives: Job events wake the
# operator at once, so this only bounds how long a missed event can go unnoticed.
DEFAULT_RESYNC_SECONDS = 30.0
# Pods that cannot start (CreateContainerConfigError, ImagePullBackOff, Unschedulable, ...) fail
# their stage after this long: long enough for a cluster autoscaler to add a GPU node.
DEFAULT_POD_START_GRACE_SECONDS = 900.0
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# What an integer variable falls back to when unset: a number, or None for "no limit".
_Default = TypeVar("_Default", int, None)


class SettingsError(ValueError):
    """An environment variable holds an unusable value; the message names the variable."""


def storage_prefix_entry(entry: str) -> tuple[str | None, str]:
    """'team-a=s3://b/x' -> ('team-a', 's3://b/x'); 's3://b/{namespace}' -> (None, 's3://b/{namespace}')."""
    if entry.startswith("s3://") or "=" not in entry:
        return None, entry
    namespace, _, prefix = entry.partition("=")
    return namespace.strip(), prefix.strip()


def _default_worker_image() -> str:
    """The worker image of this release; the chart normally overrides it."""
    try:
        version = metadata.version("dsel")
    except metadata.PackageNotFoundError:
        version = "latest"
    return f"dsel-worker:{version}"


@dataclasses.dataclass(frozen=True)
class OperatorSettings:
    """What the operator adds to every DataSelection: defaults for fields the spec leaves open."""

    worker_image: str = dataclasses.field(default_factory=_default_worker_image)
    default_storage_uri: str | None = None
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_credentials_secret: str | None = None
    metrics_port: int = DEFAULT_METRICS_PORT
    metrics_address: str = "0.0.0.0"
    log_level: str | None = None
    worker_service_account: str | None = None
    job_ttl_seconds: int | None = None
    resync_seconds: float = DEFAULT_RESYNC_SECONDS
    pod_start_grace_seconds: float = DEFAULT_POD_START_GRACE_SECONDS
    worker_image_pull_secrets: tuple[str, ...] = ()
    worker_default_memory: str | None = None
    confine_storage: bool = False
    allowed_storage_prefixes: tuple[str, ...] = ()
    allowed_s3_endpoints: tuple[str, ...] = ()
    allowed_images: tuple[str, ...] = ()
    allowed_toleration_keys: tuple[str, ...] = ()
    allowed_node_selector_keys: tuple[str, ...] = ()
    max_shards: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "OperatorSettings":
        """Read the DSEL_* variables; an empty variable counts as unset."""
        env = os.environ if environ is None else environ

        def text(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        def integer(name: str, default: _Default, low: int, high: int | None = None) -> int | _Default:
            raw = text(name)
            if raw is None:
                return default
            try:
                value = int(raw)
            except ValueError:
                raise SettingsError(f"{name}: expected an integer, got {raw!r}") from None
            if value < low or (high is not None and value > high):
                bound = f"{low}..{high}" if high is not None else f">= {low}"
                raise SettingsError(f"{name}: {value} is outside {bound}")
            return value

        def seconds(name: str, default: float) -> float:
            raw = text(name)
            if raw is None:
                return default
            try:
                value = float(raw)
            except ValueError:
                raise SettingsError(f"{name}: expected seconds, got {raw!r}") from None
            if not 0 < value < float("inf"):
                raise SettingsError(f"{name}: must be positive, got {raw!r}")
            return value

        log_level = text("DSEL_LOG_LEVEL")
        if log_level is not None:
            log_level = log_level.upper()
            if log_level not in _LOG_LEVELS:
                raise SettingsError(f"DSEL_LOG_LEVEL: expected one of {', '.join(_LOG_LEVELS)}, got {log_level!r}")

        storage = text("DSEL_DEFAULT_STORAGE_URI")
        if storage is not None and not storage.startswith("s3://"):
            raise SettingsError(
                f"DSEL_DEFAULT_STORAGE_URI: expected s3://bucket[/prefix], got {storage!r} "
                "(job pods share artifacts through S3 only)"
            )

        own_endpoint = text("DSEL_S3_ENDPOINT")
        embedded = userinfo_problem(own_endpoint) if own_endpoint else None
        if embedded:  # it would be copied into every selection's arguments ConfigMap
            raise SettingsError(f"DSEL_S3_ENDPOINT: {embedded}")
        def names(name: str) -> tuple[str, ...]:
            return tuple(item.strip() for item in (text(name) or "").split(",") if item.strip())

        def flag(name: str) -> bool:
            raw = (text(name) or "false").lower()
            if raw not in ("true", "false", "1", "0", "yes", "no"):
                raise SettingsError(f"{name}: expected true or false, got {raw!r}")
            return raw in ("true", "1", "yes")

        default_memory = text("DSEL_WORKER_DEFAULT_MEMORY")
        if default_memory is not None:
            try:
                kube_values.check_quantity(default_memory)
            except ValueError as error:
                raise SettingsError(f"DSEL_WORKER_DEFAULT_MEMORY: {error}") from None
        for secret in names("DSEL_WORKER_IMAGE_PULL_SECRETS"):
            try:
                kube_values.check_dns_subdomain(secret)
            except ValueError as error:
                raise SettingsError(f"DSEL_WORKER_IMAGE_PULL_SECRETS: {error}") from None
        confine = flag("DSEL_CONFINE_STORAGE")
        if confine and storage is None:
            raise SettingsError("DSEL_CONFINE_STORAGE: needs DSEL_DEFAULT_STORAGE_URI, the root it confines to")
        prefixes = names("DSEL_ALLOWED_STORAGE_PREFIXES")
        for entry in prefixes:
            if not storage_prefix_entry(entry)[1].startswith("s3://"):
                raise SettingsError(f"DSEL_ALLOWED_STORAGE_PREFIXES: expected [namespace=]s3://bucket/prefix, got {entry!r}")
        endpoints = names("DSEL_ALLOWED_S3_ENDPOINTS")
        for endpoint in endpoints:
            if urllib.parse.urlsplit(endpoint).scheme not in ("http", "https"):
                raise SettingsError(f"DSEL_ALLOWED_S3_ENDPOINTS: expected http(s):// URLs, got {endpoint!r}")

        return cls(
            worker_image_pull_secrets=names("DSEL_WORKER_IMAGE_PULL_SECRETS"),
            worker_default_memory=default_memory,
            confine_storage=confine,
            allowed_storage_prefixes=prefixes,
            allowed_s3_endpoints=endpoints,
            allowed_images=names("DSEL_ALLOWED_IMAGES"),
            allowed_toleration_keys=names("DSEL_ALLOWED_TOLERATION_KEYS"),
            allowed_node_selector_keys=names("DSEL_ALLOWED_NODE_SELECTOR_KEYS"),
            max_shards=integer("DSEL_MAX_SHARDS", None, 1),
            worker_image=text("DSEL_WORKER_IMAGE") or _default_worker_image(),
            default_storage_uri=storage.rstrip("/") if storage else None,
            s3_endpoint=own_endpoint,
            s3_region=text("DSEL_S3_REGION"),
            s3_credentials_secret=text("DSEL_S3_CREDENTIALS_SECRET"),
            metrics_port=integer("DSEL_METRICS_PORT", DEFAULT_METRICS_PORT, 0, 65535),
            metrics_address=text("DSEL_METRICS_ADDRESS") or "0.0.0.0",
            log_level=log_level,
            worker_service_account=text("DSEL_WORKER_SERVICE_ACCOUNT"),
            job_ttl_seconds=integer("DSEL_JOB_TTL_SECONDS", None, 0),
            resync_seconds=seconds("DSEL_RESYNC_SECONDS", DEFAULT_RESYNC_SECONDS),
            pod_start_grace_seconds=seconds("DSEL_POD_START_GRACE_SECONDS", DEFAULT_POD_START_GRACE_SECONDS),
        )

    @property
    def logging_level(self) -> int | None:
        return getattr(logging, self.log_level) if self.log_level else None
