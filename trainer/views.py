"""Training on augmented views and scoring with test-time augmentation (TTA).

A cache extracted with ``--views V`` holds ``V`` pooled vectors per row (view 0 the plain image).
Training draws, each epoch, one view per train row, so an epoch costs what it costs without views
and every view is seen over the epochs. Scoring is done twice: on view 0 (what a plain image at
inference gives) and with TTA, the mean of the class probabilities over all ``V`` views (what it
costs ``V`` backbone calls per image at inference). Which of the two to trust is chosen on val.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

VIEW_SALT = 0x5649  # mixes the epoch into the view draw, apart from the batch-order stream


def epoch_views(n: int, views: int, seed: int, epoch: int) -> np.ndarray:
    """``(n,)`` int: the view each train row is fed through in ``epoch`` (uniform, reproducible in
    ``seed`` and ``epoch``, independent of the batch order)."""
    return np.random.default_rng([seed, VIEW_SALT, epoch]).integers(0, views, n)


def pick_views(x: np.ndarray, rows: np.ndarray, which: np.ndarray) -> np.ndarray:
    """``x (n, V, C)`` -> ``(len(rows), C)``: row ``rows[i]`` through its view ``which[rows[i]]``."""
    return x[rows, which[rows]]


def tta_probs(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """Mean over views of ``predict(x[:, v])``: ``x (n, V, C)``, ``predict`` maps ``(n, C)`` to
    probabilities ``(..., n, K)`` (any leading axes, e.g. heads); returns the same shape."""
    return np.mean([predict(x[:, v]) for v in range(x.shape[1])], axis=0)


def accuracy(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Accuracy along the last-but-one axis: ``probs (..., n, K)``, ``y (n,)`` -> ``(...)``."""
    return np.mean(probs.argmax(-1) == y, axis=-1)
