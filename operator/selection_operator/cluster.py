"""The only module that talks to the Kubernetes API.

Requests go through the official client's `ApiClient` (so every kubeconfig auth method, TLS
setting and token refresh works) but as raw JSON: the operator works with plain dicts and never
has the typed models drop a field they do not know. The client is synchronous, so each call runs
in a worker thread of the Cluster's own pool and the event loop stays free for kopf.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import functools
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import kubernetes

from selection import spec as spec_module

from selection_operator import manifests

log = logging.getLogger(__name__)

# Seconds for one API request: generous for a loaded API server, short enough that a hung
# connection does not stall a selection for long (the reconcile loop retries).
REQUEST_TIMEOUT_S = 30.0
# API requests in flight at once (worker threads, and the HTTP connections kept for them). Each
# request holds a thread for one round trip, mostly waiting: with 100 selections waking together,
# asyncio's default pool (cores + 4 threads, shared with S3 reads) made rounds queue for threads.
API_CONCURRENCY = 16
_PATHS = {
    ("batch/v1", "Job"): "/apis/batch/v1/namespaces/{namespace}/jobs",
    ("v1", "ConfigMap"): "/api/v1/namespaces/{namespace}/configmaps",
    ("v1", "Pod"): "/api/v1/namespaces/{namespace}/pods",
    ("v1", "Event"): "/api/v1/namespaces/{namespace}/events",
    ("v1", "Secret"): "/api/v1/namespaces/{namespace}/secrets",
    ("kueue.x-k8s.io/v1beta1", "Workload"): "/apis/kueue.x-k8s.io/v1beta1/namespaces/{namespace}/workloads",
}
# Answers worth retrying: the object exists already (handled by callers), throttling, timeouts,
# and Forbidden, which is RBAC or a ResourceQuota an admin can fix without touching the spec.
RETRYABLE_STATUS = frozenset({403, 408, 409, 429})
_SELECTIONS = f"/apis/{spec_module.API_GROUP}/{spec_module.API_VERSION}/namespaces/{{namespace}}/{spec_module.PLURAL}"


class ApiError(Exception):
    """A non-2xx answer from the API server; `status` is the HTTP status code."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.kind: str | None = None  # the object a create was refused for
        self.name: str | None = None

    @property
    def permanent(self) -> bool:
        """A 4xx that repeating the same request cannot fix (e.g. 400 BadRequest, 422 Invalid)."""
        return 400 <= self.status < 500 and self.status not in RETRYABLE_STATUS


def load_configuration() -> kubernetes.client.Configuration:
    """Client configuration: $KUBECONFIG when set, else in-cluster, else ~/.kube/config.

    $KUBECONFIG is read at call time (the client library reads it once, at import).
    """
    config = kubernetes.client.Configuration()
    explicit = os.environ.get("KUBECONFIG")
    if not explicit:
        try:
            kubernetes.config.load_incluster_config(client_configuration=config)
            return config
        except kubernetes.config.ConfigException:
            pass
    kubernetes.config.load_kube_config(
        config_file=explicit or os.path.expanduser("~/.kube/config"), client_configuration=config
    )
    return config


def connection_info(config: kubernetes.client.Configuration) -> dict[str, Any]:
    """The fields of kopf.ConnectionInfo that describe `config` (server, TLS, credentials)."""
    header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return {
        "server": config.host,
        "ca_path": config.ssl_ca_cert,
        "insecure": not config.verify_ssl,
        "username": config.username or None,
        "password": config.password or None,
        "scheme": scheme,
        "token": token,
        "certificate_path": config.cert_file,
        "private_key_path": config.key_file,
    }


class Cluster:
    """The operator's API calls, as coroutines returning plain dicts."""

    def __init__(self, api_client: kubernetes.client.ApiClient, request_timeout: float = REQUEST_TIMEOUT_S):
        self.api = api_client
        self.request_timeout = request_timeout
        self._threads = concurrent.futures.ThreadPoolExecutor(API_CONCURRENCY, thread_name_prefix="dsel-api")

    @classmethod
    def from_environment(cls) -> "Cluster":
        config = load_configuration()
        config.connection_pool_maxsize = API_CONCURRENCY  # one kept connection per thread
        return cls(kubernetes.client.ApiClient(config))

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        self.api.close()

    async def _in_thread(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._threads, functools.partial(function, *args))

    # --- transport ----------------------------------------------------------------------
    def _request_sync(
        self, method: str, path: str, query: Mapping[str, str] | None, body: Any, content_type: str
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        method, url, headers, body, _ = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list(query.items()) if query else None,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(method, url, header_params=headers, body=body, _request_timeout=self.request_timeout)
        data = response.read()
        payload = json.loads(data) if data else None
        if response.status >= 400:
            reason = message = ""
            if isinstance(payload, dict):
                reason, message = str(payload.get("reason", "")), str(payload.get("message", ""))
            raise ApiError(response.status, reason or str(response.reason), message)
        return payload

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        return await self._in_thread(self._request_sync, method, path, query, body, content_type)

    # --- DataSelections -----------------------------------------------------------------
    async def get_selection(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", f"{_SELECTIONS.format(namespace=namespace)}/{name}")
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def patch_selection_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request(
            "PATCH",
            f"{_SELECTIONS.format(namespace=namespace)}/{name}/status",
            body={"status": patch},
            content_type="application/merge-patch+json",
        )

    async def remove_selection_finalizer(self, namespace: str, name: str, finalizer: str) -> None:
        """Drop one finalizer (a JSON patch that fails if the list changed meanwhile)."""
        current = await self.get_selection(namespace, name)
        finalizers = list(((current or {}).get("metadata") or {}).get("finalizers") or ())
        if finalizer not in finalizers:
            return
        position = finalizers.index(finalizer)
        await self.request(
            "PATCH", f"{_SELECTIONS.format(namespace=namespace)}/{name}",
            body=[{"op": "test", "path": f"/metadata/finalizers/{position}", "value": finalizer},
                  {"op": "remove", "path": f"/metadata/finalizers/{position}"}],
            content_type="application/json-patch+json",
        )

    # --- children -----------------------------------------------------------------------
    async def list_owned(self, api_version: str, kind: str, namespace: str, selection: str) -> list[dict[str, Any]]:
        """Objects of a kind labelled with the selection's name (ownership is checked by callers)."""
        path = _PATHS[(api_version, kind)].format(namespace=namespace)
        found = await self.request("GET", path, query={"labelSelector": f"{manifests.LABEL_SELECTION}={selection}"})
        return list(found.get("items") or [])

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", f"{_PATHS[(api_version, kind)].format(namespace=namespace)}/{name}")
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create `obj` and return it as stored ({} without an answer body); None when it already
        exists (409), so callers can create blindly."""
        meta = obj["metadata"]
        path = _PATHS[(obj["apiVersion"], obj["kind"])].format(namespace=meta["namespace"])
        try:
            created = await self.request("POST", path, body=dict(obj))
        except ApiError as error:
            if error.status == 409:
                return None
            error.kind, error.name = obj["kind"], meta.get("name")
            raise
        return created if isinstance(created, dict) else {}

    async def suspend_job(self, namespace: str, name: str) -> None:
        """Suspend a Job: the Job controller stops its pods (kept for `kubectl describe`)."""
        await self.request(
            "PATCH", f"{_PATHS[('batch/v1', 'Job')].format(namespace=namespace)}/{name}",
            body={"spec": {"suspend": True}}, content_type="application/merge-patch+json",
        )

    async def get_secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's decoded data, or None when it does not exist."""
        found = await self.get("v1", "Secret", namespace, name)
        if found is None:
            return None
        data = found.get("data") or {}
        return {key: base64.b64decode(value).decode("utf-8", errors="replace") for key, value in data.items()}

    async def list_events(self, namespace: str, kind: str, name: str) -> list[dict[str, Any]]:
        """Events about one object (e.g. the Job controller's FailedCreate on a Job)."""
        found = await self.request(
            "GET", _PATHS[("v1", "Event")].format(namespace=namespace),
            query={"fieldSelector": f"involvedObject.kind={kind},involvedObject.name={name}"},
        )
        return list(found.get("items") or [])

    async def list_workloads(self, namespace: str, job_uid: str) -> list[dict[str, Any]] | None:
        """Kueue's Workloads of a Job; None when Kueue is not installed (no such resource)."""
        try:
            found = await self.request(
                "GET", _PATHS[("kueue.x-k8s.io/v1beta1", "Workload")].format(namespace=namespace),
                query={"labelSelector": f"kueue.x-k8s.io/job-uid={job_uid}"},
            )
        except ApiError as error:
            if error.status in (403, 404):  # no Kueue, or no right to read its Workloads
                log.debug("cannot list Kueue Workloads in %s: %s", namespace, error)
                return None
            raise
        return list(found.get("items") or [])

    # --- pods -----------------------------------------------------------------------------
    async def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        found = await self.request(
            "GET", _PATHS[("v1", "Pod")].format(namespace=namespace), query={"labelSelector": label_selector}
        )
        return list(found.get("items") or [])

    async def pod_log_tail(self, namespace: str, pod: str, container: str, lines: int = 20) -> str | None:
        """The last lines of a container's log, or None when they cannot be read."""
        path = f"{_PATHS[('v1', 'Pod')].format(namespace=namespace)}/{pod}/log"
        try:
            text = await self._in_thread(self._log_sync, path, {"container": container, "tailLines": str(lines)})
        except Exception as error:  # best effort: a missing log must not hide the failure itself
            log.debug("cannot read the log of pod %s/%s: %s", namespace, pod, error)
            return None
        return text

    def _log_sync(self, path: str, query: Mapping[str, str]) -> str | None:
        method, url, headers, _, _ = self.api.param_serialize(
            method="GET", resource_path=path, query_params=list(query.items()),
            header_params={"Accept": "text/plain"}, auth_settings=["BearerToken"],
        )
        response = self.api.call_api(method, url, header_params=headers, _request_timeout=self.request_timeout)
        data = response.read()
        if response.status >= 400:
            return None
        return data.decode("utf-8", errors="replace")
