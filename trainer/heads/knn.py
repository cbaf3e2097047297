"""A k-nearest-neighbour head: no training, one matrix product per block of queries.

Weighted k-NN as in the DINO evaluation (Caron et al., 2021): features are L2-normalised (after
subtracting the train mean, which measured better on ReLU features whose raw cosines are all
positive), the ``k`` train rows of highest cosine similarity vote for their class with weight
``exp(similarity / temperature)``, and the votes, normalised to sum to 1, are the class
probabilities. One pass over the queries serves every ``k`` of a sweep: the top ``max(k)``
neighbours are found once and each ``k`` uses a prefix of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

QUERY_BLOCK = 1024  # queries per similarity block: (1024, n_train) float32 stays small
DEFAULT_KS = (10, 20, 50, 100)
DEFAULT_TEMPERATURE = 0.07  # DINO's value


@dataclass(frozen=True)
class KnnIndex:
    """The train side: ``keys (n, C)`` float32 unit rows, ``y (n,)`` int labels, ``mean (C,)``."""

    keys: np.ndarray
    y: np.ndarray
    mean: np.ndarray
    n_classes: int


def normalise(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``(x - mean)`` scaled to unit L2 norm per row, float32 ``(n, C)`` (zero rows stay zero)."""
    z = np.asarray(x, np.float32) - mean
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def fit(x: np.ndarray, y: np.ndarray, n_classes: int, centre: bool = True) -> KnnIndex:
    """The index of train features ``x (n, C)`` with labels ``y (n,)``: nothing is learnt."""
    mean = x.mean(axis=0).astype(np.float32) if centre else np.zeros(x.shape[1], np.float32)
    return KnnIndex(normalise(x, mean), np.asarray(y, np.int64), mean, n_classes)


def neighbours(index: KnnIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar train rows of every query: ``(similarity (q, k) float32, train row (q, k))``,
    most similar first. Computed in blocks of :data:`QUERY_BLOCK` queries."""
    k = min(k, len(index.y))
    q = normalise(queries, index.mean)
    sims, rows = np.empty((len(q), k), np.float32), np.empty((len(q), k), np.int64)
    for s in range(0, len(q), QUERY_BLOCK):
        block = q[s : s + QUERY_BLOCK] @ index.keys.T  # (b, n)
        if k < block.shape[1]:
            top = np.argpartition(-block, k - 1, axis=1)[:, :k]
        else:
            top = np.broadcast_to(np.arange(k), block.shape)
        top_sims = np.take_along_axis(block, top, axis=1)
        order = np.argsort(-top_sims, axis=1, kind="stable")
        sims[s : s + len(block)] = np.take_along_axis(top_sims, order, axis=1)
        rows[s : s + len(block)] = np.take_along_axis(top, order, axis=1)
    return sims, rows


def vote(index: KnnIndex, sims: np.ndarray, rows: np.ndarray, k: int, temperature: float) -> np.ndarray:
    """Class probabilities ``(q, n_classes)`` float32 from the first ``k`` neighbours' weighted votes."""
    s, r = sims[:, :k], rows[:, :k]
    w = np.exp((s - s[:, :1]) / temperature)  # shifted by the row's best similarity: no overflow, same ratios
    probs = np.zeros((len(s), index.n_classes), np.float64)
    np.add.at(probs, (np.repeat(np.arange(len(s)), s.shape[1]), index.y[r].ravel()), w.ravel())
    return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


def predict(index: KnnIndex, queries: np.ndarray, k: int, temperature: float = DEFAULT_TEMPERATURE) -> np.ndarray:
    """Class probabilities ``(q, n_classes)`` of one ``k`` and temperature."""
    sims, rows = neighbours(index, queries, k)
    return vote(index, sims, rows, k, temperature)


def sweep(
    index: KnnIndex,
    queries: Sequence[np.ndarray],
    ks: Sequence[int] = DEFAULT_KS,
    temperatures: Sequence[float] = (DEFAULT_TEMPERATURE,),
) -> dict[tuple[int, float], list[np.ndarray]]:
    """Probabilities for every ``(k, temperature)`` on each query set (e.g. ``[val, test]``): the
    neighbours of each set are searched once, for the largest ``k``."""
    found = [neighbours(index, q, max(ks)) for q in queries]
    return {(k, t): [vote(index, s, r, k, t) for s, r in found] for k in ks for t in temperatures}
