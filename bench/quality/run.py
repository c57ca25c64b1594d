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
import hashlib
import platform
import random
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # `python bench/quality/run.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.quality import evaluate, finetune, pretrain, tasks, transfer  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_RESULTS = HERE / "results"
DEFAULT_CACHE = DEFAULT_RESULTS / "cache"  # git-ignored (bench/**/results/cache/)


# --- methods: one entry each -------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """A selection method as this benchmark runs it: a label, the spec's `selection` fields, and
    overrides of the `gradients` / `warmup` sections (feature variants, warmup recipes)."""

    label: str
    selection: dict[str, Any]
    note: str = ""
    gradients: dict[str, Any] = field(default_factory=dict)
    warmup: dict[str, Any] = field(default_factory=dict)

    def supported(self) -> bool:
        """Whether this dsel accepts the method and its feature variant (else: skipped, reported)."""
        from typing import get_args

        from selection.spec import GradientsSpec, SelectionSpec

        accepted = get_args(SelectionSpec.model_fields["method"].annotation)
        train_types = get_args(GradientsSpec.model_fields["train_type"].annotation)
        return self.selection["method"] in accepted and self.gradients.get("trainType", "adam") in train_types


LESS_FEATURES = {"trainType": "adam"}  # the papers' methods keep LESS's Adam-aware features

# BIDS first: its first call in a seed pays warmup + every feature (the selection cost shown).
METHODS: list[Method] = [
    Method("bids", {"method": "bids"}, "BIDS, instance granularity, normalized, iterative", LESS_FEATURES),
    Method("less", {"method": "less"}, "LESS task-max (docs/algorithms.md §11)", LESS_FEATURES),
    Method("quota", {"method": "quota"}, "B/K per task by mean normalized influence", LESS_FEATURES),
    Method("random", {"method": "random"}, "uniform, seeded with the benchmark seed"),
    Method("influence-distillation", {"method": "influence-distillation"}, "Nikdan et al. 2025"),
    Method("quota-sample", {"method": "quota-sample"}, "dsel: per-task quotas, seeded draw among top candidates"),
    Method("bids/adam-diagonal", {"method": "bids"}, "BIDS on Influence Distillation's bias-corrected, momentum-free "
           "Adam features", {"trainType": "adam-diagonal"}),
]


def default_method() -> tuple[str, str]:
    """(label, description) of the entry that runs as `dsel run` does by default: the spec's
    default method with the spec's default features (the entry pins no trainType)."""
    from selection.spec import GradientsSpec, SelectionSpec

    method = SelectionSpec.model_fields["method"].default
    train_type = GradientsSpec.model_fields["train_type"].default
    for m in METHODS:
        if m.selection["method"] == method and len(m.selection) == 1 and "trainType" not in m.gradients:
            return m.label, f"selection.method {method}, gradients.trainType {train_type}"
    return method, f"selection.method {method}"
FULL_POOL = "full"
CORE_METHODS = ("random", "less", "quota", "bids")  # a failure of these stops the benchmark


# --- controls: subsets the benchmark draws itself, from the pool's true labels ---------------

STRATIFIED = "stratified"  # equal counts per true capability (an oracle: it knows the labels)
WITHIN_TASK = "within-task"  # "within-task@bids": uniform within each true task at bids's counts


def stratified_indices(pool: list[tasks.Item], count: int, rng: random.Random) -> list[int]:
    """`count` examples, equal per capability (remainder to the first tasks), none of the
    distractors: uses the true task labels, so it is an oracle-side control, not a method."""
    by_task = {t: [i for i, item in enumerate(pool) if item.task == t] for t in tasks.TASKS}
    share, extra = divmod(count, len(tasks.TASKS))
    chosen: list[int] = []
    for k, task in enumerate(tasks.TASKS):
        chosen += rng.sample(by_task[task], min(len(by_task[task]), share + (k < extra)))
    return chosen


def within_task_indices(pool: list[tasks.Item], counts: dict[str, int], rng: random.Random) -> list[int]:
    """Uniform draws within each true task (distractors included) at the given per-task counts:
    separates a method's *within-task* choice from its choice of how much of each task."""
    chosen: list[int] = []
    for task, n in counts.items():
        members = [i for i, item in enumerate(pool) if item.task == task]
        chosen += rng.sample(members, n)
    return chosen


# --- sizes ---------------------------------------------------------------------------------

SCENARIOS = ("transfer", "in-domain")


@dataclass(frozen=True)
class Size:
    """Everything that differs between scenarios, the full benchmark, --quick and the CI smoke test."""

    name: str
    scenario: str  # "transfer" (a mixed pool, the papers' setting) or "in-domain" (i.i.d. pool)
    seeds: int
    budgets: tuple[float, ...]
    data: tasks.PoolSizes
    model: pretrain.PretrainConfig
    recipe: finetune.FinetuneRecipe
    selection: dict[str, Any]  # spec sections for dsel: warmup, gradients, data.maxLength
    mix: transfer.TransferMix | None = None  # the transfer pool's ingredients
    controls: tuple[str, ...] = (STRATIFIED,)  # plus "within-task@<method>" entries
    train_full_pool: bool = True

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def _dsel_sections(
    warmup_fraction: float, warmup_epochs: int, projection_dim: int, batch_size: int, landmarks: int = 300
) -> dict[str, Any]:
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
        # Rademacher, not dsel's CountSketch default: the committed results of this benchmark and
        # of bench/attribution were measured with it (the default then).
        "gradients": {"projection": "rademacher", "projectionDim": projection_dim, "batchSize": batch_size},
        # Influence Distillation: landmarks ~10% of the pool (its paper: 4096 of a far larger pool)
        "distillation": {"landmarks": landmarks, "embedDim": projection_dim},
        "maxLength": 128,
    }


# Both scenarios share one base model: the pretraining excludes these test questions.
FULL_TEST_SIZES = tasks.PoolSizes(pool=3000, validation_per_task=8, test_per_task=150)
QUICK_TEST_SIZES = tasks.PoolSizes(pool=1000, validation_per_task=8, test_per_task=60)


def size_preset(name: str, scenario: str = "transfer") -> Size:
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r} (known: {', '.join(SCENARIOS)})")
    mix = transfer.TransferMix() if scenario == "transfer" else None
    if name == "full":
        model = pretrain.PretrainConfig(steps=2000, test_sizes=FULL_TEST_SIZES)
        if scenario == "in-domain":
            return Size("full", scenario, 3, (0.05, 0.10, 0.15), FULL_TEST_SIZES, model,
                        finetune.FinetuneRecipe(), _dsel_sections(0.05, 2, 2048, 16, 300), None, FULL_CONTROLS)
        data = replace(FULL_TEST_SIZES, pool=TRANSFER_POOL)
        return Size("full", scenario, 8, (0.05, 0.10, 0.15), data, model, finetune.FinetuneRecipe(),
                    _dsel_sections(0.05, 2, 2048, 16, 100), mix, FULL_CONTROLS)
    if name == "quick":
        model = pretrain.PretrainConfig(steps=800, test_sizes=QUICK_TEST_SIZES)
        return Size("quick", scenario, 1, (0.15,), replace(QUICK_TEST_SIZES, pool=600), model, finetune.FinetuneRecipe(),
                    _dsel_sections(0.10, 2, 1024, 16, 60), mix, (STRATIFIED,))
    if name == "smoke":  # the CI test: every code path, tiny everything
        data = tasks.PoolSizes(pool=80 if mix is None else 120, validation_per_task=2, test_per_task=4)
        return Size(
            "smoke", scenario, 1, (0.25,), data,
            pretrain.PretrainConfig(
                hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, steps=3, batch_size=4, sequence_length=32, test_sizes=data,
            ),
            replace(finetune.FinetuneRecipe(), epochs=1, lora_r=4),
            _dsel_sections(0.25, 1, 64, 8, 16), mix, FULL_CONTROLS if mix else (STRATIFIED,),
        )
    raise ValueError(f"unknown size {name!r}")


TRANSFER_POOL = 1000  # sized so 5 seeds of every method and control fit ~75 min here (README)
FULL_CONTROLS = (STRATIFIED, f"{WITHIN_TASK}@bids")


def build_datasets(size: Size, seed: int) -> tasks.Datasets:
    if size.scenario == "transfer":
        return transfer.build_datasets(size.data, size.mix, seed)
    return tasks.build_datasets(size.data, seed)


# --- one seed --------------------------------------------------------------------------------


def _sections(size: Size, method: Method) -> dict[str, Any]:
    """The warmup and gradients sections of one method: the size's, with the method's overrides."""
    base = size.selection
    lora = {**base["warmup"].get("lora", {}), **method.warmup.get("lora", {})}
    return {
        "warmup": {**base["warmup"], **method.warmup, "lora": lora},
        "gradients": {**base["gradients"], **method.gradients},
        # its own artifacts, so its first call pays its whole pipeline (the cost beside BIDS's)
        "distilled": method.selection["method"] == "influence-distillation",
    }


def artifact_group(size: Size, method: Method) -> str:
    """Methods with the same warmup and features share one artifact directory per seed."""
    return hashlib.sha256(json.dumps(_sections(size, method), sort_keys=True).encode()).hexdigest()[:10]


def selection_resource(size: Size, seed: int, base_dir: Path, inputs: dict[str, Any], method: Method, budget: float):
    """The DataSelection resource for one (seed, method, budget), as `dsel run` would read it."""
    from selection.spec import parse_selection

    sections = _sections(size, method)
    document = {
        "apiVersion": "dsel.dev/v1alpha1",
        "kind": "DataSelection",
        "metadata": {"name": f"quality-seed{seed}"},
        "spec": {
            "model": {"source": str(base_dir), "chatTemplate": "plain"},
            "data": {
                "train": inputs["train"],
                "validation": [{"task": t, "uri": uri} for t, uri in inputs["validation"].items()],
                "maxLength": size.selection["maxLength"],
            },
            "warmup": {**sections["warmup"], "seed": seed},
            "gradients": {**sections["gradients"], "seed": seed},
            "distillation": {**size.selection["distillation"], "seed": seed},
            # the bench's budgets are shares of the pool: `fraction` (a fractional `budget` is deprecated)
            "selection": {**method.selection, "fraction": float(budget), "seed": seed},
        },
    }
    return parse_selection(document, source=f"bench seed {seed} {method.label} {budget}")


def composition_by_task(pool: list[tasks.Item], indices: list[int]) -> dict[str, int]:
    """How many selected examples really belong to each task (distractors included)."""
    counts = {task: 0 for task in (*tasks.TASKS, tasks.DISTRACTOR)}
    for i in indices:
        counts[pool[i].task] += 1
    return counts


def subset_quality(pool: list[tasks.Item], indices: list[int]) -> dict[str, float]:
    """What a subset is made of beyond its tasks: shares of wrong answers (by the task's rule),
    off-target items, distractors and duplicates (items already in the subset), and the answer
    diversity (distinct answers per selected example of a task, averaged over tasks)."""
    items = [pool[i] for i in indices]
    n = max(1, len(items))
    task_items = [item for item in items if item.task != tasks.DISTRACTOR]
    diversity = []
    for task in tasks.TASKS:
        answers = [item.answer for item in task_items if item.task == task]
        if answers:
            diversity.append(len(set(answers)) / len(answers))
    return {
        "wrong_share": sum(not transfer.is_correct(item) for item in items) / n,
        "off_target_share": sum(item.kind == "off-target" for item in items) / n,
        "distractor_share": (len(items) - len(task_items)) / n,
        "duplicate_share": 1 - len({item.key for item in items}) / n if items else 0.0,
        "answer_diversity": sum(diversity) / len(diversity) if diversity else 0.0,
    }


def _control_rng(seed: int, label: str, budget: float) -> random.Random:
    return random.Random(f"{seed}/{label}/{budget}")


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
) -> dict[str, Any]:
    """Every method, control and the full pool for one seed; returns the pool's own make-up."""
    from selection.local import run_selection

    data = build_datasets(size, seed)
    inputs = tasks.write_selection_inputs(data, work / "data")
    every = list(range(len(data.pool)))

    def train_and_score(label: str, budget: float | None, indices: list[int], extra: dict[str, Any]) -> None:
        started = time.perf_counter()
        model, tokenizer = finetune.finetune(base_dir, [data.pool[i] for i in indices], size.recipe, seed)
        trained = time.perf_counter()
        scores = evaluate.accuracy(model, tokenizer, test)
        losses = evaluate.test_loss(model, tokenizer, test)
        done = time.perf_counter()
        entry = {
            "seed": seed,
            "method": label,
            "budget": budget,
            "count": len(indices),
            "accuracy": scores,
            "loss": losses,
            "macro": sum(scores.values()) / len(scores),
            "worst": min(scores.values()),
            "composition": composition_by_task(data.pool, indices),
            "quality": subset_quality(data.pool, indices),
            "seconds_finetune": round(trained - started, 1),
            "seconds_eval": round(done - trained, 1),
            **extra,
        }
        record(entry)
        shown = " ".join(f"{t}={scores[t]:.2f}" for t in tasks.TASKS)
        where = "full pool" if budget is None else f"{budget:.0%}"
        log(f"  seed {seed} {label:>8} {where:>9} (n={len(indices)}): macro {entry['macro']:.3f}  {shown}  "
            f"wrong {entry['quality']['wrong_share']:.2f} [ft {entry['seconds_finetune']:.0f}s, eval {entry['seconds_eval']:.0f}s]")

    if size.train_full_pool:  # first: it defines the learned tasks, and a cut-short run keeps it
        train_and_score(FULL_POOL, None, every, {"seconds_select": 0.0})
    for budget in size.budgets:
        chosen: dict[str, list[int]] = {}
        for method in methods:
            resource = selection_resource(size, seed, base_dir, inputs, method, budget)
            storage = work / "dsel" / artifact_group(size, method)
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
            chosen[method.label] = list(document["indices"])
            train_and_score(
                method.label, budget, chosen[method.label],
                {"seconds_select": round(seconds, 1), "dsel_composition": document.get("composition")},
            )
        count = len(next(iter(chosen.values()))) if chosen else int(budget * len(data.pool))
        for control in size.controls:
            rng = _control_rng(seed, control, budget)
            if control == STRATIFIED:
                indices = stratified_indices(data.pool, count, rng)
            else:
                of = control.split("@", 1)[1]
                if of not in chosen:
                    continue
                indices = within_task_indices(data.pool, composition_by_task(data.pool, chosen[of]), rng)
            train_and_score(control, budget, indices, {"seconds_select": 0.0, "control": True})
    return {"composition": composition_by_task(data.pool, every), "quality": subset_quality(data.pool, every)}


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
    parser.add_argument("--scenario", choices=SCENARIOS, default="transfer", help="transfer (default): a mixed pool "
                        "unlike the targets, as in the LESS/BIDS papers; in-domain: an i.i.d. pool (README.md)")
    parser.add_argument("--seed-ids", type=int, nargs="+", help="run exactly these seeds (e.g. to split a run "
                        "over processes; merge with `python -m bench.quality.report --merge`)")
    parser.add_argument("--seeds", type=int, help="number of seeds (default: 3 full, 1 quick)")
    parser.add_argument("--budgets", type=float, nargs="+", help="fractions of the pool (default: 0.05 0.10 0.15)")
    parser.add_argument("--methods", nargs="+", help="labels from the method list (default: all dsel supports)")
    parser.add_argument("--controls", nargs="*", help="controls to run (default: the size's: stratified, "
                        "within-task@bids; none with an empty list)")
    parser.add_argument("--no-full-pool", action="store_true", help="skip the full-pool fine-tune (e.g. a second "
                        "pass over the same seeds with more methods, merged with the first)")
    parser.add_argument("--out", type=Path, help="report directory (default: bench/quality/results; "
                        "--quick: bench/quality/results/cache/quick, so it never overwrites the committed report)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="base models and per-seed work (default: %(default)s)")
    parser.add_argument("--fresh", action="store_true", help="delete this size's per-seed work (not the base model) first")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--workers", type=int, default=1, help="split the seeds over N processes (one torch "
                        "thread each) and merge their results into one report; 2 uses both cores of this machine")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: on a shared "
                        "2-core machine two threads oversubscribe and ran about 5x slower per step, measured)")
    args = parser.parse_args(argv)

    name = args.size or ("quick" if args.quick else "full")
    size = size_preset(name, args.scenario)
    if args.seeds is not None:
        size = replace(size, seeds=args.seeds)
    if args.budgets:
        size = replace(size, budgets=tuple(args.budgets))
    if args.controls is not None:
        size = replace(size, controls=tuple(args.controls))
    if args.no_full_pool:
        size = replace(size, train_full_pool=False)
    out = (args.out or (DEFAULT_RESULTS / args.scenario if name == "full" else args.cache / name / args.scenario)).resolve()
    cache = args.cache.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.workers > 1:
        return run_workers(args, name, size, out, argv)
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


def command_line(argv: list[str] | None) -> str:
    """This run's command as a user would type it (for the report)."""
    return ("python -m bench.quality.run " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))).strip()


def worker_argv(args, name: str, size: Size, seeds: list[int], out: Path) -> list[str]:
    """The command line of one worker: this run's options, for its share of the seeds."""
    argv = ["--size", name, "--scenario", size.scenario, "--seed-ids", *map(str, seeds), "--out", str(out),
            "--budgets", *map(str, size.budgets), "--controls", *size.controls,
            "--cache", str(args.cache), "--threads", str(args.threads), "--no-plots"]
    if args.methods:
        argv += ["--methods", *args.methods]
    if not size.train_full_pool:
        argv.append("--no-full-pool")
    if args.fresh:
        argv.append("--fresh")
    return argv


def run_workers(args, name: str, size: Size, out: Path, argv) -> int:
    """Seeds split round-robin over `args.workers` processes, then one merged report.

    The base model is pretrained here first, so the workers never race to build it."""
    import subprocess

    from bench.quality import report

    command = command_line(argv)
    started = time.perf_counter()
    pretrain.ensure_base_model(size.model, args.cache.resolve(), print)
    seeds = list(args.seed_ids) if args.seed_ids is not None else list(range(size.seeds))
    shares = [seeds[k :: args.workers] for k in range(args.workers) if seeds[k :: args.workers]]
    parts = [out / "parts" / f"worker-{k}" for k in range(len(shares))]
    processes = []
    for share, part in zip(shares, parts):
        part.mkdir(parents=True, exist_ok=True)
        child = [sys.executable, "-m", "bench.quality.run", *worker_argv(args, name, size, share, part)]
        print(f"worker {part.name}: seeds {share}; log {part / 'run.log'}", flush=True)
        processes.append(subprocess.Popen(child, cwd=REPO, stdout=subprocess.DEVNULL))
    failed = [part.name for part, process in zip(parts, processes) if process.wait() != 0]
    if failed:
        print(f"workers failed: {', '.join(failed)} (their logs: run.log in {out / 'parts'})", file=sys.stderr)
        return 1
    merged = report.merge(
        [part / "results.json" for part in parts], out / "results.json", command=command,
        timings={"total wall (all workers)": round(time.perf_counter() - started, 1)},
    )
    (out / "run.log").write_text("".join((part / "run.log").read_text() for part in parts))
    written = report.write_report(merged, out, plots=not args.no_plots)
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min; report: {', '.join(str(p) for p in written)}")
    return 0


def _run(args, name: str, size: Size, out: Path, cache: Path, methods: list[Method], skipped: list[str], log, argv) -> int:
    import torch

    torch.manual_seed(0)
    command = command_line(argv)
    log(f"$ {command}")
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
    pools: dict[str, Any] = {}  # seed -> the pool's own composition and quality
    default_label, default_note = default_method()
    results_file = out / "results.json"

    def save(final: bool) -> None:
        document = {
            "size": size.describe(),
            "command": command,
            "versions": versions(),
            "methods": [asdict(m) for m in methods],
            "skipped_methods": skipped,
            "failed_methods": failed,
            "base_model": {"dir": base_dir.name, "accuracy": base_scores},
            "pools": pools,
            "default_method": default_label,
            "default_note": default_note,
            "timings_seconds": timings,
            "finished": final,
            "records": records,
        }
        results_file.write_text(json.dumps(document, indent=1, default=str))

    def record(entry: dict[str, Any]) -> None:
        records.append(entry)
        save(final=False)

    run_root = cache / "runs" / f"{name}-{size.scenario}-{size.model.fingerprint()}"
    for seed in (args.seed_ids if args.seed_ids is not None else range(size.seeds)):
        work = run_root / f"seed-{seed}"
        if args.fresh and work.exists():
            shutil.rmtree(work)
        t0 = time.perf_counter()
        log(f"seed {seed}: work in {work}")
        pools[str(seed)] = run_seed(size, seed, base_dir, work, methods, test, log, record, failed)
        timings[f"seed {seed}"] = round(time.perf_counter() - t0, 1)
    timings["total"] = round(time.perf_counter() - started, 1)
    save(final=True)

    from bench.quality import report

    written = report.write_report(results_file, out, plots=not args.no_plots)
    log(f"done in {timings['total'] / 60:.1f} min; report: {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
