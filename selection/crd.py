"""The DataSelection CustomResourceDefinition, generated from the spec model (`dsel crd`).

One source of truth: the pydantic model in `selection.spec` defines the fields, their types,
defaults and descriptions; this module turns its JSON Schema into a structural OpenAPI v3
schema (refs inlined, nullable instead of anyOf-null, no titles) that Kubernetes accepts and
`kubectl explain` can show.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import yaml

from selection import spec as spec_module

STATUS_DESCRIPTION = (
    "Observed state, written by the operator: phase, conditions, per-stage progress, artifact "
    "URIs and the selection summary."
)

_STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": STATUS_DESCRIPTION,
    "x-kubernetes-preserve-unknown-fields": True,
    "properties": {
        "phase": {
            "type": "string",
            "description": "Pending, Warmup, Extracting, Reducing, Succeeded or Failed.",
        },
        "progress": {"type": "string", "description": "Human-readable progress of the current stage."},
        "waiting": {
            "type": "string",
            "description": "Why the running stage's pods do not run (e.g. CreateContainerConfigError, "
            "ImagePullBackOff, Unschedulable, FailedCreate, or Kueue's reason); absent while they run.",
        },
        "observedGeneration": {"type": "integer", "format": "int64"},
        "startTime": {"type": "string", "format": "date-time"},
        "completionTime": {"type": "string", "format": "date-time"},
        "conditions": {
            "type": "array",
            "description": "Job-style conditions (Complete, Failed, ...): `kubectl wait` works on them.",
            "items": {
                "type": "object",
                "required": ["type", "status"],
                "properties": {
                    "type": {"type": "string"},
                    "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                    "reason": {"type": "string"},
                    "message": {"type": "string"},
                    "lastTransitionTime": {"type": "string", "format": "date-time"},
                    "observedGeneration": {"type": "integer", "format": "int64"},
                },
            },
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
        "selection": {
            "type": "object",
            "description": "The result: method, budget, count, composition, URIs and the indices.",
            "x-kubernetes-preserve-unknown-fields": True,
            "properties": {
                "method": {"type": "string"},
                "budget": {"type": "integer"},
                "count": {"type": "integer"},
                "uri": {"type": "string", "description": "Full selection.json in the artifact store."},
                "subsetUri": {"type": "string", "description": "The selected lines as JSONL."},
            },
        },
    },
}

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progress"},
    {"name": "Selected", "type": "integer", "jsonPath": ".status.selection.count"},
    {"name": "Waiting", "type": "string", "jsonPath": ".status.waiting"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _resolve(node: Any, definitions: dict[str, Any]) -> Any:
    """Inline $refs and rewrite JSON-Schema-isms Kubernetes rejects into structural OpenAPI."""
    if isinstance(node, list):
        return [_resolve(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = definitions[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**copy.deepcopy(target), **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, definitions)
    node = {k: v for k, v in node.items() if k not in ("title", "$defs")}
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]  # Kubernetes prunes unknown fields itself; false is rejected
    if "patternProperties" in node:
        # Map keys checked by a pattern (label keys): structural schemas have no key patterns,
        # so the CRD checks the values and the spec model (run by the operator) the keys.
        (values,) = node.pop("patternProperties").values()
        node.pop("propertyNames", None)
        node["additionalProperties"] = values
    if node.get("additionalProperties") is True:
        del node["additionalProperties"]  # free-form object: kept as written, never pruned
        node["x-kubernetes-preserve-unknown-fields"] = True
    if "anyOf" in node:
        options = node.pop("anyOf")
        nullable = any(o.get("type") == "null" for o in options)
        concrete = [o for o in options if o.get("type") != "null"]
        types = {o.get("type") for o in concrete}
        if types == {"integer", "number"}:
            chosen: dict[str, Any] = {"type": "number"}
        elif len(concrete) == 1:
            chosen = _resolve(concrete[0], definitions)
        else:
            raise ValueError(f"cannot express anyOf {options} as a structural schema")
        node = {**chosen, **node}
        if nullable:
            node["nullable"] = True
            if "enum" in node and None not in node["enum"]:
                # The API server checks the enum even for null: without it, an explicit
                # `operator: null` (what many generators write) is refused.
                node["enum"] = [*node["enum"], None]
        if node.get("default", "absent") is None:
            del node["default"]
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), (int, float)) and not isinstance(node[bound], bool):
            node[limit] = node.pop(bound)  # JSON Schema's number form -> OpenAPI v3.0's flag form
            node[bound] = True
    if "const" in node:
        node["enum"] = [node.pop("const")]
    return {key: _resolve(value, definitions) for key, value in node.items()}


def spec_openapi_schema() -> dict[str, Any]:
    """The spec section's structural OpenAPI v3 schema."""
    schema = spec_module.spec_json_schema()
    definitions = schema.get("$defs", {})
    resolved = _resolve(schema, definitions)
    resolved["description"] = (spec_module.DataSelectionSpec.__doc__ or "").strip()
    return resolved


def build_crd() -> dict[str, Any]:
    """The full CustomResourceDefinition object."""
    group, plural = spec_module.API_GROUP, spec_module.PLURAL
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {
                "kind": spec_module.KIND,
                "listKind": f"{spec_module.KIND}List",
                "plural": plural,
                "singular": spec_module.KIND.lower(),
                "shortNames": ["dsel"],
                "categories": ["all"],
            },
            "versions": [
                {
                    "name": spec_module.API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (
                                "DataSelection picks a capability-balanced subset of an instruction-"
                                "tuning pool by gradient influence (LESS features, BIDS reduction)."
                            ),
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_openapi_schema(),
                                "status": copy.deepcopy(_STATUS_SCHEMA),
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = "# Generated by `dsel crd` from selection/spec.py. Do not edit by hand.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


def add_crd_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "crd",
        help="print the DataSelection CustomResourceDefinition (YAML)",
        description="Print the CRD generated from the spec model; the Helm chart ships this file.",
    )
    parser.set_defaults(handler=lambda args: print(crd_yaml(), end="") or 0)
