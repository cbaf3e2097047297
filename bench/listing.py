"""One listing per job: the cost of listing a 1,000,000-file source once versus once per worker.

Rerun from the repo root (a couple of minutes on 2 cores; 1,000,000 empty files under --dir, made
once and kept there when --dir is given):

    .venv/bin/python bench/listing.py                       # 1,000,000 files, 4 workers
    .venv/bin/python bench/listing.py --files 100000 --workers 4

The workers of a 4-part job are run one after the other in this process (their times are what
each would spend at start-up; on 2 cores, running them side by side would only blur that), three
ways, side by side in one run:

* ``per worker`` (before #14): every worker walks the folder and stats every file
  (``open_source`` + ``Source.listing``);
* ``once per job, walking`` (the first step): the first worker walks and stats every file and
  publishes ``listing.npz``; each other worker walks the folder (no stat), checks the published
  listing names the same inputs, and stats only its own part's inputs (``Source.adopt_listing``);
* ``once per job, no walk`` (now, ``runner.share_listing``): the first worker as above; each other
  worker builds its source from ``listing.npz`` without walking the folder
  (``sources.folder_from_listing``: the ids checked to be names a walk could make) and stats only
  its own part's inputs.

Stats run on ``sources.STAT_THREADS`` threads in all three. The files are in the page cache after
the first walk, so this measures the CPU side; on a network filesystem each stat and each folder
read is a round trip and the saving is larger.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from _common import command_line, table  # noqa: E402  (puts the repo on sys.path)

from featcache.extractor.runner import ExtractConfig, share_listing  # noqa: E402
from featcache.extractor.sources import open_source  # noqa: E402
from featcache.shared.cache._listing import load_listing, save_listing  # noqa: E402
from featcache.shared.cache._parts import Part  # noqa: E402

CLASSES = 100


def make_files(root: Path, n: int) -> None:
    """``n`` empty ``.jpg`` files in ``CLASSES`` class folders (kept when already there)."""
    if (root / ".complete").exists() and int((root / ".complete").read_text()) == n:
        return
    shutil.rmtree(root, ignore_errors=True)
    for c in range(CLASSES):
        d = root / f"c{c:03d}"
        d.mkdir(parents=True)
        for k in range(c, n, CLASSES):
            os.close(os.open(d / f"{k:07d}.jpg", os.O_WRONLY | os.O_CREAT, 0o644))
    (root / ".complete").write_text(str(n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--dir", type=Path, help="where to make the files (kept); default a temporary folder")
    args = ap.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="featcache-listing-"))
    src = work / "src"
    try:
        t0 = time.perf_counter()
        make_files(src, args.files)
        made = time.perf_counter() - t0
        open_source(src)  # warm the page cache for both contenders alike

        def own(i: int) -> float:
            t = time.perf_counter()
            s = open_source(src)
            s.listing()
            return time.perf_counter() - t

        def walking(i: int, cache: Path) -> tuple[float, str]:
            """The first step's worker: every one walks; the first publishes, the others adopt."""
            t = time.perf_counter()
            s = open_source(src)
            if i == 0:
                cache.mkdir(parents=True)
                save_listing(cache, s.listing())
                return time.perf_counter() - t, "listed"
            published = load_listing(cache)
            ok = s.adopt_listing(published, Part(i, args.workers).inputs(len(s), args.shard_size))
            return time.perf_counter() - t, "adopted" if ok else "own"

        def shared(i: int, cache: Path) -> tuple[float, str]:
            t = time.perf_counter()
            cfg = ExtractConfig(source=src, cache=cache, shard_size=args.shard_size, part=Part(i, args.workers))
            what, _ = share_listing(cfg)
            return time.perf_counter() - t, what

        rows = []
        for name, worker in (
            ("per worker (before)", lambda i, cache: (own(i), "own")),
            ("once per job, walking", walking),
            ("once per job, no walk (now)", shared),
        ):
            cache = work / "cache"
            shutil.rmtree(cache, ignore_errors=True)
            times = [worker(i, cache) for i in range(args.workers)]
            if name != "per worker (before)":
                assert [w for _, w in times] == ["listed"] + ["adopted"] * (args.workers - 1), times
            seconds = [t for t, _ in times]
            rows.append([name, f"{seconds[0]:.1f}", f"{max(seconds[1:]):.1f}", f"{sum(seconds):.1f}"])
            print(f"{name}: {', '.join(f'{t:.1f}' for t in seconds)} s", flush=True)
        t = time.perf_counter()
        open_source(src)
        walk = time.perf_counter() - t
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"\n{args.files:,} empty files in {CLASSES} folders (made in {made:.0f} s), {args.workers} workers, shards of "
        f"{args.shard_size}, {os.cpu_count()} cores; walking the folder alone: {walk:.1f} s"
    )
    print(table(["listing", "first worker s", "other workers s (max)", "all workers s"], rows))
    print(f"\n{command_line()}")


if __name__ == "__main__":
    main()
