"""What runs beside every sweep: the k-NN head and the ensemble of everything.

* the k-NN head (:mod:`~featcache.trainer.heads.knn`), ``k`` and temperature picked on val: no training,
  one matrix product; a free check of the features;
* the ensemble (:func:`~featcache.trainer.heads.ensemble.ensemble`): the mean probabilities of the top-k of
  the sweep's heads and the k-NN by val accuracy, ``k`` picked on val.

On a cache with views the k-NN's keys are every view of the train rows, and it is scored with
test-time augmentation. (The L-BFGS logistic regression, once here, is a head kind of the sweep:
``logreg`` in :mod:`~featcache.trainer.heads`.) Pure numpy: seconds on 10,000 rows.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .data import Dataset
from .heads import knn
from .heads.ensemble import ensemble
from .selection import Candidate

SPLITS = ("val", "test")
KNN_KS = (10, 20, 50, 100)
KNN_TEMPERATURES = (0.03, 0.07)
ENSEMBLE_MAX = 10


def _views(ds: Dataset, split: str) -> np.ndarray:
    """``(n, V, C)``: the split's views, or its pooled vectors as one view (the pooled maps' channels
    only, when the dataset carries the layer taps after them)."""
    s = getattr(ds, split)
    x = s.views if s.views is not None else s.pooled[:, None]
    return x[..., : ds.channels] if ds.taps else x


def _best(cands: list[Candidate], y_val: np.ndarray) -> Candidate:
    return max(cands, key=lambda c: c.val_acc(y_val))  # the first of equals: the simplest in grid order


def knn_candidates(ds: Dataset) -> list[Candidate]:
    """One candidate per ``(k, temperature)``: keys are every train view, queries scored with TTA."""
    x = {s: _views(ds, s) for s in ("train", *SPLITS)}
    n, v, c = x["train"].shape
    index = knn.fit(x["train"].reshape(n * v, c), np.repeat(ds.train.y, v), len(ds.classes))
    queries = [x[s][:, i] for s in SPLITS for i in range(v)]
    out = []
    for (k, t), probs in knn.sweep(index, queries, KNN_KS, KNN_TEMPERATURES).items():
        name = f"knn-k{k}-T{t:g}" + (f"-views{v}-tta" if v > 1 else "")
        out.append(Candidate(name, np.mean(probs[:v], axis=0), np.mean(probs[v:], axis=0), cost=v, info={"k": k}))
    return out


def sweep_candidates(out: Any) -> list[Candidate]:
    """The trained sweep's heads (a :class:`~featcache.trainer.loop.TrainOutput`), each scored the way
    val preferred (view 0 or TTA)."""
    cands = []
    for state in out.states:
        probs = {s: state.predictions(s) for s in SPLITS}
        tta = {s: state.tta_probabilities(s) for s in SPLITS} if state.n_views > 1 else None
        for k, cfg in enumerate(state.group.configs):
            row = next(h for h in out.heads if h["name"] == cfg.name)
            src = tta if row.get("use_tta") else probs
            assert src is not None, "only a group with views uses TTA"
            cands.append(Candidate(cfg.name, src["val"][k], src["test"][k], cost=2))
    return cands


def run_baselines(ds: Dataset, out: Any) -> list[dict[str, Any]]:
    """Rows for results.json's ``baselines``: the best k-NN and the ensemble, each with val and test
    accuracy (None without test rows), wall seconds and, for the ensemble, its members."""
    has_test = len(ds.test) > 0
    rows, cands = [], []

    def row(kind: str, best: Candidate, seconds: float, **extra: Any) -> dict[str, Any]:
        return {
            "kind": kind,
            "name": best.name,
            "val_acc": best.val_acc(ds.val.y),
            "test_acc": best.test_acc(ds.test.y) if has_test else None,
            "seconds": round(seconds, 3),
            **extra,
        }

    t0 = time.perf_counter()
    family = knn_candidates(ds)
    cands += family
    rows.append(row("knn", _best(family, ds.val.y), time.perf_counter() - t0, candidates=len(family)))
    t0 = time.perf_counter()
    cands += sweep_candidates(out)
    mean, members = ensemble(cands, ds.val.y, ENSEMBLE_MAX)
    rows.append(row("ensemble", mean, time.perf_counter() - t0, members=members))
    return rows


def describe(rows: list[dict[str, Any]]) -> str:
    """The baselines as lines under the leaderboard, why they are never the pick and whether
    ``featcache-train export`` can export them (as ``predict.ensemble_members`` decides)."""
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    lines = [
        f"{r['kind']:>8}: val {r['val_acc']:.4f}, test {fmt(r['test_acc'])}  {r['name']}"
        + (f" = mean of {', '.join(r['members'])}" if r.get("members") else "")
        + f" ({r['seconds']:.1f} s)"
        for r in rows
    ]
    if rows:
        lines.append("(reported beside the sweep, never picked: the pick is one head of the grid, by the rule above;")
    for r in rows:
        label = f"{r['cache']}:" if r.get("cache") else ""
        if r["kind"] != "ensemble":
            lines.append(
                f" {label}{r['kind']}: not exportable: it votes with the training rows, which the run does not keep;"
            )
            continue
        knn = [m for m in r.get("members") or [] if m.startswith("knn")]
        lines.append(
            f" {label}ensemble: not exportable: its member {knn[0]} is the k-NN head;"
            if knn
            else f" {label}ensemble: exported with featcache-train export RUN OUT.keras --head {label}ensemble;"
        )
    if rows:
        lines[-1] = lines[-1][:-1] + ")"
    return "\n".join(lines)
