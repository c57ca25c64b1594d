"""Leader election for replicated operators: only the holder of a Lease runs kopf.

    python -m selection_operator.leader --namespace NS --lease NAME --identity POD \\
        --health-port 8081 --child-health http://127.0.0.1:8082/healthz -- kopf run ...

Every replica runs this supervisor. It acquires the coordination.k8s.io/v1 Lease NAME (the
client-go algorithm: a holder's claim stands until its record has not changed for
leaseDurationSeconds on the observer's own clock), then starts the command and renews every
retry period. If it cannot renew for renew-deadline seconds it stops the command (SIGTERM, then
SIGKILL after the kill grace) and exits, all before the lease could expire for anyone else:
renew deadline + kill grace + retry period < lease duration, so two replicas never drive the
same DataSelection. On a clean stop it releases the Lease so a follower takes over at once.

Followers stay alive and healthy (their /healthz answers), so a Deployment with several replicas
keeps a warm standby instead of restarting it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import http.server
import logging
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("dsel.leader")


@dataclasses.dataclass(frozen=True)
class Timing:
    lease_seconds: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    kill_grace: float = 2.0

    def __post_init__(self) -> None:
        if not self.renew_deadline + self.kill_grace + self.retry_period < self.lease_seconds:
            raise ValueError(
                "leader election timing must satisfy renew deadline + kill grace + retry period "
                f"< lease duration, got {self.renew_deadline} + {self.kill_grace} + {self.retry_period} "
                f">= {self.lease_seconds}"
            )


def _micro_time() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    """One candidate for one Lease; `try_acquire_or_renew` is a single round of the election."""

    def __init__(self, api: Any, namespace: str, name: str, identity: str, timing: Timing = Timing(),
                 clock: Callable[[], float] = time.monotonic):
        self.api, self.namespace, self.name, self.identity = api, namespace, name, identity
        self.timing, self.clock = timing, clock
        self._observed: tuple[Any, ...] | None = None  # (holder, renewTime, transitions) last seen
        self._observed_at = 0.0

    def _record(self, lease: Any) -> tuple[Any, ...]:
        spec = lease.spec
        return spec.holder_identity, spec.renew_time, spec.lease_transitions

    def _body(self, holder: str | None, transitions: int, acquired: Any) -> dict[str, Any]:
        return {
            "holderIdentity": holder,
            "leaseDurationSeconds": int(self.timing.lease_seconds),
            "acquireTime": acquired,
            "renewTime": _micro_time(),
            "leaseTransitions": transitions,
        }

    def try_acquire_or_renew(self) -> bool:
        """True if this candidate holds the Lease now (acquired or renewed it)."""
        from kubernetes.client.exceptions import ApiException

        now = self.clock()
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as error:
            if error.status != 404:
                raise
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": self._body(self.identity, 0, _micro_time())}
            try:
                self.api.create_namespaced_lease(self.namespace, body)
            except ApiException as error:
                if error.status == 409:
                    return False  # another candidate created it first
                raise
            self._observed, self._observed_at = None, now
            return True
        record = self._record(lease)
        if record != self._observed:
            self._observed, self._observed_at = record, now
        holder = lease.spec.holder_identity
        if holder and holder != self.identity and now < self._observed_at + self.timing.lease_seconds:
            return False  # held by someone who renewed within the lease duration
        transitions = (lease.spec.lease_transitions or 0) + (0 if holder == self.identity else 1)
        acquired = lease.spec.acquire_time if holder == self.identity else _micro_time()
        if hasattr(acquired, "strftime"):
            acquired = acquired.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace,
                             "resourceVersion": lease.metadata.resource_version},
                "spec": self._body(self.identity, transitions, acquired)}
        try:
            updated = self.api.replace_namespaced_lease(self.name, self.namespace, body)
        except ApiException as error:
            if error.status == 409:
                return False  # someone else wrote it in between: their claim stands
            raise
        self._observed, self._observed_at = self._record(updated), now
        return True

    def release(self) -> None:
        """Give the Lease up (if still ours) so a follower need not wait for it to expire."""
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec.holder_identity != self.identity:
                return
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace,
                                 "resourceVersion": lease.metadata.resource_version},
                    "spec": {**self._body(None, lease.spec.lease_transitions or 0, None),
                             "leaseDurationSeconds": 1}}
            self.api.replace_namespaced_lease(self.name, self.namespace, body)
        except Exception as error:  # best effort: the Lease expires anyway
            log.warning("could not release lease %s/%s: %s", self.namespace, self.name, error)


class _Health(http.server.BaseHTTPRequestHandler):
    """/healthz of the supervisor: a follower is healthy; a leader is as healthy as its command."""

    check: Callable[[], bool] = staticmethod(lambda: True)

    def do_GET(self) -> None:
        healthy = self.path.startswith("/healthz") and type(self).check()
        self.send_response(200 if healthy else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


def _child_healthy(url: str | None, child: subprocess.Popen | None) -> bool:
    if child is None:
        return True  # a follower, waiting
    if child.poll() is not None:
        return False
    if url is None:
        return True
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (127.0.0.1 only)
            return response.status == 200
    except OSError:
        return False


def _stop(child: subprocess.Popen, grace: float) -> int:
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(grace)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return child.returncode


def supervise(elector: LeaseElector, command: Sequence[str], *, stopping: threading.Event | None = None,
              on_child: Callable[[subprocess.Popen | None], None] = lambda child: None) -> int:
    """Wait for the Lease, run `command` while holding it; the exit code says how it ended."""
    timing = elector.timing
    stopping = stopping or threading.Event()
    while not stopping.is_set():
        try:
            if elector.try_acquire_or_renew():
                break
        except Exception as error:
            log.warning("leader election: %s", error)
        stopping.wait(timing.retry_period)
    else:
        return 0
    log.info("%s leads %s/%s; starting %s", elector.identity, elector.namespace, elector.name, command[0])
    child = subprocess.Popen(list(command))
    on_child(child)
    last_renewed = elector.clock()
    try:
        while True:
            if stopping.wait(timing.retry_period):
                _stop(child, timing.kill_grace)
                elector.release()
                return 0
            if child.poll() is not None:
                elector.release()
                return child.returncode
            try:
                renewed = elector.try_acquire_or_renew()
            except Exception as error:
                log.warning("leader election: renewing failed: %s", error)
                renewed = False
            if renewed:
                last_renewed = elector.clock()
            elif elector.clock() - last_renewed > timing.renew_deadline or not _still_ours(elector):
                log.error("%s lost the lease %s/%s; stopping", elector.identity, elector.namespace, elector.name)
                _stop(child, timing.kill_grace)
                return 1
    finally:
        if child.poll() is None:
            _stop(child, timing.kill_grace)
        on_child(None)


def _still_ours(elector: LeaseElector) -> bool:
    """False when the Lease names someone else (a renewal that failed on a 409 after a takeover)."""
    try:
        lease = elector.api.read_namespaced_lease(elector.name, elector.namespace)
    except Exception:
        return True  # cannot tell: the renew deadline decides
    return lease.spec.holder_identity == elector.identity


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selection_operator.leader", description=__doc__.split("\n")[0])
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--lease", required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--lease-seconds", type=float, default=Timing.lease_seconds)
    parser.add_argument("--renew-deadline", type=float, default=Timing.renew_deadline)
    parser.add_argument("--retry-period", type=float, default=Timing.retry_period)
    parser.add_argument("--health-port", type=int, default=0, help="serve /healthz here (0: off)")
    parser.add_argument("--child-health", default=None, help="the command's own health URL")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run after --")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import kubernetes

    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    timing = Timing(args.lease_seconds, args.renew_deadline, args.retry_period)
    elector = LeaseElector(kubernetes.client.CoordinationV1Api(), args.namespace, args.lease, args.identity, timing)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    current: list[subprocess.Popen | None] = [None]
    if args.health_port:
        _Health.check = staticmethod(lambda: _child_healthy(args.child_health, current[0]))
        server = http.server.ThreadingHTTPServer(("0.0.0.0", args.health_port), _Health)  # noqa: S104 (probe port)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    return supervise(elector, command, stopping=stopping, on_child=lambda child: current.__setitem__(0, child))


if __name__ == "__main__":
    sys.exit(main())
