"""Helpers for operator tests: a kubeconfig for the emulator, the operator in-process, waiting.

The operator runs in its own thread with its own event loop, started and stopped in the test
body. Two reasons: `kopf.operator()` cancels every task spawned in its loop while it ran when it
exits (that would kill the emulator's connection handlers and the job runner's pods, and it waits
5 s for them first), and stopping kopf from fixture teardown was seen to hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import kopf
import yaml

T = TypeVar("T")

# Seconds to wait for kopf to stop after its stop flag is raised before cancelling it.
STOP_TIMEOUT_S = 15.0
START_TIMEOUT_S = 30.0


# The bearer tokens of the in-process operator ($KUBECONFIG) and of the test's own client, so the
# emulator's `calls` tell what the operator asked for (tests/controller/test_rbac.py).
OPERATOR_TOKEN = "operator-token"
CLIENT_TOKEN = "test-client-token"


def write_kubeconfig(path: Path, server: str, namespace: str = "default", token: str = OPERATOR_TOKEN) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": token}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester", "namespace": namespace}}],
        "current-context": "emulator",
    }
    path.write_text(yaml.safe_dump(config))
    return path


class OperatorHandle:
    """A running in-process operator: its thread, loop and memo (for the metrics registry)."""

    def __init__(self, namespaces: tuple[str, ...]):
        import selection_operator  # noqa: F401  (registers the handlers in kopf's default registry)

        self.namespaces = namespaces
        self.memo = kopf.Memo()
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._thread = threading.Thread(target=self._run, name="dsel-operator", daemon=True)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._task = loop.create_task(kopf.operator(
                settings=kopf.OperatorSettings(),
                standalone=True,
                clusterwide=not self.namespaces,
                namespaces=self.namespaces,
                stop_flag=self.stop_flag,
                ready_flag=self.ready_flag,
                memo=self.memo,
            ))
            loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        except BaseException as error:  # reported by start() or stop()
            self.error = error
        finally:
            # kopf waits for a threading.Event stop flag in an executor thread: release it, or
            # that thread (and interpreter exit) would wait forever after a kill().
            self.stop_flag.set()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    @property
    def context(self) -> Any:
        return self.memo.get("dsel")

    async def start(self) -> "OperatorHandle":
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.ready_flag.is_set():
            if not self._thread.is_alive() or time.monotonic() > deadline:
                await self.kill()
                raise RuntimeError(f"the operator did not start: {self.error!r}")
            await asyncio.sleep(0.05)
        return self

    async def kill(self) -> None:
        """Stop abruptly, as a crash or `kubectl delete pod` of the operator would."""
        if self._loop is not None and self._task is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._task.cancel)
        await asyncio.to_thread(self._thread.join, STOP_TIMEOUT_S)

    async def stop(self) -> None:
        self.stop_flag.set()
        await asyncio.to_thread(self._thread.join, STOP_TIMEOUT_S)
        if self._thread.is_alive():
            await self.kill()


async def start_operator(namespaces: tuple[str, ...] = ()) -> OperatorHandle:
    """Start `selection_operator`'s handlers (kopf's default registry) against $KUBECONFIG."""
    return await OperatorHandle(namespaces).start()


@contextlib.asynccontextmanager
async def running_operator(namespaces: tuple[str, ...] = ()) -> AsyncIterator[OperatorHandle]:
    handle = await start_operator(namespaces)
    try:
        yield handle
    finally:
        await handle.stop()


async def wait_for(
    probe: Callable[[], T | Awaitable[T]], timeout: float, *, interval: float = 0.1, what: str = "condition"
) -> T:
    """Poll `probe` until it returns something truthy; its last value is in the error otherwise."""
    deadline = time.monotonic() + timeout
    value: Any = None
    while True:
        value = probe()
        if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:.0f} s (last value: {value!r})")
        await asyncio.sleep(interval)


# --- DataSelections and job runners for tests ----------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[2]
CREDENTIALS_SECRET = "dsel-s3"


def selection_body(name: str, storage_uri: str, endpoint: str, *, shards: int = 3, **resources: Any) -> dict:
    """A small valid DataSelection whose data lives (nominally) next to its artifacts in S3."""
    data_root = storage_uri.rsplit("/", 1)[0] + "/data"
    return {
        "apiVersion": "dsel.dev/v1alpha1",
        "kind": "DataSelection",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "model": {"source": "tiny:llama-demo"},
            "data": {"train": f"{data_root}/train.jsonl",
                     "validation": [{"task": "t", "uri": f"{data_root}/validation.jsonl"}]},
            "gradients": {"shards": shards, "projectionDim": 64},
            "selection": {"budget": 6},
            "storage": {"uri": storage_uri, "endpoint": endpoint, "region": "us-east-1",
                        "credentialsSecret": CREDENTIALS_SECRET},
            "resources": {"backoffLimitPerIndex": 1, **resources},
        },
    }


def credentials_secret(access_key: str, secret_key: str) -> dict:
    import base64

    def encode(value: str) -> str:
        return base64.b64encode(value.encode()).decode()

    return {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": CREDENTIALS_SECRET, "namespace": "default"},
        "type": "Opaque",
        "data": {"AWS_ACCESS_KEY_ID": encode(access_key), "AWS_SECRET_ACCESS_KEY": encode(secret_key)},
    }


def pod_env(**extra: str) -> dict[str, str]:
    """Env every local pod process gets besides its pod spec: no host AWS config, no metadata service."""
    return {
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "PYTHONPATH": str(REPO_ROOT),
        **extra,
    }


def use_stub_worker(job: Any, index: Any, attempt: int, argv: list[str]) -> list[str]:
    """Run tests.controller.stub_worker instead of the real stages (same arguments)."""
    if argv[1:3] == ["-m", "selection.jobs"]:
        return [argv[0], "-m", "tests.controller.stub_worker", *argv[3:]]
    return argv
