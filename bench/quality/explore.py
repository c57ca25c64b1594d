"""The quick experiments that chose dsel's feature variant, warmup and within-task rule.

    python -m bench.quality.explore --seeds 0 1 --budget 0.10 --out results/cache/explore

On the transfer scenario's full-size pool: every candidate (method x feature variant x warmup)
selects through dsel; the subset's make-up (wrong-answer, off-target, duplicate shares, answer
diversity) is recorded for every candidate, and with `--finetune` each subset is also trained and
scored like the benchmark does. Results go to `explore.json` (README.md summarizes them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.quality import evaluate, finetune, pretrain, run, tasks  # noqa: E402

FINETUNE_LIKE_WARMUP = {  # the warmup resembling the benchmark's fine-tune: its LoRA, more steps
    "fraction": 0.10, "epochs": 2, "learningRate": 2e-3,
    "lora": {"r": 16, "alpha": 32, "targetModules": list(finetune.FinetuneRecipe().target_modules)},
}


def candidates() -> list[run.Method]:
    found = [
        run.Method("random", {"method": "random"}),
        run.Method("quota", {"method": "quota"}),
        run.Method("bids", {"method": "bids"}),
        run.Method("less", {"method": "less"}),
    ]
    for c in (1.5, 2.0, 3.0, 5.0):
        found.append(run.Method(f"quota-sample c={c:g}", {"method": "quota-sample", "candidates": c}))
    for variant in ("sgd", "adam-no-momentum", "adam-diagonal"):
        found.append(run.Method(f"bids/{variant}", {"method": "bids"}, gradients={"trainType": variant}))
        found.append(run.Method(f"quota/{variant}", {"method": "quota"}, gradients={"trainType": variant}))
        for c in (2.0, 3.0):
            found.append(run.Method(f"quota-sample c={c:g}/{variant}", {"method": "quota-sample", "candidates": c},
                                    gradients={"trainType": variant}))
    for variant in ("adam", "adam-diagonal"):
        found.append(run.Method(f"bids/{variant}+ftwarmup", {"method": "bids"}, gradients={"trainType": variant},
                                warmup=FINETUNE_LIKE_WARMUP))
        found.append(run.Method(f"quota-sample c=2/{variant}+ftwarmup", {"method": "quota-sample", "candidates": 2.0},
                                gradients={"trainType": variant}, warmup=FINETUNE_LIKE_WARMUP))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality.explore", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--budget", type=float, default=0.10)
    parser.add_argument("--finetune", nargs="*", help="labels to fine-tune and score (default: none; 'all': every one)")
    parser.add_argument("--only", nargs="*", help="labels to run (default: all)")
    parser.add_argument("--out", type=Path, default=run.DEFAULT_CACHE / "explore")
    parser.add_argument("--cache", type=Path, default=run.DEFAULT_CACHE)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from selection.local import run_selection

    size = run.size_preset("full", "transfer")
    base_dir, _ = pretrain.ensure_base_model(size.model, args.cache.resolve(), print)
    test = tasks.test_sets(size.data)
    methods = [m for m in candidates() if not args.only or m.label in args.only]
    wanted = set(m.label for m in methods) if args.finetune == ["all"] else set(args.finetune or [])
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "explore.json"
    rows = json.loads(target.read_text()) if target.exists() else []
    for seed in args.seeds:
        data = run.build_datasets(size, seed)
        work = args.cache.resolve() / "runs" / f"explore-{size.model.fingerprint()}" / f"seed-{seed}"
        inputs = tasks.write_selection_inputs(data, work / "data")
        rows.append({"seed": seed, "label": "pool", "quality": run.subset_quality(data.pool, list(range(len(data.pool))))})
        count = int(args.budget * len(data.pool))
        stratified = run.stratified_indices(data.pool, count, run._control_rng(seed, run.STRATIFIED, args.budget))
        for method in [None, *methods]:
            started = time.perf_counter()
            if method is None:  # the oracle-side control
                label, indices = run.STRATIFIED, stratified
            else:
                resource = run.selection_resource(size, seed, base_dir, inputs, method, args.budget)
                document = run_selection(resource, storage_uri=str(work / "dsel" / run.artifact_group(size, method)),
                                         cache_dir=str(work / "models"), progress=False)
                label, indices = method.label, document["indices"]
            row = {"seed": seed, "label": label, "budget": args.budget,
                   "seconds_select": round(time.perf_counter() - started, 1),
                   "quality": run.subset_quality(data.pool, indices),
                   "composition": run.composition_by_task(data.pool, indices)}
            if label in wanted or (args.finetune == ["all"]):
                model, tokenizer = finetune.finetune(base_dir, [data.pool[i] for i in indices], size.recipe, seed)
                row["accuracy"] = evaluate.accuracy(model, tokenizer, test)
                row["loss"] = evaluate.test_loss(model, tokenizer, test)
                row["macro"] = statistics.fmean(row["accuracy"].values())
            rows.append(row)
            q = row["quality"]
            print(f"seed {seed} {label:>36}: wrong {q['wrong_share']:.2f} off {q['off_target_share']:.2f} "
                  f"chatter {q['distractor_share']:.2f} dup {q['duplicate_share']:.2f} div {q['answer_diversity']:.2f}"
                  + (f"  macro {row['macro']:.3f}" if "macro" in row else "") + f"  [{row['seconds_select']:.0f}s]",
                  flush=True)
            target.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
