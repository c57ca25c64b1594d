"""PNG plots for the report (needs matplotlib; report.py skips them when it is missing)."""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from bench.quality import tasks  # noqa: E402
from bench.quality.report import FULL, value  # noqa: E402
from bench.quality.stats import interval  # noqa: E402

COLORS = {
    "random": "#9e9e9e",
    "stratified": "#555555",
    "less": "#e4572e",
    "quota": "#76b041",
    "bids": "#2e86de",
    "influence-distillation": "#8e44ad",
    "quota-sample": "#f39c12",
    "within-task@bids": "#85c1e9",
    "within-task@quota-sample": "#f8c471",
    FULL: "#222222",
}
TASK_COLORS = ["#2e86de", "#e4572e", "#76b041", "#f1c40f", "#8e44ad", "#16a085", "#e67e22", "#34495e"]
DISTRACTOR_COLOR = "#d0d0d0"


def accuracy_plot(groups, budgets, labels, learned, path: Path) -> Path:
    """Macro accuracy (all tasks; learned tasks) per method and budget, mean with 95% CI."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), squeeze=False)
    for ax, column, title in ((axes[0][0], "macro", "macro accuracy, all tasks"),
                              (axes[0][1], "macro_learned", f"macro accuracy, learned tasks ({', '.join(learned)})")):
        width = 0.8 / max(1, len(labels))
        for i, label in enumerate(labels):
            xs, means, halves = [], [], []
            for b, budget in enumerate(budgets):
                runs = groups.get((label, budget), [])
                if not runs:
                    continue
                ci = interval([value(r, column, learned) for r in runs])
                xs.append(b + (i - (len(labels) - 1) / 2) * width)
                means.append(100 * ci.mean)
                halves.append(0 if ci.n < 2 else 100 * ci.half)
            ax.bar(xs, means, width, yerr=halves, capsize=2, color=COLORS.get(label), label=label)
        if (FULL, None) in groups:
            full = statistics.fmean(value(r, column, learned) for r in groups[(FULL, None)])
            ax.axhline(100 * full, color=COLORS[FULL], linestyle="--", linewidth=1, label="full pool")
        ax.set_xticks(range(len(budgets)), [f"{b:.0%}" for b in budgets])
        ax.set_xlabel("budget (share of the pool)")
        ax.set_ylabel("exact match (%)")
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()  # below the plots: it would hide bars
    fig.legend(handles, names, fontsize=7, ncol=min(6, len(names)), loc="lower center")
    fig.suptitle("Accuracy per method and budget (bars: mean over seeds, whiskers: 95% t-interval)", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def quality_plot(groups, keys, pool_wrong, path: Path) -> Path:
    """Wrong-answer and off-target shares of every subset, against the pool's wrong-answer share."""
    keys = [k for k in keys if k[0] != FULL]
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(keys) + 1.5))
    for row, key in enumerate(keys):
        runs = groups[key]
        wrong = 100 * statistics.fmean(r["quality"]["wrong_share"] for r in runs)
        off = 100 * statistics.fmean(r["quality"]["off_target_share"] for r in runs)
        ax.barh(row - 0.2, wrong, 0.4, color="#c0392b", label="wrong answers" if row == 0 else None)
        ax.barh(row + 0.2, off, 0.4, color="#f5b041", label="off-target" if row == 0 else None)
    if pool_wrong is not None:
        ax.axvline(100 * pool_wrong, color="#c0392b", linestyle="--", linewidth=1, label="pool: wrong answers")
    ax.set_yticks(range(len(keys)), [f"{k[0]} {k[1]:.0%}" for k in keys], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("share of the subset (%)")
    ax.set_title("Wrong-answer and off-target shares of each subset (mean over seeds)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def composition_plot(groups, keys, path: Path) -> Path:
    """Stacked bars: the share of each true task in every selected subset (mean over seeds)."""
    kinds = (*tasks.TASKS, tasks.DISTRACTOR)
    colors = [TASK_COLORS[i % len(TASK_COLORS)] for i in range(len(tasks.TASKS))] + [DISTRACTOR_COLOR]
    keys = [k for k in keys if k[0] != FULL]
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(keys) + 1.6))
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
                ax.text(left + share / 2, row, f"{share:.0f}", ha="center", va="center", fontsize=6)
            left += share
        labels.append(f"{key[0]} {key[1]:.0%}")
    ax.set_yticks(range(len(keys)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of the selected subset (%)")
    ax.set_title("What each method selected, by true task")
    ax.legend(ncol=len(kinds), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.5 / max(1, len(keys)) - 0.08))
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def make_plots(groups, keys, budgets, labels, out: Path, learned, pool_wrong) -> list[Path]:
    out = Path(out)
    made = [
        accuracy_plot(groups, budgets, labels, learned, out / "accuracy.png"),
        composition_plot(groups, keys, out / "composition.png"),
    ]
    if all("quality" in r for runs in groups.values() for r in runs):
        made.append(quality_plot(groups, keys, pool_wrong, out / "quality.png"))
    return made
