"""Cosine similarity between pooled vectors: nearest rows of one row, and near-duplicate pairs.

:func:`near_duplicates` compares every pair in square blocks of rows, so memory is ``block x block``
floats whatever the cache's size, but the work is quadratic (10k rows ~1 s, 20k ~3 s, 10^6 hours).
:func:`duplicate_pairs` uses it up to :data:`knn.EXACT_MAX_ROWS` rows and, above, the neighbour index
of :mod:`.knn` (every pair re-scored exactly; see :func:`near_duplicates_indexed`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..cache import FeatureCache, load_listing
from ..errors import FeatcacheError
from . import knn

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


DUPLICATE_NEIGHBOURS = 16  # neighbours looked at per row by the indexed search


def near_duplicates_indexed(
    unit: np.ndarray, threshold: float = DEFAULT_DUPLICATE_THRESHOLD, keep: knn.Keep | None = None
) -> Iterator[Pair]:
    """The pairs of :func:`near_duplicates` found through each row's :data:`DUPLICATE_NEIGHBOURS` nearest
    rows (:func:`knn.nearest_all`, exact cosines). A row whose furthest listed neighbour still reaches
    ``threshold`` may have more duplicates than listed: it is compared with every row exactly. What can
    be missed is a pair the index never offered (near-identical vectors share a list, or sit in
    neighbouring ones, which are searched too; bench/inspect_scale.py measures it)."""
    rows, cos = knn.nearest_all(unit, DUPLICATE_NEIGHBOURS, keep=keep)
    found: dict[tuple[int, int], float] = {}
    for a, j in zip(*np.nonzero(cos >= threshold), strict=True):
        b = int(rows[a, j])
        found[(min(int(a), b), max(int(a), b))] = float(cos[a, j])
    crowded = np.flatnonzero(cos[:, -1] >= threshold)
    for start in range(0, len(crowded), 256):
        q = crowded[start : start + 256]
        sims = unit[q] @ unit.T
        for i, b in zip(*np.nonzero(sims >= threshold), strict=True):
            a = int(q[i])
            if a != b:
                found[(min(a, int(b)), max(a, int(b)))] = float(sims[i, b])
    for (a, b), c in sorted(found.items()):
        yield Pair(a, b, c)


def duplicate_pairs(
    unit: np.ndarray,
    threshold: float = DEFAULT_DUPLICATE_THRESHOLD,
    block: int = DEFAULT_BLOCK,
    keep: knn.Keep | None = None,
) -> Iterator[Pair]:
    """Every near-duplicate pair: exactly up to :data:`knn.EXACT_MAX_ROWS` rows, through the index above
    (kept in the cache with ``keep``: :class:`knn.Keep`)."""
    if len(unit) <= knn.EXACT_MAX_ROWS:
        return near_duplicates(unit, threshold, block)
    return near_duplicates_indexed(unit, threshold, keep)


def recorded_content_hashes(cache: FeatureCache, index: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """The sha256 of each row's source file (rows at listing positions ``index``), as the extractor
    recorded them with ``checksum=True`` (``--checksum``) in ``listing.npz``: ``(hashes (n,) str, None)``,
    ``""`` where a file could not be read; or ``(None, why)`` when the cache records none."""
    try:
        listing = load_listing(cache.path, cache.manifest)
    except FeatcacheError as exc:
        return None, f"its listing is not usable ({exc})"
    if listing is None or "sha256" not in listing:
        return None, "no content hashes recorded (extract with --checksum to list byte-identical files first)"
    return np.asarray(listing["sha256"]).astype(str)[index], None


def content_groups(hashes: np.ndarray) -> list[np.ndarray]:
    """Positions of rows whose source files are byte-identical: groups of two or more equal non-empty
    ``hashes``, each sorted, in order of their first row. One sort: free beside any vector search."""
    hashes = np.asarray(hashes).astype(str)
    order = np.argsort(hashes, kind="stable")
    sorted_hashes = hashes[order]
    cuts = np.flatnonzero(sorted_hashes[1:] != sorted_hashes[:-1]) + 1
    groups = [g for g in np.split(order, cuts) if len(g) > 1 and hashes[g[0]] != ""]
    return sorted((np.sort(g) for g in groups), key=lambda g: int(g[0]))
