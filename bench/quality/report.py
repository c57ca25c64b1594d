"""REPORT.md and plots from results.json (written by run.py; rerun alone with
`python -m bench.quality.report bench/quality/results/results.json`).

Numbers are mean ± sample standard deviation over seeds. "worst" is the lowest per-task
accuracy of a run, averaged over seeds. Differences between methods are paired by seed (the
same seed shares the pool, the warmup, the features and the fine-tuning seed).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any, Iterable

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.quality import tasks  # noqa: E402

FULL = "full"
COLUMNS = (*tasks.TASKS, "macro", "worst")


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def _pct(values: list[float], n_seeds: int) -> str:
    mean, std = _mean_std(values)
    return f"{100 * mean:.1f}" if n_seeds < 2 else f"{100 * mean:.1f} ± {100 * std:.1f}"


def _value(record: dict[str, Any], column: str) -> float:
    return record[column] if column in ("macro", "worst") else record["accuracy"][column]


def _groups(records: list[dict[str, Any]]) -> dict[tuple[str, float | None], list[dict[str, Any]]]:
    groups: dict[tuple[str, float | None], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["method"], r["budget"]), []).append(r)
    return groups


def _ordered_keys(groups, methods: list[str], budgets: Iterable[float]) -> list[tuple[str, float | None]]:
    keys = [(FULL, None)] if (FULL, None) in groups else []
    for budget in budgets:
        keys += [(m, budget) for m in methods if (m, budget) in groups]
    return keys


def _label(key: tuple[str, float | None]) -> str:
    method, budget = key
    return "full pool (100%)" if budget is None else f"{method} {budget:.0%}"


def _paired(groups, a: tuple[str, float | None], b: tuple[str, float | None], column: str) -> tuple[float, float, int, int]:
    """Mean and std of (a − b) over seeds both have, and in how many seeds a > b."""
    left = {r["seed"]: _value(r, column) for r in groups.get(a, [])}
    right = {r["seed"]: _value(r, column) for r in groups.get(b, [])}
    seeds = sorted(set(left) & set(right))
    diffs = [left[s] - right[s] for s in seeds]
    if not diffs:
        return float("nan"), float("nan"), 0, 0
    mean, std = _mean_std(diffs)
    return mean, std, sum(d > 0 for d in diffs), len(diffs)


def verdict_lines(groups, budgets: list[float], n_seeds: int) -> list[str]:
    """Plain statements and a table: did BIDS beat LESS, random, quota and the full pool?"""
    bids_budgets = [b for b in budgets if ("bids", b) in groups]
    if not bids_budgets:
        return ["- (no BIDS runs)"]
    lines: list[str] = []
    for other in ("less", "random", "quota"):
        diffs = [(b, _paired(groups, ("bids", b), (other, b), "macro")) for b in bids_budgets if (other, b) in groups]
        if not diffs:
            continue
        won = [b for b, (mean, *_rest) in diffs if mean > 0]
        shown = ", ".join(f"{b:.0%}: {100 * d[0]:+.1f}" for b, d in diffs)
        lines.append(
            f"- BIDS {'beat' if len(won) == len(diffs) else 'did not consistently beat'} **{other}** on macro "
            f"accuracy: higher at {len(won)} of {len(diffs)} budgets (BIDS − {other}, points: {shown})."
        )
    if (FULL, None) in groups:
        diffs = [(b, _paired(groups, ("bids", b), (FULL, None), "macro")) for b in bids_budgets]
        shown = ", ".join(f"{b:.0%}: {100 * d[0]:+.1f}" for b, d in diffs)
        won = [b for b, (mean, *_rest) in diffs if mean > 0]
        lines.append(
            f"- BIDS subsets scored a higher macro accuracy than training on the **full pool** at "
            f"{len(won)} of {len(diffs)} budgets (BIDS − full, points: {shown})."
        )
    spread = n_seeds > 1
    lines += [
        "",
        "Paired by seed: mean difference" + (" ± std over seeds" if spread else "")
        + " in accuracy points, and in how many seeds BIDS was higher.",
        "",
        "| BIDS budget | compared with | Δ macro | BIDS higher | Δ worst task | BIDS higher |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for budget in bids_budgets:
        for other in (("less", budget), ("random", budget), ("quota", budget), (FULL, None)):
            if other not in groups:
                continue
            cells = []
            for column in ("macro", "worst"):
                mean, std, wins, n = _paired(groups, ("bids", budget), other, column)
                cells += [f"{100 * mean:+.1f}" + (f" ± {100 * std:.1f}" if spread else ""), f"{wins}/{n}"]
            lines.append(f"| {budget:.0%} | {_label(other)} | " + " | ".join(cells) + " |")
    return lines


def write_report(results_file: Path, out: Path, plots: bool = True) -> list[Path]:
    document = json.loads(Path(results_file).read_text())
    records = document["records"]
    size = document["size"]
    budgets = [float(b) for b in size["budgets"]]
    methods = [m["label"] for m in document["methods"]]
    n_seeds = len({r["seed"] for r in records})
    groups = _groups(records)
    keys = _ordered_keys(groups, methods, budgets)
    written: list[Path] = []

    lines = [
        "# Selection quality benchmark (bench/quality)",
        "",
        "Does influence-based selection pick data that trains a model well on *every* capability? "
        "A small Llama (pretrained here on narrative text from the task generators) is LoRA-fine-tuned "
        "on subsets chosen by each method through dsel's own pipeline, and scored by exact match on "
        f"held-out test sets of {len(tasks.TASKS)} synthetic capabilities (README.md beside this file).",
        "",
        f"- Command: `{document['command']}`",
        f"- Size: **{size['name']}**: {n_seeds} seed(s); pool {size['data']['pool']} examples "
        f"({size['data']['distractor_share']:.0%} distractors); {size['data']['validation_per_task']} validation and "
        f"{size['data']['test_per_task']} test examples per task; budgets "
        f"{', '.join(f'{b:.0%}' for b in budgets)}.",
        f"- Finished: {'yes' if document.get('finished') else 'NO (partial results)'}.",
    ]
    if document.get("skipped_methods"):
        lines.append(f"- Skipped (not available in this dsel): {', '.join(document['skipped_methods'])}.")
    for label, error in (document.get("failed_methods") or {}).items():
        lines.append(f"- **{label} failed inside dsel** and has no results: `{error[:300]}`.")
    lines += ["", "## Verdict", ""]
    lines += verdict_lines(groups, budgets, n_seeds)
    lines += [
        "",
        "## Accuracy (%)",
        "",
        "Exact-match accuracy on held-out test sets"
        + (", mean ± std over seeds" if n_seeds > 1 else "")
        + f". macro = mean over the {len(tasks.TASKS)} tasks; worst = the run's lowest task.",
        "",
        "| method | n | " + " | ".join(COLUMNS) + " |",
        "|---|---:|" + "---:|" * len(COLUMNS),
    ]
    for key in keys:
        runs = groups[key]
        cells = [_pct([_value(r, c) for r in runs], n_seeds) for c in COLUMNS]
        lines.append(f"| {_label(key)} | {runs[0]['count']} | " + " | ".join(cells) + " |")
    base = document.get("base_model", {}).get("accuracy", {})
    if base:
        for form in ("chat", "narrative"):
            scores = base.get(form, {})
            if scores:
                values = [scores[t] for t in tasks.TASKS]
                cells = [f"{100 * v:.1f}" for v in values] + [
                    f"{100 * sum(values) / len(values):.1f}", f"{100 * min(values):.1f}"
                ]
                lines.append(f"| base model, no fine-tuning ({form} form) | 0 | " + " | ".join(cells) + " |")
    kinds = (*tasks.TASKS, tasks.DISTRACTOR)
    lines += [
        "",
        "The narrative-form row asks the base model in its pretraining format (\"after 389 comes \"): "
        "the skill it had before instruction tuning, which the chat form has to recover.",
        "",
        "## Composition of the selected subsets",
        "",
        "Examples per true task in each subset (mean over seeds); the pool has equal shares of "
        f"the {len(tasks.TASKS)} tasks plus {size['data']['distractor_share']:.0%} `{tasks.DISTRACTOR}` distractors.",
        "",
        "| method | " + " | ".join(kinds) + " |",
        "|---|" + "---:|" * len(kinds),
    ]
    for key in keys:
        if key[0] == FULL:
            continue
        runs = groups[key]
        cells = [f"{statistics.fmean(r['composition'][k] for r in runs):.0f}" for k in kinds]
        lines.append(f"| {_label(key)} | " + " | ".join(cells) + " |")

    if plots:
        try:
            from bench.quality import plots as plotting

            pngs = plotting.make_plots(groups, keys, budgets, methods, out)
            written += pngs
            lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in pngs]
        except ImportError:
            lines += ["", "_Plots skipped: matplotlib is not installed (`pip install matplotlib`)._"]

    timings = document.get("timings_seconds", {})
    per_stage = {"select": 0.0, "finetune": 0.0, "eval": 0.0}
    for r in records:
        per_stage["select"] += r.get("seconds_select", 0.0)
        per_stage["finetune"] += r.get("seconds_finetune", 0.0)
        per_stage["eval"] += r.get("seconds_eval", 0.0)
    lines += [
        "",
        "## Reproduce",
        "",
        "```",
        "cd <repo root>",
        ".venv/bin/pip install matplotlib   # plots only",
        f".venv/bin/{document['command']}",
        "```",
        "",
        "Wall-clock seconds on this run (2 shared CPU cores; other jobs ran concurrently): "
        + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
        + f"; summed over runs: selection {per_stage['select']:.0f} (the first method of each seed "
        f"pays warmup + gradients), fine-tuning {per_stage['finetune']:.0f}, evaluation {per_stage['eval']:.0f}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in document.get("versions", {}).items()) + ".",
        "",
        "Raw per-run records (per-task accuracy, composition, dsel's own composition, timings): "
        "`results.json`; the log: `run.log`.",
        "",
    ]
    report = Path(out) / "REPORT.md"
    report.write_text("\n".join(lines))
    return [report, *written]


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results" / "results.json")
    for path in write_report(target, target.parent):
        print(path)
