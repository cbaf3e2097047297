"""Make featcache's sample dataset: synthetic images of ten shape classes, deterministic.

    python data/make_sample.py data/sample              # 10 classes x 30 images, in class folders
    python data/make_sample.py data/split --splits      # the same under train/ val/ test/

Each class is a kind of pattern (circle, square, stripes, ...) drawn with random colours, position,
scale and noise on images of random size (80-256 px), saved as JPEG (every fifth as PNG). The same
arguments give the same files, byte for byte. Nothing here is third-party data.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

CLASSES = (
    "checker",
    "circle",
    "cross",
    "diagonal",
    "dots",
    "hstripes",
    "ring",
    "square",
    "triangle",
    "vstripes",
)


def _mask(cls: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean ``(h, w)`` foreground of one pattern of class ``cls``."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
    r = rng.uniform(0.2, 0.4) * min(h, w)
    period = rng.uniform(0.08, 0.2) * min(h, w)
    if cls == "circle":
        return (y - cy) ** 2 + (x - cx) ** 2 < r**2
    if cls == "ring":
        d = np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
        return (d < r) & (d > 0.6 * r)
    if cls == "square":
        return (np.abs(y - cy) < r) & (np.abs(x - cx) < r)
    if cls == "triangle":
        return (y < cy + r) & (y - (cy - r) > 2 * np.abs(x - cx))
    if cls == "cross":
        t = 0.3 * r
        return ((np.abs(y - cy) < t) & (np.abs(x - cx) < r)) | ((np.abs(x - cx) < t) & (np.abs(y - cy) < r))
    if cls == "hstripes":
        return (y // period) % 2 == 0
    if cls == "vstripes":
        return (x // period) % 2 == 0
    if cls == "diagonal":
        return ((x + y) // period) % 2 == 0
    if cls == "checker":
        return ((x // period) + (y // period)) % 2 == 0
    if cls == "dots":
        return ((y % period) - period / 2) ** 2 + ((x % period) - period / 2) ** 2 < (period / 4) ** 2
    raise ValueError(cls)


def make_image(cls: str, rng: np.random.Generator) -> np.ndarray:
    """One ``(h, w, 3)`` uint8 image of class ``cls``."""
    h, w = (int(v) for v in rng.integers(80, 257, size=2))
    bg, fg = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    while np.abs(bg - fg).sum() < 150:
        fg = rng.uniform(0, 255, 3)
    m = _mask(cls, h, w, rng)[..., None]
    img = np.where(m, fg, bg) + rng.normal(0, rng.uniform(2, 20), (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_sample(
    out: str | os.PathLike[str], per_class: int = 30, classes: int = 10, seed: int = 0, splits: bool = False
) -> list[Path]:
    """Write ``classes * per_class`` images under ``out`` and return their paths.

    With ``splits``, images go to ``train/``, ``val/`` and ``test/`` (70/15/15 by position).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    out = Path(out)
    rng = np.random.default_rng(seed)
    written = []
    for cls in CLASSES[:classes]:
        for k in range(per_class):
            img = make_image(cls, rng)
            sub = Path(cls)
            if splits:
                part = "train" if k < 0.7 * per_class else "val" if k < 0.85 * per_class else "test"
                sub = Path(part) / cls
            png = k % 5 == 4
            path = out / sub / f"{cls}_{k:04d}.{'png' if png else 'jpg'}"
            path.parent.mkdir(parents=True, exist_ok=True)
            data = tf.io.encode_png(img) if png else tf.io.encode_jpeg(img, quality=90)
            path.write_bytes(data.numpy())
            written.append(path)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="folder to write (created; existing files with the same names are replaced)")
    ap.add_argument("--per-class", type=int, default=30, help="images per class (default 30)")
    ap.add_argument(
        "--classes",
        type=int,
        default=10,
        choices=range(1, len(CLASSES) + 1),
        metavar="1-10",
        help="number of classes (default 10)",
    )
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--splits", action="store_true", help="lay the images out under train/, val/ and test/")
    args = ap.parse_args()
    paths = make_sample(args.out, args.per_class, args.classes, args.seed, args.splits)
    print(f"wrote {len(paths)} images to {args.out}")


if __name__ == "__main__":
    main()
