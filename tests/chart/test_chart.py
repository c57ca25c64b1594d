"""charts/dsel through the real Helm engine: lint, values schema, render, Kubernetes schemas, and
what the rendered objects promise (least-privilege RBAC, a hardened single-replica operator, the
settings contract with the operator, the generated CRD)."""

from __future__ import annotations

import copy
import importlib
import re
import tomllib
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from selection import crd as crd_module
from tests.chart.helmchart import (
    CHART_DIR,
    NAMESPACE,
    RELEASE,
    REPO_ROOT,
    VALUE_SETS,
    by_kind,
    manifests,
    one,
    render,
)

CRD_FILE = CHART_DIR / "crds" / "dataselections.dsel.dev.yaml"
CRD = crd_module.build_crd()
GROUP = CRD["spec"]["group"]
PLURAL = CRD["spec"]["names"]["plural"]

# What the operator may do in a namespace it serves: (apiGroup, resource, verb). Exactly this,
# nothing more: kopf + the operator's Jobs, ConfigMaps, Events, and read-only pods and logs.
# What the operator calls, recorded in tests/controller/test_rbac.py (which compares both ways).
NAMESPACED_GRANTS = {
    *((GROUP, PLURAL, verb) for verb in ("get", "list", "watch", "patch")),
    (GROUP, f"{PLURAL}/status", "patch"),
    (GROUP, f"{PLURAL}/finalizers", "update"),
    *(("batch", "jobs", verb) for verb in ("create", "list", "watch", "patch")),
    ("", "configmaps", "create"), ("", "configmaps", "get"),
    ("", "events", "create"), ("", "events", "list"),
    ("", "pods", "list"), ("", "pods/log", "get"),
    ("", "secrets", "get"),
    ("kueue.x-k8s.io", "workloads", "list"),
}
CRD_READ_GRANTS = {("apiextensions.k8s.io", "customresourcedefinitions", verb) for verb in ("list", "watch")}
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}

# The operator's settings (selection_operator/settings.py reads these names).
SETTINGS_ENV = {
    "DSEL_WORKER_IMAGE", "DSEL_DEFAULT_STORAGE_URI", "DSEL_S3_ENDPOINT", "DSEL_S3_REGION",
    "DSEL_S3_CREDENTIALS_SECRET", "DSEL_METRICS_PORT", "DSEL_LOG_LEVEL",
    "DSEL_WORKER_SERVICE_ACCOUNT", "DSEL_JOB_TTL_SECONDS", "DSEL_POD_START_GRACE_SECONDS",
    "DSEL_WORKER_IMAGE_PULL_SECRETS",
    "DSEL_WORKER_DEFAULT_MEMORY", "DSEL_CONFINE_STORAGE", "DSEL_ALLOWED_STORAGE_PREFIXES",
    "DSEL_ALLOWED_S3_ENDPOINTS", "DSEL_ALLOWED_IMAGES", "DSEL_ALLOWED_TOLERATION_KEYS",
    "DSEL_ALLOWED_NODE_SELECTOR_KEYS", "DSEL_MAX_SHARDS",
}
OPERATOR_SETTINGS_MODULE = REPO_ROOT / "operator" / "selection_operator" / "settings.py"
NAMESPACED_KINDS = {"Deployment", "Service", "ServiceAccount", "Role", "RoleBinding",
                    "ServiceMonitor"}
CHART_META = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
# Kubernetes versions to validate against: the chart's floor (Chart.yaml kubeVersion) and the
# newest schema kubernetes-validate bundles.
MIN_KUBE = re.search(r"(\d+\.\d+)", CHART_META["kubeVersion"]).group(1)
KUBE_VERSIONS = [MIN_KUBE, kubernetes_validate.utils.latest_version()]

value_sets = pytest.mark.parametrize("values", list(VALUE_SETS.values()), ids=list(VALUE_SETS))


def grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb)
            for rule in role["rules"]
            for group in rule.get("apiGroups", [])
            for resource in rule.get("resources", [])
            for verb in rule["verbs"]}


def deployment(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "Deployment")


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (operator,) = deployment(objects)["spec"]["template"]["spec"]["containers"]
    return operator


def env(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container(objects)["env"]}


def bound_roles(objects: list[dict[str, Any]], service_account: str) -> list[dict[str, Any]]:
    """Every Role/ClusterRole some binding grants to the operator's ServiceAccount."""
    roles = {(obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]): obj
             for obj in objects if obj["kind"] in ("Role", "ClusterRole")}
    found = []
    for binding in by_kind(objects, "RoleBinding") + by_kind(objects, "ClusterRoleBinding"):
        subjects = binding["subjects"]
        if not any(s["kind"] == "ServiceAccount" and s["name"] == service_account
                   and s["namespace"] == NAMESPACE for s in subjects):
            continue
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace") if ref["kind"] == "Role" else None
        key = (ref["kind"], namespace, ref["name"])
        assert key in roles, f"{binding['metadata']['name']} refers to a missing {key}"
        found.append(roles[key])
    return found


# --- Helm: lint, schema, render ------------------------------------------------------------------


@value_sets
def test_lint_is_clean(values: dict[str, Any]) -> None:
    report = helm_python.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE,
                              kube_version=f"v{MIN_KUBE}.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


@value_sets
def test_values_pass_the_schema(chart: helm_python.Chart, values: dict[str, Any]) -> None:
    chart.validate_schema(values)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"replicaCount": "two"}, "at '/replicaCount': got string, want integer"),
        ({"replicaCount": 11}, "at '/replicaCount': maximum: got 11, want 10"),
        ({"watchNamespaces": "team-a"}, "at '/watchNamespaces': got string, want array"),
        ({"watchNamespaces": ["Team_A"]}, "at '/watchNamespaces/0'"),
        ({"metrics": {"enabled": "yes"}}, "at '/metrics/enabled': got string, want boolean"),
        ({"metrics": {"port": "9090"}}, "at '/metrics/port': got string, want integer"),
        ({"logLevel": "LOUD"}, "at '/logLevel': value must be one of"),
        ({"image": {"digest": "latest"}}, "at '/image/digest'"),
        ({"resources": {"requests": {"cpu": "lots"}}}, "at '/resources/requests/cpu'"),
        ({"securityContext": {"readOnlyRootFilesystem": "yes"}},
         "at '/securityContext/readOnlyRootFilesystem': got string, want boolean"),
        ({"replicas": 1}, "additional properties 'replicas' not allowed"),
        ({"worker": {"imageTag": "x"}}, "additional properties 'imageTag' not allowed"),
        ({"worker": {"defaultMemory": "4 GB"}}, "at '/worker/defaultMemory'"),
        ({"worker": {"imagePullSecrets": ["regcred"]}}, "at '/worker/imagePullSecrets/0'"),
        ({"storage": {"allowedPrefixes": ["/mnt/data"]}}, "at '/storage/allowedPrefixes/0'"),
        ({"s3": {"allowedEndpoints": ["minio:9000"]}}, "at '/s3/allowedEndpoints/0'"),
        ({"policy": {"maxShards": 0}}, "at '/policy/maxShards'"),
        ({"policy": {"allowedImages": "ghcr.io/acme/"}}, "at '/policy/allowedImages'"),
    ],
    ids=lambda v: repr(v)[:40],
)
def test_wrong_values_are_rejected_with_a_clear_message(
    chart: helm_python.Chart, values: dict[str, Any], expected: str
) -> None:
    with pytest.raises(helm_python.HelmValuesError) as schema_error:
        chart.validate_schema(values)
    assert expected in str(schema_error.value)
    # What `helm install` / `helm template` do with the same values: refuse, same message.
    with pytest.raises(helm_python.HelmValuesError) as render_error:
        render(chart, values)
    assert expected in str(render_error.value)


@pytest.mark.parametrize("flags", [
    ["watchNamespaces={ml-team}"],
    ["imagePullSecrets[0].name=regcred", "image.digest=sha256:" + "0" * 64],
    ["metrics.enabled=true", "metrics.serviceMonitor.enabled=true"],
    ["s3.credentialsSecret=", "worker.jobTTLSecondsAfterFinished=null"],  # shell: ="" -> =
    ["rbac.crdReadAccess=false", "rbac.aggregateToDefaultRoles=false"],
    ["worker.imagePullSecrets[0].name=regcred"],
    ["replicaCount=2"],
    ["worker.defaultMemory=16Gi"],
    ["storage.defaultUri=s3://my-bucket/dsel", "storage.confineToNamespace=true"],
    # Two --set flags filling one list, as Helm merges them into one value tree.
    ["storage.allowedPrefixes[0]=s3://shared/tenants/{namespace},storage.allowedPrefixes[1]=ml=s3://ml-artifacts",
     "s3.allowedEndpoints={https://s3.internal}"],
    ["policy.allowedImages={ghcr.io/acme/}", "policy.allowedTolerationKeys={nvidia.com/gpu}",
     "policy.allowedNodeSelectorKeys={nvidia.com/gpu.product}", "policy.maxShards=64"],
])
def test_documented_set_flags_are_accepted(chart: helm_python.Chart, flags: list[str]) -> None:
    """The `--set` examples in docs/kubernetes.md and values.yaml, parsed as Helm's CLI does."""
    values: dict[str, Any] = {}
    for flag in flags:
        parsed = helm_python.parse_set_string(flag)
        values = _deep_merge(values, parsed)
    chart.validate_schema(values)
    assert manifests(chart, values)


def test_documented_bad_set_flag_is_rejected(chart: helm_python.Chart) -> None:
    with pytest.raises(helm_python.HelmValuesError, match="got string, want integer"):
        render(chart, helm_python.parse_set_string("replicaCount=two"))


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def test_every_values_key_has_a_comment() -> None:
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    undocumented = []
    for number, line in enumerate(lines):
        if not re.match(r"^\s*[A-Za-z][\w.-]*:", line) or "#" in line:
            continue
        above = [text.strip() for text in lines[:number] if text.strip()]
        previous = above[-1] if above else ""
        if not previous.startswith("#"):
            undocumented.append(f"values.yaml:{number + 1}: {line.strip()}")
    assert not undocumented, "keys without a comment above them:\n" + "\n".join(undocumented)


def test_every_values_key_is_typed_by_the_schema(chart: helm_python.Chart) -> None:
    schema = chart.schema
    assert schema is not None

    def walk(values: Any, node: dict[str, Any], path: str) -> list[str]:
        missing = []
        properties = node.get("properties")
        if isinstance(values, dict) and properties is not None:
            for key, value in values.items():
                if key not in properties:
                    missing.append(f"{path}/{key}")
                else:
                    assert "type" in properties[key] or "oneOf" in properties[key], f"{path}/{key}"
                    missing.extend(walk(value, properties[key], f"{path}/{key}"))
        return missing

    assert walk(chart.values, schema, "") == []
    assert schema.get("additionalProperties") is False, "unknown top-level keys must be rejected"


@value_sets
def test_rendered_objects_are_valid_kubernetes(
    chart: helm_python.Chart, values: dict[str, Any]
) -> None:
    objects = manifests(chart, values)
    assert objects
    for obj in objects:
        if obj["kind"] == "ServiceMonitor":
            continue  # a prometheus-operator CRD, not in the Kubernetes schemas: checked below
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                where = ".".join(str(p) for p in error.path)
                pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes "
                            f"{version} at {where}: {error.message}")


def test_the_kubernetes_validator_catches_a_typo(chart: helm_python.Chart) -> None:
    """The negative control: the schema validation above would notice a misspelt field."""
    broken = copy.deepcopy(deployment(manifests(chart, {})))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonroot"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, MIN_KUBE, strict=True)


@value_sets
def test_every_object_is_labelled_and_placed(
    chart: helm_python.Chart, values: dict[str, Any]
) -> None:
    watched = set(values.get("watchNamespaces", []))
    for obj in manifests(chart, values):
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/name"] == "dsel"
        namespace = obj["metadata"].get("namespace")
        if obj["kind"] in NAMESPACED_KINDS:
            allowed = {NAMESPACE} | (watched if obj["kind"] in ("Role", "RoleBinding") else set())
            assert namespace in allowed, f"{obj['kind']}/{obj['metadata']['name']} in {namespace}"
        else:
            assert namespace is None, f"cluster-scoped {obj['kind']} with a namespace"


def test_chart_app_version_is_the_package_version() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert str(CHART_META["appVersion"]) == project["version"]


# --- The CRD ------------------------------------------------------------------------------------


def test_chart_crd_is_the_generated_one(chart: helm_python.Chart) -> None:
    assert CRD_FILE.read_text() == crd_module.crd_yaml(), (
        "charts/dsel/crds/ drifted from selection/spec.py: run scripts/update-crd.sh")
    # Helm sees exactly this one CRD and installs it before the templates.
    assert [(c["name"], c["data"]) for c in chart.crds] == [
        ("crds/dataselections.dsel.dev.yaml", crd_module.crd_yaml())]


def test_crd_identity() -> None:
    shipped = yaml.safe_load(CRD_FILE.read_text())
    assert shipped["kind"] == "CustomResourceDefinition"
    assert shipped["metadata"]["name"] == "dataselections.dsel.dev"
    spec = shipped["spec"]
    assert (spec["group"], spec["scope"]) == ("dsel.dev", "Namespaced")
    assert spec["names"]["kind"] == "DataSelection"
    assert spec["names"]["plural"] == "dataselections"
    assert "dsel" in spec["names"]["shortNames"]  # `kubectl get dsel -w` in the docs and NOTES
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    for kube in KUBE_VERSIONS:
        kubernetes_validate.validate(shipped, kube, strict=True)


def test_demo_resource_matches_the_crd() -> None:
    demo = yaml.safe_load((REPO_ROOT / "examples" / "demo" / "dataselection.yaml").read_text())
    assert demo["apiVersion"] == f"{GROUP}/{CRD['spec']['versions'][0]['name']}"
    assert demo["kind"] == CRD["spec"]["names"]["kind"]


# --- RBAC ---------------------------------------------------------------------------------------


@value_sets
def test_no_wildcards_anywhere(chart: helm_python.Chart, values: dict[str, Any]) -> None:
    objects = manifests(chart, values)
    for role in by_kind(objects, "Role") + by_kind(objects, "ClusterRole"):
        for rule in role["rules"]:
            assert "nonResourceURLs" not in rule, role["metadata"]["name"]
            for field in ("apiGroups", "resources", "verbs"):
                assert all("*" not in item for item in rule.get(field, [])), (
                    f"{role['kind']} {role['metadata']['name']}: wildcard in {field}: {rule}")
            if "secrets" in rule.get("resources", []):  # one named Secret at a time, never listed
                assert rule["verbs"] == ["get"], f"{role['metadata']['name']}: {rule}"


def test_cluster_wide_mode_grants_exactly_what_the_operator_uses(chart: helm_python.Chart) -> None:
    objects = manifests(chart, {})
    service_account = one(objects, "ServiceAccount")["metadata"]["name"]
    assert deployment(objects)["spec"]["template"]["spec"]["serviceAccountName"] == service_account
    roles = bound_roles(objects, service_account)
    assert [r["kind"] for r in roles] == ["ClusterRole"]
    assert grants(roles[0]) == NAMESPACED_GRANTS | CRD_READ_GRANTS
    assert not by_kind(objects, "Role") and not by_kind(objects, "RoleBinding")


def test_single_namespace_mode_uses_roles(chart: helm_python.Chart) -> None:
    objects = manifests(chart, VALUE_SETS["single-namespace"])
    service_account = one(objects, "ServiceAccount")["metadata"]["name"]
    roles = bound_roles(objects, service_account)
    namespaced = [r for r in roles if r["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in namespaced) == ["team-a", "team-b"]
    for role in namespaced:
        assert grants(role) == NAMESPACED_GRANTS
    cluster = [r for r in roles if r["kind"] == "ClusterRole"]
    # Cluster-wide, only kopf's read-only look at CRDs: no writes, no namespaces, no pods.
    assert [grants(r) for r in cluster] == [CRD_READ_GRANTS]

    without_crd_read = manifests(chart, {**VALUE_SETS["single-namespace"],
                                         "rbac": {"crdReadAccess": False}})
    assert not by_kind(without_crd_read, "ClusterRoleBinding")


def test_rbac_rules_name_the_shipped_crd() -> None:
    shipped = yaml.safe_load(CRD_FILE.read_text())
    assert (GROUP, PLURAL) == (shipped["spec"]["group"], shipped["spec"]["names"]["plural"])


def test_user_roles_aggregate_into_the_builtin_ones(chart: helm_python.Chart) -> None:
    objects = manifests(chart, {})
    operator_account = one(objects, "ServiceAccount")["metadata"]["name"]
    operator_roles = {r["metadata"]["name"] for r in bound_roles(objects, operator_account)}
    user_roles = [r for r in by_kind(objects, "ClusterRole")
                  if r["metadata"]["name"] not in operator_roles]
    by_label = {label: r for r in user_roles for label, value in r["metadata"]["labels"].items()
                if label.startswith("rbac.authorization.k8s.io/aggregate-to-") and value == "true"}
    assert set(by_label) == {f"rbac.authorization.k8s.io/aggregate-to-{role}"
                             for role in ("admin", "edit", "view")}
    view = grants(by_label["rbac.authorization.k8s.io/aggregate-to-view"])
    edit = grants(by_label["rbac.authorization.k8s.io/aggregate-to-edit"])
    assert not {verb for _, _, verb in view} & WRITE_VERBS
    assert (GROUP, PLURAL, "create") in edit

    objects = manifests(chart, {"rbac": {"aggregateToDefaultRoles": False}})
    assert [r["metadata"]["name"] for r in by_kind(objects, "ClusterRole")] == list(operator_roles)


def test_rbac_can_be_left_to_the_cluster_admin(chart: helm_python.Chart) -> None:
    objects = manifests(chart, {"rbac": {"create": False, "aggregateToDefaultRoles": False},
                                "serviceAccount": {"create": False, "name": "preexisting"}})
    assert {obj["kind"] for obj in objects} == {"Deployment"}
    assert deployment(objects)["spec"]["template"]["spec"]["serviceAccountName"] == "preexisting"


# --- The operator Deployment --------------------------------------------------------------------


@value_sets
def test_operator_deployment_is_single_hardened_and_probed(
    chart: helm_python.Chart, values: dict[str, Any]
) -> None:
    objects = manifests(chart, values)
    spec = deployment(objects)["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()

    pod_security = pod["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] != 0
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    operator = container(objects)
    security = operator["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not security.get("privileged")

    assert operator["command"] == ["kopf", "run", "-m", "selection_operator"]
    assert "--standalone" in operator["args"]
    ports = {p["name"]: p["containerPort"] for p in operator["ports"]}
    assert f"--liveness=http://0.0.0.0:{ports['health']}/healthz" in operator["args"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert operator[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe

    requests = operator["resources"]["requests"]
    assert {"cpu", "memory"} <= set(requests)
    assert "memory" in operator["resources"]["limits"]
    # The read-only root filesystem leaves /tmp as the one writable place.
    mounts = {m["mountPath"]: m["name"] for m in operator["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_watched_namespaces_become_kopf_flags(chart: helm_python.Chart) -> None:
    args = container(manifests(chart, {}))["args"]
    assert "--all-namespaces" in args
    assert not [a for a in args if a.startswith("--namespace")]

    args = container(manifests(chart, VALUE_SETS["single-namespace"]))["args"]
    assert "--all-namespaces" not in args
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=team-a",
                                                                "--namespace=team-b"]


def test_default_settings_env(chart: helm_python.Chart) -> None:
    variables = env(manifests(chart, {}))
    app_version = CHART_META["appVersion"]
    assert variables["DSEL_WORKER_IMAGE"]["value"] == f"dsel-worker:{app_version}"
    assert variables["DSEL_LOG_LEVEL"]["value"] == "INFO"
    assert variables["DSEL_METRICS_PORT"]["value"] == "0"  # metrics off by default
    assert variables["DSEL_S3_CREDENTIALS_SECRET"]["value"] == "dsel-s3"
    assert variables["DSEL_JOB_TTL_SECONDS"]["value"] == "86400"
    # Empty values are left out, so the operator's own defaults apply.
    for name in ("DSEL_DEFAULT_STORAGE_URI", "DSEL_S3_ENDPOINT", "DSEL_S3_REGION",
                 "DSEL_WORKER_SERVICE_ACCOUNT"):
        assert name not in variables
    # The operator reads selection.json itself: the credentials come from the same Secret, and a
    # missing Secret (IAM roles instead) must not keep the pod from starting.
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert variables[key]["valueFrom"]["secretKeyRef"] == {"name": "dsel-s3", "key": key,
                                                               "optional": True}


def test_every_setting_reaches_the_operator(chart: helm_python.Chart) -> None:
    objects = manifests(chart, VALUE_SETS["everything-set"])
    variables = {name: item.get("value") for name, item in env(objects).items()}
    assert variables["DSEL_DEFAULT_STORAGE_URI"] == "s3://bucket/dsel"
    assert variables["DSEL_S3_ENDPOINT"] == "http://minio.minio:9000"
    assert variables["DSEL_S3_REGION"] == "us-east-1"
    assert variables["DSEL_S3_CREDENTIALS_SECRET"] == "minio-creds"
    assert variables["DSEL_WORKER_SERVICE_ACCOUNT"] == "dsel-worker"
    assert variables["DSEL_JOB_TTL_SECONDS"] == "600"
    assert variables["DSEL_LOG_LEVEL"] == "DEBUG"
    assert variables["DSEL_METRICS_PORT"] == "9100"
    assert variables["HTTPS_PROXY"] == "http://proxy:3128"
    assert variables["DSEL_WORKER_IMAGE_PULL_SECRETS"] == "regcred,mirror"
    assert variables["DSEL_WORKER_DEFAULT_MEMORY"] == "8Gi"
    assert variables["DSEL_CONFINE_STORAGE"] == "true"
    assert variables["DSEL_ALLOWED_STORAGE_PREFIXES"] == "s3://shared/{namespace},ml=s3://ml-artifacts"
    assert variables["DSEL_ALLOWED_S3_ENDPOINTS"] == "https://s3.internal"
    assert variables["DSEL_ALLOWED_IMAGES"] == "ghcr.io/acme/"
    assert variables["DSEL_ALLOWED_TOLERATION_KEYS"] == "nvidia.com/gpu"
    assert variables["DSEL_ALLOWED_NODE_SELECTOR_KEYS"] == "nvidia.com/gpu.product"
    assert variables["DSEL_MAX_SHARDS"] == "32"
    assert env(objects)["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "minio-creds"
    assert set(name for name in variables if name.startswith("DSEL_")) == SETTINGS_ENV
    pod = deployment(objects)["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert "nodeAffinity" in pod["affinity"]
    sa = one(objects, "ServiceAccount")
    assert sa["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/x"}

    no_ttl = env(manifests(chart, {"worker": {"jobTTLSecondsAfterFinished": None}}))
    assert "DSEL_JOB_TTL_SECONDS" not in no_ttl
    no_secret = env(manifests(chart, {"s3": {"credentialsSecret": ""}}))
    assert not {"DSEL_S3_CREDENTIALS_SECRET", "AWS_ACCESS_KEY_ID"} & set(no_secret)


@value_sets
def test_only_contract_settings_are_set(chart: helm_python.Chart, values: dict[str, Any]) -> None:
    names = set(env(manifests(chart, values)))
    assert {n for n in names if n.startswith("DSEL_")} <= SETTINGS_ENV


def test_the_operator_reads_every_setting_the_chart_sets() -> None:
    """The other side of the contract: selection_operator/settings.py knows each name."""
    assert OPERATOR_SETTINGS_MODULE.is_file(), "operator/selection_operator/settings.py is missing"
    source = OPERATOR_SETTINGS_MODULE.read_text()
    unread = sorted(name for name in SETTINGS_ENV if f'"{name}"' not in source)
    assert not unread, f"the chart sets {unread}, which selection_operator.settings never reads"


@value_sets
def test_the_operator_accepts_the_rendered_settings(
    chart: helm_python.Chart, values: dict[str, Any]
) -> None:
    """The rendered env, parsed by the operator's own settings reader, raises nothing."""
    settings = importlib.import_module("selection_operator.settings")
    plain = {name: item["value"] for name, item in env(manifests(chart, values)).items()
             if "value" in item}
    settings.OperatorSettings.from_env(plain)


def test_custom_images(chart: helm_python.Chart) -> None:
    objects = manifests(chart, VALUE_SETS["custom-images"])
    operator = container(objects)
    assert operator["image"] == "registry.example.com/ml/dsel-operator:1.2.3"
    assert operator["imagePullPolicy"] == "Always"
    assert env(objects)["DSEL_WORKER_IMAGE"]["value"] == (
        "registry.example.com/ml/dsel-worker@sha256:" + "ab" * 32)
    pod = deployment(objects)["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    # Without overrides both tags follow the chart's appVersion.
    assert container(manifests(chart, {}))["image"] == f"dsel-operator:{CHART_META['appVersion']}"


def test_metrics_service_and_servicemonitor(chart: helm_python.Chart) -> None:
    objects = manifests(chart, VALUE_SETS["metrics-on"])
    operator = container(objects)
    ports = {p["name"]: p["containerPort"] for p in operator["ports"]}
    assert ports["metrics"] == 9090
    assert env(objects)["DSEL_METRICS_PORT"]["value"] == "9090"

    service = one(objects, "Service")
    assert service["spec"]["selector"] == deployment(objects)["spec"]["selector"]["matchLabels"]
    (service_port,) = service["spec"]["ports"]
    assert (service_port["name"], service_port["port"], service_port["targetPort"]) == (
        "metrics", 9090, "metrics")

    monitor = one(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    service_labels = service["metadata"]["labels"].items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service_labels
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    assert re.fullmatch(r"(\d+(ms|s|m|h))+", endpoint["interval"])


def test_metrics_are_off_by_default(chart: helm_python.Chart) -> None:
    objects = manifests(chart, {"metrics": {"serviceMonitor": {"enabled": True}}})
    assert not by_kind(objects, "Service") and not by_kind(objects, "ServiceMonitor")
    assert "metrics" not in {p["name"] for p in container(objects)["ports"]}


# --- NOTES.txt ----------------------------------------------------------------------------------


@value_sets
def test_notes_tell_how_to_run_and_watch_the_demo(
    chart: helm_python.Chart, values: dict[str, Any]
) -> None:
    (notes,) = [text for path, text in render(chart, values).items() if path.endswith("NOTES.txt")]
    namespace = (values.get("watchNamespaces") or ["default"])[0]
    assert f"kubectl apply -n {namespace} -f examples/demo/dataselection.yaml" in notes
    assert f"kubectl get dsel -n {namespace} -w" in notes
    assert (REPO_ROOT / "examples" / "demo" / "dataselection.yaml").is_file()
    assert ".status.selection" in notes


def test_worker_pull_secrets_reach_the_job_pods(chart: helm_python.Chart) -> None:
    """values -> the operator's env -> its settings -> the pod template of every Job."""
    from selection import contract
    from selection import spec as spec_module
    from selection_operator import manifests as job_manifests
    from selection_operator.settings import OperatorSettings

    values = {"worker": {"imagePullSecrets": [{"name": "regcred"}]}}
    plain = {name: item["value"] for name, item in env(manifests(chart, values)).items() if "value" in item}
    settings = OperatorSettings.from_env(plain)
    resource = spec_module.parse_selection({
        "apiVersion": "dsel.dev/v1alpha1", "kind": "DataSelection", "metadata": {"name": "d", "namespace": "n"},
        "spec": {"model": {"source": "m"}, "data": {"train": "s3://bkt/t", "validation": [{"uri": "s3://bkt/v"}]},
                 "selection": {"budget": 1}, "storage": {"uri": "s3://bkt/a"}}})
    storage = job_manifests.resolve_storage(resource, settings)
    for stage in contract.STAGE_NAMES:
        job = job_manifests.build_job(stage, resource, storage, settings)
        assert job["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
        limits = job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["memory"] == "4Gi"  # the chart's worker.defaultMemory


def test_storage_confinement_needs_a_default_root(chart: helm_python.Chart) -> None:
    with pytest.raises(Exception, match="storage.confineToNamespace needs storage.defaultUri"):
        render(chart, {"storage": {"confineToNamespace": True}})


HA = {"replicaCount": 3}


def test_replicas_elect_a_leader_through_a_lease(chart: helm_python.Chart) -> None:
    objects = manifests(chart, HA)
    spec = deployment(objects)["spec"]
    assert spec["replicas"] == 3 and spec["strategy"]["type"] == "RollingUpdate"
    operator = container(objects)
    assert operator["command"] == ["python", "-m", "selection_operator.leader"]
    args = operator["args"]
    separator = args.index("--")
    assert args[separator + 1:separator + 5] == ["kopf", "run", "-m", "selection_operator"]
    assert "--standalone" in args[separator:]  # kopf itself: no peering, the Lease decides
    # The supervisor answers the probes on the health port (followers are healthy too); kopf's
    # own endpoint moves to the next port, on loopback, and the supervisor checks it.
    ports = {p["name"]: p["containerPort"] for p in operator["ports"]}
    kopf_health = f"http://127.0.0.1:{ports['health'] + 1}/healthz"
    assert f"--health-port={ports['health']}" in args and f"--child-health={kopf_health}" in args
    assert f"--liveness={kopf_health}" in args
    assert env(objects)["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # What the supervisor's own parser makes of the rendered arguments.
    identity = [a for a in args if a.startswith("--identity=")]
    assert identity == ["--identity=$(POD_NAME)"]  # expanded by the kubelet from the env above
    # RBAC: exactly the Lease, in the release namespace.
    service_account = one(objects, "ServiceAccount")["metadata"]["name"]
    roles = [r for r in bound_roles(objects, service_account) if r["kind"] == "Role"]
    (role,) = roles
    assert role["metadata"]["namespace"] == NAMESPACE
    assert grants(role) == {("coordination.k8s.io", "leases", v) for v in ("create", "get", "update")}
    lease_rule = next(rule for rule in role["rules"] if "get" in rule["verbs"])
    assert lease_rule["resourceNames"] == [deployment(objects)["metadata"]["name"]]
    assert f"--lease={lease_rule['resourceNames'][0]}" in args
    for obj in objects:
        if obj["kind"] != "ServiceMonitor":
            for version in KUBE_VERSIONS:
                kubernetes_validate.validate(obj, version, strict=True)
    report = helm_python.lint(CHART_DIR, HA, strict=True, namespace=NAMESPACE, kube_version=f"v{MIN_KUBE}.0")
    assert not [m for m in report["messages"] if m["severity"] >= 2] and not report["errors"], report


def test_a_single_replica_runs_kopf_directly_without_lease_rights(chart: helm_python.Chart) -> None:
    objects = manifests(chart, {})
    assert container(objects)["command"] == ["kopf", "run", "-m", "selection_operator"]
    assert not [r for r in by_kind(objects, "Role")]


def test_unsafe_lease_timing_is_refused(chart: helm_python.Chart) -> None:
    with pytest.raises(Exception, match="must be less than leaseDurationSeconds"):
        render(chart, {**HA, "leaderElection": {"leaseDurationSeconds": 10, "renewDeadlineSeconds": 8}})
