"""How fast the writer compresses and stores map rows: featcache's threaded deflate against h5py's
own gzip filter, on the same real-weights maps, side by side.

Rerun from the repo root (about 20 s):

    .venv/bin/python bench/writer.py                 # maps of cache/bench-sample (made if missing)
    .venv/bin/python bench/writer.py --cache CACHE --rows 1024

Contenders, each the best of ``--repeats``, writing the same rows in batches of 32 to a new HDF5
file (float16, one row per chunk, gzip level 1, as a shard's ``maps``), timed from create to close:

* ``h5py gzip filter``: ``dset[n:n+b] = rows``, the baseline (h5py compresses in the calling
  thread, holding the GIL);
* ``featcache, 1 thread`` and ``featcache, N threads``: ``featcache.shared.cache._deflate.append``, which deflates
  rows with zlib on a thread pool (releasing the GIL) and stores them with ``write_direct_chunk``.
  N is ``featcache.shared.cache._deflate.THREADS`` (the cores, at most 8).

Rows per second here is the writer's ceiling: at GPU speeds one writer must keep up with the
backbone. The files are checked to hold the same values (and, with the same zlib, the same bytes).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from _common import DEFAULT_CACHE, command_line, ensure_cache, table  # noqa: E402  (puts the repo on sys.path)

from featcache.shared.cache import schema  # noqa: E402
from featcache.shared.cache._deflate import THREADS, append  # noqa: E402
from featcache.shared.cache._reader import FeatureCache  # noqa: E402

BATCH = 32
LEVEL = 1


def write(path: Path, maps: np.ndarray, threads: int | None) -> float:
    t0 = time.perf_counter()
    with h5py.File(path, "w") as f:
        d = f.create_dataset(
            schema.MAPS,
            shape=(0, *maps.shape[1:]),
            maxshape=(len(maps), *maps.shape[1:]),
            chunks=(1, *maps.shape[1:]),
            dtype="float16",
            compression="gzip",
            compression_opts=LEVEL,
        )
        for s in range(0, len(maps), BATCH):
            rows = maps[s : s + BATCH]
            if threads is None:
                n = d.shape[0]
                d.resize(n + len(rows), axis=0)
                d[n:] = rows
            else:
                append(d, rows, LEVEL, threads)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="cache whose maps to write (real weights)")
    ap.add_argument("--rows", type=int, default=512, help="rows to write (default 512)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cache = FeatureCache(ensure_cache(args.cache))
    if cache.random_weights:
        print("NOTE: the cache has RANDOM weights: its maps are all alike and compress unrealistically well")
    maps = np.concatenate([m for _, m in cache.iter_maps(block_rows=256, dtype=np.float16)])[: args.rows]
    contenders = {
        "h5py gzip filter (baseline)": None,
        "featcache, 1 thread": 1,
        f"featcache, {THREADS} threads": THREADS,
    }
    best = {name: float("inf") for name in contenders}
    with tempfile.TemporaryDirectory(prefix="featcache-bench-writer-") as tmp:
        files = {}
        for _ in range(args.repeats):
            for k, (name, threads) in enumerate(contenders.items()):
                files[name] = Path(tmp) / f"{k}.h5"
                best[name] = min(best[name], write(files[name], maps, threads))
        base_file = files["h5py gzip filter (baseline)"]
        with h5py.File(base_file) as f:
            want = f[schema.MAPS][()]
        for name, path in files.items():
            with h5py.File(path) as f:
                assert np.array_equal(f[schema.MAPS][()], want), name
        same_bytes = all(p.read_bytes() == base_file.read_bytes() for p in files.values())
    base = best["h5py gzip filter (baseline)"]
    rows = [
        [name, f"{len(maps) / s:,.0f}", f"{1000 * s / len(maps):.2f}", f"{base / s:.2f}"] for name, s in best.items()
    ]
    print(
        f"\n{len(maps)} rows of {cache.path} maps, float16 gzip-{LEVEL}, batches of {BATCH}, {os.cpu_count()} cores, "
        f"best of {args.repeats}; files {'byte-identical' if same_bytes else 'equal in values'}"
    )
    print(table(["writer", "rows/s", "ms/row", "vs h5py"], rows))
    print(f"\n{command_line()}")


if __name__ == "__main__":
    main()
