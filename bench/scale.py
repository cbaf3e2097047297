"""Scale simulation: a cache of 10,000 shards and 10 million rows, written through the real commit
path (ShardWriter, CacheWriter.commit_shard: shard file fsync'd and renamed, then one journal record),
killed near the end, resumed, then read.

Rerun from the repo root (a few minutes on 2 cores; ~1 GB of disk under --dir):

    .venv/bin/python bench/scale.py                              # 10,000 shards x 1,000 rows
    .venv/bin/python bench/scale.py --shards 1000 --rows 100     # a quick look

Features are synthetic and tiny (maps ``(1, 1, 4)`` float16 uncompressed, pooled 4 floats): the
bookkeeping, not the features, is measured. A child process writes the shards and reports each
commit's wall time (``commit_shard``: shard close + sha256 + fsync + rename + journal append, and
the fold when one falls due) and the bookkeeping bytes written so far (manifest rewrites and
journal records); it is killed (SIGKILL) ``--kill-before`` shards before the end. The parent then
measures reading the killed cache (manifest + journal replay), the resume (``CacheWriter`` set-up:
replay, stat of every shard, fold), finishes the cache, and measures on the complete cache: writing
the row index (``rows.h5``, what ``finalize`` adds once a cache is complete), ``summary``, the
reader's open, the trainer's start-up when it streams (``load_dataset(pooled=False)``: every row's
label, id, split and place) from the row index and, side by side, from every shard, and loading
every pooled vector into memory (read from the shards: the index holds no features). The memory of
each process is limited (``--max-gb``).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import command_line, table  # noqa: E402  (puts the repo on sys.path)

from featcache.shared.backbones import ResolvedWeights, get_backbone, make_fingerprint  # noqa: E402
from featcache.shared.cache import schema  # noqa: E402
from featcache.shared.cache._manifest import Manifest  # noqa: E402
from featcache.shared.cache._writer import CacheWriter, storage_options  # noqa: E402

CHANNELS = 4
CLASSES = 10
MARKS = (100, 1_000, 10_000)
WINDOW = 50  # commits on each side of a mark whose median is reported


def synthetic_manifest(root: Path, shards: int, rows: int) -> Manifest:
    """A manifest of ``shards * rows`` inputs in shards of ``rows``, features ``(1, 1, CHANNELS)``."""
    fp = make_fingerprint(get_backbone("tiny"), ResolvedWeights("random", None, "random:0", 0), maps_dtype="float16")
    fp["output_shape"] = [1, 1, CHANNELS]
    return Manifest(
        fingerprint=fp,
        classes=[f"class{k}" for k in range(CLASSES)],
        source={
            "kind": "synthetic",
            "root": str(root),
            "num_inputs": shards * rows,
            "listing_sha256": "5" * 64,
            "split_source": "folders",
        },
        split={"source": "folders", "fractions": {"train": 0.8, "val": 0.1, "test": 0.1}},
        storage=storage_options("none", "float16"),
        shard_size=rows,
    )


def fill(cw: CacheWriter, shards: list[int], report=None) -> None:  # noqa: ANN001
    """Write ``shards`` with synthetic rows (a function of the listing position only)."""
    for k in shards:
        w = cw.start_shard(k)
        r = np.arange(w.inputs.start, w.inputs.stop)
        pooled = (r[:, None] % 97 + np.arange(CHANNELS)).astype(np.float32)
        w.append(pooled[:, None, None, :], pooled, (r % CLASSES).astype(np.int32), [f"{i:09d}" for i in r], r, r % 3)
        t0 = time.perf_counter()
        cw.commit_shard(w, [])
        if report is not None:
            report(k, time.perf_counter() - t0)


def child(cache: Path, shards: int, rows: int) -> None:
    """Write the whole cache, printing ``k seconds bookkeeping_bytes`` after each commit."""
    with CacheWriter(cache, synthetic_manifest(cache, shards, rows)) as cw:

        def report(k: int, seconds: float) -> None:
            j = cw._journal.bytes if cw._journal is not None else 0
            print(k, f"{seconds:.6f}", cw.bookkeeping_bytes + j, flush=True)

        fill(cw, cw.pending_shards(), report)


def timed(fn, repeats: int = 3) -> tuple[float, object]:  # noqa: ANN001
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=10_000)
    ap.add_argument("--rows", type=int, default=1_000, help="rows per shard")
    ap.add_argument("--kill-before", type=int, default=5, help="kill the writer this many shards before the end")
    ap.add_argument("--dir", type=Path, help="where to build the cache (default: a temporary folder, removed)")
    ap.add_argument("--max-gb", type=float, default=6.0, help="address-space limit of each process")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    limit = int(args.max_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if args.child:
        return child(args.child, args.shards, args.rows)

    from featcache.shared.cache._parts import finalize
    from featcache.shared.cache._reader import FeatureCache
    from featcache.shared.inspection.summary import summarize
    from featcache.trainer.data import load_dataset

    work = Path(args.dir or tempfile.mkdtemp(prefix="featcache-scale-"))
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    try:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", str(cache), "--shards", str(args.shards), "--rows", str(args.rows)],
            stdout=subprocess.PIPE,
            text=True,
        )
        commits: list[float] = []
        books = 0
        t_start = time.perf_counter()
        for line in proc.stdout:
            k, seconds, books = line.split()
            commits.append(float(seconds))
            if len(commits) >= args.shards - args.kill_before:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait()
        write_seconds = time.perf_counter() - t_start
        books = int(books)
        killed_at = len(commits)
        open_killed, m = timed(lambda: FeatureCache(cache).manifest)
        journaled = len(m.journaled)

        t0 = time.perf_counter()
        cw = CacheWriter(cache, synthetic_manifest(cache, args.shards, args.rows))
        cw.__enter__()
        resume_seconds = time.perf_counter() - t0
        fill(cw, cw.pending_shards())
        cw.__exit__(None, None, None)
        assert cw.finalized is not None and cw.finalized.complete, cw.finalized

        (cache / schema.ROW_INDEX_NAME).unlink()
        index_seconds, _ = timed(lambda: finalize(cache), repeats=1)  # writes the row index anew
        index_bytes = (cache / schema.ROW_INDEX_NAME).stat().st_size
        open_seconds, fc = timed(lambda: FeatureCache(cache))
        summary_seconds, s = timed(lambda: summarize(FeatureCache(cache)), repeats=1)
        assert s["rows"] == args.shards * args.rows, s["rows"]
        startup = {}
        for row_index in (True, False):
            seconds, ds = timed(
                lambda row_index=row_index: load_dataset(FeatureCache(cache, row_index=row_index), pooled=False),
                repeats=1,
            )
            assert sum(ds.sizes().values()) == args.shards * args.rows
            startup[row_index] = seconds
            del ds
        load_seconds, rows = timed(lambda: FeatureCache(cache).load_pooled(), repeats=1)
        assert len(rows) == args.shards * args.rows
        manifest_bytes = (cache / schema.MANIFEST_NAME).stat().st_size
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)

    def at(mark: int) -> list[str]:
        mark = min(mark, killed_at)  # the last commits before the kill stand for the end
        w = commits[max(0, mark - WINDOW) : mark + WINDOW]
        return [f"shard {mark:,}", f"{1000 * float(np.median(w)):.2f}", f"{1000 * max(w):.1f}", f"{len(w)}"]

    print(
        f"\n{args.shards:,} shards x {args.rows:,} rows = {args.shards * args.rows:,} rows, "
        f"features (1, 1, {CHANNELS}) "
        f"float16; {os.cpu_count()} cores; writer killed after {killed_at:,} commits ({write_seconds:.0f} s)"
    )
    print(
        table(
            ["commit_shard", "median ms", "max ms", "commits"],
            [at(mark) for mark in MARKS]
            + [
                [
                    "all (mean, folds included)",
                    f"{1000 * float(np.mean(commits)):.2f}",
                    f"{1000 * max(commits):.1f}",
                    f"{killed_at:,}",
                ]
            ],
        )
    )
    per_record = manifest_bytes / args.shards
    rewrite = sum(manifest_bytes - per_record * (args.shards - k) for k in range(1, killed_at + 1))
    print()
    print(
        table(
            ["measure", "value"],
            [
                ["bookkeeping written by the killed writer (manifest folds + journal)", f"{books / 1e6:,.1f} MB"],
                ["  the same with a manifest rewrite per shard (estimated)", f"{rewrite / 1e6:,.0f} MB"],
                [f"open the killed cache ({journaled:,} journal records replayed)", f"{open_killed:.3f} s"],
                ["resume after the kill (CacheWriter set-up)", f"{resume_seconds:.3f} s"],
                ["reader open (FeatureCache), complete cache", f"{open_seconds:.3f} s"],
                ["summary (featcache-inspect summary's data)", f"{summary_seconds:.3f} s"],
                ["row index written (finalize of the complete cache)", f"{index_seconds:.2f} s"],
                ["trainer start-up, streamed (labels, ids, splits): from the row index", f"{startup[True]:.2f} s"],
                ["  the same, reading every shard (no row index)", f"{startup[False]:.2f} s"],
                ["trainer data load in memory (load_pooled, every pooled vector)", f"{load_seconds:.2f} s"],
                [f"{schema.ROW_INDEX_NAME} (labels, ids, index, split of every row)", f"{index_bytes / 1e6:.1f} MB"],
                ["manifest.json, complete", f"{manifest_bytes / 1e6:.1f} MB"],
            ],
        )
    )
    print(f"\n{command_line()}")


if __name__ == "__main__":
    main()
