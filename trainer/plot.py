"""``plot.png`` of a run: validation accuracy against learning rate per kind and width (against ``C``
for the closed-form ``logreg`` heads, which have no learning rate), the best head's curves and its
test confusion matrix (beyond ``report.FULL_CONFUSION_MAX_CLASSES`` classes: its largest confusions).
matplotlib is optional (the ``plot`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .report import recorded_confusion

TOP_PLOTTED = 20  # class pairs drawn when a run keeps only the largest confusions (more would not be legible)


def plot(results: dict[str, Any], path: Path) -> str | None:
    """Validation accuracy against learning rate per kind/width (and cache, on several), the best
    head's curves and its test confusion matrix, as one PNG. Returns why it was skipped, or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'featcache[plot]')"
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    lines: dict[str, list[tuple[float, float]]] = {}
    for h in results["heads"]:
        c = h["config"]
        key = c["kind"] + (f" h{c['hidden']}" if c.get("hidden") else "")
        key = f"{h['cache']}: {key}" if "cache" in h else key  # a sweep on several caches: a line per backbone
        x = c["lr"]
        if c.get("c"):  # a logreg head: its C, the inverse regularisation, on the same log axis
            x, key = c["c"], f"{key} (x: C)"
        lines.setdefault(key, []).append((x, h["val_acc"]))
    for key, pts in sorted(lines.items()):
        by_lr: dict[float, float] = {}
        for lr, acc in pts:
            by_lr[lr] = max(acc, by_lr.get(lr, -1))
        xs = sorted(by_lr)
        axes[0].plot(xs, [by_lr[x] for x in xs], marker="o", label=f"{key} (best over other settings)")
        axes[0].scatter([p[0] for p in pts], [p[1] for p in pts], s=8, alpha=0.4)
    axes[0].set(xscale="log", xlabel="learning rate (logreg: C)", ylabel="val accuracy", title="every head")
    axes[0].legend(fontsize=8)
    best = next(h for h in results["heads"] if h["name"] == results["best"])
    ep = [e["epoch"] for e in best["epochs"]]
    for key in ("train_acc", "val_acc"):
        axes[1].plot(ep, [e[key] for e in best["epochs"]], label=key.replace("_", " "))
    axes[1].axvline(best["best_epoch"], color="grey", ls=":", label="best epoch")
    axes[1].set(xlabel="epoch", ylabel="accuracy", title=f"best: {best['name']}")
    axes[1].legend(fontsize=8)
    cm, summary = recorded_confusion(results)
    classes = results["classes"]
    if cm is None and summary:  # many classes: the run kept the class pairs mixed up most, not the matrix
        top = summary["top"][:TOP_PLOTTED]
        axes[2].barh(range(len(top)), [c for _, _, c in top], color="#4e79a7")
        axes[2].set_yticks(range(len(top)), [f"{classes[t]} -> {classes[p]}" for t, p, _ in top], fontsize=6)
        axes[2].invert_yaxis()
        axes[2].set(
            xlabel="test rows",
            title=f"best head: top {len(top)} test confusions ({len(classes)} classes: no full matrix kept)",
        )
    else:
        cm = np.zeros((1, 1), np.int64) if cm is None else cm
        axes[2].imshow(cm, cmap="Blues")
        if len(classes) <= 30 and cm.shape[0] == len(classes):
            axes[2].set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
            axes[2].set_yticks(range(len(classes)), classes, fontsize=7)
            for (i, j), v in np.ndenumerate(cm):
                if v:
                    axes[2].text(j, i, str(v), ha="center", va="center", fontsize=6)
        axes[2].set(xlabel="predicted", ylabel="true", title="best head, test confusion")
    if results.get("random_weights"):
        fig.suptitle("RANDOM backbone weights: these accuracies are meaningless", color="red")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
