"""A picture of where a row's feature maps are active, drawn without TensorFlow or matplotlib.

The ``h x w`` map energy (mean activation over channels) is upsampled to the backbone's input size,
coloured (dark red to yellow) and blended over the source image. The source is decoded with Pillow
when it is installed (``pip install 'featcache[viz]'``) and the file still exists; otherwise the
heat map is drawn over a grey square. PNG files are written with zlib, so nothing else is needed.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write an ``(h, w, 3)`` uint8 image as an 8-bit RGB PNG."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))  # filter type 0 per scanline

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    Path(path).write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    )


def load_source(path: Path, size: tuple[int, int]) -> tuple[np.ndarray, str]:
    """The source image resized to ``size`` (h, w) as uint8 RGB, and where it came from."""
    if path.is_file():
        try:
            from PIL import Image
        except ImportError:
            grey = np.full((*size, 3), 128, np.uint8)
            return grey, "grey square (pip install 'featcache[viz]' to draw over the image)"
        try:
            with Image.open(path) as im:
                im = im.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
                return np.asarray(im, dtype=np.uint8), str(path)
        except OSError as exc:
            return np.full((*size, 3), 128, np.uint8), f"grey square ({path}: {exc})"
    return np.full((*size, 3), 128, np.uint8), f"grey square ({path} is no longer there)"


def heat_colours(v: np.ndarray) -> np.ndarray:
    """Values in [0, 1] ``(...)`` to RGB floats ``(..., 3)``: black, red, yellow, white."""
    v = np.clip(v, 0.0, 1.0)[..., None]
    return np.clip(np.concatenate([3 * v, 3 * v - 1, 3 * v - 2], axis=-1), 0.0, 1.0)


def energy_overlay(base: np.ndarray, energy: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend the ``(h, w)`` ``energy`` (any scale) over ``base`` ``(H, W, 3)`` uint8, H and W multiples of h, w."""
    H, W, _ = base.shape
    h, w = energy.shape
    e = energy.astype(np.float64)
    e = (e - e.min()) / (np.ptp(e) or 1.0)
    big = np.repeat(np.repeat(e, H // h, axis=0), W // w, axis=1)
    out = (1 - alpha) * base.astype(np.float64) + alpha * 255.0 * heat_colours(big)
    return np.clip(out, 0, 255).astype(np.uint8)
