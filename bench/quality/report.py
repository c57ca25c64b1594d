"""REPORT.md and plots from results.json (written by run.py; rerun alone with
`python -m bench.quality.report bench/quality/results/transfer/results.json`, or merge split runs
with `python -m bench.quality.report --merge a.json b.json --out DIR`).

Differences between methods are paired by seed (one seed shares the pool, the warmup, the
features and the fine-tuning seed) and shown as mean [95% t-interval over seeds], in accuracy
points, with the number of seeds in which the first was higher. Tables of levels show mean ± std
over seeds. "Learned tasks" are those a full-pool fine-tune learns: its mean accuracy is at least
10 points above the test set's majority-answer rate (always answering the most common answer);
macro/worst over them drop tasks that no subset could show a difference on.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.quality import tasks  # noqa: E402
from bench.quality.stats import interval, paired  # noqa: E402

FULL = "full"
DSEL_OPTIONS = ("quota-sample", "bids/adam-diagonal")  # dsel's own options (not the papers' methods)
LEARNED_MARGIN = 0.10
ATTRIBUTION_RESULTS = Path(__file__).resolve().parents[1] / "attribution_results" / "results.json"
QUALITY_COLUMNS = (
    ("wrong_share", "wrong answers"), ("off_target_share", "off-target"), ("distractor_share", "chatter"),
    ("duplicate_share", "duplicates"), ("answer_diversity", "answer diversity"),
)

Key = tuple[str, "float | None"]


# --- values ----------------------------------------------------------------------------------


def majority_rates(size: dict[str, Any]) -> dict[str, float]:
    """Per task: the share of the most common answer in the test set (the always-answer-X rate)."""
    test = tasks.test_sets(tasks.PoolSizes(**size["data"]))
    return {t: Counter(i.answer for i in items).most_common(1)[0][1] / len(items) for t, items in test.items()}


def learned_tasks(groups, rates: dict[str, float]) -> list[str]:
    runs = groups.get((FULL, None), [])
    if not runs:
        return list(tasks.TASKS)
    return [t for t in tasks.TASKS if statistics.fmean(r["accuracy"][t] for r in runs) >= rates[t] + LEARNED_MARGIN]


def value(record: dict[str, Any], column: str, learned: list[str]) -> float:
    acc = record["accuracy"]
    if column == "macro":
        return record["macro"]
    if column == "worst":
        return record["worst"]
    if column == "macro_learned":
        return statistics.fmean(acc[t] for t in learned) if learned else float("nan")
    if column == "worst_learned":
        return min(acc[t] for t in learned) if learned else float("nan")
    if column == "loss":
        return statistics.fmean(record["loss"].values()) if record.get("loss") else float("nan")
    if column in QUALITY_KEYS:
        return record.get("quality", {}).get(column, float("nan"))
    return acc[column]


QUALITY_KEYS = {key for key, _ in QUALITY_COLUMNS}


def groups_of(records: list[dict[str, Any]]) -> dict[Key, list[dict[str, Any]]]:
    found: dict[Key, list[dict[str, Any]]] = {}
    for r in records:
        found.setdefault((r["method"], r["budget"]), []).append(r)
    return found


def by_seed(groups, key: Key, column: str, learned: list[str]) -> dict[int, float]:
    return {r["seed"]: value(r, column, learned) for r in groups.get(key, [])}


def labels_in_order(document: dict[str, Any], groups) -> list[str]:
    methods = [m["label"] for m in document["methods"]]
    controls = list(document["size"].get("controls", ()))
    seen = {k[0] for k in groups}
    return [m for m in methods + controls if m in seen]


def _mean_sd(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    values = [v for v in values if math.isfinite(v)]  # nan: a column without data (no learned task)
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"


def _ci_level(values: list[float]) -> str:
    i = interval(values)
    if i.n < 2:
        return f"{100 * i.mean:.1f}"
    return f"{100 * i.mean:.1f} ± {100 * i.half:.1f}"


# --- sections --------------------------------------------------------------------------------


def comparison_rows(groups, subject: str, others: list[Key | str], budgets, learned) -> list[str]:
    """Paired differences subject − other per budget: macro, macro over learned tasks, test loss."""
    lines = [
        f"| {subject} at | vs | Δ macro (points) | higher | Δ macro, learned tasks | higher | Δ test loss (nats) | lower |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for budget in budgets:
        mine = (subject, budget)
        if mine not in groups:
            continue
        for other in others:
            key = other if isinstance(other, tuple) else (other, budget)
            if key not in groups or key == mine:
                continue
            macro = paired(by_seed(groups, mine, "macro", learned), by_seed(groups, key, "macro", learned))
            learn = paired(by_seed(groups, mine, "macro_learned", learned), by_seed(groups, key, "macro_learned", learned))
            loss = paired(by_seed(groups, mine, "loss", learned), by_seed(groups, key, "loss", learned))
            shown = "full pool" if key[1] is None else key[0]
            lower = loss.n - loss.wins
            lines.append(
                f"| {budget:.0%} | {shown} | {macro.shown()} | {macro.wins}/{macro.n} | {learn.shown()} | "
                f"{learn.wins}/{learn.n} | {loss.shown(scale=1.0, digits=3)} | {lower}/{loss.n} |"
            )
    return lines


def acceptance_lines(groups, default: str, budgets, pool_wrong: float | None, learned,
                     pool_task_wrong: float | None = None) -> list[str]:
    """The issue's goal, checked: beats random and stratified at every budget in >= 4 of 5 seeds
    (80% of the seeds when there are more),
    the 95% interval above zero at 10% and 15%, and fewer wrong answers than the pool."""
    lines: list[str] = []
    verdicts: list[bool] = []
    for other in ("random", "stratified"):
        for budget in budgets:
            d = paired(by_seed(groups, (default, budget), "macro", learned), by_seed(groups, (other, budget), "macro", learned))
            if d.n == 0:
                continue
            enough = d.wins >= math.ceil(0.8 * d.n) if d.n >= 5 else d.wins == d.n
            ci_needed = budget >= 0.10
            ok = enough and (d.low > 0 if ci_needed else True)
            verdicts.append(ok)
            lines.append(
                f"- {'PASS' if ok else 'FAIL'}: {default} − {other} at {budget:.0%}: {d.shown()} points, higher in "
                f"{d.wins}/{d.n} seeds" + (" (interval must be above 0)" if ci_needed else "")
            )
    if pool_wrong is not None:
        for budget in budgets:
            runs = groups.get((default, budget), [])
            if runs:
                share = statistics.fmean(r["quality"]["wrong_share"] for r in runs)
                ok = share < pool_wrong
                verdicts.append(ok)
                among = statistics.fmean(r["quality"]["wrong_share"] / max(1e-9, 1 - r["quality"]["distractor_share"])
                                         for r in runs)
                lines.append(f"- {'PASS' if ok else 'FAIL'}: wrong-answer share of {default} at {budget:.0%}: "
                             f"{100 * share:.1f}% vs the pool's {100 * pool_wrong:.1f}%"
                             + (f" (among task examples, chatter left out: {100 * among:.1f}% vs the pool's "
                                f"{100 * pool_task_wrong:.1f}%)" if pool_task_wrong is not None else ""))
    head = "**Goal met.**" if verdicts and all(verdicts) else "**Goal not met.**"
    return [head, ""] + lines


def plain_verdict(groups, subject: str, others: list[str], budgets, learned) -> list[str]:
    lines = []
    for other in others:
        if other == subject:
            continue
        cells, wins = [], 0
        for budget in budgets:
            d = paired(by_seed(groups, (subject, budget), "macro", learned), by_seed(groups, (other, budget), "macro", learned))
            if d.n == 0:
                continue
            cells.append(f"{budget:.0%}: {d.shown()}")
            wins += d.low > 0 if d.n > 1 else d.mean > 0
        if cells:
            word = "beat" if wins == len(cells) else ("lost to" if all(
                paired(by_seed(groups, (subject, b), "macro", learned), by_seed(groups, (other, b), "macro", learned)).high < 0
                for b in budgets if (subject, b) in groups and (other, b) in groups) else "did not clearly beat")
            lines.append(f"- **{subject}** {word} **{other}** on macro accuracy (Δ points [95% CI]; {'; '.join(cells)}); "
                         f"interval above zero at {wins} of {len(cells)} budgets.")
    return lines


def level_table(groups, labels, budgets, column: str, learned, scale_note: str) -> list[str]:
    lines = ["| method | " + " | ".join(f"{b:.0%}" for b in budgets) + " |", "|---|" + "---:|" * len(budgets)]
    for label in labels:
        cells = []
        for b in budgets:
            runs = groups.get((label, b), [])
            cells.append(_ci_level([value(r, column, learned) for r in runs]) if runs else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if (FULL, None) in groups:
        full = _ci_level([value(r, column, learned) for r in groups[(FULL, None)]])
        lines.append(f"| full pool (100%) | {full} (every budget) |" + " |" * (len(budgets) - 1))
    return lines + ["", scale_note]


def per_task_table(groups, keys: list[Key], columns: list[str], learned, *, loss: bool = False) -> list[str]:
    lines = ["| method | n | " + " | ".join(columns) + " |", "|---|---:|" + "---:|" * len(columns)]
    for key in keys:
        runs = groups[key]
        if loss:
            cells = [_mean_sd([r["loss"][c] if c in r["loss"] else statistics.fmean(r["loss"].values()) for r in runs],
                              scale=1.0, digits=3) for c in columns]
        else:
            cells = [_mean_sd([value(r, c, learned) for r in runs]) for c in columns]
        lines.append(f"| {_label(key)} | {runs[0]['count']} | " + " | ".join(cells) + " |")
    return lines


def _label(key: Key) -> str:
    return "full pool (100%)" if key[1] is None else f"{key[0]} {key[1]:.0%}"


def ordered_keys(groups, labels: list[str], budgets) -> list[Key]:
    keys: list[Key] = [(FULL, None)] if (FULL, None) in groups else []
    for b in budgets:
        keys += [(label, b) for label in labels if (label, b) in groups]
    return keys


def quality_table(groups, keys: list[Key], pools: dict[str, Any]) -> list[str]:
    lines = ["| subset | n | " + " | ".join(name for _, name in QUALITY_COLUMNS) + " |",
             "|---|---:|" + "---:|" * len(QUALITY_COLUMNS)]
    if pools:
        cells = [f"{100 * statistics.fmean(p['quality'][k] for p in pools.values()):.1f}" for k, _ in QUALITY_COLUMNS]
        lines.append("| **the pool** | all | " + " | ".join(cells) + " |")
    for key in keys:
        if key[0] == FULL:
            continue
        runs = groups[key]
        cells = [f"{100 * statistics.fmean(r['quality'][k] for r in runs):.1f}" for k, _ in QUALITY_COLUMNS]
        lines.append(f"| {_label(key)} | {runs[0]['count']} | " + " | ".join(cells) + " |")
    return lines


def cost_lines(records: list[dict[str, Any]], labels: list[str]) -> list[str]:
    """First selection call of each method per seed: it pays the stages its artifact group lacks."""
    first: dict[str, dict[int, float]] = {}
    for r in records:
        if r.get("control") or r["method"] == FULL:
            continue
        first.setdefault(r["method"], {}).setdefault(r["seed"], r.get("seconds_select", 0.0))
    lines = ["| method | first selection call per seed (s, mean ± std) | per seed (s) | what it paid for |",
             "|---|---:|---|---|"]
    notes = {
        "bids": "warmup + gradient features of every example + validation features + reduction",
        "influence-distillation": "its own warmup + JVP embeddings of every example + landmark gradients + KRR + round robin",
        "random": "dsel runs the warmup and features for every method; random has its own artifact group here",
    }
    for label in labels:
        if label in first:
            values = list(first[label].values())
            per_seed = ", ".join(f"{first[label][seed]:.0f}" for seed in sorted(first[label]))
            lines.append(f"| {label} | {_mean_sd(values, scale=1.0, digits=0)} | {per_seed} | "
                         f"{notes.get(label, 'whatever its artifact group lacked: warmup + features when it ran first there')} |")
    both = sorted(set(first.get("bids", {})) & set(first.get("influence-distillation", {})))
    both = [seed for seed in both if first["bids"][seed] >= 1 and first["influence-distillation"][seed] >= 1]  # under 1 s: cached
    if both:
        bids = statistics.fmean(first["bids"][seed] for seed in both)
        distill = statistics.fmean(first["influence-distillation"][seed] for seed in both)
        lines += ["", f"Seeds where BIDS and Influence Distillation both started from nothing ({len(both)}): "
                      f"BIDS {bids:.0f} s, Influence Distillation {distill:.0f} s on average "
                      f"(BIDS / ID = {bids / distill:.2f}; the ID paper claims up to 3.5x less selection time)."]
    return lines


def lds_lines(path: Path = ATTRIBUTION_RESULTS) -> list[str]:
    """The LDS table of bench/attribution.py (its TABLE.md, else its results.json), when it exists."""
    table = path.with_name("TABLE.md")
    if table.is_file():
        body = [line for line in table.read_text().splitlines() if not line.startswith("# ")]
        return [f"From `{table}` (bench/attribution.py, item 3 of issue 11), as it was when this report was written:", ""] + body
    if not path.is_file():
        return [f"_bench/attribution results not found at `{path}` when this report was written._"]
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return [f"_could not read `{path}`: {error}_"]
    rows = document.get("lds") or document.get("results") or document.get("rows")
    lines = [f"From `{path}` (bench/attribution.py):", ""]
    if isinstance(rows, dict):
        rows = [{"name": k, **(v if isinstance(v, dict) else {"value": v})} for k, v in rows.items()]
    if not isinstance(rows, list) or not rows:
        return lines + ["```", json.dumps(document, indent=1)[:3000], "```"]
    columns = [c for c in rows[0] if not isinstance(rows[0][c], (list, dict))]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row.get(c):.3f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# --- the whole report ------------------------------------------------------------------------


def _default_label(document: dict[str, Any], labels: list[str]) -> str:
    """The default method of the dsel writing this report, when the run has it; else the run's.

    Every method runs with its `selection.method` named, so the records do not depend on which
    method was the default when they were made; the report judges today's default."""
    from bench.quality.run import default_method

    current, _ = default_method()
    return current if current in labels else document.get("default_method", "bids")


def _context(document: dict[str, Any]) -> SimpleNamespace:
    """What every section needs: groups of records, budgets, labels, learned tasks, the default."""
    records = document["records"]
    size = document["size"]
    groups = groups_of(records)
    budgets = sorted(float(b) for b in size["budgets"])
    labels = labels_in_order(document, groups)
    rates = majority_rates(size)
    pools = document.get("pools", {})
    return SimpleNamespace(
        records=records, size=size, scenario=size.get("scenario", "in-domain"), groups=groups, budgets=budgets,
        labels=labels, keys=ordered_keys(groups, labels, budgets), rates=rates, learned=learned_tasks(groups, rates),
        default=_default_label(document, labels), pools=pools,
        pool_wrong=statistics.fmean(p["quality"]["wrong_share"] for p in pools.values()) if pools else None,
        pool_task_wrong=statistics.fmean(p["quality"]["wrong_share"] / (1 - p["quality"]["distractor_share"])
                                         for p in pools.values()) if pools else None,
    )


def summary_lines(document: dict[str, Any]) -> list[str]:
    """The verdict, the paired differences and the macro tables (also the index's summary)."""
    c = _context(document)
    groups, budgets, labels, learned, default = c.groups, c.budgets, c.labels, c.learned, c.default
    scenario, pool_wrong = c.scenario, c.pool_wrong
    lines: list[str] = []
    lines += ["", "## Verdict", ""]
    lines += plain_verdict(groups, default, ["random", "stratified", f"within-task@{default}", "bids"], budgets, learned)
    if default != "bids":
        lines += plain_verdict(groups, "bids", ["random", "stratified", "less", "within-task@bids"], budgets, learned)
    lines += plain_verdict(groups, "influence-distillation", ["random", "bids"], budgets, learned)
    options = [m for m in DSEL_OPTIONS if m != default and any((m, b) in groups for b in budgets)]
    for option in options:
        lines += plain_verdict(groups, option, ["random", "stratified", "bids"], budgets, learned)
    if scenario == "transfer":
        lines += ["", "### The issue's goal (default method vs random and stratified random)", ""]
        lines += acceptance_lines(groups, default, budgets, pool_wrong, learned, c.pool_task_wrong)
        for option in options:
            lines += ["", f"The same test for dsel's option `{option}` (not the default):", ""]
            lines += acceptance_lines(groups, option, budgets, pool_wrong, learned, c.pool_task_wrong)
    lines += [
        "",
        "### Paired differences",
        "",
        "Mean over seeds of (row method − compared method) with a 95% t-interval over seeds; 'higher'/'lower' "
        "count the seeds. Test loss: teacher-forced loss on the test answers, mean over tasks (lower is better).",
        "",
    ]
    others: list[Key | str] = ["random", "stratified", f"within-task@{default}", "bids", "less", "quota",
                               "influence-distillation", (FULL, None)]
    lines += comparison_rows(groups, default, others, budgets, learned)
    if default != "bids":
        lines += ["", *comparison_rows(groups, "bids", ["random", "stratified", "within-task@bids", "less", (FULL, None)],
                                       budgets, learned)]
    for option in options:
        lines += ["", *comparison_rows(groups, option, ["random", "stratified", "bids", "quota", (FULL, None)],
                                       budgets, learned)]

    lines += ["", "## Macro accuracy (%), mean ± 95% half-interval over seeds", ""]
    lines += level_table(groups, labels, budgets, "macro", learned, f"All {len(tasks.TASKS)} tasks.")
    lines += ["", "Over the learned tasks only:", ""]
    lines += level_table(groups, labels, budgets, "macro_learned", learned, f"Learned tasks: {', '.join(learned)}.")
    lines += ["", "Worst learned task:", ""]
    lines += level_table(groups, labels, budgets, "worst_learned", learned, "")
    return lines


def write_report(results_file: Path, out: Path, plots: bool = True) -> list[Path]:
    document = json.loads(Path(results_file).read_text())
    c = _context(document)
    records, size, scenario, budgets, groups = c.records, c.size, c.scenario, c.budgets, c.groups
    labels, keys, rates, learned, default = c.labels, c.keys, c.rates, c.learned, c.default
    pools, pool_wrong = c.pools, c.pool_wrong
    n_seeds = len({r["seed"] for r in records})
    written: list[Path] = []

    lines = [
        f"# Selection quality benchmark (bench/quality), scenario `{scenario}`",
        "",
        "Does influence-based selection pick data that trains a model well on *every* capability? A small "
        "Llama (pretrained here on narrative text from the task generators, 3% of it in the chat form) is "
        "LoRA-fine-tuned on subsets "
        "chosen by each method through dsel's own pipeline and scored on held-out test sets of "
        f"{len(tasks.TASKS)} synthetic capabilities (README.md beside this folder).",
        "",
        f"- Command: `{document['command']}`",
        f"- Size: **{size['name']}**: {n_seeds} seed(s); pool {size['data']['pool']} examples; "
        f"{size['data']['validation_per_task']} validation and {size['data']['test_per_task']} test examples per task; "
        f"budgets {', '.join(f'{b:.0%}' for b in budgets)}.",
        f"- dsel's default method: **{default}** (the default of the dsel that wrote this report"
        + (f"; the run itself recorded {document['default_method']} as the default, and every method ran with its "
           "method named, so the records do not depend on it" if document.get("default_method", default) != default else "")
        + ").",
        f"- Learned tasks (full pool ≥ majority-answer rate + {100 * LEARNED_MARGIN:.0f} points): "
        f"{', '.join(learned) or 'none'}; majority rates: "
        + ", ".join(f"{t} {100 * rates[t]:.0f}%" for t in tasks.TASKS) + ".",
        f"- Finished: {'yes' if document.get('finished') else 'NO (partial results)'}.",
    ]
    if "--scenario" not in document["command"] and "scenario" not in size:
        lines.append("- These records predate the scenario switch, the controls and the test loss (the run committed "
                     "before issue 11); today the same run is `python -m bench.quality.run --scenario in-domain`.")
    if scenario == "transfer" and pools:
        mix = size.get("mix") or {}
        lines.append(
            "- The pool (mean over seeds): " + ", ".join(
                f"{name} {100 * statistics.fmean(p['quality'][k] for p in pools.values()):.1f}%" for k, name in QUALITY_COLUMNS[:4]
            ) + f"; per capability: {', '.join(f'{k} {v:g}' for k, v in mix.items())}."
        )
    for label, error in (document.get("failed_methods") or {}).items():
        lines.append(f"- **{label} failed inside dsel** and has no results: `{error[:300]}`.")
    if document.get("skipped_methods"):
        lines.append(f"- Skipped (not available in this dsel): {', '.join(document['skipped_methods'])}.")

    lines += summary_lines(document)

    columns = [*tasks.TASKS, "macro", "worst", "macro_learned", "worst_learned"]
    lines += ["", "## Accuracy per task (%), mean ± std over seeds", ""]
    lines += per_task_table(groups, keys, columns, learned)
    base = document.get("base_model", {}).get("accuracy", {})
    for form in ("chat", "narrative"):
        scores = base.get(form, {})
        if scores:
            values = [scores[t] for t in tasks.TASKS]
            lines.append(f"| base model, no fine-tuning ({form} form) | 0 | " + " | ".join(f"{100 * v:.1f}" for v in values)
                         + f" | {100 * statistics.fmean(values):.1f} | {100 * min(values):.1f} | | |")
    lines += ["", "The narrative-form row asks the base model in its pretraining format (\"after 389 comes \"): "
              "the skill it had before instruction tuning, which the chat form has to recover."]
    if any(r.get("loss") for r in records):
        lines += ["", "## Teacher-forced test loss per task (nats per answer token), mean ± std over seeds", ""]
        lines += per_task_table(groups, keys, [*tasks.TASKS, "mean"], learned, loss=True)

    has_quality = all("quality" in r for r in records)
    lines += ["", "## What the subsets are made of (%)", ""] + ([] if has_quality else [
        "_These records predate the subset make-up measurements (only the task composition is known)._"]) + ["",
              "Wrong answers: the answer is not the task's rule (wrong and rule-flipped items, and their copies); "
              "off-target: operands of other sizes; duplicates: items already in the subset; answer diversity: "
              "distinct answers per selected example of a task, averaged over tasks (the pool row: the whole pool).", ""]
    lines += quality_table(groups, keys, pools) if has_quality else []
    kinds = (*tasks.TASKS, tasks.DISTRACTOR)
    lines += ["", "Examples per true task (mean over seeds):", "", "| subset | " + " | ".join(kinds) + " |",
              "|---|" + "---:|" * len(kinds)]
    for key in keys:
        if key[0] != FULL:
            runs = groups[key]
            lines.append(f"| {_label(key)} | " + " | ".join(
                f"{statistics.fmean(r['composition'][k] for r in runs):.0f}" for k in kinds) + " |")

    lines += ["", "## Selection cost", "",
              "Wall-clock seconds of each method's first selection call in a seed, on the machine as loaded "
              "during the run (the workers share its CPU cores with each other and with any other job). A call "
              "pays only the stages its artifact group lacks; 0 s means every artifact was already cached from "
              "an earlier run of the same seed and spec sections.", ""]
    lines += cost_lines(records, labels)
    lines += ["", "## Attribution quality (LDS, bench/attribution)", ""] + lds_lines()

    if plots:
        try:
            from bench.quality import plots as plotting

            pngs = plotting.make_plots(groups, keys, budgets, labels, out, learned, pool_wrong)
            written += pngs
            lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in pngs]
        except ImportError:
            lines += ["", "_Plots skipped: matplotlib is not installed (`pip install matplotlib`)._"]

    timings = document.get("timings_seconds", {})
    stages = {k: sum(r.get(f"seconds_{k}", 0.0) for r in records) for k in ("select", "finetune", "eval")}
    lines += [
        "", "## Reproduce", "", "```", "cd <repo root>", ".venv/bin/pip install matplotlib   # plots only",
        *(f".venv/bin/{c}" for c in document.get("commands", [document["command"]])),
        *([".venv/bin/python -m bench.quality.report --merge <the parts' results.json> --out <dir>"]
          if document.get("commands") else []),
        "```", "",
        *([f"One command reproduces the whole report too (`python -m bench.quality.run --scenario {scenario}`, "
           "sequentially); this run was split over processes by seed to share the loaded cores.", ""]
          if document.get("commands") else []),
        "Wall-clock seconds (2 shared CPU cores; other jobs ran concurrently): "
        + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
        + f"; summed over runs: selection {stages['select']:.0f}, fine-tuning {stages['finetune']:.0f}, "
        f"evaluation {stages['eval']:.0f}.", "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in document.get("versions", {}).items()) + ".", "",
        "Raw per-run records: `results.json`; the log: `run.log`.", "",
    ]
    report = Path(out) / "REPORT.md"
    report.write_text("\n".join(lines))
    return [report, *written]


def write_index(root: Path) -> Path:
    """results/REPORT.md: each scenario's verdict and macro tables, the LDS table, and links."""
    lines = [
        "# dsel selection quality: summary of both scenarios",
        "",
        "Regenerated by `python -m bench.quality.report --index` from the scenario reports' raw records. "
        "Details, per-task tables, test loss, subset make-up, plots and timings: the scenario folders. "
        "What the benchmark is and why: `bench/quality/README.md`.",
    ]
    for scenario in ("transfer", "in-domain"):
        results = Path(root) / scenario / "results.json"
        if not results.is_file():
            lines += ["", f"## Scenario `{scenario}`", "", "_No results committed._"]
            continue
        document = json.loads(results.read_text())
        n_seeds = len({r["seed"] for r in document["records"]})
        lines += ["", f"## Scenario `{scenario}` ({n_seeds} seeds; [full report]({scenario}/REPORT.md))", "",
                  f"Command: `{document['command']}`" + ("" if document.get("finished") else " — **partial results**.")]
        lines += [line.replace("## ", "### ", 1) if line.startswith("## ") else line for line in summary_lines(document)]
    lines += ["", "## Attribution quality (LDS, bench/attribution)", ""] + lds_lines() + [""]
    target = Path(root) / "REPORT.md"
    target.write_text("\n".join(lines))
    return target


def merge(files: list[Path], target: Path, command: str | None = None,
          timings: dict[str, float] | None = None) -> Path:
    """One results.json from runs of the same size split over seeds (`run.py --seed-ids`);
    `command` is the one that ran them all (`run.py --workers`), `timings` that run's own."""
    documents = [json.loads(Path(f).read_text()) for f in files]
    merged = dict(documents[0])
    methods: dict[str, Any] = {}
    for d in documents:
        for m in d["methods"]:
            methods.setdefault(m["label"], m)
    order = [m["label"] for m in json.loads(Path(files[0]).read_text())["methods"]]
    merged["methods"] = sorted(methods.values(), key=lambda m: (m["label"] not in order, m["label"] != "bids"))
    controls = [c for d in documents for c in d["size"].get("controls", ())]
    merged["size"] = {**merged["size"], "controls": list(dict.fromkeys(controls)),
                      "seeds": len({r["seed"] for d in documents for r in d["records"]})}
    merged["commands"] = [d["command"] for d in documents]
    merged["command"] = command or "python -m bench.quality.run  (split over processes; see `commands`)"
    merged["records"] = [r for d in documents for r in d["records"]]
    from bench.quality.run import default_method  # the default of the dsel this report is written with

    merged["default_method"], note = default_method()
    merged["default_note"] = note + ", dsel's default when the parts were merged"
    merged["pools"] = {k: v for d in documents for k, v in d.get("pools", {}).items()}
    merged["finished"] = all(d.get("finished") for d in documents)
    merged["timings_seconds"] = {f"part {i} {k}": v for i, d in enumerate(documents) for k, v in d.get("timings_seconds", {}).items()}
    merged["timings_seconds"].update(timings or {})
    merged["failed_methods"] = {k: v for d in documents for k, v in (d.get("failed_methods") or {}).items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(merged, indent=1, default=str))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality.report")
    default_results = Path(__file__).resolve().parent / "results" / "transfer" / "results.json"
    parser.add_argument("results", nargs="*", type=Path, default=[default_results])
    parser.add_argument("--merge", action="store_true", help="merge the given results.json files into --out/results.json first")
    parser.add_argument("--out", type=Path, help="report directory (default: beside the results file)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--index", action="store_true", help="also rewrite results/REPORT.md from both scenarios")
    args = parser.parse_args(argv)
    source = args.results[0]
    out = args.out or source.parent
    if args.merge:
        source = merge(args.results, out / "results.json")
    for path in write_report(source, out, plots=not args.no_plots):
        print(path)
    if args.index:
        print(write_index(Path(__file__).resolve().parent / "results"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
