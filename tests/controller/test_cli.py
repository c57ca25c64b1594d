"""`kopf run -m selection_operator` as the Deployment runs it: a process configured by env only."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys

import aiohttp

from tests.controller.harness import selection_body, wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_kopf_run_watches_a_namespace_and_serves_metrics(kube, kubeconfig, tmp_path):
    body = selection_body("cli", "s3://bucket/dsel", "http://127.0.0.1:1")
    body["metadata"]["namespace"] = "team-a"
    body["spec"]["selection"]["budget"] = -3  # fails validation: no jobs, no S3 needed
    async with kube.post("/apis/dsel.dev/v1alpha1/namespaces/team-a/dataselections", json=body) as response:
        assert response.status == 201
    metrics_port, liveness_port = free_port(), free_port()
    env = {
        "PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "KUBECONFIG": str(kubeconfig),
        "DSEL_METRICS_PORT": str(metrics_port), "DSEL_METRICS_ADDRESS": "127.0.0.1", "DSEL_LOG_LEVEL": "INFO",
    }
    log_path = tmp_path / "operator.log"
    with open(log_path, "wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kopf", "run", "-m", "selection_operator", "--standalone",
            "--namespace=team-a", f"--liveness=http://127.0.0.1:{liveness_port}/healthz",
            env=env, stdout=log, stderr=asyncio.subprocess.STDOUT,
        )
    try:
        def failed() -> bool:
            found = kube.live_objects("dsel.dev/v1alpha1/dataselections", "team-a")
            return bool(found) and found[0].get("status", {}).get("phase") == "Failed"

        try:
            await wait_for(failed, 60, what="the invalid selection to fail")
        except TimeoutError:
            raise AssertionError(log_path.read_text()[-5000:]) from None
        (obj,) = kube.live_objects("dsel.dev/v1alpha1/dataselections", "team-a")
        assert "spec.selection.budget" in obj["status"]["conditions"][0]["message"]
        async with aiohttp.ClientSession() as session:
            async def scrape() -> str | None:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
                        text = await response.text()
                        return text if 'dsel_selections{phase="Failed"} 1.0' in text else None
                return None

            metrics = await wait_for(scrape, 20, what="metrics")
            assert "dsel_stage_duration_seconds" in metrics and "dsel_shard_retries_total" in metrics
            async with session.get(f"http://127.0.0.1:{liveness_port}/healthz") as response:
                assert response.status == 200
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 20)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()
    assert process.returncode is not None
