"""The k nearest rows of every row by cosine similarity of pooled vectors, in bounded memory and, past
a few tens of thousands of rows, in less than quadratic time.

One search serves every inspection command that needs each row's neighbours (outliers, and
near-duplicates past :data:`EXACT_MAX_ROWS` rows).

- Up to :data:`EXACT_MAX_ROWS` rows: every pair, on the full unit vectors, ``block`` query rows at a
  time (memory ``block x n`` float32; 10k rows ~1 s on these 2 cores).
- Above: an inverted-file index. The unit vectors are projected on :data:`REDUCED_DIMS` axes (their mean
  direction and top principal components: cosine between pooled vectors is dominated by the mean, so
  it is kept exactly) and scaled back to unit norm (candidates are ranked by cosine), clustered by
  k-means into about ``4 sqrt(n)`` lists, and each list's rows are compared only with the rows of the
  :data:`PROBES` lists whose centres are nearest its own. Each row's
  best :data:`MIN_CANDIDATES` candidates are then re-scored on the full unit vectors, so every
  similarity returned is exact; what can be missed is a true neighbour the index never offered
  (bench/inspect_scale.py measures that recall against the exact search). The work is about
  ``n x (n / lists) x PROBES`` reduced dot products instead of ``n^2`` full ones.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

EXACT_MAX_ROWS = 20_000  # at or below: every pair on the full vectors
REDUCED_DIMS = 64
MIN_CANDIDATES = 32  # per row, re-scored exactly; at least 4 x k
PROBES = 12  # lists searched for each list's rows
LISTS_PER_SQRT_ROW = 4  # lists ~ 4 sqrt(n): ~250 rows a list at 10^6 rows
KMEANS_ROUNDS = 8
KMEANS_FIT_ROWS = 100_000
BLOCK_BYTES = 256 << 20  # similarities held at once (block x n float32) in the exact search
# nearest_of compares its queries with every row on the full vectors while that costs at most this many
# multiply-adds (a few seconds here); beyond, on the reduced vectors with HEAD_CANDIDATES re-scored.
EXACT_BUDGET = 2e11
HEAD_CANDIDATES = 256


def _block_rows(n: int) -> int:
    return int(max(16, min(4096, BLOCK_BYTES // (4 * max(n, 1)))))


def _top(sims: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``m`` largest entries of ``sims`` ``(b, n)``: ``(columns (b, m), values (b, m))``, best first."""
    m = min(m, sims.shape[1])
    idx = np.argpartition(-sims, m - 1, axis=1)[:, :m]
    vals = np.take_along_axis(sims, idx, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(vals, order, axis=1)


def reduced_unit(unit: np.ndarray, seed: int = 0) -> np.ndarray:
    """``unit`` on its :func:`reduction` axes, each row scaled back to unit norm: candidates are ranked by
    cosine in the reduced space (by dot product, rows whose projection is long would outrank a row's own
    near-copy)."""
    reduced = unit @ reduction(unit, seed=seed)
    norm = np.linalg.norm(reduced, axis=1, keepdims=True)
    return np.ascontiguousarray(reduced / np.where(norm > 0, norm, 1.0), dtype=np.float32)


def reduction(unit: np.ndarray, dims: int = REDUCED_DIMS, seed: int = 0, fit_rows: int = 20_000) -> np.ndarray:
    """Orthonormal axes ``(c, dims)`` float32 for ``unit`` ``(n, c)``: the mean direction first, then the
    top principal directions of what is left. ``unit @ axes`` keeps the dot products that matter."""
    rng = np.random.default_rng(seed)
    fit = unit if len(unit) <= fit_rows else unit[np.sort(rng.choice(len(unit), fit_rows, replace=False))]
    mean = fit.mean(axis=0)
    mean /= max(float(np.linalg.norm(mean)), 1e-12)
    rest = fit - np.outer(fit @ mean, mean)
    cov = (rest.T @ rest).astype(np.float64)
    values, vectors = np.linalg.eigh(cov)
    top = vectors[:, np.argsort(values)[::-1][: dims - 1]]
    axes, _ = np.linalg.qr(np.column_stack([mean, top]))
    return axes.astype(np.float32)


def _kmeans(x: np.ndarray, lists: int, seed: int) -> np.ndarray:
    """``lists`` centres ``(lists, d)`` of the rows of ``x`` (Lloyd's rounds from a random sample)."""
    rng = np.random.default_rng(seed)
    fit = x if len(x) <= KMEANS_FIT_ROWS else x[rng.choice(len(x), KMEANS_FIT_ROWS, replace=False)]
    centres = fit[rng.choice(len(fit), lists, replace=False)].copy()
    for _ in range(KMEANS_ROUNDS):
        assign = _assign(fit, centres)
        sums = np.zeros_like(centres)
        np.add.at(sums, assign, fit)
        counts = np.bincount(assign, minlength=lists)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return centres


def _assign(x: np.ndarray, centres: np.ndarray, block: int = 65_536) -> np.ndarray:
    """The nearest centre (Euclidean) of each row of ``x``."""
    half = 0.5 * (centres**2).sum(axis=1)
    out = np.empty(len(x), np.int64)
    for start in range(0, len(x), block):
        out[start : start + block] = np.argmax(x[start : start + block] @ centres.T - half, axis=1)
    return out


def _rescore(unit: np.ndarray, queries: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of each query's candidates ``(q, m)`` by exact cosine on ``unit`` (self excluded)."""
    vals = np.einsum("qc,qmc->qm", unit[queries], unit[cand])
    vals[cand == queries[:, None]] = -np.inf
    order = np.argsort(-vals, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(cand, order, axis=1), np.take_along_axis(vals, order, axis=1)


def _exact(unit: np.ndarray, k: int, step: Callable[[int], None] | None) -> tuple[np.ndarray, np.ndarray]:
    n = len(unit)
    rows, cos = np.empty((n, k), np.int64), np.empty((n, k), np.float32)
    block = _block_rows(n)
    for start in range(0, n, block):
        stop = min(n, start + block)
        sims = unit[start:stop] @ unit.T
        sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # never one's own neighbour
        rows[start:stop], cos[start:stop] = _top(sims, k)
        if step is not None:
            step(stop - start)
    return rows, cos


def _indexed(unit: np.ndarray, k: int, seed: int, step: Callable[[int], None] | None) -> tuple[np.ndarray, np.ndarray]:
    n = len(unit)
    reduced = reduced_unit(unit, seed)
    lists = int(min(n // 8, max(16, LISTS_PER_SQRT_ROW * np.sqrt(n))))
    centres = _kmeans(reduced, lists, seed)
    assign = _assign(reduced, centres)
    order = np.argsort(assign, kind="stable")
    bounds = np.searchsorted(assign[order], np.arange(lists + 1))
    members = [order[bounds[i] : bounds[i + 1]] for i in range(lists)]
    near_lists = _top(centres @ centres.T - 0.5 * (centres**2).sum(axis=1)[None, :], min(PROBES, lists))[0]
    m = max(MIN_CANDIDATES, 4 * k) + 1
    rows, cos = np.empty((n, k), np.int64), np.empty((n, k), np.float32)
    for i in range(lists):
        queries = members[i]
        if not len(queries):
            continue
        cand = np.concatenate([members[j] for j in near_lists[i]])
        sims = reduced[queries] @ reduced[cand].T
        top, _ = _top(sims, min(m, len(cand)))
        found = cand[top]
        if found.shape[1] < k + 1:  # a tiny neighbourhood: pad with the query itself (excluded by _rescore)
            found = np.pad(found, ((0, 0), (0, k + 1 - found.shape[1])), mode="edge")
        rows[queries], cos[queries] = _rescore(unit, queries, found, k)
        if step is not None:
            step(len(queries))
    return rows, cos


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
    missing neighbours are row -1 with cosine NaN (and a row offered fewer than ``k`` others by the
    index repeats its last one, never itself: cosine -inf marks the rest).

    ``exact``: compare every pair on the full vectors (default: when ``n <= EXACT_MAX_ROWS``); else the
    inverted-file index with exact re-scoring. ``step(rows)`` is called as rows are done (a progress bar)."""
    unit = np.ascontiguousarray(unit, dtype=np.float32)
    n = len(unit)
    k_eff = max(0, min(k, n - 1))
    rows = np.full((n, k), -1, np.int64)
    cos = np.full((n, k), np.nan, np.float32)
    if k_eff == 0:
        return rows, cos
    exact = n <= EXACT_MAX_ROWS if exact is None else exact
    if exact or unit.shape[1] <= REDUCED_DIMS or n < 64:
        rows[:, :k_eff], cos[:, :k_eff] = _exact(unit, k_eff, step)
    else:
        rows[:, :k_eff], cos[:, :k_eff] = _indexed(unit, k_eff, seed, step)
    lost = ~np.isfinite(cos) & (rows >= 0)
    rows[lost], cos[lost] = -1, np.nan
    return rows, cos


def nearest_of(unit: np.ndarray, queries: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest other rows of ``unit`` ``(n, c)`` for the rows at positions ``queries`` ``(q,)``,
    compared with every row: on the full vectors while that costs at most :data:`EXACT_BUDGET`
    multiply-adds, else on the reduced vectors with the best :data:`HEAD_CANDIDATES` re-scored exactly.
    ``(rows (q, k), cosine (q, k))`` as :func:`nearest_all`. Used to search the head of a ranking again
    without the index's lists."""
    unit = np.ascontiguousarray(unit, dtype=np.float32)
    queries = np.asarray(queries, dtype=np.int64)
    n = len(unit)
    k_eff = max(0, min(k, n - 1))
    rows = np.full((len(queries), k), -1, np.int64)
    cos = np.full((len(queries), k), np.nan, np.float32)
    if k_eff == 0:
        return rows, cos
    small = float(len(queries)) * n * unit.shape[1] <= EXACT_BUDGET or unit.shape[1] <= REDUCED_DIMS
    search = unit if small else reduced_unit(unit, seed)
    m = min(n, k_eff + 1 if small else max(HEAD_CANDIDATES, 4 * k_eff) + 1)
    block = _block_rows(n)
    for start in range(0, len(queries), block):
        q = queries[start : start + block]
        sims = search[q] @ search.T
        sims[np.arange(len(q)), q] = -np.inf
        cand, _ = _top(sims, m)
        rows[start : start + len(q), :k_eff], cos[start : start + len(q), :k_eff] = _rescore(unit, q, cand, k_eff)
    return rows, cos


__all__ = ["EXACT_MAX_ROWS", "REDUCED_DIMS", "nearest_all", "nearest_of", "reduction"]
