"""The k nearest rows of every row by cosine similarity of pooled vectors, in bounded memory.

One search serves every command that needs each row's neighbours (outliers today). It compares every
row with every other in blocks of ``block`` query rows, so memory is ``block x n`` float32 similarities
whatever the cache's size; the work is quadratic in rows. Above :data:`EXACT_MAX_ROWS` rows the
candidates are found on the vectors' top :data:`REDUCED_DIMS` principal components (1280 -> 64 dims: ~20x
less work), ``candidates`` of them per row, and every candidate is re-scored on the full unit vectors,
so the similarities returned are always exact; only a true neighbour that the reduced search ranked
below ``candidates`` others can be missed (bench/outliers.py measures that recall against the exact
search).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .suspects import pca_basis, project

EXACT_MAX_ROWS = 20_000  # at or below: every pair on the full vectors (10k rows ~1 s on these 2 cores)
REDUCED_DIMS = 64
MIN_CANDIDATES = 32  # per row, re-scored exactly; at least 4 x k
BLOCK_BYTES = 256 << 20  # similarities held at once (block x n float32)


def _block_rows(n: int) -> int:
    return int(max(16, min(4096, BLOCK_BYTES // (4 * max(n, 1)))))


def _top(sims: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``m`` largest entries of ``sims`` ``(b, n)``: ``(columns (b, m), values (b, m))``, best first."""
    m = min(m, sims.shape[1])
    idx = np.argpartition(-sims, m - 1, axis=1)[:, :m]
    vals = np.take_along_axis(sims, idx, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(vals, order, axis=1)


def nearest_all(
    unit: np.ndarray,
    k: int,
    *,
    exact: bool | None = None,
    seed: int = 0,
    step: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``unit`` ``(n, c)`` (unit-norm float32 rows), its ``k`` most similar other rows:
    ``(rows (n, k) int64, cosine (n, k) float32)``, most similar first. With fewer than ``k + 1`` rows,
    missing neighbours are row -1 with cosine NaN.

    ``exact``: compare on the full vectors (default: when ``n <= EXACT_MAX_ROWS``); else find candidates
    on :data:`REDUCED_DIMS` principal components and re-score them exactly. ``step(rows)`` is called
    after each block (a progress bar)."""
    unit = np.ascontiguousarray(unit, dtype=np.float32)
    n = len(unit)
    k_eff = max(0, min(k, n - 1))
    rows = np.full((n, k), -1, np.int64)
    cos = np.full((n, k), np.nan, np.float32)
    if k_eff == 0:
        return rows, cos
    exact = n <= EXACT_MAX_ROWS if exact is None else exact
    if exact or unit.shape[1] <= REDUCED_DIMS:
        search, m = unit, k_eff + 1
    else:
        mean, axes = pca_basis(unit, REDUCED_DIMS, seed)
        search = np.ascontiguousarray(project(unit, mean, axes))
        m = min(n, max(MIN_CANDIDATES, 4 * k_eff) + 1)
    block = _block_rows(n)
    for start in range(0, n, block):
        stop = min(n, start + block)
        sims = search[start:stop] @ search.T
        sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # never one's own neighbour
        cand, vals = _top(sims, m)
        if search is not unit:  # re-score the candidates on the full vectors
            vals = np.einsum("bc,bmc->bm", unit[start:stop], unit[cand])
            vals[cand == np.arange(start, stop)[:, None]] = -np.inf
            order = np.argsort(-vals, axis=1, kind="stable")
            cand, vals = np.take_along_axis(cand, order, axis=1), np.take_along_axis(vals, order, axis=1)
        rows[start:stop, :k_eff] = cand[:, :k_eff]
        cos[start:stop, :k_eff] = vals[:, :k_eff]
        if step is not None:
            step(stop - start)
    return rows, cos


def nearest_of(unit: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact ``k`` nearest other rows of ``unit`` ``(n, c)`` for the rows at positions ``queries``
    ``(q,)``, on the full vectors: ``(rows (q, k) int64, cosine (q, k) float32)``, as :func:`nearest_all`
    (used to make the head of a ranking exact after a reduced search)."""
    unit = np.ascontiguousarray(unit, dtype=np.float32)
    queries = np.asarray(queries, dtype=np.int64)
    k_eff = max(0, min(k, len(unit) - 1))
    rows = np.full((len(queries), k), -1, np.int64)
    cos = np.full((len(queries), k), np.nan, np.float32)
    if k_eff == 0:
        return rows, cos
    block = _block_rows(len(unit))
    for start in range(0, len(queries), block):
        q = queries[start : start + block]
        sims = unit[q] @ unit.T
        sims[np.arange(len(q)), q] = -np.inf
        cand, vals = _top(sims, k_eff)
        rows[start : start + len(q), :k_eff] = cand
        cos[start : start + len(q), :k_eff] = vals
    return rows, cos


__all__ = ["EXACT_MAX_ROWS", "REDUCED_DIMS", "nearest_all", "nearest_of"]
