"""Thread defaults for entrypoints: passive OpenMP waiting, thread counts capped by the CPU quota."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from selection import cli, threads

ROOT = Path(__file__).resolve().parents[2]


def cgroup(tmp_path: Path, cpu_max: str) -> Path:
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    return tmp_path


def test_passive_waiting_and_the_quota_become_defaults(tmp_path):
    environ: dict[str, str] = {}
    threads.configure_threads(environ, cgroup(tmp_path, "150000 100000"))  # 1.5 CPUs
    expected = str(min(2, len(os.sched_getaffinity(0))))
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": expected, "MKL_NUM_THREADS": expected}


def test_settings_already_made_are_kept(tmp_path):
    environ = {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "7"}
    threads.configure_threads(environ, cgroup(tmp_path, "max 100000"))
    assert environ == {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "7"}


def test_cgroup_limits(tmp_path):
    assert threads.cgroup_cpu_limit(cgroup(tmp_path, "max 100000")) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpu_limit(v1) == 4.0
    assert threads.cgroup_cpu_limit(tmp_path / "missing") is None
    assert threads.available_cpus(cgroup(tmp_path, "50000 100000")) == 1  # half a CPU: still one thread


def test_the_cli_sets_them_before_torch_is_imported(monkeypatch, capsys):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert cli.main(["validate", str(ROOT / "examples" / "demo" / "dataselection.yaml")]) == 0
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    script = (
        "import os, sys; import selection.threads as t; seen = []\n"
        "t.configure_threads = lambda: seen.append('torch' in sys.modules)\n"
        "import selection.cli; selection.cli.main(['crd']); print(seen, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().endswith("[False]")  # configured once, with torch not yet loaded
