"""CPU thread settings for entrypoints, applied before torch is imported.

Why: GNU OpenMP (torch's CPU thread pool) busy-waits between parallel regions by default. On a
machine whose cores are shared, the spinning threads take the cores the working ones need:
measured here, two-thread runs were up to 25x slower (docs/performance.md). OMP_WAIT_POLICY=PASSIVE
makes idle threads sleep instead; on an idle machine it costs nothing measurable. And torch sizes
its pool from the cores it can see, not from a container's CPU quota, so a pod limited to 4 CPUs
on a 64-core node would run 64 threads; the thread count is capped at the quota.

Both are defaults only: a variable that is already set is left alone. They take effect only if
applied before torch (and its OpenMP runtime) is loaded, so entrypoints call `configure_threads`
first thing; the Kubernetes Jobs and the worker image set the same variables in their env.
"""

from __future__ import annotations

import math
import os
from collections.abc import MutableMapping
from pathlib import Path

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by the cgroup quota (v2 cpu.max or v1 cfs quota), None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may run on: its affinity mask, capped by the cgroup quota (at least 1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(1, cpus)


def configure_threads(environ: MutableMapping[str, str] | None = None, root: Path = CGROUP_ROOT) -> None:
    """Set OMP_WAIT_POLICY=PASSIVE and OMP/MKL thread counts = available CPUs, unless already set."""
    environ = os.environ if environ is None else environ
    environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if not any(name in environ for name in THREAD_VARIABLES):
        threads = str(available_cpus(root))
        for name in THREAD_VARIABLES:
            environ[name] = threads
