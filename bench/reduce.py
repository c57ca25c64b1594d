"""Benchmark of the reductions against the naive loops (docs/algorithms.md §9-§13); run by hand, prints a table.

    .venv/bin/python bench/reduce.py                      # the default sizes (below)
    .venv/bin/python bench/reduce.py --sizes 20000x128x0.15 --naive-cap 600

For each size (N x M, budget fraction) it builds a synthetic float32 attribution matrix (low
rank task structure plus noise, cached under --cache) and measures, each in a fresh process:
- naive: `selection.reduce.naive.naive_bids` (in memory, float64). When the full loop would take
  longer than --naive-cap seconds, it runs the first k steps and extrapolates: the loop's cost
  per step is constant (every step scans all N x M entries), so total = setup + B x (time per
  step); the table then says "extrapolated" and compares the first k picks only.
- engine: `reduce_matrix` in-process time (loading excluded, composition included).
- process: a whole `python -m selection.reduce.cli` run (interpreter start-up, imports, loading,
  reduction, JSON output) and its peak RSS (ru_maxrss, which counts the touched pages of the
  memory-mapped input too).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TASKS = 8
DEFAULT_SIZES = "20000x128x0.15,50000x128x0.15,270000x256x0.05,1000000x512x0.15"


def tasks_for(m: int) -> list[str]:
    return [f"task{j * TASKS // m}" for j in range(m)]


def make_matrix(path: Path, n: int, m: int, seed: int = 0) -> None:
    """Cosine-like scores: a shared rank-16 structure per task plus noise, float32, written in
    row blocks so the 1M x 512 case never holds more than a block in memory."""
    rng = np.random.default_rng(seed)
    rank = 16
    columns = rng.standard_normal((m, rank)) / np.sqrt(rank)
    task_shift = rng.standard_normal((TASKS, rank)) / np.sqrt(rank)
    columns += task_shift[[j * TASKS // m for j in range(m)]]
    out = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), mode="w+", dtype=np.float32, shape=(n, m))
    for lo in range(0, n, 65536):
        hi = min(n, lo + 65536)
        block_rng = np.random.default_rng([seed, lo])
        rows = block_rng.standard_normal((hi - lo, rank))
        scores = 0.05 * rows @ columns.T + 0.02 * block_rng.standard_normal((hi - lo, m))
        out[lo:hi] = scores.astype(np.float32)
    out.flush()
    del out
    os.replace(path.with_suffix(".tmp.npy"), path)


def run_measured(command: list[str], timeout: float | None = None) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes, stdout) of a child process (reaped with wait4 for its
    own ru_maxrss)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True, cwd=ROOT)
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if timeout is not None and time.perf_counter() - started > timeout:
                process.kill()
                os.wait4(process.pid, 0)
                process.returncode = -9
                raise TimeoutError(f"{' '.join(command)} exceeded {timeout} s")
            time.sleep(0.02)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{err.read()}")
        return wall, usage.ru_maxrss * 1024, out.read()


# -- child modes --------------------------------------------------------------------------


def child_naive(matrix_path: str, budget: int, steps: int, out_path: str) -> None:
    from selection.reduce import load_matrix, naive

    a = load_matrix(matrix_path)
    tasks = tasks_for(a.shape[1])
    started = time.perf_counter()
    naive.bids_matrix(a, tasks, granularity="instance", normalize_columns=True)
    setup = time.perf_counter() - started
    started = time.perf_counter()
    picks = naive.naive_bids(a, tasks, steps)
    loop = time.perf_counter() - started
    np.save(out_path, np.asarray(picks, dtype=np.int64))
    print(json.dumps({"setup": setup, "run": loop, "steps": steps, "budget": budget}))


def child_engine(matrix_path: str, budget: int, out_path: str) -> None:
    from selection.reduce import load_matrix, reduce_matrix

    a = load_matrix(matrix_path)
    started = time.perf_counter()
    result = reduce_matrix(a, tasks_for(a.shape[1]), method="bids", budget=budget)
    seconds = time.perf_counter() - started
    np.save(out_path, np.asarray(result.indices, dtype=np.int64))
    print(json.dumps({"seconds": seconds}))


# -- the driver ---------------------------------------------------------------------------


def bench_size(n: int, m: int, fraction: float, cache: Path, naive_cap: float, with_naive: bool) -> dict:
    cache.mkdir(parents=True, exist_ok=True)
    matrix = cache / f"reduce-{n}x{m}.npy"
    tasks = cache / f"reduce-{m}.tasks.txt"
    if not matrix.exists():
        print(f"  generating {matrix} ...", file=sys.stderr, flush=True)
        make_matrix(matrix, n, m)
    tasks.write_text("\n".join(tasks_for(m)) + "\n")
    budget = int(np.floor(round(fraction * n, 9)))
    python = sys.executable
    me = str(Path(__file__).resolve())
    row = {"N": n, "M": m, "B": budget, "method": "bids"}

    engine_out = cache / "reduce-engine.npy"
    _, engine_rss, stdout = run_measured([python, me, "--child", "engine", str(matrix), str(budget), str(engine_out)])
    row["engine_s"] = json.loads(stdout)["seconds"]
    row["engine_rss"] = engine_rss
    engine = np.load(engine_out)

    output = cache / "reduce-selection.json"
    process_s, process_rss, _ = run_measured(
        [python, "-m", "selection.reduce.cli", "--matrix", str(matrix), "--tasks", str(tasks),
         "--method", "bids", "--budget", repr(fraction), "--output", str(output)]
    )
    row["process_s"], row["process_rss"] = process_s, process_rss
    cli_indices = json.loads(output.read_text())["indices"]
    row["cli_equal"] = cli_indices == engine.tolist()

    if with_naive:
        naive_out = cache / "reduce-naive.npy"
        probe = min(budget, 3)
        _, naive_rss, stdout = run_measured([python, me, "--child", "naive", str(matrix), str(budget), str(probe), str(naive_out)])
        timing = json.loads(stdout)
        per_step = timing["run"] / probe
        steps = budget if timing["setup"] + per_step * budget <= naive_cap else probe
        steps = max(probe, min(budget, int((naive_cap - timing["setup"]) / per_step)) if steps != budget else budget)
        if steps != probe:
            _, naive_rss, stdout = run_measured([python, me, "--child", "naive", str(matrix), str(budget), str(steps), str(naive_out)])
            timing = json.loads(stdout)
            per_step = timing["run"] / steps
        row["naive_rss"] = naive_rss
        row["naive_steps"] = steps
        row["naive_s"] = timing["run"] + (budget - steps) * per_step  # the loop includes its setup
        row["naive_extrapolated"] = steps < budget
        naive = np.load(naive_out)
        row["identical"] = bool(np.array_equal(naive, engine[:steps])) and row["cli_equal"]
    return row


def format_table(rows: list[dict]) -> str:
    header = (
        f"{'N':>9} {'M':>5} {'B':>7} {'method':>6} {'naive s':>22} {'engine s':>9} {'process s':>10} "
        f"{'speed-up':>9} {'proc spd':>9} {'peak RSS':>9} {'naive RSS':>9}  identical"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        if "naive_s" in r:
            naive = f"{r['naive_s']:.1f}" + (f" (extrap. {r['naive_steps']} st)" if r["naive_extrapolated"] else "")
            speed = f"{r['naive_s'] / r['engine_s']:.0f}x"
            proc = f"{r['naive_s'] / r['process_s']:.0f}x"
            same = "yes" if r["identical"] else "NO"
            if r["naive_extrapolated"]:
                same += f" (first {r['naive_steps']})"
            naive_rss = f"{r['naive_rss'] / 2**30:.2f} GiB"
        else:
            naive, speed, proc, same, naive_rss = "-", "-", "-", "engine = cli" if r["cli_equal"] else "cli DIFFERS", "-"
        lines.append(
            f"{r['N']:>9} {r['M']:>5} {r['B']:>7} {r['method']:>6} {naive:>22} {r['engine_s']:>9.2f} "
            f"{r['process_s']:>10.2f} {speed:>9} {proc:>9} {r['process_rss'] / 2**30:>5.2f} GiB {naive_rss:>9}  {same}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated NxMxFRACTION (default: %(default)s)")
    parser.add_argument("--cache", default=str(ROOT / "bench" / "results" / "cache"), help="where matrices are cached")
    parser.add_argument("--naive-cap", type=float, default=300.0, help="seconds the naive loop may run before extrapolating")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive loop")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, *rest = args.child
        if mode == "naive":
            child_naive(rest[0], int(rest[1]), int(rest[2]), rest[3])
        else:
            child_engine(rest[0], int(rest[1]), rest[2])
        return 0
    rows = []
    for size in args.sizes.split(","):
        n, m, fraction = size.split("x")
        print(f"bench {size} ...", file=sys.stderr, flush=True)
        rows.append(bench_size(int(n), int(m), float(fraction), Path(args.cache), args.naive_cap, not args.no_naive))
        print(format_table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(f"machine: {os.cpu_count()} CPUs; numpy {np.__version__}; peak RSS = ru_maxrss of the dsel reduce process")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
