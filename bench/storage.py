"""Choose the lossless HDF5 filter for the ``maps`` dataset of a featcache shard, by measurement.

Rerun from the repo root (each takes about a minute on a 2-core machine):

    .venv/bin/python bench/storage.py               # the sample images (data/sample, made if missing)
    .venv/bin/python bench/storage.py --natural     # ~128 crops of scikit-image's bundled photographs
    .venv/bin/python bench/storage.py --images DIR  # any folder of images, searched recursively

What it does:

1. Computes real MobileNetV2 feature maps ``(N, 7, 7, 1280)`` float32 for N images, decoded and
   resized by the extractor's own ``featcache.extractor.pipeline.decode_resize`` and preprocessed by the
   backbone spec's ``preprocess_fn()``, with the ImageNet weights at
   ``../shared/weights/mobilenet_v2_1.0_224_no_top__from_coral_quant_tflite.h5`` (relative to the
   repo root). Without that file it refuses, unless ``--force-random``: a random MobileNetV2 gives
   the same vector for every image, so its compression numbers mean nothing.
2. For each candidate filter (none; gzip 1/4/9 with and without the byte shuffle; lzf with and
   without shuffle; and, when ``hdf5plugin`` imports, Blosc2/Zstd and Blosc/LZ4 with bitshuffle),
   writes the maps to a temporary HDF5 file exactly as ``featcache.shared.cache._writer.ShardWriter`` does: a
   resizable dataset with chunks of ``(1, 7, 7, 1280)``, appended in batches of 32, each batch cast
   to the maps dtype inside the timed write. gzip-1+shuffle is also tried with chunks of 8 rows.
   Timed: the write including the file close (no fsync: ShardWriter's fsync
   measures the disk, not the filter), a full read in blocks of 256 rows, and single random rows.
   Every timing is the best of ``--repeats`` (a filter whose first write is slower than
   ``--slow-seconds`` is timed once). Files are read back from the page cache, so the read numbers
   are the filter's CPU cost, not the disk's.
3. Prints one row per (filter, chunk rows, dtype) sorted by filter name, then how featcache's default
   compares with every other plugin-free filter: bytes, write time and read time, as ratios. The
   write time is also shown as a share of the backbone's own time per image (measured here: best of
   ``--repeats`` passes over up to 128 decoded images at batch 32): on a CPU-only machine the writer
   thread shares the cores with the backbone, so that share is roughly what the filter costs.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py  # noqa: E402
import numpy as np
from _common import DEFAULT_WEIGHTS, WEIGHTS_REL, ensure_sample, table  # noqa: E402  (puts the repo on sys.path)

from featcache.extractor.sources import open_source  # noqa: E402
from featcache.shared.cache import schema  # noqa: E402

# Colour photographs bundled with scikit-image (skimage/data); drawings and test patterns left out.
NATURAL_IMAGES = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "retina.jpg",
    "rocket.jpg",
)
WRITE_BATCH = 32  # rows per append, as the extractor's default --batch-size
READ_BLOCK = 256  # rows per read in the full read-back
BACKBONE_BATCH = 32

try:  # optional: the bench must run without it
    import hdf5plugin  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    hdf5plugin = None


# ---------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------
def list_images(root: Path) -> list[Path]:
    """The image files featcache would extract from ``root``, in its order."""
    return [Path(os.fsdecode(p)) for p in open_source(root).paths]


def natural_crops(count: int, seed: int) -> list[np.ndarray]:
    """``count`` random crops (random size and aspect, random horizontal flip) of the bundled photos,
    taken round-robin over :data:`NATURAL_IMAGES`; the same seed gives the same crops."""
    import skimage
    import skimage.io

    data_dir = Path(skimage.__file__).parent / "data"
    photos = []
    for name in NATURAL_IMAGES:
        path = data_dir / name
        if path.is_file():
            img = skimage.io.imread(path)
            photos.append(np.ascontiguousarray(img[..., :3]).astype(np.uint8))
    if not photos:
        raise SystemExit(f"{data_dir}: none of scikit-image's bundled photographs found")
    rng = np.random.default_rng(seed)
    crops = []
    for k in range(count):
        img = photos[k % len(photos)]
        h, w = img.shape[:2]
        side = rng.uniform(0.3, 1.0) * min(h, w)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch = int(min(h, max(32, side / np.sqrt(aspect))))
        cw = int(min(w, max(32, side * np.sqrt(aspect))))
        y = int(rng.integers(0, h - ch + 1))
        x = int(rng.integers(0, w - cw + 1))
        crop = img[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crops.append(np.ascontiguousarray(crop))
    return crops


# ---------------------------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------------------------
@dataclass
class Features:
    maps: np.ndarray  # (N, 7, 7, 1280) float32
    backbone_ms_per_image: float
    skipped: list[str] = field(default_factory=list)


def compute_features(encoded: list[tuple[str, Any]], weights_arg: str, repeats: int) -> Features:
    """Feature maps for ``encoded`` (``(name, encoded image bytes)``) with featcache's own decode,
    resize, preprocessing and backbone; also the backbone's warm forward time per image (best of
    ``repeats``)."""
    from featcache.shared.backbones import build_backbone, get_backbone, import_tensorflow, resolve_weights

    tf = import_tensorflow()
    from featcache.extractor.pipeline import decode_resize

    spec = get_backbone("mobilenet_v2")
    model = build_backbone(spec, resolve_weights(spec, weights_arg))
    preprocess = spec.preprocess_fn()
    h, w = spec.input_size

    load = tf.function(
        lambda data: preprocess(decode_resize(data, (h, w))), input_signature=[tf.TensorSpec([], tf.string)]
    )
    forward = tf.function(
        lambda x: model(x, training=False), input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32)]
    )

    images, skipped = [], []
    for name, data in encoded:
        try:
            images.append(load(tf.constant(data)).numpy())
        except tf.errors.OpError:
            skipped.append(name)
    if not images:
        raise SystemExit("no image could be decoded")
    x = np.stack(images)
    maps = [forward(x[s : s + BACKBONE_BATCH]).numpy() for s in range(0, len(x), BACKBONE_BATCH)]
    # The backbone's own time per image, to put the write cost in proportion: best of `repeats` passes over up
    # to 4 full batches, warm (the passes above traced the function and set up oneDNN's kernels).
    bench = [tf.constant(x[s : s + BACKBONE_BATCH]) for s in range(0, min(len(x), 4 * BACKBONE_BATCH), BACKBONE_BATCH)]
    bench = [b for b in bench if len(b) == BACKBONE_BATCH] or bench[:1]
    forward(bench[0]).numpy()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in bench:
            forward(b).numpy()
        best = min(best, time.perf_counter() - t0)
    per_image_ms = 1000 * best / sum(len(b) for b in bench)
    return Features(np.concatenate(maps).astype(np.float32), per_image_ms, skipped)


# ---------------------------------------------------------------------------------------------
# candidates and timings
# ---------------------------------------------------------------------------------------------
@dataclass
class Candidate:
    name: str
    kwargs: dict[str, Any]  # create_dataset's compression, compression_opts, shuffle
    chunk_rows: int = 1
    plugin: bool = False

    def featcache_name(self) -> str:
        """The name in ``schema.COMPRESSIONS`` that stores the same way, or ``-``."""
        if self.plugin:
            return "-"
        mine = (self.kwargs.get("compression"), self.kwargs.get("compression_opts"), bool(self.kwargs.get("shuffle")))
        return next((k for k, v in schema.COMPRESSIONS.items() if v == mine), "-")


def candidates() -> list[Candidate]:
    out = [Candidate("none", {})]
    for level in (1, 4, 9):
        out.append(Candidate(f"gzip-{level}", {"compression": "gzip", "compression_opts": level}))
        out.append(
            Candidate(f"gzip-{level}+shuffle", {"compression": "gzip", "compression_opts": level, "shuffle": True})
        )
    out.append(Candidate("lzf", {"compression": "lzf"}))
    out.append(Candidate("lzf+shuffle", {"compression": "lzf", "shuffle": True}))
    out.append(
        Candidate("gzip-1+shuffle", {"compression": "gzip", "compression_opts": 1, "shuffle": True}, chunk_rows=8)
    )
    if hdf5plugin is not None:
        for level in (1, 5):
            out.append(
                Candidate(
                    f"blosc2-zstd-{level}+bitshuffle",
                    dict(hdf5plugin.Blosc2(cname="zstd", clevel=level, filters=hdf5plugin.Blosc2.BITSHUFFLE)),
                    plugin=True,
                )
            )
        out.append(
            Candidate(
                "blosc-lz4-5+bitshuffle",
                dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.BITSHUFFLE)),
                plugin=True,
            )
        )
    return out


@dataclass
class Result:
    cand: Candidate
    dtype: str
    n: int
    row_bytes: int
    file_bytes: int
    write_s: float
    read_s: float
    row_read_s: float
    runs: int

    @property
    def raw_bytes(self) -> int:
        return self.n * self.row_bytes

    @property
    def write_ms_per_row(self) -> float:
        return 1000 * self.write_s / self.n


def write_maps(path: Path, maps: np.ndarray, dtype: str, cand: Candidate) -> float:
    """Write ``maps`` as ShardWriter does; seconds from create to close."""
    shape = maps.shape[1:]
    n = len(maps)
    path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with h5py.File(path, "w") as f:
        d = f.create_dataset(
            schema.MAPS,
            shape=(0, *shape),
            maxshape=(n, *shape),
            chunks=(cand.chunk_rows, *shape),
            dtype=dtype,
            **cand.kwargs,
        )
        for s in range(0, n, WRITE_BATCH):
            batch = maps[s : s + WRITE_BATCH]
            d.resize(s + len(batch), axis=0)
            d[s : s + len(batch)] = batch.astype(d.dtype, copy=False)
    return time.perf_counter() - t0


def read_all(path: Path, out: np.ndarray) -> float:
    """Read every row into ``out`` in blocks of :data:`READ_BLOCK`; seconds from open to close."""
    t0 = time.perf_counter()
    with h5py.File(path, "r") as f:
        d = f[schema.MAPS]
        for s in range(0, d.shape[0], READ_BLOCK):
            out[s : s + READ_BLOCK] = d[s : s + READ_BLOCK]
    return time.perf_counter() - t0


def read_rows(path: Path, rows: np.ndarray) -> float:
    """Seconds per single-row read of ``rows`` (file opened once, outside the timing)."""
    with h5py.File(path, "r") as f:
        d = f[schema.MAPS]
        t0 = time.perf_counter()
        for i in rows:
            d[int(i)]
        return (time.perf_counter() - t0) / len(rows)


def measure(
    cand: Candidate,
    dtype: str,
    maps: np.ndarray,
    tmp: Path,
    repeats: int,
    single_rows: int,
    rng: np.random.Generator,
    slow_s: float,
) -> Result:
    """Size and best-of-``repeats`` timings of ``cand``; a filter whose first write takes longer than
    ``slow_s`` is timed once (it is out of the running by a wide margin, and repeats would blow the budget)."""
    path = tmp / "maps.h5"
    expected = maps.astype(dtype)
    back = np.empty_like(expected)
    write_s = read_s = row_s = float("inf")
    runs = 0
    for r in range(repeats):
        if r > 0 and write_s > slow_s:
            break
        runs += 1
        write_s = min(write_s, write_maps(path, maps, dtype, cand))
        read_s = min(read_s, read_all(path, back))
        if r == 0 and not np.array_equal(back, expected):
            raise SystemExit(f"{cand.name} {dtype}: read-back differs from what was written (not lossless?)")
        rows = rng.choice(len(maps), size=min(single_rows, len(maps)), replace=False)
        row_s = min(row_s, read_rows(path, rows))
    size = path.stat().st_size
    path.unlink()
    return Result(cand, dtype, len(maps), expected[0].nbytes, size, write_s, read_s, row_s, runs)


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def tradeoff(results: list[Result], dtype: str, backbone_ms: float) -> list[str]:
    """How every plugin-free one-row-chunk filter compares with featcache's default, in bytes and write time.

    featcache's rule: the default must be readable by every HDF5 library with no plugin (gzip or none;
    lzf is built into h5py only), and among those it is the gzip level with the cheapest write, since
    the writer shares the CPU with decoding (and, on a CPU, with the backbone). These lines show what
    the other choices would trade, so that the rule can be checked against new numbers.
    """
    pool = [
        r for r in results if r.dtype == dtype and not r.cand.plugin and r.cand.chunk_rows == schema.MAPS_CHUNK_ROWS
    ]
    base = next((r for r in pool if r.cand.featcache_name() == schema.DEFAULT_COMPRESSION), None)
    if base is None:
        return [f"default --compression {schema.DEFAULT_COMPRESSION} was not measured"]
    lines = [
        f"default --compression {schema.DEFAULT_COMPRESSION} ({base.cand.name}): "
        f"{base.file_bytes / base.n / 1024:.1f} KB/row ({base.raw_bytes / base.file_bytes:.1f}x smaller than raw), "
        f"write {base.write_ms_per_row:.2f} ms/row = {100 * base.write_ms_per_row / backbone_ms:.0f}% of the "
        f"backbone's {backbone_ms:.1f} ms/image on this CPU"
    ]
    for r in sorted(pool, key=lambda r: r.file_bytes):
        if r is base:
            continue
        portable = "any HDF5 library" if r.cand.kwargs.get("compression") in (None, "gzip") else "h5py only"
        lines.append(
            f"  vs {r.cand.name:<16} {100 * (r.file_bytes / base.file_bytes - 1):+6.0f}% bytes, "
            f"{100 * (r.write_s / base.write_s - 1):+6.0f}% write time, "
            f"{100 * (r.read_s / base.read_s - 1):+6.0f}% full-read time ({portable})"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument(
        "--images",
        type=Path,
        metavar="DIR",
        help="folder of images (.jpg .jpeg .png .bmp .gif, searched recursively) to compute features "
        "from (default: data/sample, generated by data/make_sample.py when missing)",
    )
    src.add_argument(
        "--natural",
        action="store_true",
        help="use --natural-count random crops (random size, aspect and flip) of scikit-image's bundled "
        "colour photographs instead of files: natural-image statistics without any download",
    )
    ap.add_argument(
        "--natural-count", type=int, default=128, metavar="N", help="number of crops with --natural (default 128)"
    )
    ap.add_argument(
        "--max-images",
        type=int,
        default=None,
        metavar="N",
        help="use at most the first N images of the set (default: all)",
    )
    ap.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for the --natural crops and for the single-row read positions (default 0)",
    )
    ap.add_argument(
        "--weights",
        default=None,
        metavar="PATH",
        help=f"MobileNetV2 no-top weights file (default: {WEIGHTS_REL}, relative to the repo root)",
    )
    ap.add_argument(
        "--force-random",
        action="store_true",
        help="when the weights file is absent, run with random weights anyway (the numbers are then "
        "meaningless: every row is the same vector); without it the bench refuses",
    )
    ap.add_argument(
        "--float32",
        action="store_true",
        help="also measure float32 maps (default: only float16, featcache's default maps dtype)",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        metavar="R",
        help="time every write, full read and single-row read R times and keep the best (default 3)",
    )
    ap.add_argument(
        "--slow-seconds",
        type=float,
        default=3.0,
        metavar="S",
        help="a filter whose first write takes longer than S seconds is timed once instead of --repeats "
        "times (its 'runs' column says 1); keeps gzip-9 from eating the time budget (default 3)",
    )
    ap.add_argument(
        "--single-rows",
        type=int,
        default=64,
        metavar="K",
        help="random rows read one by one per repeat for the single-row time (default 64)",
    )
    ap.add_argument(
        "--tmpdir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the temporary HDF5 files are written (default: the system temp folder)",
    )
    args = ap.parse_args()
    command = shlex.join([sys.executable, *sys.argv])
    t_start = time.perf_counter()

    # -- weights ---------------------------------------------------------------------------------
    weights_path = args.weights if args.weights is not None else str(DEFAULT_WEIGHTS)
    random_weights = False
    if not Path(weights_path).is_file():
        if not args.force_random:
            raise SystemExit(
                f"weights file not found: {weights_path}\n"
                f"This bench needs real MobileNetV2 weights (expected at {WEIGHTS_REL} from the repo root, or pass "
                "--weights PATH): random weights give the same feature vector for every image, so compression "
                "numbers would be meaningless. Use --force-random to run anyway."
            )
        random_weights = True
        weights_path = "random"
    loud = (
        "!" * 100 + "\n!!! RANDOM WEIGHTS (--force-random): every row is the same vector; the sizes and speeds "
        "below are MEANINGLESS.\n" + "!" * 100
    )
    if random_weights:
        print(loud, flush=True)

    # -- images ----------------------------------------------------------------------------------
    encoded: list[tuple[str, Any]] = []
    if args.natural:
        from featcache.shared.backbones import import_tensorflow

        tf = import_tensorflow()
        crops = natural_crops(args.natural_count, args.seed)
        encoded = [(f"crop{k}", tf.io.encode_png(c).numpy()) for k, c in enumerate(crops)]
        set_desc = (
            f"--natural: {len(crops)} random crops (seed {args.seed}) of {len(NATURAL_IMAGES)} scikit-image "
            f"photographs ({', '.join(Path(n).stem for n in NATURAL_IMAGES)})"
        )
    else:
        root = args.images if args.images is not None else ensure_sample()
        paths = list_images(root)
        if not paths:
            raise SystemExit(f"{root}: no images found")
        encoded = [(str(p), p.read_bytes()) for p in paths]
        set_desc = (
            f"{'--images' if args.images is not None else 'default sample (data/make_sample.py: synthetic shapes)'}"
            f": {len(paths)} files under {root}"
        )
    if args.max_images is not None:
        encoded = encoded[: args.max_images]
        set_desc += f", first {len(encoded)} used (--max-images)"

    print(f"images: {set_desc}", flush=True)
    t0 = time.perf_counter()
    feats = compute_features(encoded, weights_path, args.repeats)
    maps = feats.maps
    print(
        f"features: {maps.shape} float32 in {time.perf_counter() - t0:.1f} s; backbone "
        f"{feats.backbone_ms_per_image:.1f} "
        f"ms/image (warm, batch {BACKBONE_BATCH}, best of {args.repeats}); "
        f"zeros {np.mean(maps == 0):.1%}, max {maps.max():.3g}, "
        f"pooled std across images {maps.mean(axis=(1, 2)).std(axis=0).mean():.3g}",
        flush=True,
    )
    for name in feats.skipped:
        print(f"  skipped (cannot decode): {name}")

    # -- filters ---------------------------------------------------------------------------------
    dtypes = ["float16", "float32"] if args.float32 else ["float16"]
    rng = np.random.default_rng(args.seed)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="featcache-bench-", dir=args.tmpdir) as tmp:
        for dtype in dtypes:
            for cand in candidates():
                results.append(
                    measure(cand, dtype, maps, Path(tmp), args.repeats, args.single_rows, rng, args.slow_seconds)
                )
                r = results[-1]
                print(
                    f"  measured {cand.name} chunk {cand.chunk_rows} {dtype}: "
                    f"{r.file_bytes / r.n / 1024:.1f} KB/row, write {r.write_s:.2f} s",
                    flush=True,
                )

    # -- report ----------------------------------------------------------------------------------
    results.sort(key=lambda r: (r.cand.name, r.cand.chunk_rows, r.dtype))
    headers = [
        "filter",
        "chunk",
        "dtype",
        "KB/row",
        "size/raw",
        "write MB/s",
        "write ms/row",
        "write/backbone",
        "read MB/s",
        "1-row ms",
        "runs",
        "plugin",
        "featcache name",
    ]
    rows = [
        [
            r.cand.name,
            str(r.cand.chunk_rows),
            r.dtype,
            f"{r.file_bytes / r.n / 1024:.1f}",
            f"{r.file_bytes / r.raw_bytes:.3f}",
            f"{r.raw_bytes / r.write_s / 1e6:.0f}",
            f"{r.write_ms_per_row:.2f}",
            f"{100 * r.write_ms_per_row / feats.backbone_ms_per_image:.1f}%",
            f"{r.raw_bytes / r.read_s / 1e6:.0f}",
            f"{1000 * r.row_read_s:.3f}",
            str(r.runs),
            "yes" if r.cand.plugin else "no",
            r.cand.featcache_name(),
        ]
        for r in results
    ]
    print()
    print(f"maps storage, {len(maps)} rows of {maps.shape[1:]} from {set_desc}")
    print(
        f"weights: {'RANDOM (meaningless)' if random_weights else weights_path}; h5py {h5py.__version__}, "
        f"HDF5 {h5py.version.hdf5_version}, hdf5plugin "
        f"{getattr(hdf5plugin, 'version', '-') if hdf5plugin is not None else 'not installed (plugin filters skipped)'}"
    )
    print(
        f"best of {args.repeats} runs (1 when the first write took > {args.slow_seconds:g} s); MB/s "
        f"are raw (uncompressed) MB per second; write includes the float32 cast and "
        f"the close, no fsync; reads from the page cache; 1-row ms = mean over "
        f"{min(args.single_rows, len(maps))} random rows; "
        f"write/backbone = write time per row / backbone time per image ({feats.backbone_ms_per_image:.1f} ms)"
    )
    print(table(headers, rows, left={0, 2, 11, 12}))
    for dtype in dtypes:
        print("\n".join(tradeoff(results, dtype, feats.backbone_ms_per_image)))
    if random_weights:
        print(loud)
    print(f"total {time.perf_counter() - t_start:.0f} s")
    print(f"command: {command}")


if __name__ == "__main__":
    main()
