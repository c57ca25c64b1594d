"""What the Kubernetes API server would refuse in a Job's pod template, the spec refuses first.

Each bad value below used to pass `dsel validate` and the CRD, and then made every Job creation
fail with 422, leaving the selection without a phase. The CRD's patterns and CEL rules (checked
here structurally) let the API server refuse the same values at `kubectl apply`."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from selection import crd, kube_values, spec

BASE = {
    "apiVersion": "dsel.dev/v1alpha1", "kind": "DataSelection", "metadata": {"name": "k"},
    "spec": {
        "model": {"source": "tiny:llama-demo"},
        "data": {"train": "s3://bkt/t.jsonl", "validation": [{"task": "x", "uri": "s3://bkt/v.jsonl"}]},
        "selection": {"budget": 10},
    },
}


def with_resources(**resources: Any) -> dict[str, Any]:
    document = copy.deepcopy(BASE)
    document["spec"]["resources"] = resources
    return document


def problems(document: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(spec.SpecError) as caught:
        spec.parse_selection(document)
    return dict(caught.value.problems)


BAD_RESOURCES = [
    ({"cpu": "4 cores"}, "spec.resources.cpu", "not a Kubernetes quantity"),
    ({"memory": "32GB "}, "spec.resources.memory", "not a Kubernetes quantity"),
    ({"memory": "32GB"}, "spec.resources.memory", "not a Kubernetes quantity"),
    ({"cpu": "-1"}, "spec.resources.cpu", "not a Kubernetes quantity"),
    ({"stages": {"reduce": {"memory": "lots"}}}, "spec.resources.stages.reduce.memory", "quantity"),
    ({"cacheSize": "20 GiB"}, "spec.resources.cacheSize", "quantity"),
    ({"tolerations": [{"key": "gpu", "operator": "Exists", "value": "a100"}]},
     "spec.resources.tolerations[0]", "operator Exists matches any value"),
    ({"tolerations": [{"key": "gpu", "operator": "Equal", "value": "x", "effect": "NoSchedule",
                       "tolerationSeconds": 60}]},
     "spec.resources.tolerations[0]", "tolerationSeconds applies to effect NoExecute only"),
    ({"tolerations": [{"operator": "Equal", "value": "x"}]},
     "spec.resources.tolerations[0]", "without a key must use operator Exists"),
    ({"tolerations": [{"key": "bad key", "operator": "Exists"}]},
     "spec.resources.tolerations[0].key", "not a valid Kubernetes label key"),
    ({"nodeSelector": {"gpu type": "a100"}}, "spec.resources.nodeSelector.gpu type.[key]", "label key"),
    ({"nodeSelector": {"gpu": "a 100"}}, "spec.resources.nodeSelector.gpu", "label value"),
    ({"nodeSelector": {"gpu": "x" * 64}}, "spec.resources.nodeSelector.gpu", "label value"),
    ({"queueName": "team a"}, "spec.resources.queueName", "not a valid Kubernetes label value"),
    ({"pod": {"labels": {"team": "ml team"}}}, "spec.resources.pod.labels.team", "label value"),
    ({"pod": {"priorityClassName": "High"}}, "spec.resources.pod.priorityClassName", "object name"),
]


@pytest.mark.parametrize(("resources", "path", "message"), BAD_RESOURCES,
                         ids=[repr(r)[:50] for r, _, _ in BAD_RESOURCES])
def test_values_the_api_server_refuses_are_refused_with_their_field(resources, path, message):
    found = problems(with_resources(**resources))
    assert path in found, found
    assert message in found[path]


def test_values_the_api_server_accepts_pass():
    resource = spec.parse_selection(with_resources(
        cpu="500m", memory="32Gi", cacheSize="1e11", scratchSize="1.5Gi",
        nodeSelector={"kubernetes.io/arch": "amd64", "nvidia.com/gpu.product": "A100-SXM4-80GB"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                     {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoExecute",
                      "tolerationSeconds": 300},
                     {"operator": "Exists"}],
        queueName="team-a.gpu_queue",
        stages={"reduce": {"cpu": "2", "memory": "8Gi", "gpus": 0}},
        pod={"labels": {"team": "ml"}, "priorityClassName": "batch-high"},
    ))
    assert resource.spec.resources.stages.reduce.memory == "8Gi"


@pytest.mark.parametrize(("text", "value"), [
    ("1Gi", 2**30), ("500m", 0.5), ("4", 4), ("1e3", 1000), ("1.5Ki", 1536), ("2k", 2000),
])
def test_quantities_have_their_kubernetes_value(text, value):
    assert kube_values.quantity_value(text) == value


# --- the CRD refuses the same values at apply time ------------------------------------------------


def schema_at(*path: str) -> dict[str, Any]:
    node = crd.spec_openapi_schema()
    for key in path:
        node = node["items"] if key == "[]" else node["properties"][key]
    return node


@pytest.mark.parametrize(("path", "bad", "good"), [
    (("resources", "cpu"), "4 cores", "500m"),
    (("resources", "memory"), "32GB ", "32Gi"),
    (("resources", "stages", "extract", "memory"), "32GB", "32G"),
    (("resources", "queueName"), "team a", "team-a"),
    (("resources", "tolerations", "[]", "value"), "a b", "a-b"),
    (("resources", "tolerations", "[]", "key"), "bad key", "nvidia.com/gpu"),
])
def test_crd_patterns_refuse_what_the_spec_refuses(path, bad, good):
    node = schema_at(*path)
    pattern = re.compile(node["pattern"])
    assert not pattern.search(bad) and pattern.search(good)


def test_crd_checks_node_selector_and_label_values():
    for path in (("resources", "nodeSelector"), ("resources", "pod", "labels")):
        values = schema_at(*path)["additionalProperties"]
        assert values["maxLength"] == 63 and not re.search(values["pattern"], "a 100")
        assert "patternProperties" not in schema_at(*path)  # not structural: the API server refuses it


def test_crd_carries_the_toleration_and_budget_rules():
    rules = [r["rule"] for r in schema_at("resources", "tolerations", "[]")["x-kubernetes-validations"]]
    assert any("Exists" in r and "self.value" in r for r in rules)
    assert any("tolerationSeconds" in r and "NoExecute" in r for r in rules)
    assert schema_at("resources", "tolerations")["maxItems"] <= 64  # bounds the rules' CEL cost
    (budget_rule,) = schema_at("selection")["x-kubernetes-validations"]
    assert budget_rule["rule"] == "has(self.budget) != has(self.fraction)"


def test_nullable_enums_accept_an_explicit_null():
    """The API server checks `enum` even for null; a nullable enum must list null itself."""
    found = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if node.get("nullable") and "enum" in node:
                found.append(where)
                assert None in node["enum"], f"{where}: nullable enum without null"
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for item in node:
                walk(item, where)

    walk(crd.build_crd(), "crd")
    assert len(found) >= 2  # toleration operator and effect at least


# --- the budget's form survives the API server ---------------------------------------------------


def go_json(value: Any) -> Any:
    """What the API server's Go JSON encoding makes of a document: 1.0 is written as 1."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: go_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [go_json(v) for v in value]
    return value


def test_a_whole_pool_fraction_survives_the_api_server_round_trip():
    document = copy.deepcopy(BASE)
    document["spec"]["selection"] = {"fraction": 1.0}
    stored = go_json(json.loads(json.dumps(document)))
    assert stored["spec"]["selection"]["fraction"] == 1 and isinstance(stored["spec"]["selection"]["fraction"], int)
    budget = spec.parse_selection(stored).spec.selection.budget
    assert budget == 1.0 and isinstance(budget, float)  # the whole pool, not one example
    # And the operator's own round trip (arguments ConfigMap) keeps the form.
    again = spec.parse_selection(go_json(spec.parse_selection(stored).to_manifest()))
    assert again.spec.selection.budget == 1.0 and isinstance(again.spec.selection.budget, float)


def test_an_ambiguous_float_budget_is_refused_and_names_the_fix():
    document = copy.deepcopy(BASE)
    document["spec"]["selection"] = {"budget": 1.0}
    message = problems(document)["spec.selection.budget"]
    assert "ambiguous" in message and "fraction: 1.0" in message


def test_a_legacy_fractional_budget_is_still_read():
    document = copy.deepcopy(BASE)
    document["spec"]["selection"] = {"budget": 0.05}
    assert spec.parse_selection(go_json(document)).spec.selection.budget == 0.05


@pytest.mark.parametrize("selection", [{}, {"budget": 3, "fraction": 0.5}])
def test_exactly_one_budget_form(selection):
    document = copy.deepcopy(BASE)
    document["spec"]["selection"] = selection
    assert "exactly one of budget" in problems(document)["spec.selection"]


# --- the CRD's CEL rules say what the spec model says ---------------------------------------------


def cel_rules(node: dict[str, Any]) -> list[Any]:
    """The node's x-kubernetes-validations, compiled by a CEL implementation (cel-python)."""
    import celpy

    environment = celpy.Environment()
    return [(rule["rule"], environment.program(environment.compile(rule["rule"])))
            for rule in node["x-kubernetes-validations"]]


def cel_accepts(rules: list[Any], value: dict[str, Any]) -> bool:
    import celpy

    return all(bool(program.evaluate({"self": celpy.json_to_cel(value)})) for _, program in rules)


TOLERATIONS = [
    {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "gpu", "operator": "Exists", "value": "a100"},
    {"key": "gpu", "operator": "Exists", "value": ""},
    {"key": "gpu", "operator": "Equal", "value": "a100"},
    {"key": "gpu", "value": "a100", "effect": "NoSchedule"},
    {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoExecute", "tolerationSeconds": 30},
    {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoSchedule", "tolerationSeconds": 30},
    {"key": "spot", "tolerationSeconds": 30},
    {"operator": "Exists"},
    {"operator": "Equal", "value": "x"},
    {"value": "x"},
]


@pytest.mark.parametrize("toleration", TOLERATIONS, ids=[json.dumps(t) for t in TOLERATIONS])
def test_toleration_cel_rules_agree_with_the_spec_model(toleration):
    rules = cel_rules(schema_at("resources", "tolerations", "[]"))
    try:
        spec.parse_selection(with_resources(tolerations=[toleration]))
        model_accepts = True
    except spec.SpecError:
        model_accepts = False
    assert cel_accepts(rules, toleration) == model_accepts


@pytest.mark.parametrize(("selection", "valid"), [
    ({"budget": 10}, True), ({"fraction": 0.5}, True), ({}, False), ({"budget": 10, "fraction": 0.5}, False),
])
def test_budget_cel_rule_agrees_with_the_spec_model(selection, valid):
    assert cel_accepts(cel_rules(schema_at("selection")), selection) == valid
