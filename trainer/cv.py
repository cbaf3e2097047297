"""A pick that holds on small data: k-fold cross-validation of the closed-form heads over train+val.

With a few hundred val rows a val accuracy is too noisy to choose among heads that differ by a point
(153 rows: one image is 0.65 points, the 95% interval +-4 points). When val has fewer than
:data:`CV_MAX_VAL` rows (``folds="auto"``, the default) or a fold count is given, the closed-form heads
(the ``logreg`` path, see :mod:`~featcache.trainer.heads`) are chosen on ``k``-fold cross-validation
over train+val instead, then refitted on all of it:

* **folds by a hash of the id**: the rows of train+val sorted by the sha256 of ``FOLD_SALT + id`` (the
  cache's split hash, salted apart from it: train+val ids have split hashes in one range) and dealt
  round-robin, so folds differ in size by one row at most and a row is in the same fold whatever the
  seed. A row's views are one row: every view of an image is in its fold.
* for each fold, every head of the group is fitted on the other folds (every view of their rows; the
  path started from zero, never from a fit that saw the fold's rows: weakly regularised heads that stop
  at the tolerance near such a start keep those rows memorised) and predicts the fold (view 0, and
  with test-time augmentation on a cache with views): its fold accuracies give the **CV mean and its
  standard error** (the sample standard deviation over folds / sqrt(k), glmnet's ``cvsd``), the
  quantity the one-standard-error pick compares for these heads;
* the head kept is fitted once more on every train+val row, started from the last fold's fit (the same
  optimum in fewer iterations); test is scored with it once, at the end.
  Its "val" predictions are the out-of-fold ones (from the folds' fits, which never saw those rows),
  so val accuracy, val loss and the ensemble stay honest.

SGD heads (linear, mlp, map) keep the single val split (docs/trainer.md, "The pick"). Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..shared.cache import hash_unit
from .settings import AUTO_FOLDS, SettingError

CV_MAX_VAL = 2000  # folds="auto": cross-validate when val has fewer rows than this
DEFAULT_FOLDS = 5  # folds="auto": this many
FOLD_SALT = "featcache-fold:"


def fold_of(ids: Any, k: int) -> np.ndarray:
    """``(n,)`` int64 fold of each id in ``0..k-1``: ids sorted by a salted hash, dealt round-robin."""
    u = hash_unit(FOLD_SALT + str(i) for i in ids)
    folds = np.empty(len(u), np.int64)
    folds[np.argsort(u, kind="stable")] = np.arange(len(u)) % k
    return folds


def folds_for(folds: int | str, n_val: int, n_rows: int) -> int:
    """The fold count a sweep uses (0: pick on val). ``folds``: ``"auto"`` (:data:`DEFAULT_FOLDS` when
    val has fewer than :data:`CV_MAX_VAL` rows and train+val at least twice as many rows as folds, else
    0), 0, or a count, refused when train+val has fewer rows (``n_rows``) than folds."""
    if folds == AUTO_FOLDS:
        return DEFAULT_FOLDS if n_val < CV_MAX_VAL and n_rows >= 2 * DEFAULT_FOLDS else 0
    if isinstance(folds, int) and folds > n_rows:
        raise SettingError(
            "folds", folds, f"more folds than the {n_rows} labelled train+val rows to cross-validate on; use fewer"
        )
    return int(folds)


@dataclass
class CVResult:
    """What cross-validation found for a group of ``h`` heads: ``fold_acc (h, k)`` accuracy on each
    fold (view 0), ``fold_acc_tta`` the same with TTA (None without views); ``val (h, n_val, K)``
    out-of-fold probabilities of the val rows (view 0) and ``val_tta`` (with TTA, or None); ``last``
    the group fitted on the last fold's training rows (its solutions start the refit on all rows)."""

    folds: int
    fold_acc: np.ndarray
    fold_acc_tta: np.ndarray | None
    val: np.ndarray
    val_tta: np.ndarray | None
    last: Any = None

    @staticmethod
    def summary(acc: np.ndarray) -> tuple[float, float]:
        """Mean and standard error ``std(ddof=1) / sqrt(k)`` of ``k`` fold accuracies."""
        k = len(acc)
        return float(np.mean(acc)), float(np.std(acc, ddof=1) / np.sqrt(k)) if k > 1 else 0.0

    def row(self, i: int) -> dict[str, Any]:
        """results.json's ``cv`` entry of head ``i``: folds, ``acc`` and ``se`` (view 0), ``fold_acc``;
        with views ``acc_tta``, ``se_tta``, ``fold_acc_tta``."""
        mean, se = self.summary(self.fold_acc[i])
        out: dict[str, Any] = {"folds": self.folds, "acc": mean, "se": se, "fold_acc": self.fold_acc[i].tolist()}
        if self.fold_acc_tta is not None:
            mean, se = self.summary(self.fold_acc_tta[i])
            out.update(acc_tta=mean, se_tta=se, fold_acc_tta=self.fold_acc_tta[i].tolist())
        return out


def cross_validate(make: Any, x: np.ndarray, y: np.ndarray, ids: np.ndarray, k: int, n_val: int) -> CVResult:
    """Cross-validate the heads of a closed-form group. ``make()`` returns a fresh unfitted group;
    ``x (n, V, C)`` every view of the train+val rows as cached (train rows first, the last ``n_val``
    the val rows), ``y (n,)`` labels, ``ids (n,)`` their ids. Each fold's fit starts from zero (module
    docstring)."""
    folds = fold_of(ids, k)
    n, v = x.shape[:2]
    probs, probs_tta = None, None
    group = None
    for f in range(k):
        held = folds == f
        group = make()
        group.fit(x[~held], y[~held])
        p = group.predict(x[held, 0])  # (h, m, K)
        if probs is None:
            probs = np.zeros((p.shape[0], n, p.shape[2]), np.float32)
            probs_tta = np.zeros_like(probs) if v > 1 else None
        probs[:, held] = p
        if probs_tta is not None:
            probs_tta[:, held] = np.mean([group.predict(x[held, j]) for j in range(v)], axis=0)

    def per_fold(p: np.ndarray) -> np.ndarray:
        right = p.argmax(-1) == y  # (h, n)
        return np.stack([right[:, folds == f].mean(axis=1) for f in range(k)], axis=1)

    assert probs is not None  # k >= 2 folds, each predicted
    val = slice(n - n_val, n)
    return CVResult(
        k,
        per_fold(probs),
        None if probs_tta is None else per_fold(probs_tta),
        probs[:, val],
        None if probs_tta is None else probs_tta[:, val],
        group,
    )
