"""End to end on the emulator: the demo DataSelection, the real stage entrypoints, SeaweedFS S3.

The DataSelection is created through the Kubernetes client, the operator runs in-process, and the
local job runner executes each pod's real command (`python -m selection.jobs ...`) with the pod's
env (S3 credentials from the Secret) and the ConfigMap's arguments. On the way, one extraction
attempt fails as a node failure would and the operator is killed and restarted mid-extraction;
the result must still be exactly what `dsel run` selects for the same spec (computed meanwhile
in this process with `selection.local.run_selection`, into its own artifact root).
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import kubernetes
import pytest
import yaml

from selection import spec as spec_module
from selection.local import run_selection
from selection_operator import status as status_module
from tests.controller.harness import CREDENTIALS_SECRET, pod_env, running_operator, start_operator, wait_for
from tests.support.local_job_runner import LocalJobRunner

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"
# The demo's stages take about a minute of CPU on a quiet 2-core machine; allow for a busy one.
PIPELINE_TIMEOUT_S = 900
pytestmark = pytest.mark.slow


def demo_resource(bucket: str, endpoint: str) -> dict:
    """The demo spec with its data in S3 and its artifacts under s3://<bucket>/operator."""
    resource = yaml.safe_load((DEMO / "dataselection.yaml").read_text())
    resource["metadata"]["namespace"] = "default"
    spec = resource["spec"]
    spec["data"]["train"] = f"s3://{bucket}/demo/{spec['data']['train']}"
    for entry in spec["data"]["validation"]:
        entry["uri"] = f"s3://{bucket}/demo/{entry['uri']}"
    spec["storage"] = {"uri": f"s3://{bucket}/operator", "endpoint": endpoint, "region": "us-east-1",
                       "credentialsSecret": CREDENTIALS_SECRET}
    return resource


def upload_demo_data(server, bucket: str) -> None:
    client = server.client()
    for path in [DEMO / "train.jsonl", *sorted((DEMO / "validation").glob("*.jsonl"))]:
        client.upload_file(str(path), bucket, f"demo/{path.relative_to(DEMO).as_posix()}")


def flaky_first_attempt(job, index, attempt, argv):
    """Shard 1's first pod dies like a lost node; its retry runs the real entrypoint."""
    if job["metadata"]["name"].endswith("-extract") and index == 1 and attempt == 0:
        return [argv[0], "-c", "import sys; print('node lost: simulated', file=sys.stderr); sys.exit(137)"]
    return None


async def test_demo_selection_on_the_emulator_matches_dsel_run(kube, api, s3, tmp_path, tmp_path_factory):
    server, bucket = s3["server"], s3["bucket"]
    await asyncio.to_thread(upload_demo_data, server, bucket)
    resource = demo_resource(bucket, s3["endpoint"])
    cache = tmp_path_factory.mktemp("model-cache")
    objects = kubernetes.client.CustomObjectsApi(api)
    await asyncio.to_thread(
        objects.create_namespaced_custom_object, "dsel.dev", "v1alpha1", "default", "dataselections", copy.deepcopy(resource)
    )
    # `dsel run` of the same spec into its own artifact root, alongside the cluster run (2 cores).
    reference_run = asyncio.ensure_future(asyncio.to_thread(
        run_selection,
        spec_module.parse_selection(resource),
        storage_uri=f"s3://{bucket}/reference",
        cache_dir=str(cache),
        progress=False,
    ))
    # One pod at a time: the reference run has the other core, and shards after the first find
    # the shared validation features done instead of computing them in parallel.
    runner = LocalJobRunner(
        kube, tmp_path / "pods", extra_env=pod_env(DSEL_CACHE_DIR=str(cache)), command_override=flaky_first_attempt,
        max_parallel=1,
    )

    def selection_status():
        found = [o for o in kube.live_objects("dsel.dev/v1alpha1/dataselections") if o["metadata"]["name"] == "demo"]
        return found[0].get("status", {}) if found else {}

    try:
        async with runner:
            operator = await start_operator()
            try:
                await wait_for(lambda: runner.runs_of("demo-extract"), PIPELINE_TIMEOUT_S, what="extraction started")
            finally:
                await operator.kill()  # mid-extraction
            extract_uid = next(j["metadata"]["uid"] for j in kube.live_objects("batch/v1/jobs")
                               if j["metadata"]["name"] == "demo-extract")
            async with running_operator():
                await wait_for(lambda: selection_status().get("phase") in ("Succeeded", "Failed"), PIPELINE_TIMEOUT_S,
                               interval=1.0, what="the selection to finish")
        status = selection_status()
        logs = "\n".join(f"--- {r.pod} (exit {r.exit_code})\n{r.log[-2000:]}" for r in runner.runs if r.exit_code)
        assert status["phase"] == "Succeeded", f"{status}\n{logs}"

        # Each stage and shard ran once, except the one retried attempt; the Jobs were not recreated.
        assert len(runner.runs_of("demo-warmup")) == 1 and len(runner.runs_of("demo-reduce")) == 1
        assert [len(runner.runs_of("demo-extract", i)) for i in range(3)] == [1, 2, 1]
        assert [r.exit_code for r in runner.runs_of("demo-extract", 1)] == [137, 0]
        assert status["stages"]["extract"]["podFailures"] == 1
        assert next(j["metadata"]["uid"] for j in kube.live_objects("batch/v1/jobs")
                    if j["metadata"]["name"] == "demo-extract") == extract_uid
    finally:
        await asyncio.wait({reference_run})  # a thread cannot be cancelled; let it end
    reference = await reference_run
    selection = status["selection"]
    assert status_module.decode_indices(selection) == reference["indices"]
    assert selection["count"] == len(reference["indices"])
    assert selection["composition"] == reference["composition"]
    assert selection["uri"] == f"s3://{bucket}/operator/selection/selection.json"
