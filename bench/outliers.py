"""Outliers at scale: time, peak memory and recall of planted outliers, the indexed search beside the exact one.

Synthetic pooled vectors like MobileNetV2's (non-negative, sparse-ish, 1280-d) around 200 cluster centres,
with ``--planted`` rows far from every centre. For each size the script ranks every row with
:func:`featcache.shared.inspection.outliers.isolation` (the search ``featcache-inspect outliers`` uses:
exact up to 20,000 rows, else the inverted-file index of shared/inspection/knn.py with exact
re-scoring) and, where it finishes in reasonable time (``--exact-max``), with the exact search on the
full vectors. Recall: the share of planted rows among the ``--planted`` most isolated. Score error:
the 99th percentile and the largest difference between a row's score and its exact score (the index
can only miss neighbours, so scores only rise).

    .venv/bin/python bench/outliers.py --rows 50000,200000,1000000

Peak memory is the process's resident high-water mark after each run (ru_maxrss; it only grows).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
from _common import command_line, table

from featcache.shared.inspection.outliers import isolation

DIMS = 1280


def synthetic(n: int, planted: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(n, DIMS)`` float32 vectors around 200 centres, and the positions of ``planted`` far-away rows."""
    rng = np.random.default_rng(seed)
    centres = rng.gamma(0.5, 1.0, (200, DIMS)).astype(np.float32)
    x = np.empty((n, DIMS), np.float32)
    for start in range(0, n, 50_000):  # bounded temporaries
        stop = min(n, start + 50_000)
        x[start:stop] = centres[rng.integers(0, 200, stop - start)]
        x[start:stop] += rng.gamma(0.5, 0.3, (stop - start, DIMS)).astype(np.float32)
    where = rng.choice(n, planted, replace=False)
    sparse = rng.random((planted, DIMS)) < 0.05
    x[where] = rng.gamma(0.5, 1.0, (planted, DIMS)).astype(np.float32) * sparse
    return x, where


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="50000,200000", help="comma-separated cache sizes")
    ap.add_argument("--planted", type=int, default=100, help="outliers planted in each cache")
    ap.add_argument("--exact-max", type=int, default=50_000, help="largest size also searched exactly")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = []
    for n in (int(v) for v in args.rows.split(",")):
        x, planted = synthetic(n, args.planted, args.seed)
        t0 = time.perf_counter()
        score, _ = isolation(x, exact=False)
        seconds = time.perf_counter() - t0
        found = np.isin(np.argsort(-score)[: args.planted], planted).mean()
        exact_cells = ["-", "-", "-"]
        if n <= args.exact_max:
            t0 = time.perf_counter()
            exact, _ = isolation(x, exact=True)
            exact_seconds = time.perf_counter() - t0
            diff = np.abs(score - exact)
            exact_found = np.isin(np.argsort(-exact)[: args.planted], planted).mean()
            exact_cells = [
                f"{exact_seconds:.1f}",
                f"{exact_found:.3f}",
                f"{np.percentile(diff, 99):.4f} / {diff.max():.4f}",
            ]
        out.append([f"{n:,}", f"{seconds:.1f}", f"{found:.3f}", *exact_cells, f"{peak_gb():.1f}"])
        print(out[-1], flush=True)
    headers = ["rows", "indexed s", "recall", "exact s", "exact recall", "score error p99 / max", "peak GB"]
    print(table(headers, out))
    print(command_line())


if __name__ == "__main__":
    main()
