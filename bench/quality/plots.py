"""PNG plots for the report (needs matplotlib; report.py skips them when it is missing)."""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from bench.quality import tasks  # noqa: E402

FULL = "full"
COLORS = {
    "random": "#9e9e9e",
    "less": "#e4572e",
    "quota": "#76b041",
    "bids": "#2e86de",
    "influence-distillation": "#8e44ad",
    FULL: "#222222",
}
TASK_COLORS = ["#2e86de", "#e4572e", "#76b041", "#f1c40f", "#8e44ad", "#16a085", "#e67e22", "#34495e"]
DISTRACTOR_COLOR = "#d0d0d0"


def _stats(runs, column):
    values = [r[column] if column in ("macro", "worst") else r["accuracy"][column] for r in runs]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def accuracy_plot(groups, budgets, methods, path: Path) -> Path:
    """One panel per budget: per-task (and macro, worst) accuracy bars per method, ± std."""
    columns = (*tasks.TASKS, "macro", "worst")
    bars = [m for m in methods if any((m, b) in groups for b in budgets)]
    bars += [FULL] if (FULL, None) in groups else []
    fig, axes = plt.subplots(len(budgets), 1, figsize=(11, 3.2 * len(budgets)), squeeze=False)
    width = 0.8 / len(bars)
    for row, budget in enumerate(budgets):
        ax = axes[row][0]
        for i, method in enumerate(bars):
            key = (FULL, None) if method == FULL else (method, budget)
            if key not in groups:
                continue
            means, stds = zip(*(_stats(groups[key], c) for c in columns))
            xs = [c + (i - (len(bars) - 1) / 2) * width for c in range(len(columns))]
            ax.bar(xs, [100 * m for m in means], width, yerr=[100 * s for s in stds], capsize=2,
                   color=COLORS.get(method, None), label="full pool" if method == FULL else method)
        ax.set_xticks(range(len(columns)), columns)
        ax.set_ylim(0, 100)
        ax.set_ylabel("exact match (%)")
        ax.set_title(f"budget {budget:.0%} of the pool (full pool for reference)")
        ax.grid(axis="y", alpha=0.3)
        if row == 0:
            ax.legend(ncol=len(bars), fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def composition_plot(groups, keys, path: Path) -> Path:
    """Stacked bars: the share of each true task in every selected subset (mean over seeds)."""
    kinds = (*tasks.TASKS, tasks.DISTRACTOR)
    colors = [TASK_COLORS[i % len(TASK_COLORS)] for i in range(len(tasks.TASKS))] + [DISTRACTOR_COLOR]
    keys = [k for k in keys if k[0] != FULL]
    fig, ax = plt.subplots(figsize=(10, 0.38 * len(keys) + 1.4))
    labels = []
    for row, key in enumerate(keys):
        runs = groups[key]
        counts = [statistics.fmean(r["composition"][k] for r in runs) for k in kinds]
        total = sum(counts) or 1
        left = 0.0
        for kind, count, color in zip(kinds, counts, colors):
            share = 100 * count / total
            ax.barh(row, share, left=left, color=color, label=kind if row == 0 else None)
            if share >= 6:
                ax.text(left + share / 2, row, f"{share:.0f}", ha="center", va="center", fontsize=7)
            left += share
        labels.append(f"{key[0]} {key[1]:.0%}")
    ax.set_yticks(range(len(keys)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of the selected subset (%)")
    ax.set_title("What each method selected, by true task")
    ax.legend(ncol=len(kinds), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.6 / max(1, len(keys))))
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def make_plots(groups, keys, budgets, methods, out: Path) -> list[Path]:
    out = Path(out)
    return [
        accuracy_plot(groups, budgets, methods, out / "accuracy.png"),
        composition_plot(groups, keys, out / "composition.png"),
    ]
