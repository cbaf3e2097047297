"""What a finished sweep says about its heads: the ranking, the best head and its confusion matrix.
Pure functions of ``results.json``'s ``heads`` rows (no TensorFlow).

The best head's test confusion matrix grows with the classes squared (3,000 classes: 9 million
cells, 54 MB of JSON, a 425 MB page): up to :data:`FULL_CONFUSION_MAX_CLASSES` classes the run keeps
it whole; beyond, only the per-class counts and the :data:`TOP_CONFUSIONS` largest off-diagonal cells
(:func:`confusion_entries`).

A val accuracy is a binomial proportion: on 1,000 val rows its 95% interval is about +-2.8 points,
so heads a few tenths apart are tied. The ranking applies the one-standard-error rule
(:func:`featcache.trainer.selection.rank`): the heads within one standard error of the best val
accuracy come first, simplest first (linear before mlp before map, narrower before wider), and the
first of them is the pick; the rest follow by val accuracy. A head scored with test-time
augmentation (TTA, on a cache with views) counts with the accuracy of the way val preferred.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .heads import HEAD_KINDS
from .selection import Z_ONE_SE, rank, wilson
from .settings import DEFAULT_TOP


def selected_val_acc(head: dict[str, Any]) -> float:
    """The head's val accuracy as chosen on val: with TTA when that was better there."""
    return head["val_acc_tta"] if head.get("use_tta") else head["val_acc"]


def selected_test_acc(head: dict[str, Any]) -> float | None:
    """The head's test accuracy, scored the way val chose (view 0 or TTA)."""
    return head["test_acc_tta"] if head.get("use_tta") else head["test_acc"]


def pick_score(head: dict[str, Any]) -> tuple[float, float | None]:
    """What the pick compares for ``head``: its cross-validation mean and standard error (scored the
    way the CV means chose: view 0 or TTA) when it was cross-validated (trainer.cv), else its val
    accuracy as chosen on val and None."""
    cv = head.get("cv")
    if cv is None:
        return selected_val_acc(head), None
    return (cv["acc_tta"], cv["se_tta"]) if head.get("use_tta") else (cv["acc"], cv["se"])


def pick_by(head: dict[str, Any]) -> str:
    """``"cv5"`` (5-fold cross-validation over train+val) or ``"val"``: what the pick compared."""
    return f"cv{head['cv']['folds']}" if head.get("cv") else "val"


def simplicity(head: dict[str, Any]) -> tuple[int, int]:
    """Orders tied heads: kinds in registry order (linear, mlp, map), then narrower first."""
    c = head["config"]
    kinds = list(HEAD_KINDS)
    return (kinds.index(c["kind"]) if c["kind"] in kinds else len(kinds), int(c.get("hidden") or 0))


def ranking(heads: list[dict[str, Any]], n_val: int) -> tuple[list[int], int]:
    """Positions of ``heads`` in leaderboard order and how many lead it tied with the best (one-SE
    rule on ``n_val`` val rows; equal simplicity: lower val loss, then grid order)."""
    scores = [pick_score(h) for h in heads]
    accs = [a for a, _ in scores]
    lows = [None if se is None else a - se for a, se in scores]
    # loss folded into the cost's last place so that equal accuracy and simplicity prefer the lower loss
    costs = [(*simplicity(h), h["val_loss"]) for h in heads]
    return rank(accs, costs, max(n_val, 1), lows=lows)


def best_head(heads: list[dict[str, Any]], n_val: int) -> dict[str, Any]:
    """The simplest head within one standard error of the best val accuracy (see :func:`ranking`)."""
    return heads[ranking(heads, n_val)[0][0]]


def pick_rule(heads: list[dict[str, Any]], n_val: int) -> str:
    """The pick's reason in numbers a user can check against the leaderboard's columns."""
    scores = [pick_score(h) for h in heads]
    at = max(range(len(heads)), key=lambda i: scores[i][0])
    best, se = scores[at]
    if se is None:
        low, _ = wilson(best * max(n_val, 1), max(n_val, 1), Z_ONE_SE)
        what = "val acc" if all(s is None for _, s in scores) else "pick acc"
        why = f"{what} >= {low:.4f}, the lower end of the best val acc {best:.4f}'s one-standard-error interval on "
        why += f"{n_val} val rows"
    else:
        folds = heads[at]["cv"]["folds"]
        why = f"pick acc >= {best - se:.4f}, the best {folds}-fold cross-validation mean {best:.4f} minus its "
        why += f"standard error {se:.4f}"
    return (
        f"~ tied with the best: {why}.\n  The pick (rank 1) is the simplest tied head "
        f"(kind in the order {', '.join(HEAD_KINDS)}; then narrower; then the lower val loss); the rest follow "
        "by val acc."
    )


def leaderboard(heads: list[dict[str, Any]], n_val: int, top: int = DEFAULT_TOP, more_in: str = "results.json") -> str:
    """The ``top`` heads in :func:`ranking` order as a text table: rank (``~`` within noise of the
    best), val accuracy with its 95% Wilson interval (when a head was cross-validated: the pick's
    quantity, its standard error, ``cv5`` or ``val``, then the val accuracy), val loss (what breaks
    ties among equally simple heads), test accuracy, how it was scored, best epoch, the backbone (in a
    sweep on several caches) and name; then :func:`pick_rule`, the threshold the pick used."""
    order, tied = ranking(heads, n_val)
    fmt = lambda v: "   -  " if v is None else f"{v:.4f}"  # noqa: E731
    # a sweep on several caches (trainer.multi): a column says which backbone's features each head read
    width = max((max(len(h["backbone"]), len("backbone")) for h in heads if "backbone" in h), default=0)
    col = (lambda h: f"{h.get('backbone', ''):<{width}}  ") if width else (lambda h: "")  # noqa: E731
    backbone = f"{'backbone':<{width}}  " if width else ""
    cv = any(h.get("cv") for h in heads)
    # with cross-validated heads: the quantity the pick compared (CV mean or val acc), its standard error
    # (over folds, or binomial on the val rows) and which it was, then the val acc (out-of-fold for CV)
    pick_cols = f"{'pick acc':>8}  {'SE':>6}  {'by':>4}  {'val acc':>7}" if cv else f"{'val acc':>7}  {'95% CI':>13}"
    lines = [f"{'rank':>4}  {pick_cols}  {'val loss':>8}  {'test acc':>8}  {'scored':>6}  {'epoch':>5}  {backbone}head"]
    for r, i in enumerate(order[:top], 1):
        h = heads[i]
        va = selected_val_acc(h)
        if cv:
            acc, se = pick_score(h)
            se = np.sqrt(acc * (1 - acc) / max(n_val, 1)) if se is None else se
            cols = f"{acc:>8.4f}  {se:>6.4f}  {pick_by(h):>4}  {va:>7.4f}"
        else:
            lo, hi = wilson(va * n_val, n_val)
            cols = f"{va:>7.4f}  [{lo:.3f},{hi:.3f}]"
        scored = f"TTA x{h['views']}" if h.get("use_tta") else "view 0"
        lines.append(
            f"{r:>3}{'~' if r <= tied else ' '}  {cols}  {h['val_loss']:>8.4f}  "
            f"{fmt(selected_test_acc(h)):>8}  {scored:>6}  {h['best_epoch']:>5}  {col(h)}{h['name']}"
        )
    if len(order) > top:
        lines.append(f"  ... {len(order) - top} more in {more_in}")
    lines.append(pick_rule(heads, n_val))
    return "\n".join(lines)


def confusion(y: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """``(n, n)`` int64 counts: row = true class, column = predicted class."""
    m = np.zeros((n, n), np.int64)
    np.add.at(m, (y, pred), 1)
    return m


# Up to this many classes results.json keeps the best head's whole test confusion matrix; beyond, the
# per-class counts and the TOP_CONFUSIONS largest off-diagonal cells (class pairs mixed up most).
FULL_CONFUSION_MAX_CLASSES = 50
TOP_CONFUSIONS = 50
CONFUSION, CONFUSION_TOP = "best_confusion_test", "best_confusion_test_top"


def confusion_summary(m: np.ndarray) -> dict[str, Any]:
    """What a run keeps of an ``(n, n)`` confusion matrix (rows true, columns predicted) beyond
    :data:`FULL_CONFUSION_MAX_CLASSES` classes: ``classes`` n; per class ``true`` (row sums), ``predicted``
    (column sums) and ``correct`` (the diagonal), lists of n ints; ``top``: the :data:`TOP_CONFUSIONS`
    largest off-diagonal cells as ``[true, predicted, count]``, largest first (ties: lower true, then
    predicted class first), zero cells left out."""
    m = np.asarray(m, dtype=np.int64)
    off = m.copy()
    np.fill_diagonal(off, 0)
    flat = off.ravel()
    nonzero = np.flatnonzero(flat)
    order = nonzero[np.lexsort((nonzero, -flat[nonzero]))][:TOP_CONFUSIONS]  # count descending, then cell order
    n = len(m)
    return {
        "classes": n,
        "true": m.sum(axis=1).tolist(),
        "predicted": m.sum(axis=0).tolist(),
        "correct": np.diag(m).tolist(),
        "top": [[int(k // n), int(k % n), int(flat[k])] for k in order],
    }


def confusion_entries(m: np.ndarray | None) -> dict[str, Any]:
    """``results.json``'s entries for the best head's test confusion ``m`` (``(n, n)`` counts, None without
    test rows): :data:`CONFUSION` holds the whole matrix up to :data:`FULL_CONFUSION_MAX_CLASSES` classes
    (else null), and :data:`CONFUSION_TOP` its :func:`confusion_summary` beyond them (else absent)."""
    if m is None:
        return {CONFUSION: None}
    m = np.asarray(m, dtype=np.int64)
    if len(m) <= FULL_CONFUSION_MAX_CLASSES:
        return {CONFUSION: m.tolist()}
    return {CONFUSION: None, CONFUSION_TOP: confusion_summary(m)}


def class_metrics(m: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """``results.json``'s ``best_test_metrics`` from the best head's test confusion ``m`` (``(n, n)`` counts,
    rows true): ``accuracy``, ``macro_f1`` (the unweighted mean over the classes that have test rows or
    predictions) and ``per_class``: class -> ``precision``, ``recall``, ``f1`` (0 where undefined, as
    scikit-learn's ``zero_division=0``) and ``support`` (test rows). Linear in the classes, unlike ``m``."""
    m = np.asarray(m, dtype=np.float64)
    tp, true, pred = np.diag(m), m.sum(axis=1), m.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(pred > 0, tp / pred, 0.0)
        recall = np.where(true > 0, tp / true, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = (true > 0) | (pred > 0)
    return {
        "accuracy": float(tp.sum() / max(m.sum(), 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            c: {
                "precision": float(precision[k]),
                "recall": float(recall[k]),
                "f1": float(f1[k]),
                "support": int(true[k]),
            }
            for k, c in enumerate(classes)
        },
    }


def recorded_confusion(results: dict[str, Any]) -> tuple[np.ndarray | None, dict[str, Any] | None]:
    """The best head's test confusion as a run recorded it: the whole matrix (or None when it was not
    kept), and its :func:`confusion_summary` (None without test rows)."""
    full = results.get(CONFUSION)
    if full:
        m = np.asarray(full, dtype=np.int64)
        return m, confusion_summary(m)
    return None, results.get(CONFUSION_TOP) or None
