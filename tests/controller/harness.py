"""Helpers for operator tests: a kubeconfig for the emulator, the operator in-process, waiting.

The operator runs inside the test body (`async with running_operator():`), not in a fixture:
stopping kopf from fixture teardown was seen to hang for its full timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import kopf
import yaml

T = TypeVar("T")

# Seconds to wait for kopf to stop after its stop flag is raised before cancelling it.
STOP_TIMEOUT_S = 10.0


def write_kubeconfig(path: Path, server: str, namespace: str = "default") -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": "test-token"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester", "namespace": namespace}}],
        "current-context": "emulator",
    }
    path.write_text(yaml.safe_dump(config))
    return path


class OperatorHandle:
    """A running in-process operator: its task and memo (for the metrics registry)."""

    def __init__(self, task: asyncio.Task, stop: asyncio.Event, memo: kopf.Memo):
        self.task, self.stop_flag, self.memo = task, stop, memo

    @property
    def context(self) -> Any:
        return self.memo.get("dsel")

    async def kill(self) -> None:
        """Stop abruptly, as a crash or `kubectl delete pod` of the operator would."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task

    async def stop(self) -> None:
        if self.task.done():
            return
        self.stop_flag.set()
        try:
            await asyncio.wait_for(asyncio.shield(self.task), STOP_TIMEOUT_S)
        except (asyncio.TimeoutError, Exception):
            await self.kill()


async def start_operator(namespaces: tuple[str, ...] = ()) -> OperatorHandle:
    """Start `selection_operator`'s handlers (the default kopf registry) against $KUBECONFIG."""
    import selection_operator  # noqa: F401  (registers the handlers)

    stop, ready = asyncio.Event(), asyncio.Event()
    memo = kopf.Memo()
    task = asyncio.create_task(
        kopf.operator(
            settings=kopf.OperatorSettings(),
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            stop_flag=stop,
            ready_flag=ready,
            memo=memo,
        ),
        name="dsel-operator",
    )
    waiter = asyncio.ensure_future(ready.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        if task.done():
            task.result()  # raise why it stopped
        task.cancel()
        raise TimeoutError("the operator did not become ready within 30 s")
    return OperatorHandle(task, stop, memo)


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
