"""The heads that need no SGD, run beside every sweep, and the ensemble of everything.

* L-BFGS multinomial logistic regression (:mod:`~featcache.trainer.logreg`), its regularisation
  path over :data:`~featcache.trainer.logreg.DEFAULT_CS` in one warm-started pass, on the features
  as they are and power-normalised (:func:`signed_sqrt`), ``C`` and transform picked on val;
* the k-NN head (:mod:`~featcache.trainer.knn`), ``k`` and temperature picked on val;
* the ensemble (:func:`~featcache.trainer.select.ensemble`): the mean probabilities of the top-k of
  every head above and of the sweep by val accuracy, ``k`` picked on val.

On a cache with views the first two train on every view of the train rows and are scored on view 0
and with test-time augmentation; the better on val counts. Pure numpy: seconds on 10,000 rows.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import knn, logreg
from .data import Dataset
from .select import Candidate, ensemble
from .views import tta_probs

SPLITS = ("val", "test")
KNN_KS = (10, 20, 50, 100)
KNN_TEMPERATURES = (0.03, 0.07)
ENSEMBLE_MAX = 10


def _views(ds: Dataset, split: str) -> np.ndarray:
    """``(n, V, C)``: the split's views, or its pooled vectors as one view."""
    s = getattr(ds, split)
    return s.views if s.views is not None else s.pooled[:, None]


def _best(cands: list[Candidate], y_val: np.ndarray) -> Candidate:
    return max(cands, key=lambda c: c.val_acc(y_val))  # the first of equals: the simplest in grid order


def signed_sqrt(x: np.ndarray) -> np.ndarray:
    """Power normalisation ``sign(x) sqrt(|x|)`` (Perronnin et al., 2010): damps the few channels that
    fire strongly. Measured on the CIFAR-10 dev cache with 2 views: +2 points of test accuracy for
    the logistic regression with TTA (docs/quality.md)."""
    return np.sign(x) * np.sqrt(np.abs(x))


TRANSFORMS = {"": lambda x: x, "sqrt-": signed_sqrt}  # name prefix -> feature transform, both tried


def logreg_candidates(ds: Dataset, cs: Sequence[float] = logreg.DEFAULT_CS) -> list[Candidate]:
    """One candidate per feature transform (:data:`TRANSFORMS`), ``C`` and, with views, scoring (view
    0, TTA) of the L-BFGS path trained on every train view; features standardised with the train
    views' mean and std after the transform."""
    out = []
    for prefix, transform in TRANSFORMS.items():
        x = {s: transform(_views(ds, s)) for s in ("train", *SPLITS)}
        n, v, c = x["train"].shape
        flat = x["train"].reshape(n * v, c)
        mean, std = flat.mean(axis=0), np.maximum(flat.std(axis=0), 1e-6)
        x = {s: (a - mean) / std for s, a in x.items()}
        fits = logreg.fit_path(x["train"].reshape(n * v, c), np.repeat(ds.train.y, v), len(ds.classes), cs)
        for f in fits:
            name = f"logreg-lbfgs-{prefix}C{f.c:g}" + (f"-views{v}" if v > 1 else "")
            out.append(Candidate(name, *(f.predict_proba(x[s][:, 0]) for s in SPLITS), cost=1, info={"c": f.c}))
            if v > 1:
                tta = [tta_probs(f.predict_proba, x[s]) for s in SPLITS]
                out.append(Candidate(name + "-tta", *tta, cost=v, info={"c": f.c, "tta": True}))
    return out


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
            cands.append(Candidate(cfg.name, src["val"][k], src["test"][k], cost=2))
    return cands


def run_baselines(ds: Dataset, out: Any) -> list[dict[str, Any]]:
    """Rows for results.json's ``baselines``: the best L-BFGS logistic regression, the best k-NN and
    the ensemble, each with val and test accuracy (None without test rows), wall seconds and, for
    the ensemble, its members."""
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

    for kind, make in (("logreg", lambda: logreg_candidates(ds)), ("knn", lambda: knn_candidates(ds))):
        t0 = time.perf_counter()
        family = make()
        cands += family
        rows.append(row(kind, _best(family, ds.val.y), time.perf_counter() - t0, candidates=len(family)))
    t0 = time.perf_counter()
    cands += sweep_candidates(out)
    mean, members = ensemble(cands, ds.val.y, ENSEMBLE_MAX)
    rows.append(row("ensemble", mean, time.perf_counter() - t0, members=members))
    return rows


def describe(rows: list[dict[str, Any]]) -> str:
    """The baselines as lines under the leaderboard."""
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    return "\n".join(
        f"{r['kind']:>8}: val {r['val_acc']:.4f}, test {fmt(r['test_acc'])}  {r['name']}"
        + (f" = mean of {', '.join(r['members'])}" if r.get("members") else "")
        + f" ({r['seconds']:.1f} s)"
        for r in rows
    )
