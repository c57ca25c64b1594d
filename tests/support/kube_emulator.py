"""A Kubernetes API emulator for tests: kmock's emulator plus the server-side behaviour that kopf,
the Kubernetes clients and the dsel operator rely on.

kmock 0.8's `KubernetesEmulator` stores bodies verbatim. `KubeEmulator` keeps kmock's HTTP
server, request parsing and log, discovery and object store (so `emulator.objects[...]`
assertions work, and DSL reactions for discovery, lists and watches), answers single-object
requests (create, get, patch, put, delete) itself, and adds:

* server-side metadata on create: namespace from the URL, uid, resourceVersion,
  creationTimestamp, generation; `generateName` expanded; apiVersion/kind filled in;
  201 Created (409 AlreadyExists for a live namesake);
* one global resourceVersion counter; PATCH (JSON merge patch, JSON patch; strategic merge is
  treated as a merge patch) and PUT bump it, a no-op write does not, and a write naming a stale
  `metadata.resourceVersion` gets 409 Conflict; `generation` moves when anything outside
  metadata and status changes;
* status-subresource isolation for resources that declare one: writes to the object ignore
  `.status`, writes to `/status` change only `.status`, create drops `.status`;
* label selectors (`=`, `==`, `!=`, `in`, `notin`, `key`, `!key`) and field selectors
  (`a.b=c`, `a.b!=c`) on list and watch;
* watches that understand `watch=true|True|1`, replay events after a given resourceVersion
  (410 Gone when it is older than the retained history) or start with ADDED events for what
  exists, honour `timeoutSeconds`, and filter by namespace and selectors;
* deletion: finalizers hold an object with `deletionTimestamp` until they are removed; owner
  references cascade (Background and Foreground both delete dependents right away, Orphan keeps
  them; a dependent with another live owner only loses the reference);
* only declared resources are served (kmock's bundled built-in kinds, posted CRDs, or
  `declare(crd)`); anything else is 404, like an API server without the CRD;
* posting a CustomResourceDefinition makes its resource discoverable;
* `GET /api/v1/namespaces` (list and watch), which kmock 0.8 cannot parse, answers with the
  namespaces that objects live in (plus `default`);
* `calls`: every resource request as RBAC sees it (token, verb, group, resource, subresource,
  namespace), for tests that compare what a client does with what its Role grants.

* validation of what dsel's objects carry (`tests/support/kube_validation.py`): names, label keys and
  values, nodeSelector, tolerations and Job fields answer 422 Invalid with `details.causes`;
  quantities that do not decode answer 400 BadRequest, as the real decoder does;
* the ServiceAccount admission plugin: a pod naming a missing service account is refused (403),
  which the Job controller reports as a `FailedCreate` Event;
* numbers as Go's JSON encoding returns them: an integral float (`1.0`) is stored as `1`.

Not emulated: CRD schema validation, defaulting, server-side apply, deletecollection, other
admission plugins, controllers (see `tests/support/local_job_runner.py` for Jobs), pod logs.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import datetime
import gzip
import importlib.resources
import json
import random
import re
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import apps, enums, rendering  # kmock's request plumbing; public API lacks it

from tests.support import kube_validation

__all__ = ["ApiCall", "KubeEmulator", "LabelSelector", "go_json_numbers", "match_fields"]

_PODS = kmock.resource("v1/pods")

# Events kept per resource for watches that resume from a resourceVersion.
HISTORY_LIMIT = 20000
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # what the API server uses for generateName
_SELECTOR_TERM = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9_.-]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*$"
)


class ApiStatusError(Exception):
    """A Kubernetes `Status` failure answered to the client (and not recorded as a server error)."""

    def __init__(self, code: int, reason: str, message: str, details: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.details = dict(details) if details else None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _split_terms(text: str) -> list[str]:
    """Split a selector at commas that are not inside parentheses."""
    terms, depth, current = [], 0, []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    terms.append("".join(current))
    return [t for t in terms if t.strip()]


class LabelSelector:
    """A parsed `labelSelector` query parameter."""

    def __init__(self, text: str | None):
        self.terms: list[tuple[str, str, frozenset[str]]] = []
        for term in _split_terms(text or ""):
            found = _SELECTOR_TERM.match(term)
            if not found:
                raise ApiStatusError(400, "BadRequest", f"unable to parse requirement: {term!r}")
            key = found["key"]
            if found["setop"]:
                values = frozenset(v.strip() for v in found["values"].split(",") if v.strip())
                self.terms.append((found["setop"], key, values))
            elif found["op"]:
                op = "!=" if found["op"] == "!=" else "="
                self.terms.append((op, key, frozenset([found["value"]])))
            else:
                self.terms.append(("!exists" if found["neg"] else "exists", key, frozenset()))

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        for op, key, values in self.terms:
            present = key in labels
            value = labels.get(key)
            if op == "=" and value not in values:
                return False
            if op == "!=" and value in values:
                return False
            if op == "in" and value not in values:
                return False
            if op == "notin" and present and value in values:
                return False
            if op == "exists" and not present:
                return False
            if op == "!exists" and present:
                return False
        return True


def match_fields(text: str | None, obj: Mapping[str, Any]) -> bool:
    """A `fieldSelector` such as `metadata.name=x,status.phase!=Failed` against an object."""
    for term in _split_terms(text or ""):
        negate = "!=" in term
        path, _, expected = term.partition("!=" if negate else "==" if "==" in term else "=")
        value: Any = obj
        for part in path.strip().split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        actual = "" if value is None else str(value)
        if (actual == expected.strip()) == negate:
            return False
    return True


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def go_json_numbers(value: Any) -> Any:
    """Numbers as the API server stores and returns them: Go decodes a JSON number of a custom
    resource into float64 unless it is an integer literal, and encodes an integral float64 below
    1e21 without a fraction, so `1.0` comes back as `1` (and `2.50` as `2.5`)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    if isinstance(value, Mapping):
        return {k: go_json_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [go_json_numbers(v) for v in value]
    return value


def _content(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What `generation` tracks: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


@attrs.frozen
class ApiCall:
    """One API request as RBAC sees it: who (the bearer token) asked for which verb on what."""

    token: str | None
    verb: str  # get list watch create update patch delete deletecollection
    group: str  # "" for the core group
    resource: str  # plural
    subresource: str | None
    namespace: str | None


def _verb(method: str, name: str | None, params: Mapping[str, str]) -> str:
    if method == "GET":
        if name is not None:
            return "get"
        return "watch" if str(params.get("watch", "")).lower() in ("true", "1") else "list"
    if method == "DELETE":
        return "delete" if name is not None else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())


def _token(headers: Mapping[str, str]) -> str | None:
    value = headers.get("Authorization") or headers.get("authorization") or ""
    return value.split(" ", 1)[1] if value.startswith("Bearer ") else None


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's KubernetesEmulator with API-server semantics (see the module docstring)."""

    calls: list[ApiCall] = attrs.field(factory=list, init=False)
    _rv: int = attrs.field(default=0, init=False)
    _history: dict[Any, collections.deque] = attrs.field(factory=dict, init=False)
    _subscribers: dict[Any, set] = attrs.field(factory=lambda: collections.defaultdict(set), init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # The built-in kinds kmock bundles (`load_bundled` uses a deprecated importlib call).
        bundled = importlib.resources.files("kmock._internal").joinpath("resources.json.gz").read_bytes()
        self.resources.load_data(gzip.decompress(bundled))

    # --- entry points ---------------------------------------------------------------------
    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw_request.method == "GET" and raw_request.path.rstrip("/") == "/api/v1/namespaces":
            self.calls.append(ApiCall(_token(raw_request.headers), _verb("GET", None, raw_request.query), "",
                                      "namespaces", None, None))
            return await self._serve_namespaces(raw_request)
        return await super().__call__(raw_request)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if request.resource is None or request.resource.plural is None:  # not an object: discovery etc.
            return await apps.RawHandler._handle(self, request)
        self.calls.append(ApiCall(
            _token(request.headers), _verb(str(request.method.value if hasattr(request.method, "value")
                                               else request.method).upper(), request.name, request.params),
            request.resource.group or "", request.resource.plural, request.subresource, request.namespace))
        request = self._normalize(request)
        try:
            self._check_resource(request)
            if request.action in (enums.action.LIST, enums.action.WATCH):
                # kmock's reactions and fallbacks (dispatching to _serve_list/_serve_watch below).
                return await apps.RawHandler._handle(self, request)
            async with self._lock:
                code, body = self._serve_object(request)
        except ApiStatusError as error:
            return self._status_response(error.code, error.reason, error.message, error.details)
        return aiohttp.web.json_response(body, status=code)

    def _normalize(self, request: rendering.Request) -> rendering.Request:
        action = request.action
        if request.method == enums.method.GET and str(request.params.get("watch", "")).lower() in ("true", "1"):
            action = enums.action.WATCH
        elif request.method == enums.method.PUT and request.name is not None:
            action = enums.action.UPDATE
        if action == request.action:
            return request
        normalized = attrs.evolve(request, action=action)
        # kmock's views find requests by identity in the request log: log the normalized one.
        for position in range(len(self._requests) - 1, -1, -1):
            if self._requests[position] is request:
                self._requests[position] = normalized
                break
        return normalized

    def _check_resource(self, request: rendering.Request) -> None:
        if request.resource not in self.resources:
            raise ApiStatusError(404, "NotFound", f"the server could not find the requested resource ({request.resource})")
        if request.action is None:
            raise ApiStatusError(405, "MethodNotAllowed", f"{request.method} is not supported by this emulator")
        if request.subresource not in (None, "status"):
            raise ApiStatusError(404, "NotFound", f"subresource {request.subresource!r} is not emulated")

    @staticmethod
    def _status_body(code: int, reason: str, message: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
        body = {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                "code": code, "reason": reason, "message": message}
        if details:
            body["details"] = dict(details)
        return body

    def _status_response(
        self, code: int, reason: str, message: str, details: Mapping[str, Any] | None = None
    ) -> aiohttp.web.Response:
        return aiohttp.web.json_response(self._status_body(code, reason, message, details), status=code)

    def _validate(self, resource: Any, info: kmock.ResourceInfo, body: Mapping[str, Any]) -> None:
        """Refuse what the API server refuses (tests/kube_validation.py), with its Status body."""
        kind = info.kind or resource.plural.capitalize()
        name = (body.get("metadata") or {}).get("name")
        try:
            kube_validation.check(kind, resource.group or "", resource.version, body)
        except kube_validation.BadRequest as error:
            raise ApiStatusError(400, "BadRequest", str(error)) from None
        except kube_validation.Invalid as error:
            errors = [f"{field}: {message}" for _, field, message in error.causes]
            listed = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
            qualified = f"{kind}.{resource.group}" if resource.group else kind
            details = {"name": name, "group": resource.group or "", "kind": kind, "causes": [
                {"reason": reason, "message": message, "field": field} for reason, field, message in error.causes]}
            raise ApiStatusError(422, "Invalid", f'{qualified} "{name}" is invalid: {listed}', details) from None

    def _admit_pod(self, namespace: str, body: Mapping[str, Any]) -> None:
        """The ServiceAccount admission plugin: a pod's service account must exist ('default' always does)."""
        account = (body.get("spec") or {}).get("serviceAccountName") or (body.get("spec") or {}).get("serviceAccount")
        if not account or account == "default":
            return
        if self._live((kmock.resource("v1/serviceaccounts"), namespace, account)) is None:
            name = (body.get("metadata") or {}).get("name")
            raise ApiStatusError(
                403, "Forbidden",
                f'pods "{name}" is forbidden: error looking up service account {namespace}/{account}: '
                f'serviceaccount "{account}" not found',
                {"name": name, "kind": "pods"},
            )

    # --- bookkeeping --------------------------------------------------------------------------
    def _info(self, resource: Any) -> kmock.ResourceInfo:
        return self.resources[resource]

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _publish(self, resource: Any, kind: str, obj: Mapping[str, Any]) -> None:
        event = {"type": kind, "object": copy.deepcopy(dict(obj))}
        history = self._history.setdefault(resource, collections.deque(maxlen=HISTORY_LIMIT))
        history.append((self._rv, event))
        for queue in self._subscribers[resource]:
            queue.put_nowait(event)

    def _live(self, key: tuple) -> Any:
        obj = self.objects._objects.get(key)  # noqa: SLF001 - the store kmock's own emulator uses
        return None if obj is None or obj.deleted else obj

    def _store(self, key: tuple, body: dict[str, Any]) -> None:
        existing = self.objects._objects.get(key)  # noqa: SLF001
        if existing is None:
            self.objects._objects[key] = kmock.Object(copy.deepcopy(body))  # noqa: SLF001
        else:
            existing.create(copy.deepcopy(body))  # appends a version (or re-creates after deletion)

    # --- single-object requests ----------------------------------------------------------------
    def _serve_object(self, request: rendering.Request) -> tuple[int, Any]:
        if request.action == enums.action.CREATE:
            return self._create(request)
        if request.action == enums.action.UPDATE:
            return self._update(request)
        if request.action == enums.action.DELETE:
            return self._delete(request)
        return self._fetch(request)

    def _fetch(self, request: rendering.Request) -> tuple[int, Any]:
        if request.subresource not in (None, "status"):
            raise ApiStatusError(404, "NotFound", f"subresource {request.subresource!r} is not emulated")
        obj = self._live((request.resource, request.namespace, request.name))
        if obj is None:
            raise ApiStatusError(404, "NotFound", f'{request.resource.plural} "{request.name}" not found')
        return 200, copy.deepcopy(obj.raw)

    def _create(self, request: rendering.Request) -> tuple[int, Any]:
        if not isinstance(request.data, Mapping):
            raise ApiStatusError(400, "BadRequest", "the request body must be a JSON object")
        if request.name is not None:
            raise ApiStatusError(405, "MethodNotAllowed", "POST to a named object is not allowed")
        resource, info = request.resource, self._info(request.resource)
        body = copy.deepcopy(dict(request.data))
        meta = body.setdefault("metadata", {})
        if info.namespaced:
            if request.namespace and meta.get("namespace") not in (None, request.namespace):
                raise ApiStatusError(400, "BadRequest", "the namespace of the object does not match the request")
            namespace = request.namespace or meta.get("namespace")
            if not namespace:
                raise ApiStatusError(400, "BadRequest", "a namespaced object needs a namespace")
            meta["namespace"] = namespace
        else:
            namespace = None
            meta.pop("namespace", None)
        if not meta.get("name"):
            prefix = meta.get("generateName")
            if not prefix:
                raise ApiStatusError(422, "Invalid", "metadata.name or metadata.generateName is required")
            while True:
                meta["name"] = prefix[:58] + "".join(random.choices(_NAME_ALPHABET, k=5))
                if self._live((resource, namespace, meta["name"])) is None:
                    break
        key = (resource, namespace, meta["name"])
        self._validate(resource, info, body)
        if resource == _PODS:
            self._admit_pod(namespace, body)
        if self._live(key) is not None:
            raise ApiStatusError(409, "AlreadyExists", f'{resource.plural} "{meta["name"]}" already exists')
        group_version = f"{resource.group}/{resource.version}" if resource.group else resource.version
        body.setdefault("apiVersion", group_version)
        body.setdefault("kind", info.kind or resource.plural.capitalize())
        for server_side in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(server_side, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1, resourceVersion=self._next_rv())
        if "status" in info.subresources:
            body.pop("status", None)
        body = go_json_numbers(body)
        self._store(key, body)
        self._publish(resource, "ADDED", body)
        if resource == kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions"):
            self._declare_crd(body)
        return 201, body

    def _update(self, request: rendering.Request) -> tuple[int, Any]:
        resource, info = request.resource, self._info(request.resource)
        key = (resource, request.namespace, request.name)
        obj = self._live(key)
        if obj is None:
            raise ApiStatusError(404, "NotFound", f'{resource.plural} "{request.name}" not found')
        current = copy.deepcopy(obj.raw)
        data = request.data
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip()
        if request.method == enums.method.PUT:
            if not isinstance(data, Mapping):
                raise ApiStatusError(400, "BadRequest", "the request body must be a JSON object")
            wanted_rv = (data.get("metadata") or {}).get("resourceVersion")
            updated = copy.deepcopy(dict(data))
        elif content_type == "application/json-patch+json":
            if not isinstance(data, list):
                raise ApiStatusError(400, "BadRequest", "a JSON patch must be a list of operations")
            try:
                updated = jsonpatch.apply_patch(current, data)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as error:
                raise ApiStatusError(422, "Invalid", f"cannot apply the JSON patch: {error}") from None
            wanted_rv = None
        else:
            if not isinstance(data, Mapping):
                raise ApiStatusError(400, "BadRequest", "a merge patch must be a JSON object")
            wanted_rv = (data.get("metadata") or {}).get("resourceVersion")
            updated = merge_patch(current, data)
        if wanted_rv is not None and str(wanted_rv) != current["metadata"]["resourceVersion"]:
            raise ApiStatusError(
                409, "Conflict",
                f'Operation cannot be fulfilled on {resource.plural} "{request.name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )
        if request.subresource == "status":
            result = copy.deepcopy(current)
            if "status" in updated:
                result["status"] = updated["status"]
            else:
                result.pop("status", None)
        else:
            result = updated
            if "status" in info.subresources:
                if "status" in current:
                    result["status"] = current["status"]
                else:
                    result.pop("status", None)
        result = go_json_numbers(result)
        meta = result.setdefault("metadata", {})
        for fixed in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp", "generation"):
            if fixed in current["metadata"]:
                meta[fixed] = current["metadata"][fixed]
            else:
                meta.pop(fixed, None)
        meta["resourceVersion"] = current["metadata"]["resourceVersion"]
        if request.subresource is None:
            self._validate(resource, info, result)
        if result == current:
            return 200, current  # a no-op write changes nothing, not even the version
        if _content(result) != _content(current):
            meta["generation"] = int(current["metadata"].get("generation") or 0) + 1
        meta["resourceVersion"] = self._next_rv()
        self._store(key, result)
        self._publish(resource, "MODIFIED", result)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(key, "Background")
        return 200, result

    def _delete(self, request: rendering.Request) -> tuple[int, Any]:
        resource = request.resource
        key = (resource, request.namespace, request.name)
        obj = self._live(key)
        if obj is None:
            raise ApiStatusError(404, "NotFound", f'{resource.plural} "{request.name}" not found')
        options = request.data if isinstance(request.data, Mapping) else {}
        policy = options.get("propagationPolicy") or request.params.get("propagationPolicy") or "Background"
        if options.get("orphanDependents") is True:
            policy = "Orphan"
        return 200, self._delete_object(key, policy)

    def _delete_object(self, key: tuple, policy: str) -> dict[str, Any]:
        """Delete now, or mark for deletion while finalizers remain; returns the last state."""
        obj = self._live(key)
        body = copy.deepcopy(obj.raw)
        meta = body["metadata"]
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = _now()
                meta["deletionGracePeriodSeconds"] = 0
                meta["resourceVersion"] = self._next_rv()
                self._store(key, body)
                self._publish(key[0], "MODIFIED", body)
            return body
        return self._remove(key, policy)

    def _remove(self, key: tuple, policy: str) -> dict[str, Any]:
        obj = self._live(key)
        body = copy.deepcopy(obj.raw)
        obj.delete()
        body["metadata"]["resourceVersion"] = self._next_rv()
        self._publish(key[0], "DELETED", body)
        if policy != "Orphan":
            self._collect_dependents(body["metadata"].get("uid"))
        return body

    def _collect_dependents(self, uid: str | None) -> None:
        """The garbage collector: dependents of a removed owner go (or lose the reference)."""
        if not uid:
            return
        live_uids = {
            o.raw["metadata"].get("uid") for o in self.objects._objects.values() if not o.deleted  # noqa: SLF001
        }
        for key, obj in list(self.objects._objects.items()):  # noqa: SLF001
            if obj.deleted:
                continue
            refs = obj.raw.get("metadata", {}).get("ownerReferences") or []
            if not any(ref.get("uid") == uid for ref in refs):
                continue
            remaining = [ref for ref in refs if ref.get("uid") != uid]
            if any(ref.get("uid") in live_uids for ref in remaining):
                body = copy.deepcopy(obj.raw)
                body["metadata"]["ownerReferences"] = remaining
                body["metadata"]["resourceVersion"] = self._next_rv()
                self._store(key, body)
                self._publish(key[0], "MODIFIED", body)
            elif self._live(key) is not None:
                self._delete_object(key, "Background")

    def _declare_crd(self, crd: Mapping[str, Any]) -> None:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        for version in spec.get("versions") or ():
            if not version.get("served", True):
                continue
            subresources = set((version.get("subresources") or {}).keys())
            self.resources[kmock.resource(spec["group"], version["name"], names["plural"])] = kmock.ResourceInfo(
                kind=names.get("kind"),
                singular=names.get("singular"),
                namespaced=spec.get("scope") == "Namespaced",
                shortnames=set(names.get("shortNames") or ()),
                categories=set(names.get("categories") or ()),
                subresources=subresources,
                verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
            )

    # --- lists and watches (kmock's fallbacks dispatch to these) -------------------------------
    def _matches(self, request: rendering.Request, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        if request.namespace is not None and meta.get("namespace") != request.namespace:
            return False
        if request.name is not None and meta.get("name") != request.name:
            return False
        return LabelSelector(request.params.get("labelSelector")).matches(meta.get("labels")) and match_fields(
            request.params.get("fieldSelector"), obj
        )

    def _objects_of(self, request: rendering.Request) -> list[dict[str, Any]]:
        found = []
        for (resource, _, _), obj in self.objects._objects.items():  # noqa: SLF001
            if resource == request.resource and not obj.deleted and self._matches(request, obj.raw):
                found.append(copy.deepcopy(obj.raw))
        return found

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        info = self._info(request.resource)
        resource = request.resource
        group_version = f"{resource.group}/{resource.version}" if resource.group else resource.version
        return {
            "apiVersion": group_version,
            "kind": f"{info.kind or resource.plural.capitalize()}List",
            "metadata": {"resourceVersion": str(self._rv)},
            "items": self._objects_of(request),
        }

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        resource = request.resource
        since = request.params.get("resourceVersion") or ""
        timeout = float(request.params.get("timeoutSeconds") or 0) or None
        queue: asyncio.Queue = asyncio.Queue()
        # Snapshot and subscribe with no await in between, so no event falls into a gap.
        if since in ("", "0"):
            backlog = [{"type": "ADDED", "object": obj} for obj in self._objects_of(request)]
        else:
            history = self._history.get(resource) or collections.deque()
            if history and int(since) < history[0][0] - 1 and len(history) == history.maxlen:
                backlog = [{"type": "ERROR", "object": {
                    "apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 410, "reason": "Expired",
                    "message": f"too old resource version: {since}"}}]
            else:
                backlog = [e for rv, e in history if rv > int(since) and self._matches(request, e["object"])]
        self._subscribers[resource].add(queue)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        try:
            yield b""  # send the headers now: the stream is open even if nothing happens
            for event in backlog:
                yield copy.deepcopy(event)
            if backlog and backlog[0]["type"] == "ERROR":
                return
            while True:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return
                try:
                    event = await asyncio.wait_for(queue.get(), remaining)
                except asyncio.TimeoutError:
                    return
                if self._matches(request, event["object"]):
                    yield copy.deepcopy(event)
        finally:
            self._subscribers[resource].discard(queue)

    async def _serve_namespaces(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        names = {"default"} | {ns for (_, ns, _), o in self.objects._objects.items() if ns and not o.deleted}  # noqa: SLF001
        items = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "resourceVersion": "1"},
                  "status": {"phase": "Active"}} for n in sorted(names)]
        if str(raw_request.query.get("watch", "")).lower() not in ("true", "1"):
            body = {"apiVersion": "v1", "kind": "NamespaceList", "metadata": {"resourceVersion": str(self._rv)},
                    "items": items}
            return aiohttp.web.json_response(body)
        response = aiohttp.web.StreamResponse()
        response.content_type = "application/json"
        await response.prepare(raw_request)
        if raw_request.query.get("resourceVersion") in (None, "", "0"):
            for item in items:
                await response.write(json.dumps({"type": "ADDED", "object": item}).encode() + b"\n")
        timeout = float(raw_request.query.get("timeoutSeconds") or 0) or None
        try:
            await asyncio.wait_for(asyncio.Event().wait(), timeout)
        except asyncio.TimeoutError:
            pass
        return response

    # --- conveniences for tests ------------------------------------------------------------
    def declare(self, crd: Mapping[str, Any]) -> None:
        """Make a CRD's resource discoverable without posting it."""
        self._declare_crd(crd)

    def live_objects(self, resource: str | Any, namespace: str | None = None) -> list[dict[str, Any]]:
        """Copies of the live objects of a resource ('batch/v1/jobs', 'v1/pods', ...)."""
        wanted = kmock.resource(resource) if isinstance(resource, str) else resource
        return [
            copy.deepcopy(obj.raw)
            for (res, ns, _), obj in self.objects._objects.items()  # noqa: SLF001
            if res == wanted and not obj.deleted and (namespace is None or ns == namespace)
        ]
