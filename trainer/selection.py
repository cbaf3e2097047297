"""Choosing among heads without chasing noise.

A val accuracy measured on ``n`` rows is a binomial proportion: on 1,000 rows its 95% interval is
about +-2.8 points, so two heads 0.5 points apart are tied. :func:`wilson` gives the interval shown
on the leaderboard; :func:`pick` applies the one-standard-error rule (Breiman et al., 1984; the rule
glmnet uses for its lambda): among the heads whose val accuracy is within one standard error (a
``z = 1`` Wilson interval) of the best, take the cheapest. The ensemble of the best heads
(``heads.ensemble``) builds on :class:`Candidate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Z95 = 1.959964  # two-sided 95%: the leaderboard's interval
Z_ONE_SE = 1.0  # the one-standard-error rule's tie width


def wilson(correct: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` of a proportion ``correct / n`` (``(0, 1)`` when ``n == 0``)."""
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(centre - half), float(centre + half)


@dataclass
class Candidate:
    """One head's predictions: ``val (n_val, K)`` and ``test (n_test, K)`` class probabilities;
    ``cost`` orders ties (lower is simpler/cheaper: e.g. train seconds, or parameters)."""

    name: str
    val: np.ndarray
    test: np.ndarray
    cost: float = 0.0
    info: dict = field(default_factory=dict)

    def val_acc(self, y: np.ndarray) -> float:
        return float(np.mean(self.val.argmax(1) == y))

    def test_acc(self, y: np.ndarray) -> float | None:
        return float(np.mean(self.test.argmax(1) == y)) if len(y) else None


def rank(
    accs: Sequence[float],
    costs: Sequence[Any],
    n: int,
    z: float = Z_ONE_SE,
    lows: Sequence[float | None] | None = None,
) -> tuple[list[int], int]:
    """The selection order of heads with val accuracies ``accs`` (on ``n`` rows) and ``costs``: first
    those tied with the best (val accuracy at least the lower end of the best's ``z``-Wilson interval)
    from the cheapest up (equal cost: higher accuracy first, then earlier), then the rest by accuracy.
    ``lows``: per head, the lower end of its own one-SE interval where it is not a val accuracy on ``n``
    rows (a cross-validation mean minus its standard error; None: Wilson). Returns (order, how many are
    tied); ``order[0]`` is the pick."""
    best = int(np.argmax(accs))
    own = lows[best] if lows is not None else None
    low = own if own is not None else wilson(accs[best] * n, n, z)[0]
    tied = sorted((i for i, a in enumerate(accs) if a >= low), key=lambda i: (costs[i], -accs[i], i))
    rest = sorted((i for i, a in enumerate(accs) if a < low), key=lambda i: (-accs[i], i))
    return tied + rest, len(tied)


def pick(cands: Sequence[Candidate], y_val: np.ndarray, z: float = Z_ONE_SE) -> Candidate:
    """The cheapest candidate whose val accuracy reaches the lower end of the best one's ``z``-Wilson
    interval (ties in cost: the higher val accuracy, then the earlier in ``cands``)."""
    order, _ = rank([c.val_acc(y_val) for c in cands], [c.cost for c in cands], len(y_val), z)
    return cands[order[0]]
