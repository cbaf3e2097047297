"""Inspection at scale: near-duplicates (with leaks) and outliers, the neighbour index beside the exact search.

Synthetic pooled vectors like MobileNetV2's (non-negative, sparse-ish, 1280-d) around 200 cluster centres,
with planted rows: ``--pairs`` near-duplicate pairs (a row and a copy with 0.3% noise, cosine ~0.9999;
every tenth pair straddles train and test: a leak) and ``--planted`` outliers far from every centre. For
each size the script runs what ``featcache-inspect neighbours --duplicates`` and ``featcache-inspect
outliers`` run (:func:`similarity.duplicate_pairs`, :func:`outliers.isolation`: exact up to 20,000 rows,
else the inverted-file index of shared/inspection/knn.py with exact re-scoring) and, up to
``--exact-max`` rows, the exact all-pairs search beside it.

Columns: seconds; pairs found among the planted ones (recall) and leaks among the planted leaks;
outliers among the ``--planted`` most isolated rows (recall); for the exact search at the same size, its
seconds and whether the index found exactly the exact search's duplicate pairs; the outlier score error
(99th percentile and largest difference from the exact score: the index can only miss neighbours, so
scores only rise); and the process's peak resident memory so far (ru_maxrss; it only grows).

    .venv/bin/python bench/inspect_scale.py --rows 50000,200000,1000000
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
from _common import command_line, table

from featcache.shared.inspection import similarity
from featcache.shared.inspection.outliers import isolation

DIMS = 1280
THRESHOLD = similarity.DEFAULT_DUPLICATE_THRESHOLD


def synthetic(n: int, pairs: int, planted: int, seed: int) -> tuple[np.ndarray, np.ndarray, set, set, np.ndarray]:
    """``(x (n, DIMS) float32, split (n,) "train"/"test", planted pairs, planted leaks, outlier rows)``."""
    rng = np.random.default_rng(seed)
    centres = rng.gamma(0.5, 1.0, (200, DIMS)).astype(np.float32)
    x = np.empty((n, DIMS), np.float32)
    for start in range(0, n, 50_000):  # bounded temporaries
        stop = min(n, start + 50_000)
        x[start:stop] = centres[rng.integers(0, 200, stop - start)]
        x[start:stop] += rng.gamma(0.5, 0.3, (stop - start, DIMS)).astype(np.float32)
    chosen = rng.choice(n, 2 * pairs + planted, replace=False)
    a, b, far = chosen[:pairs], chosen[pairs : 2 * pairs], chosen[2 * pairs :]
    x[b] = x[a] * (1 + 0.003 * rng.standard_normal((pairs, DIMS)).astype(np.float32))
    x[far] = rng.gamma(0.5, 1.0, (planted, DIMS)).astype(np.float32) * (rng.random((planted, DIMS)) < 0.05)
    split = np.where(rng.random(n) < 0.8, "train", "test").astype(object)
    split[a], split[b] = "train", "train"
    split[a[::10]], split[b[::10]] = "train", "test"  # every tenth pair: a leak
    planted_pairs = {(min(i, j), max(i, j)) for i, j in zip(a.tolist(), b.tolist(), strict=True)}
    leaks = {(min(i, j), max(i, j)) for i, j in zip(a[::10].tolist(), b[::10].tolist(), strict=True)}
    return x, split, planted_pairs, leaks, far


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="50000,200000", help="comma-separated cache sizes")
    ap.add_argument("--pairs", type=int, default=300, help="near-duplicate pairs planted in each cache")
    ap.add_argument("--planted", type=int, default=100, help="outliers planted in each cache")
    ap.add_argument("--exact-max", type=int, default=50_000, help="largest size also searched exactly")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = []
    for n in (int(v) for v in args.rows.split(",")):
        x, split, planted_pairs, leaks, far = synthetic(n, args.pairs, args.planted, args.seed)
        unit = similarity.normalize(x)
        t0 = time.perf_counter()
        found = {(p.a, p.b) for p in similarity.duplicate_pairs(unit, THRESHOLD)}
        dup_s = time.perf_counter() - t0
        found_leaks = {p for p in found if split[p[0]] != split[p[1]]}
        t0 = time.perf_counter()
        score, _ = isolation(x)
        out_s = time.perf_counter() - t0
        out_recall = np.isin(np.argsort(-score)[: args.planted], far).mean()
        exact = ["-", "-", "-", "-"]
        if n <= args.exact_max:
            t0 = time.perf_counter()
            exact_pairs = {(p.a, p.b) for p in similarity.near_duplicates(unit, THRESHOLD)}
            exact_dup_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            exact_score, _ = isolation(x, exact=True)
            exact_out_s = time.perf_counter() - t0
            diff = np.abs(score - exact_score)
            same = "yes" if exact_pairs == found else f"{len(found & exact_pairs)}/{len(exact_pairs)}"
            exact = [
                f"{exact_dup_s:.1f}",
                same,
                f"{exact_out_s:.1f}",
                f"{np.percentile(diff, 99):.4f} / {diff.max():.4f}",
            ]
        out.append(
            [
                f"{n:,}",
                f"{dup_s:.1f}",
                f"{len(found & planted_pairs)}/{len(planted_pairs)}",
                f"{len(found_leaks & leaks)}/{len(leaks)}",
                f"{out_s:.1f}",
                f"{out_recall:.3f}",
                *exact,
                f"{peak_gb():.1f}",
            ]
        )
        print(out[-1], flush=True)
    headers = [
        "rows",
        "dup s",
        "pairs found",
        "leaks found",
        "outliers s",
        "outlier recall",
        "exact dup s",
        "same pairs",
        "exact outliers s",
        "score error p99 / max",
        "peak GB",
    ]
    print(table(headers, out))
    print(command_line())


if __name__ == "__main__":
    main()
