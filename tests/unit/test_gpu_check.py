"""bench/gpu_check.py at toy size on the CPU, so the command a GPU user runs first cannot rot."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_runs_at_toy_size_and_the_out_of_memory_path_recovers():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--toy", "--threads", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[1].split() == ["model", "params", "seq", "dtype", "batch", "floor", "ex/s", "engine", "ex/s",
                                "x", "floor", "peak", "MiB"]
    summary = json.loads(lines[-1])
    assert summary["toy"] is True
    cases = {(c["model"], c["seq"], c["dtype"]) for c in summary["cases"]}
    assert cases == {(m, s, d) for m in ("llama-demo", "toy-llama") for s in (32, 64) for d in ("float32", "bfloat16")}
    for case in summary["cases"]:
        assert case["engine_ex_s"] > 0 and case["floor_ex_s"] > 0 and math.isfinite(case["x_floor"])
        assert case["peak_bytes"] > 0
    assert len(summary["bf16_vs_fp32_max_dcos"]) == 4
    assert all(0 < value < 0.05 for value in summary["bf16_vs_fp32_max_dcos"].values())
    assert set(summary["out_of_memory"]) == {"llama-demo", "toy-llama"}
    for oom in summary["out_of_memory"].values():
        assert oom["sizes"][:2] == [2, 1] and oom["halved"] and oom["next_batch_starts_at"] == 1 and oom["recovered"]
    assert sum(line.startswith("bf16 vs fp32 max |dcos|") for line in lines) == 4
    assert sum(line.startswith("out-of-memory path") and line.endswith("recovered: yes") for line in lines) == 2
