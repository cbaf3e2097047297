"""How fast a cache reads, for the trainer's sake: all pooled vectors, and maps in blocks vs row by row.

Rerun from the repo root (seconds):

    .venv/bin/python bench/read.py                 # cache/bench-sample (made from data/sample if missing)
    .venv/bin/python bench/read.py --cache CACHE

Contenders, each the best of ``--repeats``, on the same cache, from the page cache (run it twice, or
after ``featcache-inspect verify``, to be sure the files are cached; the numbers are then the CPU
cost of HDF5, gzip and numpy, not the disk's):

* pooled: ``FeatureCache.load_pooled()`` (whole datasets per shard: pooled, label, id, index and
  split, with the splits resolved) against plain h5py reading the same five columns one row at a
  time (what a naive loader does);
* maps: ``FeatureCache.iter_maps(block_rows=256)`` (one contiguous, chunk-aligned read per block)
  against ``maps[i]`` for every row. MB/s count the maps in float32, as the trainer uses them.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import h5py
import numpy as np
from _common import DEFAULT_CACHE, REPO, ensure_cache, table  # noqa: E402  (puts the repo on sys.path)

from featcache.shared.cache._reader import FeatureCache  # noqa: E402


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--cache",
        type=Path,
        default=None,
        help=f"cache to read (default: {DEFAULT_CACHE.relative_to(REPO)}, made from data/sample when missing)",
    )
    ap.add_argument("--block-rows", type=int, default=256, help="rows per block for iter_maps (default 256)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each contender, best kept (default 3)")
    args = ap.parse_args()
    command = shlex.join([sys.executable, *sys.argv])
    cache = FeatureCache(ensure_cache(args.cache or DEFAULT_CACHE))
    n = cache.num_rows
    pooled_mb = n * cache.maps_shape[-1] * 4 / 1e6
    maps_mb = n * int(np.prod(cache.maps_shape)) * 4 / 1e6
    paths = [cache.shard_path(s) for s in cache.shards]

    def pooled_rows() -> None:  # the same columns load_pooled returns, a row at a time
        for p in paths:
            with h5py.File(p, "r") as f:
                cols = [f[k] for k in ("pooled", "label", "index", "split")] + [f["id"].asstr()]
                for i in range(cols[0].shape[0]):
                    for c in cols:
                        c[i]

    def maps_blocks() -> None:
        for _ in cache.iter_maps(block_rows=args.block_rows, dtype="float32"):
            pass

    def maps_rows() -> None:
        for p in paths:
            with h5py.File(p, "r") as f:
                d = f["maps"]
                for i in range(d.shape[0]):
                    d[i].astype(np.float32)

    maps_blocks()  # warm the page cache
    results = [
        ("pooled: load_pooled (whole datasets)", pooled_mb, best_of(args.repeats, cache.load_pooled)),
        ("pooled: h5py row by row", pooled_mb, best_of(args.repeats, pooled_rows)),
        (f"maps: iter_maps, blocks of {args.block_rows}", maps_mb, best_of(args.repeats, maps_blocks)),
        ("maps: h5py row by row", maps_mb, best_of(args.repeats, maps_rows)),
    ]
    rows = []
    for k, (name, mb, s) in enumerate(results):
        base = results[k - k % 2]
        rows.append([name, f"{s:.3f}", f"{n / s:,.0f}", f"{mb / s:,.0f}", f"{(mb / s) / (base[1] / base[2]):.2f}"])
    fp = cache.fingerprint
    print(
        f"\nreading {cache.path}: {n} rows in {len(paths)} shards, maps {fp['maps_dtype']} "
        f"{cache.manifest.storage['compression']}; best of {args.repeats}, from the page cache"
    )
    print(table(["contender", "seconds", "rows/s", "MB/s (float32)", "vs ours"], rows))
    print(f"command: {command}")


if __name__ == "__main__":
    main()
