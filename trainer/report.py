"""What a finished sweep says about its heads: the ranking, the best head and its confusion matrix.
Pure functions of ``results.json``'s ``heads`` rows (no TensorFlow)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .settings import DEFAULT_TOP


def rank_key(head: dict[str, Any]) -> tuple[float, float]:
    """Sort key of a head row: highest val accuracy first, then lowest val loss."""
    return (-head["val_acc"], head["val_loss"])


def best_head(heads: list[dict[str, Any]]) -> dict[str, Any]:
    """Highest val accuracy, then lowest val loss, then the simplest (earliest in the grid)."""
    return min(heads, key=rank_key)


def leaderboard(heads: list[dict[str, Any]], top: int = DEFAULT_TOP, more_in: str = "results.json") -> str:
    """The ``top`` heads as a text table: rank, val accuracy, test accuracy, best epoch, name."""
    ranked = sorted(heads, key=rank_key)
    fmt = lambda v: "   -  " if v is None else f"{v:.4f}"  # noqa: E731
    lines = [f"{'rank':>4}  {'val acc':>7}  {'test acc':>8}  {'epoch':>5}  head"]
    for r, h in enumerate(ranked[:top], 1):
        lines.append(f"{r:>4}  {h['val_acc']:>7.4f}  {fmt(h['test_acc']):>8}  {h['best_epoch']:>5}  {h['name']}")
    if len(ranked) > top:
        lines.append(f"  ... {len(ranked) - top} more in {more_in}")
    return "\n".join(lines)


def confusion(y: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """``(n, n)`` int64 counts: row = true class, column = predicted class."""
    m = np.zeros((n, n), np.int64)
    np.add.at(m, (y, pred), 1)
    return m
