"""Leader election over a real Lease (in the API emulator): never two leaders at once."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

import kubernetes
import pytest

from selection_operator import leader

LEASE = "dsel-operator"
FAST = leader.Timing(lease_seconds=1.5, renew_deadline=0.8, retry_period=0.1, kill_grace=0.3)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(api, identity: str, clock=time.monotonic, timing: leader.Timing = FAST) -> leader.LeaseElector:
    return leader.LeaseElector(kubernetes.client.CoordinationV1Api(api), "default", LEASE, identity, timing, clock)


def test_timing_must_leave_the_old_leader_time_to_stop():
    with pytest.raises(ValueError, match="lease duration"):
        leader.Timing(lease_seconds=10, renew_deadline=8, retry_period=2, kill_grace=2)


async def test_a_held_lease_is_taken_over_only_after_it_went_unrenewed(api):
    a_clock, b_clock = Clock(), Clock()
    a, b = elector(api, "a", a_clock), elector(api, "b", b_clock)
    assert await asyncio.to_thread(a.try_acquire_or_renew)
    assert not await asyncio.to_thread(b.try_acquire_or_renew)
    b_clock.now += FAST.lease_seconds - 0.1
    assert await asyncio.to_thread(a.try_acquire_or_renew)  # a renews: the record changes
    assert not await asyncio.to_thread(b.try_acquire_or_renew)
    b_clock.now += FAST.lease_seconds - 0.1  # less than a lease since b saw the renewal
    assert not await asyncio.to_thread(b.try_acquire_or_renew)
    b_clock.now += 0.2  # now a has been silent for a whole lease duration in b's eyes
    assert await asyncio.to_thread(b.try_acquire_or_renew)
    assert not await asyncio.to_thread(a.try_acquire_or_renew)  # a sees b's claim
    lease = await asyncio.to_thread(kubernetes.client.CoordinationV1Api(api).read_namespaced_lease, LEASE, "default")
    assert lease.spec.holder_identity == "b" and lease.spec.lease_transitions == 1


CHILD = """
import signal, sys, time
log, name = sys.argv[1], sys.argv[2]
def stop(*_):
    open(log, "a").write(f"stop {name} {time.time()}\\n"); sys.exit(0)
signal.signal(signal.SIGTERM, stop)
open(log, "a").write(f"start {name} {time.time()}\\n")
while True:
    time.sleep(0.05)
"""


def intervals(log: Path) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {}
    for line in log.read_text().splitlines():
        _, name, at = line.split()
        found.setdefault(name, []).append(float(at))
    return found


async def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


def start(api, identity: str, log: Path, script: Path) -> tuple[threading.Event, list[int], threading.Thread,
                                                                   leader.LeaseElector]:
    stopping, result = threading.Event(), []
    candidate = elector(api, identity)
    thread = threading.Thread(target=lambda: result.append(
        leader.supervise(candidate, [sys.executable, str(script), str(log), identity], stopping=stopping)))
    thread.start()
    return stopping, result, thread, candidate


async def two_candidates(api, tmp_path: Path):
    """Candidate a leads (its command started), then candidate b joins the election."""
    log, script = tmp_path / "runs.log", tmp_path / "child.py"
    log.touch()
    script.write_text(CHILD)
    first = start(api, "a", log, script)
    await wait_for(lambda: "start a" in log.read_text())
    return log, first, start(api, "b", log, script)


async def test_replicas_hand_over_without_overlap(api, tmp_path):
    log, (stop_a, result_a, thread_a, _), (stop_b, result_b, thread_b, _) = await two_candidates(api, tmp_path)
    await asyncio.sleep(3 * FAST.lease_seconds)
    assert "start b" not in log.read_text()  # b waits while a renews
    stop_a.set()  # a's pod is deleted: it stops its operator and releases the lease
    await wait_for(lambda: "start b" in log.read_text())
    stop_b.set()
    await asyncio.to_thread(thread_a.join, 10)
    await asyncio.to_thread(thread_b.join, 10)
    runs = intervals(log)
    (_, a_stop), (b_start, _) = runs["a"], runs["b"]
    assert a_stop < b_start, runs
    assert result_a == result_b == [0]


async def test_a_leader_that_cannot_renew_stops_before_anyone_else_starts(api, tmp_path, monkeypatch):
    log, (stop_a, result_a, thread_a, a), (stop_b, result_b, thread_b, _) = await two_candidates(api, tmp_path)
    # a is cut off from the API server (a network partition): every call fails.
    partitioned = kubernetes.client.CoordinationV1Api(kubernetes.client.ApiClient(
        kubernetes.client.Configuration(host="http://127.0.0.1:9")))
    monkeypatch.setattr(a, "api", partitioned)
    await wait_for(lambda: "start b" in log.read_text())
    await asyncio.to_thread(thread_a.join, 10)
    stop_b.set()
    await asyncio.to_thread(thread_b.join, 10)
    runs = intervals(log)
    assert runs["a"][1] < runs["b"][0], runs  # a stopped (lost the lease) before b started
    assert result_a == [1]
