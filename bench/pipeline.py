"""Benchmark of a whole selection with the defaults, stage by stage; run by hand, prints a table.

    .venv/bin/python bench/pipeline.py                 # N = 24 and 4N = 96 examples, 3 shards
    .venv/bin/python bench/pipeline.py --n 64 --shards 8 --output bench/results/pipeline.md

What runs: the stages a cluster runs, each as its own process as a Job's pod starts it (`python
-m selection.jobs <stage> <args.json>`; extract through a wrapper that only adds a timer):
warmup (which also computes the validation features), one extract and one score process per
shard, then reduce. The spec is the default spec (LoRA r=128 on q,k,v,o, 4 warmup epochs,
CountSketch to 8192 dims, Adam-aware features, BIDS) with the 'tiny:llama-small' model (hidden
256, 4 layers, byte vocabulary) and a seeded synthetic pool of chat examples about `--seq`
tokens long (between seq/2 and seq), two validation tasks of `--validation` examples each. Pool
sizes N and 4N, same validation.

Per stage: wall time (summed over its shard processes, which run one after another here),
pool examples per second of that wall time, and the peak RSS of its largest process (the
kernel's ru_maxrss of that child, from os.wait4). The floor: for every extraction shard, a
process that starts the same way, loads the same model, and runs a plain batched forward +
backward of the summed loss over the same batches for every checkpoint (what per-example
gradients cannot go below). "extract x floor" is extract's wall time over the floor's, both
whole processes (start-up, model and checkpoint loading included); "loop x floor" compares the
compute loops only: the extract stage runs unchanged in a child that times its
`compute_features` calls (the loop over the shard's batches, per checkpoint, normalization and
fp16 conversion included), against the floor's loop over the same batches.

Threads: `--threads` (default 2) for every process, OMP_WAIT_POLICY=PASSIVE. The load average
of the machine is printed with the table: on a shared machine absolute numbers scale with it,
while the ratios (measured back to back on the same batches) are less sensitive.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gradients import synthetic_conversations  # noqa: E402
from bench.reporting import publish  # noqa: E402

STAGE_ORDER = ("warmup", "extract", "score", "reduce")
MODEL = "tiny:llama-small"


# --------------------------------------------------------------------------------------------
# Inputs


def write_inputs(directory: Path, size: int, validation: int, seq: int, seed: int) -> Path:
    """Pool, validation files and a default spec (shards set by the caller) under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "train.jsonl", "w") as stream:
        for messages in synthetic_conversations(size, seq, seed):
            stream.write(json.dumps({"messages": list(messages)}) + "\n")
    for task, task_seed in (("alpha", seed + 1), ("beta", seed + 2)):
        with open(directory / f"{task}.jsonl", "w") as stream:
            for messages in synthetic_conversations(validation, seq, task_seed):
                stream.write(json.dumps({"messages": list(messages)}) + "\n")
    return directory


def resource_document(name: str, shards: int) -> dict:
    return {
        "apiVersion": "dsel.dev/v1alpha1",
        "kind": "DataSelection",
        "metadata": {"name": name},
        "spec": {
            "model": {"source": MODEL},
            "data": {
                "train": "train.jsonl",
                "validation": [{"task": "alpha", "uri": "alpha.jsonl"}, {"task": "beta", "uri": "beta.jsonl"}],
            },
            "gradients": {"shards": shards},
            "selection": {"budget": 0.25},
        },
    }


def args_file(directory: Path, resource: dict, store: Path, cache: Path, shard: int | None) -> Path:
    document = {
        "resource": resource, "storage": {"uri": str(store)}, "baseDir": str(directory),
        "cacheDir": str(cache), "shard": shard,
    }
    path = directory / f"args-{'all' if shard is None else shard}.json"
    path.write_text(json.dumps(document))
    return path


# --------------------------------------------------------------------------------------------
# Measuring child processes


def run_child(command: list[str], env: dict[str, str], log: Path) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes, stdout) of one child process; raises if it fails."""
    with open(log, "ab") as err:
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err)
        out = child.stdout.read().decode()
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command[1:4])} failed ({child.returncode}); see {log}")
    return seconds, usage.ru_maxrss * 1024, out


def floor_main(args_path: str) -> int:
    """Child: plain batched fwd+bwd over one shard's batches for every checkpoint; prints JSON."""
    started = time.perf_counter()
    from selection import artifacts, data, warmup
    from selection.jobs.context import StageContext, read_job_args
    from selection.loss import model_loss

    ctx = StageContext(read_job_args(args_path))
    spec = ctx.spec
    model, tokenizer = ctx.load_model()
    model = warmup.attach_lora(model, spec.warmup.lora, spec.warmup.seed)
    rows = ctx.shard_range(ctx.args.shard)
    examples = ctx.tokenize(tokenizer, ctx.train_examples[rows.start : rows.stop])
    size = spec.gradients.batch_size
    batches = [data.collate(examples[i : i + size], tokenizer.pad_token_id) for i in range(0, len(examples), size)]
    params = [p for _, p in warmup.trainable_parameters(model)]
    checkpoints = [warmup.load_checkpoint(ctx.artifacts.fetch(artifacts.checkpoint_prefix(e))) for e in ctx.epochs]
    model.eval()  # as the engine: dropout off
    startup = time.perf_counter() - started
    loop = 0.0
    for checkpoint in checkpoints:
        warmup.apply_adapter(model, checkpoint)
        begun = time.perf_counter()
        for batch in batches:
            for p in params:
                p.grad = None
            model_loss(model, batch).sum().backward()
        loop += time.perf_counter() - begun
    ctx.close()
    print(json.dumps({"startup": startup, "loop": loop, "examples": len(examples), "checkpoints": len(checkpoints)}))
    return 0


def stage_main(stage: str, args_path: str) -> int:
    """Child: `python -m selection.jobs <stage>` in this process, timing its feature loops.

    The stage runs unchanged; `compute_features` (the loop over the shard's batches, one call
    per checkpoint) is wrapped with a timer, and the total is printed as JSON on stdout's last line.
    """
    from selection.gradients import features
    from selection.jobs.__main__ import main as jobs_main

    loop, original = [0.0], features.compute_features

    def timed(*args, **kwargs):
        begun = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            loop[0] += time.perf_counter() - begun

    features.compute_features = timed
    code = jobs_main([stage, args_path])
    print(json.dumps({"loop": loop[0]}))
    return code


def run_size(size: int, args, env: dict[str, str], work: Path, log: Path) -> dict:
    directory = write_inputs(work / f"pool-{size}", size, args.validation, args.seq, args.seed)
    resource = resource_document(f"bench-{size}", args.shards)
    store, cache = directory / "store", work / "cache"
    shared = args_file(directory, resource, store, cache, None)
    per_shard = [args_file(directory, resource, store, cache, s) for s in range(args.shards)]
    stages: dict[str, dict] = {name: {"seconds": 0.0, "peak_rss": 0, "processes": 0} for name in STAGE_ORDER}
    stages["floor"] = {"seconds": 0.0, "peak_rss": 0, "processes": 0, "startup": 0.0, "loop": 0.0}

    def record(stage: str, seconds: float, rss: int) -> None:
        row = stages[stage]
        row["seconds"] += seconds
        row["peak_rss"] = max(row["peak_rss"], rss)
        row["processes"] += 1

    job = [sys.executable, "-m", "selection.jobs"]
    record("warmup", *run_child([*job, "warmup", str(shared)], env, log)[:2])
    stages["extract"]["loop"] = 0.0
    for path in per_shard:
        seconds, rss, out = run_child([sys.executable, str(Path(__file__).resolve()), "--stage", "extract", str(path)],
                                      env, log)
        record("extract", seconds, rss)
        stages["extract"]["loop"] += json.loads(out.strip().splitlines()[-1])["loop"]
        seconds, rss, out = run_child([sys.executable, str(Path(__file__).resolve()), "--floor", str(path)], env, log)
        record("floor", seconds, rss)
        measured = json.loads(out.strip().splitlines()[-1])
        stages["floor"]["startup"] += measured["startup"]
        stages["floor"]["loop"] += measured["loop"]
    for path in per_shard:
        record("score", *run_child([*job, "score", str(path)], env, log)[:2])
    record("reduce", *run_child([*job, "reduce", str(shared)], env, log)[:2])
    stored = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    selection = json.loads(next(store.rglob("selection.json")).read_text())
    return {"size": size, "stages": stages, "selected": len(selection["indices"]), "store_bytes": stored}


# --------------------------------------------------------------------------------------------
# Table


def table(results: list[dict], args, loads: tuple[float, float], minutes: float) -> str:
    lines = [
        f"Pipeline benchmark: `dsel` stages as processes, defaults (r=128, 4 epochs, CountSketch d=8192, "
        f"batch 8), {MODEL}, seq <= {args.seq}, {args.shards} shards, {2 * args.validation} validation examples, "
        f"{args.threads} threads, OMP_WAIT_POLICY=PASSIVE.",
        f"Machine: {os.cpu_count()} CPUs, load average {loads[0]:.1f} at start and {loads[1]:.1f} at end "
        f"(shared with other jobs); {minutes:.1f} min in all.",
        "",
        "| pool | stage | processes | wall s | pool ex/s | peak RSS MiB |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for result in results:
        for name in (*STAGE_ORDER, "floor"):
            row = result["stages"][name]
            label = "fwd+bwd floor" if name == "floor" else name
            lines.append(
                f"| {result['size']} | {label} | {row['processes']} | {row['seconds']:.1f} | "
                f"{result['size'] / row['seconds']:.2f} | {row['peak_rss'] / 2**20:.0f} |"
            )
    lines += ["", "| pool | extract x floor (whole processes) | extract loop s | floor loop s | extract loop x floor loop "
              "| extract peak RSS vs N |", "|---:|---:|---:|---:|---:|---:|"]
    base_rss = results[0]["stages"]["extract"]["peak_rss"]
    for result in results:
        extract, floor = result["stages"]["extract"], result["stages"]["floor"]
        loop = extract["loop"] / floor["loop"]
        lines.append(
            f"| {result['size']} | {extract['seconds'] / floor['seconds']:.2f} | {extract['loop']:.1f} | "
            f"{floor['loop']:.1f} | {loop:.2f} | "
            f"{extract['peak_rss'] / base_rss:.3f} |"
        )
    lines += ["", "Peak RSS growth from N to 4N per stage (ratio):", ""]
    small, large = results[0]["stages"], results[-1]["stages"]
    lines.append(", ".join(f"{name} {large[name]['peak_rss'] / small[name]['peak_rss']:.3f}" for name in STAGE_ORDER))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=24, help="the smaller pool size N (the other is 4N)")
    parser.add_argument("--shards", type=int, default=3, help="extraction shards")
    parser.add_argument("--seq", type=int, default=128, help="tokens per example, at most")
    parser.add_argument("--validation", type=int, default=8, help="validation examples per task (2 tasks)")
    parser.add_argument("--threads", type=int, default=2, help="OMP/MKL threads of every process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="also write the table (markdown) here")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--keep", type=Path, help="work directory to keep (default: a temporary one)")
    parser.add_argument("--floor", help=argparse.SUPPRESS)
    parser.add_argument("--stage", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.floor:
        return floor_main(args.floor)
    if args.stage:
        return stage_main(*args.stage)

    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT))
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="dsel-bench-") as temporary:
        work = args.keep or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        log = work / "stages.log"
        results = []
        for size in (args.n, 4 * args.n):
            results.append(run_size(size, args, env, work, log))
            print(f"  pool {size}: done after {time.perf_counter() - started:.0f} s", flush=True)
    text = table(results, args, (load_start, os.getloadavg()[0]), (time.perf_counter() - started) / 60)
    publish(text, results, args.output, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
