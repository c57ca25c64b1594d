"""What the API server refuses on create and update, for the fields dsel's objects carry.

`tests.support.kube_emulator.KubeEmulator` calls `check(kind, group, version, body)` before it stores an object and answers what a real
API server (1.29-1.34) answers:

* **400 BadRequest** when the body cannot even be decoded into the typed object: a quantity
  (`resources.requests/limits`) that is not a Kubernetes quantity ("4 cores", "32GB ") fails in
  the decoder, before validation, with
  `Job in version "v1" cannot be handled as a Job: quantities must match the regular expression
  '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'`;
* **422 Invalid** with `details.causes` (reason, message, field) for validation errors: object
  names, label keys and values (metadata, pod templates, nodeSelector), tolerations (operator,
  effect, key, value, tolerationSeconds), service account names, Job fields (restartPolicy,
  backoffLimitPerIndex, maxFailedIndexes).

The messages are the apimachinery validation messages, so an operator that quotes the API's
message shows what a user would see on a real cluster.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["Invalid", "BadRequest", "check"]

QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")
# The decoder's stricter parse after the regex: a number and one known suffix.
_QUANTITY_STRICT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")
_QUANTITY_REGEX_TEXT = "^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_VALUE_ERROR = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or "
    "'12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)
_QUALIFIED_NAME_ERROR = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with "
    "an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation "
    "is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
_SUBDOMAIN_ERROR = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


class BadRequest(Exception):
    """The body cannot be decoded (400): no causes, one message."""


class Invalid(Exception):
    """Validation failed (422); `causes` are (reason, field, message) in the API's order."""

    def __init__(self, causes: list[tuple[str, str, str]]):
        super().__init__("; ".join(f"{field}: {message}" for _, field, message in causes))
        self.causes = causes


def _quote(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value).lower() if isinstance(value, bool) else str(value)


class _Errors:
    def __init__(self) -> None:
        self.causes: list[tuple[str, str, str]] = []

    def invalid(self, field: str, value: Any, detail: str) -> None:
        self.causes.append(("FieldValueInvalid", field, f"Invalid value: {_quote(value)}: {detail}"))

    def unsupported(self, field: str, value: Any, supported: tuple[str, ...]) -> None:
        listed = ", ".join(f'"{s}"' for s in supported)
        self.causes.append(("FieldValueNotSupported", field, f"Unsupported value: {_quote(value)}: supported values: {listed}"))

    def required(self, field: str, detail: str = "") -> None:
        self.causes.append(("FieldValueRequired", field, "Required value" + (f": {detail}" if detail else "")))


def _check_qualified_name(errors: _Errors, field: str, key: Any) -> bool:
    """A label key or toleration key: [prefix/]name (apimachinery IsQualifiedName)."""
    if not isinstance(key, str) or not key:
        errors.invalid(field, key, "name part must be non-empty")
        return False
    prefix, slash, name = key.rpartition("/")
    ok = True
    if slash:
        if not prefix:
            errors.invalid(field, key, "prefix part must be non-empty")
            ok = False
        elif len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix):
            errors.invalid(field, key, "prefix part " + _SUBDOMAIN_ERROR)
            ok = False
    if not name:
        errors.invalid(field, key, "name part must be non-empty")
        return False
    if len(name) > 63:
        errors.invalid(field, key, "name part must be no more than 63 characters")
        ok = False
    if not _QUALIFIED_NAME.match(name):
        errors.invalid(field, key, _QUALIFIED_NAME_ERROR)
        ok = False
    return ok


def _check_label_value(errors: _Errors, field: str, value: Any) -> None:
    if not isinstance(value, str):
        errors.invalid(field, value, "must be a string")
        return
    if len(value) > 63:
        errors.invalid(field, value, "must be no more than 63 characters")
    if not _LABEL_VALUE.match(value):
        errors.invalid(field, value, _LABEL_VALUE_ERROR)


def _check_labels(errors: _Errors, field: str, labels: Any) -> None:
    for key, value in (labels or {}).items():
        _check_qualified_name(errors, field, key)
        _check_label_value(errors, field, value)


def _check_name(errors: _Errors, meta: Mapping[str, Any], label_length: bool) -> None:
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        return  # generateName is expanded before; a missing name is answered elsewhere
    if len(name) > 253:
        errors.invalid("metadata.name", name, "must be no more than 253 characters")
    elif label_length and len(name) > 63:
        errors.invalid("metadata.name", name, "must be no more than 63 characters")
    if not _DNS1123_SUBDOMAIN.match(name):
        errors.invalid("metadata.name", name, _SUBDOMAIN_ERROR)


def _check_quantities(kind: str, version: str, pod_spec: Mapping[str, Any]) -> None:
    for key in ("containers", "initContainers"):
        for container in pod_spec.get(key) or ():
            resources = container.get("resources") or {}
            for section in ("requests", "limits"):
                for value in (resources.get(section) or {}).values():
                    text = value if isinstance(value, str) else str(value)
                    if not QUANTITY.match(text) or not _QUANTITY_STRICT.match(text):
                        raise BadRequest(
                            f"{kind} in version \"{version}\" cannot be handled as a {kind}: quantities must "
                            f"match the regular expression '{_QUANTITY_REGEX_TEXT}'"
                        )


def _check_tolerations(errors: _Errors, field: str, tolerations: Any) -> None:
    for position, toleration in enumerate(tolerations or ()):
        here = f"{field}[{position}]"
        key = toleration.get("key") or ""
        operator = toleration.get("operator") or "Equal"
        value = toleration.get("value") or ""
        effect = toleration.get("effect") or ""
        if key:
            _check_qualified_name(errors, f"{here}.key", key)
        if not key and operator != "Exists":
            errors.invalid(f"{here}.operator", operator,
                           "operator must be Exists when `key` is empty, which means \"match all values and all keys\"")
        if toleration.get("tolerationSeconds") is not None and effect != "NoExecute":
            errors.invalid(f"{here}.effect", effect, "effect must be 'NoExecute' when `tolerationSeconds` is set")
        if operator == "Equal":
            _check_label_value(errors, f"{here}.operator", value)
        elif operator == "Exists":
            if value:
                errors.invalid(f"{here}.operator", toleration, "value must be empty when `operator` is 'Exists'")
        else:
            errors.unsupported(f"{here}.operator", operator, ("Equal", "Exists"))
        if effect and effect not in _TOLERATION_EFFECTS:
            errors.unsupported(f"{here}.effect", effect, _TOLERATION_EFFECTS)


def _check_pod_spec(errors: _Errors, field: str, pod_spec: Mapping[str, Any], job: bool) -> None:
    restart = pod_spec.get("restartPolicy") or "Always"
    if job and restart not in ("Never", "OnFailure"):
        errors.unsupported(f"{field}.restartPolicy", restart, ("OnFailure", "Never"))
    for position, container in enumerate(pod_spec.get("containers") or ()):
        if not container.get("image"):
            errors.required(f"{field}.containers[{position}].image")
    _check_labels(errors, f"{field}.nodeSelector", pod_spec.get("nodeSelector"))
    account = pod_spec.get("serviceAccountName")
    if account and (len(account) > 253 or not _DNS1123_SUBDOMAIN.match(account)):
        errors.invalid(f"{field}.serviceAccountName", account, _SUBDOMAIN_ERROR)
    _check_tolerations(errors, f"{field}.tolerations", pod_spec.get("tolerations"))


def _check_job_spec(errors: _Errors, spec: Mapping[str, Any]) -> None:
    per_index = spec.get("backoffLimitPerIndex")
    max_failed = spec.get("maxFailedIndexes")
    indexed = spec.get("completionMode") == "Indexed"
    if per_index is not None and not indexed:
        errors.invalid("spec.backoffLimitPerIndex", per_index, "requires indexed completion mode")
    if max_failed is not None:
        if per_index is None:
            errors.required("spec.backoffLimitPerIndex", "when maxFailedIndexes is specified")
        completions = spec.get("completions")
        if completions is not None and max_failed > completions:
            errors.invalid("spec.maxFailedIndexes", max_failed, "must be less than or equal to completions")


def check(kind: str, group: str, version: str, body: Mapping[str, Any]) -> None:
    """Raise BadRequest or Invalid when a real API server would refuse `body`."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    pod_spec = None
    template_field = ""
    if group == "batch" and kind == "Job":
        pod_spec = (spec.get("template") or {}).get("spec") or {}
        template_field = "spec.template.spec"
    elif group == "" and kind == "Pod":
        pod_spec = spec
        template_field = "spec"
    if pod_spec is not None:
        _check_quantities(kind, version, pod_spec)
    errors = _Errors()
    # A Job's name becomes the value of its pods' job-name label, so it is held to 63 characters.
    _check_name(errors, meta, label_length=kind == "Job" and group == "batch")
    _check_labels(errors, "metadata.labels", meta.get("labels"))
    if group == "batch" and kind == "Job":
        template_meta = (spec.get("template") or {}).get("metadata") or {}
        _check_labels(errors, "spec.template.metadata.labels", template_meta.get("labels"))
        _check_job_spec(errors, spec)
    if pod_spec is not None:
        _check_pod_spec(errors, template_field, pod_spec, job=kind == "Job")
    if errors.causes:
        raise Invalid(errors.causes)
