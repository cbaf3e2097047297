"""Outliers: the rows unlike any other (placeholders, blank frames, corrupt crops, another domain).

Label-noise scores (:mod:`.suspects`) cannot see them: a "this image is not available" placeholder
saved under a class name is no more likely to be one class than another. Its pooled vector, though,
is far from every other row's. The score of a row is its **isolation**::

    isolation = 1 - mean cosine similarity of its pooled vector to its k nearest other rows

with ``k = DEFAULT_K = 5`` (a handful: a small cluster of ``k`` near-copies of one odd image is not
an outlier; one odd image among thousands is). 0 means ``k`` identical rows exist; 1 means the nearest
rows are orthogonal; it can reach 2. On the ants/bees photographs the placeholder scores 0.66 and ranks
first of 398, the next row 0.58 (docs/inspect.md). Neighbours are searched among every row of the
cache, whatever ``split`` asks to rank: a test image like a train image is not an outlier.

A row whose vector holds a non-finite value, or is constant (every component equal, e.g. all zero:
it has no direction, so cosine is undefined) is an outlier by definition: isolation ``inf``, with the
reason. Such rows are left out of every other row's neighbours.

``per_class=True`` also scores each labelled row against the rows of its own class (``class_isolation``)
and ranks by that: an image unlike the rest of its class (but maybe like another class) comes first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from tqdm import tqdm

from ..cache import FeatureCache, PooledRows, split_names
from ..cache.schema import SPLITS
from ..errors import FeatcacheError
from . import knn
from .similarity import normalize

DEFAULT_K = 5
# After a reduced (approximate) search, the most isolated rows are searched again exactly: this many at
# least, or this fraction of the rows. The head of the ranking is then exact.
EXACT_HEAD_ROWS = 200
EXACT_HEAD_FRACTION = 0.002
NON_FINITE = "non-finite vector"
CONSTANT = "constant vector"


def degenerate(pooled: np.ndarray) -> list[str | None]:
    """Per row of ``pooled`` ``(n, c)``: why its vector cannot be compared (:data:`NON_FINITE`,
    :data:`CONSTANT`), or None."""
    finite = np.isfinite(pooled).all(axis=1)
    constant = finite & (np.ptp(np.where(finite[:, None], pooled, 0), axis=1) == 0)
    return [NON_FINITE if not f else CONSTANT if c else None for f, c in zip(finite, constant, strict=True)]


def isolation(
    pooled: np.ndarray,
    k: int = DEFAULT_K,
    *,
    exact: bool | None = None,
    progress: bool = False,
    keep: knn.Keep | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Isolation of every row of ``pooled`` ``(n, c)`` among those rows: ``(isolation (n,) float64,
    nearest (n,) int64)`` — the score above and the position of the most similar other row (-1 when
    there is none). Degenerate rows score ``inf``; a row with fewer than ``k`` comparable others is
    scored on those it has (NaN with none). ``keep``: the cache's kept neighbour index (used when every
    row is comparable, as the index covers every row)."""
    if k < 1:
        raise FeatcacheError(f"k={k}: expected at least one neighbour")
    pooled = np.asarray(pooled, dtype=np.float32)
    n = len(pooled)
    k = min(k, max(n - 1, 1))  # more neighbours than other rows: the same score, without (n, k) arrays of -1
    score = np.full(n, np.inf)
    nearest = np.full(n, -1, np.int64)
    ok = np.flatnonzero([r is None for r in degenerate(pooled)])
    if not len(ok):
        return score, nearest
    unit = pooled[ok] if len(ok) < n else pooled.copy()  # one copy, scaled in place (5 GB at 10^6 rows)
    for start in range(0, len(unit), 65_536):
        unit[start : start + 65_536] = normalize(unit[start : start + 65_536])
    with tqdm(total=len(ok), unit="row", desc="neighbours", disable=not progress, leave=False) as bar:
        keep = keep if len(ok) == n else None
        rows, cos = knn.nearest_all(unit, k, exact=exact, step=bar.update, keep=keep)
    reduced = not (len(ok) <= knn.EXACT_MAX_ROWS if exact is None else exact)
    if reduced:  # the head of the ranking, searched again on the full vectors
        head = max(EXACT_HEAD_ROWS, int(EXACT_HEAD_FRACTION * len(ok)))
        first = np.argsort(-_mean_cosine_gap(rows, cos), kind="stable")[:head]
        rows[first], cos[first] = knn.nearest_of(unit, first, k)
    score[ok] = _mean_cosine_gap(rows, cos)
    nearest[ok] = np.where(rows[:, 0] >= 0, ok[np.maximum(rows[:, 0], 0)], -1)
    return score, nearest


def _mean_cosine_gap(rows: np.ndarray, cos: np.ndarray) -> np.ndarray:
    """``1 - mean cosine`` over each row's found neighbours ``(n, k)`` (-1 rows ignored; NaN with none)."""
    found = rows >= 0
    total = np.where(found, cos, 0).astype(np.float64).sum(axis=1)
    count = found.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, 1.0 - total / count, np.nan)


def _class_isolation(pooled: np.ndarray, label: np.ndarray, k: int, exact: bool | None) -> np.ndarray:
    """Each labelled row's isolation among the rows of its own class; NaN for unlabelled rows."""
    out = np.full(len(pooled), np.nan)
    for c in np.unique(label[label >= 0]):
        members = np.flatnonzero(label == c)
        out[members] = isolation(pooled[members], k, exact=exact)[0]
    return out


def find_outliers(
    cache: FeatureCache,
    *,
    k: int = DEFAULT_K,
    split: str | None = None,
    per_class: bool = False,
    exact: bool | None = None,
    progress: bool = False,
    rows: PooledRows | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """The rows of ``cache`` (of ``split``: train, val or test; all when None) ranked most isolated
    first, as JSON-ready dicts: ``rank, id, index, split, label, isolation, nearest_id, reason`` (and
    ``class_isolation`` with ``per_class``, which then sets the order). ``rows``: the cache's pooled rows
    when already loaded. ``exact``: see :func:`featcache.shared.inspection.knn.nearest_all`."""
    if split is not None and split not in SPLITS:
        raise FeatcacheError(f"split={split!r}: expected one of {', '.join(SPLITS)} (or none for every row)")
    keep = knn.Keep.of(cache) if rows is None else None  # the cache's every row: its kept index applies
    rows = cache.load_pooled() if rows is None else rows
    score, nearest = isolation(rows.pooled, k, exact=exact, progress=progress, keep=keep)
    described = keep.describe() if keep is not None else None
    if described and log is not None:
        log(described)
    reasons = degenerate(rows.pooled)
    names = np.asarray(split_names(rows.split))
    chosen = np.flatnonzero(names == split) if split is not None else np.arange(len(rows))
    by_class = _class_isolation(rows.pooled, rows.label, k, exact) if per_class else None
    key = by_class if by_class is not None else score
    # most isolated first; degenerate rows (inf) lead; NaN (no comparable neighbour) last
    order = chosen[np.argsort(-np.nan_to_num(key[chosen], nan=-np.inf), kind="stable")]
    classes = cache.classes
    out = []
    for rank, i in enumerate(order.tolist(), 1):
        label = int(rows.label[i])
        d: dict[str, Any] = {
            "rank": rank,
            "id": str(rows.id[i]),
            "index": int(rows.index[i]),
            "split": str(names[i]),
            "label": classes[label] if 0 <= label < len(classes) else None,
            "isolation": float(score[i]) if np.isfinite(score[i]) else None,
            "nearest_id": str(rows.id[nearest[i]]) if nearest[i] >= 0 else None,
            "reason": reasons[i],
        }
        if by_class is not None:
            d["class_isolation"] = float(by_class[i]) if np.isfinite(by_class[i]) else None
        out.append(d)
    return out


__all__ = ["CONSTANT", "DEFAULT_K", "NON_FINITE", "degenerate", "find_outliers", "isolation"]
