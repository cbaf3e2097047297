"""The k nearest rows of every row by cosine similarity of pooled vectors, in bounded memory and, past
a few tens of thousands of rows, in less than quadratic time.

One search serves every inspection command that needs each row's neighbours (outliers, and
near-duplicates past :data:`EXACT_MAX_ROWS` rows).

- Up to :data:`EXACT_MAX_ROWS` rows: every pair, on the full unit vectors, ``block`` query rows at a
  time (memory ``block x n`` float32; 10k rows ~1 s on these 2 cores).
- Above: an inverted-file index. The unit vectors are projected on :data:`REDUCED_DIMS` axes (their mean
  direction and top principal components: cosine between pooled vectors is dominated by the mean, so
  it is kept exactly) and scaled back to unit norm, and clustered by k-means into about ``4 sqrt(n)``
  lists; each list's rows are then compared, on the full unit vectors (one matrix product per list),
  with the rows of the :data:`PROBES` lists whose centres are nearest its own. Every similarity
  returned is exact; what can be missed is a true neighbour in a list not probed (bench/inspect_scale.py
  measures that recall against the exact search). The work is about ``n x (n / lists) x PROBES`` full
  dot products instead of ``n^2``: ~3 x 10^12 multiply-adds at 10^6 rows, as BLAS matrix products.
  (Candidates were first ranked on the reduced vectors and the best re-scored: fewer multiply-adds,
  but gathering every row's candidates from memory cost more than the products it saved.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cache import FeatureCache
from ..cache import neighbours as kept

EXACT_MAX_ROWS = 20_000  # at or below: every pair on the full vectors
REDUCED_DIMS = 64
PROBES = 12  # lists searched for each list's rows
LISTS_PER_SQRT_ROW = 4  # lists ~ 4 sqrt(n): ~250 rows a list at 10^6 rows
KMEANS_ROUNDS = 8
KMEANS_FIT_ROWS = 100_000
BLOCK_BYTES = 256 << 20  # similarities held at once (block x n float32) in the exact search
# nearest_of compares its queries with every row on the full vectors while that costs at most this many
# multiply-adds (a few seconds here); beyond, on the reduced vectors with HEAD_CANDIDATES re-scored.
EXACT_BUDGET = 2e11
HEAD_CANDIDATES = 256
GRAPH_K = 16  # neighbours per row kept in the cache's index (what near-duplicates look at; outliers use 5)


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
    return _reduce(unit, reduction(unit, seed=seed))


def _reduce(unit: np.ndarray, axes: np.ndarray, block: int = 65_536) -> np.ndarray:
    """``unit @ axes``, each row scaled to unit norm, in blocks (no ``(n, c)`` temporary)."""
    out = np.empty((len(unit), axes.shape[1]), np.float32)
    for start in range(0, len(unit), block):
        r = unit[start : start + block] @ axes
        norm = np.linalg.norm(r, axis=1, keepdims=True)
        out[start : start + block] = r / np.where(norm > 0, norm, 1.0)
    return out


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


def _members(assign: np.ndarray, lists: int) -> list[np.ndarray]:
    order = np.argsort(assign, kind="stable")
    bounds = np.searchsorted(assign[order], np.arange(lists + 1))
    return [order[bounds[i] : bounds[i + 1]] for i in range(lists)]


def _near_lists(centres: np.ndarray) -> np.ndarray:
    """Each list's :data:`PROBES` nearest lists (itself first), by distance between centres."""
    return _top(centres @ centres.T - 0.5 * (centres**2).sum(axis=1)[None, :], min(PROBES, len(centres)))[0]


def _search(
    unit: np.ndarray,
    members: list[np.ndarray],
    near_lists: np.ndarray,
    k: int,
    queries: np.ndarray,
    candidates: np.ndarray,
    step: Callable[[int], None] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best ``k`` candidates of each query row: the rows with ``queries`` True are compared with the
    rows with ``candidates`` True in the :data:`PROBES` lists nearest their own, on the full vectors (one
    matrix product per list: exact cosines). ``(query positions (q,), rows (q, k), cosine (q, k))``; a
    query offered fewer than ``k`` others repeats its last one with cosine -inf."""
    done_q, done_rows, done_cos = [], [], []
    for i, own in enumerate(members):
        q = own[queries[own]]
        if not len(q):
            continue
        cand = np.concatenate([members[j] for j in near_lists[i]])
        cand = cand[candidates[cand]]
        if not len(cand):
            cand = q[:1]
        sims = unit[q] @ unit[cand].T
        sims[np.equal.outer(q, cand)] = -np.inf  # never one's own neighbour
        top, vals = _top(sims, min(k, len(cand)))
        rows = cand[top]
        if rows.shape[1] < k:  # a tiny neighbourhood: the last one repeated, marked -inf
            pad = k - rows.shape[1]
            rows = np.pad(rows, ((0, 0), (0, pad)), mode="edge")
            vals = np.pad(vals, ((0, 0), (0, pad)), constant_values=-np.inf)
        done_q.append(q)
        done_rows.append(rows)
        done_cos.append(vals.astype(np.float32, copy=False))
        if step is not None:
            step(len(q))
    if not done_q:
        return np.zeros(0, np.int64), np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    return np.concatenate(done_q), np.concatenate(done_rows), np.concatenate(done_cos)


def build(
    unit: np.ndarray, k: int, seed: int = 0, step: Callable[[int], None] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The inverted-file index of ``unit`` and every row's ``k`` nearest other rows through it:
    ``(axes (c, REDUCED_DIMS), centres (lists, REDUCED_DIMS), assign (n,), rows (n, k), cos (n, k))``."""
    n = len(unit)
    axes = reduction(unit, seed=seed)
    reduced = _reduce(unit, axes)
    lists = int(min(n // 8, max(16, LISTS_PER_SQRT_ROW * np.sqrt(n))))
    centres = _kmeans(reduced, lists, seed)
    assign = _assign(reduced, centres)
    everyone = np.ones(n, bool)
    q, r, c = _search(unit, _members(assign, lists), _near_lists(centres), k, everyone, everyone, step)
    rows, cos = np.empty((n, k), np.int64), np.empty((n, k), np.float32)
    rows[q], cos[q] = r, c
    return axes, centres, assign, rows, cos


def extend(
    unit: np.ndarray,
    axes: np.ndarray,
    centres: np.ndarray,
    assign: np.ndarray,
    rows: np.ndarray,
    cos: np.ndarray,
    step: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An index of the first ``len(assign)`` rows of ``unit`` extended to all of them, without rebuilding:
    the new rows go to their nearest lists and are searched among every row; each old row's list of
    ``k`` is merged with its best new candidates (compared only with the new rows of the lists it
    probes). Work proportional to the new rows. Returns ``(assign, rows, cos)`` of every row."""
    n0, n, k = len(assign), len(unit), rows.shape[1]
    reduced = _reduce(unit, axes)
    assign = np.concatenate([assign, _assign(reduced[n0:], centres)])
    members, near = _members(assign, len(centres)), _near_lists(centres)
    new = np.zeros(n, bool)
    new[n0:] = True
    everyone = np.ones(n, bool)
    out_rows, out_cos = np.empty((n, k), np.int64), np.empty((n, k), np.float32)
    out_rows[:n0], out_cos[:n0] = rows, cos
    q, r, c = _search(unit, members, near, k, new, everyone, step)
    out_rows[q], out_cos[q] = r, c
    q, r, c = _search(unit, members, near, k, ~new, new, None)  # old rows against the new ones only
    if len(q):
        both_rows = np.concatenate([out_rows[q], r], axis=1)
        both_cos = np.concatenate([out_cos[q], c], axis=1)
        both_cos = np.where(np.isfinite(both_cos), both_cos, -np.inf)
        order = np.argsort(-both_cos, axis=1, kind="stable")[:, :k]
        out_rows[q] = np.take_along_axis(both_rows, order, axis=1)
        out_cos[q] = np.take_along_axis(both_cos, order, axis=1)
    return assign, out_rows, out_cos


def _indexed(unit: np.ndarray, k: int, seed: int, step: Callable[[int], None] | None) -> tuple[np.ndarray, np.ndarray]:
    return build(unit, k, seed, step)[3:]


@dataclass
class Keep:
    """Where the neighbour index of a cache's rows is kept (``CACHE/neighbours.npz``, see
    :mod:`featcache.shared.cache._neighbours`), and what :func:`nearest_all` did with it last: ``action`` is
    ``"reused"``, ``"extended"`` or ``"built"`` (``saved``: whether it was written)."""

    cache_dir: Path
    key: kept.Key
    rows_of: dict[int, int]
    action: str | None = None
    saved: bool = False
    notes: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, cache: FeatureCache) -> Keep:
        """For every live row of ``cache`` in index order (the rows of ``load_pooled``)."""
        m = cache.manifest
        dead = np.asarray(sorted(m.dead), dtype=np.int64)
        live = [
            s.rows - int(np.searchsorted(dead, s.first_index + s.num_inputs) - np.searchsorted(dead, s.first_index))
            for s in m.shards
        ]
        return cls(cache.path, kept.Key.of(m), {k: int(v) for k, v in enumerate(np.cumsum([0, *live]))})

    def graph(
        self, unit: np.ndarray, k: int, seed: int, step: Callable[[int], None] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every row's ``k`` nearest other rows through the kept index: reused when current, extended
        when the cache only gained shards since (at most doubling its rows), else built and kept."""
        n = len(unit)
        if n != self.rows_of[len(self.key.shards)]:  # not the cache's rows: searched without the kept index
            return _indexed(unit, k, seed, step)
        old = kept.load(self.cache_dir, unit.shape[1], self.rows_of)
        wide = max(GRAPH_K, k)
        if old is not None and old.rows.shape[1] >= k and old.key.dead == self.key.dead:
            s = len(old.key.shards)
            if old.key.shards == self.key.shards:
                rows, cos = _checked(unit, old.rows)
                self.action = "reused"
                return rows[:, :k], cos[:, :k]
            n0 = len(old.rows)
            if s < len(self.key.shards) and old.key.shards == self.key.shards[:s] and n - n0 <= n0:
                rows, cos = _checked(unit[:n0], old.rows)
                assign, rows, cos = extend(unit, old.axes, old.centres, old.assign, rows, cos, step)
                self._save(kept.Stored(self.key, old.axes, old.centres, assign, rows, cos), "extended")
                return rows[:, :k], cos[:, :k]
        axes, centres, assign, rows, cos = build(unit, wide, seed, step)
        self._save(kept.Stored(self.key, axes, centres, assign, rows, cos), "built")
        return rows[:, :k], cos[:, :k]

    def describe(self) -> str | None:
        """One line for a command's standard error: what was done with the kept index, or None."""
        if self.action is None:
            return None
        where = kept.path_of(self.cache_dir)
        if self.action == "reused":
            return f"neighbour index {where}: current, reused"
        return f"neighbour index {self.action}" + (
            f" and kept in {where}" if self.saved else " (the cache is not writable: not kept)"
        )

    def _save(self, stored: kept.Stored, action: str) -> None:
        self.action = action
        self.saved = kept.save(self.cache_dir, stored)


def _checked(unit: np.ndarray, rows: np.ndarray, block: int = 16_384) -> tuple[np.ndarray, np.ndarray]:
    """Kept neighbour lists ``rows`` (from a file: row numbers in range, nothing more is taken on trust)
    with their cosines computed from ``unit``, each list sorted again, best first; a row listed as its
    own neighbour or twice scores -inf (dropped by the caller)."""
    rows = rows.copy()
    cos = np.empty(rows.shape, np.float32)
    for start in range(0, len(rows), block):
        r = rows[start : start + block]
        c = np.einsum("qc,qmc->qm", unit[start : start + len(r)], unit[np.maximum(r, 0)])
        own = r == np.arange(start, start + len(r))[:, None]
        repeated = np.zeros(r.shape, bool)
        order = np.argsort(r, axis=1, kind="stable")
        ranked = np.take_along_axis(r, order, axis=1)
        dup = np.zeros(r.shape, bool)
        dup[:, 1:] = ranked[:, 1:] == ranked[:, :-1]
        np.put_along_axis(repeated, order, dup, axis=1)
        c[(r < 0) | own | repeated] = -np.inf
        best = np.argsort(-c, axis=1, kind="stable")
        rows[start : start + len(r)] = np.take_along_axis(r, best, axis=1)
        cos[start : start + len(r)] = np.take_along_axis(c, best, axis=1)
    return rows, cos


def nearest_all(
    unit: np.ndarray,
    k: int,
    *,
    exact: bool | None = None,
    seed: int = 0,
    step: Callable[[int], None] | None = None,
    keep: Keep | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``unit`` ``(n, c)`` (unit-norm float32 rows), its ``k`` most similar other rows:
    ``(rows (n, k) int64, cosine (n, k) float32)``, most similar first. With fewer than ``k + 1`` rows,
    missing neighbours are row -1 with cosine NaN (and a row offered fewer than ``k`` others by the
    index repeats its last one, never itself: cosine -inf marks the rest).

    ``exact``: compare every pair on the full vectors (default: when ``n <= EXACT_MAX_ROWS``); else the
    inverted-file index with exact re-scoring. ``step(rows)`` is called as rows are done (a progress bar).
    ``keep``: where the index of these rows (a cache's, every live row in index order) is kept, reused
    and extended (:class:`Keep`); only the index's search uses it."""
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
    elif keep is not None:
        rows[:, :k_eff], cos[:, :k_eff] = keep.graph(unit, k_eff, seed, step)
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


__all__ = ["EXACT_MAX_ROWS", "REDUCED_DIMS", "Keep", "build", "extend", "nearest_all", "nearest_of", "reduction"]
