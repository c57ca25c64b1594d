"""Selection cost: full LESS-style extraction + scoring vs influence distillation; prints tables.

    .venv/bin/python bench/selection_cost.py                # demo, 20000, 20000:less (about an hour)
    .venv/bin/python bench/selection_cost.py --pools demo --threads 1
    .venv/bin/python bench/selection_cost.py --pools 2000:less --blocks 1 --landmarks 512

Both methods run through the real pipeline stages (`selection.jobs`), in this process, one
after the other, on the same warmup checkpoints of the same tiny model (tiny:llama-demo):
- full (LESS-style): `extract.run` (Adam-aware features of every example at every checkpoint,
  projected) and `score.run` (the attribution matrix A = sum_c w_c G_c V_c^T).
- influence distillation: `distill.load_model` + landmark features (L gradients at the last
  checkpoint, bias-corrected Adam) + JVP embeddings of every example, then
  `distill.ensure_distilled_scores` (p_L and the kernel ridge propagation to p_hat).
Warmup (and the validation features it computes for every checkpoint) is timed but excluded
from both totals: both methods need it. Model loading is inside both totals.

Pools:
- `demo`: examples/demo as is (300 examples, 20 validation examples in 5 tasks, 2 warmup
  epochs, projection dim 512). Landmarks default to 4096, capped at N: every example is a
  landmark here, so distillation can only cost more; the row shows the overhead.
- `N` (e.g. 20000): N examples drawn with examples/demo/generate.py's generator (seed
  --data-seed), the demo validation sets, and the demo spec unchanged (2 checkpoints, d=512).
- `N:less`: the same pool with LESS's defaults where the demo shrinks them for speed: warmup
  fraction 0.05, 4 epochs (so 4 checkpoints for the full method), projection dim 8192.
Influence distillation runs once per --blocks value (4, the spec default, is capped at the tiny
model's 2 layers, i.e. the whole model; 1 is the analogue of the paper's 4 of 32 blocks), each
from a fresh copy of the warmup artifacts.

Agreement between the two N x M matrices (A and p_hat), reported as measured:
- Spearman per validation column (mean and min over columns), and of the row means;
- at the landmarks only: A vs p_L (how much the two *gradient definitions* differ: all
  checkpoints, LESS's Adam transform vs the last checkpoint, bias-corrected Adam), separately
  from the propagation;
- selection overlap |S_A & S_p| / B at the demo budget fraction for the same reducer on both
  matrices (round robin, BIDS), for each method's own reducer (BIDS on A vs round robin on
  p_hat), and the overlap two random selections would have (B / N).
Times are wall seconds (CPU seconds of this process in brackets); absolute numbers vary with
machine load, so run it on an idle machine, or pin --threads 1 on a shared one.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = ROOT / "examples" / "demo"
sys.path.insert(0, str(ROOT))


@dataclass
class Timer:
    wall: float = 0.0
    cpu: float = 0.0

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall += time.perf_counter() - self._wall
        self.cpu += time.process_time() - self._cpu

    def __str__(self) -> str:
        return f"{self.wall:8.1f} ({self.cpu:7.1f})"


@dataclass
class PoolResult:
    name: str
    pool: int
    validation: int
    checkpoints: int
    projection_dim: int
    budget: int
    times: dict[str, Timer] = field(default_factory=dict)  # warmup and the full method
    variants: list["VariantResult"] = field(default_factory=list)  # influence distillation, per setting


@dataclass
class VariantResult:
    blocks: int  # as requested
    kept: int  # as used (capped at the model's layers)
    landmarks: int
    times: dict[str, Timer] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)


def demo_document() -> dict:
    document = yaml.safe_load((DEMO_DIR / "dataselection.yaml").read_text())
    data = document["spec"]["data"]
    data["train"] = str(DEMO_DIR / data["train"])
    for entry in data["validation"]:
        entry["uri"] = str(DEMO_DIR / entry["uri"])
    document["spec"]["gradients"]["shards"] = 1  # one process either way; sharding does not change the work
    return document


def synthetic_pool(path: Path, size: int, seed: int) -> None:
    """`size` chat examples from the demo's generator, tasks drawn uniformly."""
    spec = importlib.util.spec_from_file_location("demo_generate", DEMO_DIR / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    rng = random.Random(seed)
    with path.open("w") as out:
        for number in range(size):
            task = rng.choice(generate.TASKS)
            record = generate.make_example(task, rng)
            record["id"] = f"{task}-{number:06d}"
            out.write(json.dumps(record, sort_keys=True) + "\n")


def ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), as Spearman's rho needs."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + ends - 1) / 2.0)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = ranks(np.asarray(a, dtype=np.float64)), ranks(np.asarray(b, dtype=np.float64))
    ra -= ra.mean()
    rb -= rb.mean()
    denominator = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def overlap(first: list[int], second: list[int]) -> float:
    return len(set(first) & set(second)) / len(first)


def run_pool(name: str, document: dict, workdir: Path, threads: int | None, blocks: list[int]) -> PoolResult:
    import torch

    from selection.jobs import extract, score, warmup
    from selection.contract import JobArgs, StorageLocation
    from selection.jobs.context import StageContext
    from selection.reduce import resolve_budget
    from selection.spec import parse_selection

    if threads:
        torch.set_num_threads(threads)
    store = workdir / "store"
    ctx = StageContext(JobArgs(resource=parse_selection(document), storage=StorageLocation(str(store))),
                       scratch_root=workdir / "scratch")
    spec = ctx.spec
    pool = len(ctx.train_examples)
    tasks = [e.task for e in ctx.validation_examples]
    result = PoolResult(name, pool, len(tasks), len(ctx.epochs), spec.gradients.projection_dim,
                        resolve_budget(spec.selection.budget, pool))
    t = result.times
    print(f"[{name}] N={pool} M={len(tasks)} checkpoints={result.checkpoints} d={result.projection_dim} "
          f"B={result.budget}", flush=True)
    with t.setdefault("warmup", Timer()):
        warmup.run(ctx)
    print(f"[{name}] warmup (+ validation features) {t['warmup']}", flush=True)
    with t.setdefault("full: extract", Timer()):
        for shard in range(spec.gradients.shards):
            extract.run(ctx, shard)
    with t.setdefault("full: score", Timer()):
        for shard in range(spec.gradients.shards):
            score.run(ctx, shard)
    print(f"[{name}] full: extraction {t['full: extract']}, scoring {t['full: score']}", flush=True)
    full, _ = score.gather(ctx)
    full = np.asarray(full, dtype=np.float64)
    ctx.close()
    for count in blocks:
        # A fresh store holding only the warmup and validation artifacts: nothing distilled is reused.
        variant_dir = workdir / f"distill-blocks-{count}"
        if variant_dir.exists():
            shutil.rmtree(variant_dir)
        for part in ("warmup", "features/validation"):
            shutil.copytree(store / part, variant_dir / "store" / part)
        variant_document = copy.deepcopy(document)
        variant_document["spec"].setdefault("distillation", {})["blocks"] = count
        result.variants.append(run_distillation(name, variant_document, variant_dir, full, tasks, result.budget))
    return result


def run_distillation(name: str, document: dict, workdir: Path, full: np.ndarray, tasks: list[str],
                     budget: int) -> VariantResult:
    from selection import artifacts
    from selection.jobs import distill
    from selection.contract import JobArgs, StorageLocation
    from selection.jobs.context import StageContext
    from selection.reduce import reduce_matrix
    from selection.spec import parse_selection

    location = StorageLocation(str(workdir / "store"))
    ctx = StageContext(JobArgs(resource=parse_selection(document), storage=location),
                       scratch_root=workdir / "scratch")
    spec = ctx.spec
    chosen = distill.landmarks(ctx)
    variant = VariantResult(blocks=spec.distillation.blocks, kept=0, landmarks=len(chosen))
    t = variant.times
    with t.setdefault("id: load model", Timer()):
        loaded = distill.load_model(ctx)
    variant.kept = distill.embedder(ctx).kept_blocks(loaded[0])
    with t.setdefault("id: landmarks", Timer()):
        for shard in range(spec.gradients.shards):
            distill.save_landmark_features(ctx, loaded, shard)
    with t.setdefault("id: embeddings", Timer()):
        for shard in range(spec.gradients.shards):
            distill.save_embeddings(ctx, loaded, shard)
    with t.setdefault("id: propagate", Timer()):
        distill.ensure_distilled_scores(ctx)
    print(f"[{name}] distillation (blocks {variant.blocks} -> {variant.kept}, L={variant.landmarks}): "
          f"landmarks {t['id: landmarks']}, embeddings {t['id: embeddings']}, propagation {t['id: propagate']}",
          flush=True)
    store = ctx.artifacts
    distilled = np.asarray(store.load_array(artifacts.DISTILLED_SCORES_PREFIX, artifacts.SCORES_FILE),
                           dtype=np.float64)
    landmark_scores = np.asarray(
        store.load_array(artifacts.DISTILLED_SCORES_PREFIX, artifacts.LANDMARK_SCORES_FILE), dtype=np.float64
    )
    selections = {}
    for label, matrix in (("A", full), ("p", distilled)):
        for method in ("bids", "influence-distillation"):
            selections[label, method] = reduce_matrix(
                matrix, tasks, method=method, budget=budget, seed=spec.selection.seed
            ).indices
    per_column = [spearman(full[:, j], distilled[:, j]) for j in range(full.shape[1])]
    a = variant.agreement
    a["spearman per column (mean)"] = float(np.mean(per_column))
    a["spearman per column (min)"] = float(np.min(per_column))
    a["spearman of row means"] = spearman(full.mean(axis=1), distilled.mean(axis=1))
    a["landmarks only: A vs p_L per column (mean)"] = float(
        np.mean([spearman(full[chosen, j], landmark_scores[:, j]) for j in range(full.shape[1])])
    )
    a["overlap, round robin on both"] = overlap(selections["A", "influence-distillation"],
                                                selections["p", "influence-distillation"])
    a["overlap, BIDS on both"] = overlap(selections["A", "bids"], selections["p", "bids"])
    a["overlap, BIDS on A vs round robin on p_hat"] = overlap(selections["A", "bids"],
                                                             selections["p", "influence-distillation"])
    a["overlap of two random selections (B/N)"] = budget / full.shape[0]
    ctx.close()
    return variant


def total(times: dict[str, Timer], prefix: str) -> Timer:
    out = Timer()
    for key, timer in times.items():
        if key.startswith(prefix):
            out.wall += timer.wall
            out.cpu += timer.cpu
    return out


def print_tables(results: list[PoolResult]) -> None:
    print("\nwall seconds (CPU seconds of this process); warmup excluded from both totals")
    print(f"{'pool':>10} {'N':>6} {'M':>3} {'C':>2} {'d':>5} | {'warmup':>18} | {'full extract':>18} "
          f"{'full score':>18} {'FULL total':>18}")
    for r in results:
        t = r.times
        print(f"{r.name:>10} {r.pool:>6} {r.validation:>3} {r.checkpoints:>2} {r.projection_dim:>5} | "
              f"{t['warmup']!s:>18} | {t['full: extract']!s:>18} {t['full: score']!s:>18} "
              f"{total(t, 'full:')!s:>18}")
    print(f"\n{'pool':>10} {'blocks':>6} {'L':>5} | {'ID landmarks':>18} {'ID embeddings':>18} "
          f"{'ID propagate':>18} {'ID total':>18} | full/ID wall (CPU)")
    for r in results:
        full = total(r.times, "full:")
        for v in r.variants:
            t = v.times
            distilled = total(t, "id:")
            print(f"{r.name:>10} {v.kept:>6} {v.landmarks:>5} | {t['id: landmarks']!s:>18} {t['id: embeddings']!s:>18} "
                  f"{t['id: propagate']!s:>18} {distilled!s:>18} | {full.wall / distilled.wall:>6.2f}x "
                  f"({full.cpu / distilled.cpu:.2f}x)")
    print("(ID total includes loading the model once; blocks is the count used, capped at the model's 2 layers)")
    print("\nagreement between A (full) and p_hat (distilled)")
    columns = [(f"{r.name}/b{v.kept}", v) for r in results for v in r.variants]
    keys = list(columns[0][1].agreement)
    width = max(len(k) for k in keys)
    print(f"{'':<{width}} " + " ".join(f"{label:>14}" for label, _ in columns))
    for key in keys:
        print(f"{key:<{width}} " + " ".join(f"{v.agreement[key]:>14.3f}" for _, v in columns))


def as_json(results: list[PoolResult]) -> list[dict]:
    def times(values: dict[str, Timer]) -> dict:
        return {k: {"wall": v.wall, "cpu": v.cpu} for k, v in values.items()}

    return [
        {"pool": r.name, "N": r.pool, "M": r.validation, "checkpoints": r.checkpoints,
         "projection_dim": r.projection_dim, "budget": r.budget, "times": times(r.times),
         "distillation": [{"blocks": v.blocks, "kept": v.kept, "landmarks": v.landmarks,
                           "times": times(v.times), "agreement": v.agreement} for v in r.variants]}
        for r in results
    ]


LESS_DEFAULTS = {"fraction": 0.05, "epochs": 4, "projectionDim": 8192}  # docs/algorithms.md §3-§6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--pools", default="demo,20000,20000:less",
        help="comma-separated pools: demo, N (N synthetic examples, the demo spec), N:less (the same "
             "with LESS's warmup fraction 0.05, 4 epochs, projection dim 8192); default: %(default)s",
    )
    parser.add_argument("--blocks", default="4,1",
                        help="distillation.blocks values to run, comma-separated (default: %(default)s; "
                             "4 is the spec default, capped at the tiny model's 2 layers)")
    parser.add_argument("--landmarks", type=int, default=None, help="distillation.landmarks (default: the spec's, 4096)")
    parser.add_argument("--data-seed", type=int, default=11, help="seed of the synthetic pools (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep artifacts here (default: a temporary directory)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    blocks = [int(b) for b in args.blocks.split(",") if b.strip()]

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dsel-selection-cost-"))
    results = []
    try:
        for name in [p.strip() for p in args.pools.split(",") if p.strip()]:
            document = demo_document()
            spec = document["spec"]
            directory = workdir / name.replace(":", "-")
            if directory.exists():
                shutil.rmtree(directory)  # fresh artifacts, or finished stages would be skipped
            directory.mkdir(parents=True)
            if name != "demo":
                size, _, preset = name.partition(":")
                synthetic_pool(directory / "train.jsonl", int(size), args.data_seed)
                spec["data"]["train"] = str(directory / "train.jsonl")
                if preset == "less":
                    spec["warmup"].update(fraction=LESS_DEFAULTS["fraction"], epochs=LESS_DEFAULTS["epochs"])
                    spec["gradients"]["projectionDim"] = LESS_DEFAULTS["projectionDim"]
                elif preset:
                    parser.error(f"--pools: unknown preset {preset!r} in {name!r} (known: less)")
            if args.landmarks:
                spec.setdefault("distillation", {})["landmarks"] = args.landmarks
            results.append(run_pool(name, document, directory, args.threads, blocks))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print_tables(results)
    if args.json:
        args.json.write_text(json.dumps(as_json(results), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
