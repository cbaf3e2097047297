"""Cosine similarity between pooled vectors: nearest rows of one row, and near-duplicate pairs.

Pairs are found in square blocks of rows, so memory is ``block x block`` floats whatever the cache's
size (the work is still quadratic in rows: about a second per million pairs-of-1280 on one core).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

DEFAULT_BLOCK = 2048
DEFAULT_DUPLICATE_THRESHOLD = 0.995


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` ``(n, c)`` scaled to unit L2 norm, as float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def nearest(unit: np.ndarray, row: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows most similar to ``row`` (itself excluded): ``(rows (k,), cosine (k,))``, best first."""
    sims = unit @ unit[row]
    sims[row] = -np.inf
    k = min(k, len(unit) - 1)
    top = np.argpartition(-sims, k - 1)[:k] if k > 0 else np.zeros(0, dtype=np.int64)
    top = top[np.argsort(-sims[top], kind="stable")]
    return top, sims[top]


@dataclass(frozen=True)
class Pair:
    a: int
    b: int
    cosine: float


def near_duplicates(
    unit: np.ndarray, threshold: float = DEFAULT_DUPLICATE_THRESHOLD, block: int = DEFAULT_BLOCK
) -> Iterator[Pair]:
    """Every pair of rows ``a < b`` whose cosine similarity is at least ``threshold``."""
    n = len(unit)
    for i in range(0, n, block):
        for j in range(i, n, block):
            sims = unit[i : i + block] @ unit[j : j + block].T
            if i == j:
                sims = np.triu(sims, k=1) + np.tril(np.full_like(sims, -np.inf))
            for a, b in zip(*np.nonzero(sims >= threshold), strict=False):
                yield Pair(i + int(a), j + int(b), float(sims[a, b]))
