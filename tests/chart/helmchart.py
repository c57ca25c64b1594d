"""Rendering charts/dsel with the real Helm engine (helm-python-sdk bundles Helm's Go SDK), offline.

Nothing here templates YAML itself: Helm loads the chart, merges values, validates them against
values.schema.json and renders, as `helm template` / `helm install` would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "dsel"
RELEASE = "dsel"
NAMESPACE = "dsel-system"

# The value sets every chart test renders: each is a way people install the chart.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "single-namespace": {"watchNamespaces": ["team-a", "team-b"]},
    "custom-images": {
        "image": {"repository": "registry.example.com/ml/dsel-operator", "tag": "1.2.3",
                  "pullPolicy": "Always"},
        "worker": {"image": {"repository": "registry.example.com/ml/dsel-worker",
                             "digest": "sha256:" + "ab" * 32}},
        "imagePullSecrets": [{"name": "registry-credentials"}],
    },
    "metrics-on": {"metrics": {"enabled": True, "serviceMonitor": {"enabled": True,
                                                                   "labels": {"release": "prom"}}}},
    "everything-set": {
        "watchNamespaces": ["ml"],
        "logLevel": "DEBUG",
        "storage": {"defaultUri": "s3://bucket/dsel", "confineToNamespace": True,
                    "allowedPrefixes": ["s3://shared/{namespace}", "ml=s3://ml-artifacts"]},
        "s3": {"endpoint": "http://minio.minio:9000", "region": "us-east-1",
               "credentialsSecret": "minio-creds", "allowedEndpoints": ["https://s3.internal"]},
        "worker": {"serviceAccountName": "dsel-worker", "jobTTLSecondsAfterFinished": 600,
                   "imagePullSecrets": [{"name": "regcred"}, {"name": "mirror"}], "defaultMemory": "8Gi"},
        "policy": {"allowedImages": ["ghcr.io/acme/"], "allowedTolerationKeys": ["nvidia.com/gpu"],
                   "allowedNodeSelectorKeys": ["nvidia.com/gpu.product"], "maxShards": 32},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/x"}},
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
        "podAnnotations": {"a": "b"},
        "podLabels": {"team": "ml"},
        "priorityClassName": "system-cluster-critical",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops",
                         "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
        "metrics": {"enabled": True, "port": 9100,
                    "serviceMonitor": {"enabled": True, "scrapeTimeout": "10s"}},
    },
}


def render(chart: helm_python.Chart, values: dict[str, Any]) -> dict[str, str]:
    """Template path -> rendered text, exactly as `helm template` / `helm install` would."""
    return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def manifests(chart: helm_python.Chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object the release would create (NOTES.txt and empty documents left out)."""
    objects = []
    for path, text in sorted(render(chart, values).items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {[o['metadata']['name'] for o in found]}"
    return found[0]
