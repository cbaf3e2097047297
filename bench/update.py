"""What an update costs (docs/updates.md): adding 1% of images, relabelling, and listing a large source.

    .venv/bin/python bench/update.py                       # 2,000 images, tiny backbone; listing 10k/30k/100k files
    .venv/bin/python bench/update.py --images 500 --listing 10000,100000
    .venv/bin/python bench/update.py --backbone mobilenet_v2 \\
        --weights ../shared/weights/mobilenet_v2_1.0_224_no_top__from_coral_quant_tflite.h5

1. A CSV source of ``--images`` sample images is extracted into a fresh cache (the full extraction).
2. 1% more images are added to the CSV and the cache is updated (``update=True``); the ratio of
   the update's extraction-loop time to the full run's, and of the wall times, is printed.
3. 1% of the rows are relabelled and the cache updated: no backbone runs (backbone seconds 0).
4. Listing: ``--listing`` counts of empty files in 10 class folders; the time to list the source
   (walk, stat, listing hash) and to diff it against a cache listing of the same size with 1% added.

Everything runs in this process, so TensorFlow's import is paid once (by the full extraction); the
update's own start-up (listing, model build) is reported separately.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "data"))

from make_sample import make_sample  # noqa: E402

from featcache.extractor.runner import ExtractConfig, run_extract  # noqa: E402
from featcache.extractor.sources import open_source  # noqa: E402
from featcache.shared.cache._manifest import Manifest  # noqa: E402
from featcache.shared.cache._update import diff, live_view  # noqa: E402


def write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    path.write_text("path,label\n" + "".join(f"{p},{lab}\n" for p, lab in rows))


def run(args: argparse.Namespace, src: Path, cache: Path, **kw):
    cfg = ExtractConfig(
        source=src,
        cache=cache,
        backbone=args.backbone,
        weights=args.weights,
        progress=False,
        shard_size=args.shard_size,
        **kw,
    )
    t0 = time.perf_counter()
    report = run_extract(cfg, log=lambda m: None)
    return report, time.perf_counter() - t0


def bench_update(args: argparse.Namespace, work: Path) -> None:
    classes = 10
    make_sample(work / "img", per_class=args.images // classes + args.images // 100 // classes + 1, classes=classes)
    files = sorted(p.relative_to(work).as_posix() for p in (work / "img").rglob("*.*"))
    rows = [(f, f.split("/")[1]) for f in files]
    base, extra = rows[: args.images], rows[args.images : args.images + max(1, args.images // 100)]
    csv = work / "src.csv"
    write_csv(csv, base)
    full, full_wall = run(args, csv, work / "cache")
    write_csv(csv, base + extra)
    upd, upd_wall = run(args, csv, work / "cache", update=True)
    loop = upd.seconds / full.seconds
    print(
        f"full extraction of {args.images} images: {full_wall:.1f} s wall (start-up {full.startup_seconds:.1f} s, "
        f"loop {full.seconds:.1f} s, backbone {full.backbone_seconds:.1f} s)"
    )
    print(
        f"update adding {len(extra)} images ({100 * len(extra) / args.images:.0f}%): {upd_wall:.1f} s wall "
        f"(start-up {upd.startup_seconds:.1f} s, loop {upd.seconds:.2f} s, backbone {upd.backbone_seconds:.2f} s), "
        f"{upd.shards_written} new shard(s); first batch (incl. tf.function tracing) {upd.first_batch_seconds:.2f} s"
    )
    print(
        f"  ratio, extraction loop: {loop:.3f}; wall less start-up: "
        f"{(upd_wall - upd.startup_seconds) / (full_wall - full.startup_seconds):.3f}; wall: {upd_wall / full_wall:.3f}"
    )
    relabelled = [
        (p, "circle" if lab != "circle" else "cross") if k % 100 == 0 else (p, lab)
        for k, (p, lab) in enumerate(base + extra)
    ]
    write_csv(csv, relabelled)
    rel, rel_wall = run(args, csv, work / "cache", update=True)
    print(
        f"update relabelling {rel.changes['relabelled']} rows: {rel_wall:.2f} s wall, backbone "
        f"{rel.backbone_seconds:.2f} s, {rel.shards_written} shards written"
    )
    noop, noop_wall = run(args, csv, work / "cache", update=True)
    print(f"update with nothing changed: {noop_wall:.2f} s wall ({noop.summary().splitlines()[0]})")


def bench_listing(counts: list[int], work: Path) -> None:
    print(f"{'files':>8}  {'list+stat+hash s':>16}  {'diff s':>7}  {'us/file':>8}")
    for n in counts:
        root = work / f"list-{n}"
        for k in range(n):
            d = root / f"class{k % 10}"
            if k < 10:
                d.mkdir(parents=True)
            (d / f"{k:07d}.jpg").touch()
        t0 = time.perf_counter()
        source = open_source(root)
        new = source.listing()
        source.listing_sha256()
        t1 = time.perf_counter()
        keep = np.arange(len(source)) % 100 != 0  # the cache lacks 1%: an update adds it
        old = {k: v[keep] for k, v in new.items()}
        m = Manifest(
            fingerprint={},
            classes=source.classes,
            source={"num_inputs": int(keep.sum())},
            split={},
            storage={},
            shard_size=1024,
        )
        t2 = time.perf_counter()
        changes = diff(live_view(m, old), new, source.classes)[0]
        t3 = time.perf_counter()
        assert len(changes.added) == n - int(keep.sum())
        print(f"{n:>8}  {t1 - t0:>16.2f}  {t3 - t2:>7.2f}  {1e6 * (t1 - t0 + t3 - t2) / n:>8.1f}")
        shutil.rmtree(root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--backbone", default="tiny")
    ap.add_argument("--weights", default="random")
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--listing", default="10000,30000,100000", help="file counts for the listing benchmark")
    ap.add_argument("--skip-extract", action="store_true", help="only the listing benchmark")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="featcache-bench-update-"))
    try:
        if not args.skip_extract:
            bench_update(args, work)
        if args.listing:
            bench_listing([int(x) for x in args.listing.split(",")], work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"command: {' '.join([sys.executable, *sys.argv])}")


if __name__ == "__main__":
    main()
