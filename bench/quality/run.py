"""Does it select well? Select with every method, fine-tune on each subset, evaluate per task.

    python -m bench.quality.run            # full: 3 seeds x budgets 5/10/15% (~45 min, 2 CPUs)
    python -m bench.quality.run --quick    # 1 seed, 15%, smaller pool (< 10 min)

Per seed: write a fresh pool + validation sets, then for every (method, budget) call dsel's
library API (`selection.spec.parse_selection` + `selection.local.run_selection`, the code path
behind `dsel run`) with one artifact directory per seed, so the warmup and the gradient features
are computed once per seed and only the reduction differs between methods and budgets. Each
subset, and the full pool, then trains a fresh LoRA with one recipe (finetune.py), and the merged
model is scored by exact match on the held-out test sets (evaluate.py). report.py turns the
records into REPORT.md and PNG plots.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # `python bench/quality/run.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.quality import evaluate, finetune, pretrain, tasks  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_RESULTS = HERE / "results"
DEFAULT_CACHE = DEFAULT_RESULTS / "cache"  # git-ignored (bench/**/results/cache/)


# --- methods: one entry each -------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """A selection method as this benchmark runs it: a label and the spec's `selection` fields."""

    label: str
    selection: dict[str, Any]
    note: str = ""

    def supported(self) -> bool:
        """Whether this dsel accepts the method (a method dsel lacks is skipped and reported)."""
        from typing import get_args

        from selection.spec import SelectionSpec

        accepted = get_args(SelectionSpec.model_fields["method"].annotation)
        return self.selection["method"] in accepted


METHODS: list[Method] = [
    Method("random", {"method": "random"}, "uniform, seeded with the benchmark seed"),
    Method("less", {"method": "less"}, "LESS task-max (docs/algorithms.md §11)"),
    Method("quota", {"method": "quota"}, "B/K per task by mean normalized influence"),
    Method("bids", {"method": "bids"}, "BIDS, instance granularity, normalized, iterative"),
    # Runs as soon as dsel's spec accepts it; until then it is listed as skipped in the report.
    Method("influence-distillation", {"method": "influence-distillation"}, "Nikdan et al. 2025"),
]
FULL_POOL = "full"
CORE_METHODS = ("random", "less", "quota", "bids")  # a failure of these stops the benchmark


# --- sizes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Size:
    """Everything that differs between the full benchmark, --quick and the CI smoke test."""

    name: str
    seeds: int
    budgets: tuple[float, ...]
    data: tasks.PoolSizes
    model: pretrain.PretrainConfig
    recipe: finetune.FinetuneRecipe
    selection: dict[str, Any]  # spec sections for dsel: warmup, gradients, data.maxLength
    train_full_pool: bool = True

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def _dsel_sections(warmup_fraction: float, warmup_epochs: int, projection_dim: int, batch_size: int) -> dict[str, Any]:
    """dsel's LESS warmup and feature defaults, scaled down to this model (docs/algorithms.md §3-§6)."""
    return {
        "warmup": {
            "fraction": warmup_fraction,  # LESS: 5% of the pool
            "epochs": warmup_epochs,  # LESS: 4 (one checkpoint per epoch); fewer for time
            "learningRate": 1e-3,  # LESS: 2e-5 for 7B models; a tiny model needs a larger step
            "effectiveBatchSize": 16,  # LESS: 128 for a much larger pool
            "microBatchSize": 16,
            "lora": {"r": 8, "alpha": 32},  # LESS: r=128, alpha=512 (same alpha/r = 4)
        },
        "gradients": {"projectionDim": projection_dim, "batchSize": batch_size},
        "maxLength": 128,
    }


def size_preset(name: str) -> Size:
    test_sets = {"full": 150, "quick": 60, "smoke": 4}[name] if name in ("full", "quick", "smoke") else None
    if name == "full":
        data = tasks.PoolSizes(pool=3000, validation_per_task=8, test_per_task=test_sets)
        return Size(
            "full", 3, (0.05, 0.10, 0.15), data,
            pretrain.PretrainConfig(steps=2000, test_sizes=data),
            finetune.FinetuneRecipe(),
            _dsel_sections(0.05, 2, 2048, 16),
        )
    if name == "quick":
        data = tasks.PoolSizes(pool=1000, validation_per_task=8, test_per_task=test_sets)
        return Size(
            "quick", 1, (0.15,), data,
            pretrain.PretrainConfig(steps=800, test_sizes=data),
            finetune.FinetuneRecipe(),
            _dsel_sections(0.05, 2, 1024, 16),
        )
    if name == "smoke":  # the CI test: every code path, tiny everything
        data = tasks.PoolSizes(pool=80, validation_per_task=2, test_per_task=test_sets)
        return Size(
            "smoke", 1, (0.25,), data,
            pretrain.PretrainConfig(
                hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, steps=3, batch_size=4, sequence_length=32, test_sizes=data,
            ),
            replace(finetune.FinetuneRecipe(), epochs=1, lora_r=4),
            _dsel_sections(0.25, 1, 64, 8),
        )
    raise ValueError(f"unknown size {name!r}")


# --- one seed --------------------------------------------------------------------------------


def selection_resource(size: Size, seed: int, base_dir: Path, inputs: dict[str, Any], method: Method, budget: float):
    """The DataSelection resource for one (seed, method, budget), as `dsel run` would read it."""
    from selection.spec import parse_selection

    sections = size.selection
    document = {
        "apiVersion": "dsel.dev/v1alpha1",
        "kind": "DataSelection",
        "metadata": {"name": f"quality-seed{seed}"},
        "spec": {
            "model": {"source": str(base_dir), "chatTemplate": "plain"},
            "data": {
                "train": inputs["train"],
                "validation": [{"task": t, "uri": uri} for t, uri in inputs["validation"].items()],
                "maxLength": sections["maxLength"],
            },
            "warmup": {**sections["warmup"], "seed": seed},
            "gradients": {**sections["gradients"], "seed": seed},
            "selection": {**method.selection, "budget": float(budget), "seed": seed},
        },
    }
    return parse_selection(document, source=f"bench seed {seed} {method.label} {budget}")


def composition_by_task(pool: list[tasks.Item], indices: list[int]) -> dict[str, int]:
    """How many selected examples really belong to each task (distractors included)."""
    counts = {task: 0 for task in (*tasks.TASKS, tasks.DISTRACTOR)}
    for i in indices:
        counts[pool[i].task] += 1
    return counts


def run_seed(
    size: Size,
    seed: int,
    base_dir: Path,
    work: Path,
    methods: list[Method],
    test: dict[str, list[tasks.Item]],
    log: Callable[[str], None],
    record: Callable[[dict[str, Any]], None],
    failed: dict[str, str],
) -> None:
    from selection.local import run_selection

    data = tasks.build_datasets(size.data, seed)
    inputs = tasks.write_selection_inputs(data, work / "data")
    storage = work / "dsel"

    def train_and_score(label: str, budget: float | None, indices: list[int], extra: dict[str, Any]) -> None:
        started = time.perf_counter()
        model, tokenizer = finetune.finetune(base_dir, [data.pool[i] for i in indices], size.recipe, seed)
        trained = time.perf_counter()
        scores = evaluate.accuracy(model, tokenizer, test)
        done = time.perf_counter()
        entry = {
            "seed": seed,
            "method": label,
            "budget": budget,
            "count": len(indices),
            "accuracy": scores,
            "macro": sum(scores.values()) / len(scores),
            "worst": min(scores.values()),
            "composition": composition_by_task(data.pool, indices),
            "seconds_finetune": round(trained - started, 1),
            "seconds_eval": round(done - trained, 1),
            **extra,
        }
        record(entry)
        shown = " ".join(f"{t}={scores[t]:.2f}" for t in tasks.TASKS)
        where = "full pool" if budget is None else f"{budget:.0%}"
        log(f"  seed {seed} {label:>8} {where:>9} (n={len(indices)}): macro {entry['macro']:.3f}  {shown}  "
            f"[ft {entry['seconds_finetune']:.0f}s, eval {entry['seconds_eval']:.0f}s]")

    for budget in size.budgets:
        for method in methods:
            resource = selection_resource(size, seed, base_dir, inputs, method, budget)
            started = time.perf_counter()
            try:
                document = run_selection(resource, storage_uri=str(storage), cache_dir=str(work / "models"), progress=False)
            except Exception as error:  # noqa: BLE001 — one broken method must not sink the others
                if method.label in CORE_METHODS:
                    raise
                log(f"  seed {seed} {method.label} {budget:.0%}: FAILED in dsel: {type(error).__name__}: {error}")
                failed.setdefault(method.label, f"{type(error).__name__}: {error}")
                continue
            seconds = time.perf_counter() - started
            log(f"  seed {seed} selected {method.label} {budget:.0%}: {len(document['indices'])} examples in {seconds:.0f} s")
            train_and_score(
                method.label, budget, list(document["indices"]),
                {"seconds_select": round(seconds, 1), "dsel_composition": document.get("composition")},
            )
    if size.train_full_pool:
        train_and_score(FULL_POOL, None, list(range(len(data.pool))), {"seconds_select": 0.0})


# --- the whole benchmark ---------------------------------------------------------------------


def versions() -> dict[str, str]:
    import numpy
    import peft
    import torch
    import transformers

    found = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cpu threads": str(torch.get_num_threads()),
    }
    try:
        import matplotlib

        found["matplotlib"] = matplotlib.__version__
    except ImportError:
        found["matplotlib"] = "not installed (plots skipped)"
    try:
        from importlib.metadata import version

        found["dsel"] = version("dsel")
    except Exception:  # noqa: BLE001 — not installed as a package: the source tree is used
        found["dsel"] = "source tree"
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, budget 15%%, a 1000-example pool, shorter pretraining (< 10 min)")
    parser.add_argument("--size", choices=("full", "quick", "smoke"), help="preset (smoke: the CI test's size)")
    parser.add_argument("--seeds", type=int, help="number of seeds (default: 3 full, 1 quick)")
    parser.add_argument("--budgets", type=float, nargs="+", help="fractions of the pool (default: 0.05 0.10 0.15)")
    parser.add_argument("--methods", nargs="+", help="labels from the method list (default: all dsel supports)")
    parser.add_argument("--out", type=Path, help="report directory (default: bench/quality/results; "
                        "--quick: bench/quality/results/cache/quick, so it never overwrites the committed report)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="base models and per-seed work (default: %(default)s)")
    parser.add_argument("--fresh", action="store_true", help="delete this size's per-seed work (not the base model) first")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: on a shared "
                        "2-core machine two threads oversubscribe and ran about 5x slower per step, measured)")
    args = parser.parse_args(argv)

    name = args.size or ("quick" if args.quick else "full")
    size = size_preset(name)
    if args.seeds is not None:
        size = replace(size, seeds=args.seeds)
    if args.budgets:
        size = replace(size, budgets=tuple(args.budgets))
    out = (args.out or (DEFAULT_RESULTS if name == "full" else args.cache / name)).resolve()
    cache = args.cache.resolve()
    out.mkdir(parents=True, exist_ok=True)
    wanted = args.methods or [m.label for m in METHODS]
    unknown = sorted(set(wanted) - {m.label for m in METHODS})
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)} (known: {', '.join(m.label for m in METHODS)})")
    methods = [m for m in METHODS if m.label in wanted and m.supported()]
    skipped = [m.label for m in METHODS if m.label in wanted and not m.supported()]

    log_file = (out / "run.log").open("w")

    def log(message: str) -> None:
        print(message, flush=True)
        log_file.write(message + "\n")
        log_file.flush()

    import torch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # restored at the end: the smoke test runs in pytest's process
    try:
        return _run(args, name, size, out, cache, methods, skipped, log, argv)
    finally:
        torch.set_num_threads(threads_before)
        log_file.close()


def _run(args, name: str, size: Size, out: Path, cache: Path, methods: list[Method], skipped: list[str], log, argv) -> int:
    import torch

    torch.manual_seed(0)
    command = "python -m bench.quality.run " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    log(f"$ {command.strip()}")
    log(f"size {name}: {size.seeds} seed(s), budgets {', '.join(f'{b:.0%}' for b in size.budgets)}, "
        f"methods {', '.join(m.label for m in methods)}" + (f" (skipped, not in dsel: {', '.join(skipped)})" if skipped else ""))
    started = time.perf_counter()
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    base_dir, built = pretrain.ensure_base_model(size.model, cache, log)
    timings["pretrain (0 if cached)"] = round(time.perf_counter() - t0, 1) if built else 0.0
    test = tasks.test_sets(size.data)
    from selection.models import load_model_and_tokenizer

    base_model, tokenizer = load_model_and_tokenizer(str(base_dir), dtype="float32")
    base_scores = {
        "chat": evaluate.accuracy(base_model, tokenizer, test, form="chat"),
        "narrative": evaluate.accuracy(base_model, tokenizer, test, form="narrative"),
    }
    del base_model
    log(f"base model {base_dir.name}: narrative-form accuracy {base_scores['narrative']}, chat-form {base_scores['chat']}")

    records: list[dict[str, Any]] = []
    failed: dict[str, str] = {}  # method label -> first error, for methods dsel could not run
    results_file = out / "results.json"

    def save(final: bool) -> None:
        document = {
            "size": size.describe(),
            "command": command.strip(),
            "versions": versions(),
            "methods": [asdict(m) for m in methods],
            "skipped_methods": skipped,
            "failed_methods": failed,
            "base_model": {"dir": base_dir.name, "accuracy": base_scores},
            "timings_seconds": timings,
            "finished": final,
            "records": records,
        }
        results_file.write_text(json.dumps(document, indent=1, default=str))

    def record(entry: dict[str, Any]) -> None:
        records.append(entry)
        save(final=False)

    run_root = cache / "runs" / f"{name}-{size.model.fingerprint()}"
    for seed in range(size.seeds):
        work = run_root / f"seed-{seed}"
        if args.fresh and work.exists():
            shutil.rmtree(work)
        t0 = time.perf_counter()
        log(f"seed {seed}: work in {work}")
        run_seed(size, seed, base_dir, work, methods, test, log, record, failed)
        timings[f"seed {seed}"] = round(time.perf_counter() - t0, 1)
    timings["total"] = round(time.perf_counter() - started, 1)
    save(final=True)

    from bench.quality import report

    written = report.write_report(results_file, out, plots=not args.no_plots)
    log(f"done in {timings['total'] / 60:.1f} min; report: {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
