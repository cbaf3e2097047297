"""Source images for pictures and thumbnails, and a picture of where a row's feature maps are active,
drawn without TensorFlow or matplotlib.

A cache (its manifest and ids) may come from anyone, so where a row's image is and how it is read
are decided here once, for the report's thumbnails and ``show --png`` alike:
:func:`source_image` says where a row's source file is (inside the source the extractor listed, or
nowhere), and :func:`decode` reads it as an input (a FIFO or device refused without blocking, at most
``shared.limits.DEFAULT_MAX_INPUT_BYTES``), refuses more pixels than the extractor would decode
(``DEFAULT_MAX_PIXELS``, from the header, before decoding) and decodes a JPEG already scaled down.

The ``h x w`` map energy (mean activation over channels) is upsampled to the backbone's input size,
coloured (dark red to yellow) and blended over the source image. The source is decoded with Pillow
when it is installed (``pip install 'featcache[viz]'``) and the file still exists; otherwise the
heat map is drawn over a grey square. PNG files are written with zlib, so nothing else is needed.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..cache.fsutil import open_input
from ..errors import FeatcacheError
from ..limits import DEFAULT_MAX_INPUT_BYTES, DEFAULT_MAX_PIXELS


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


# Source kinds whose ids name files under ``source.root`` (extractor.sources: FOLDER_KINDS, csv and
# list); the ids of the other kinds (tfrecord, tar) come from inside records and name no file here.
FOLDER_KINDS = ("folder", "folder-splits", "unlabelled")
LISTED_KINDS = ("csv", "list")
RECORD_KINDS = ("tfrecord", "tar")
GONE = "no longer where the cache was made from (the source folder is gone)"
IN_RECORDS = "inside TFRecord or tar records, which are not read for pictures"
OUTSIDE = "outside the source folder (an absolute or '..' id, or a link leading out)"


def source_image(source: Mapping[str, Any], image_id: str) -> tuple[Path | None, str]:
    """Where the source image of the row ``image_id`` is, from the manifest's ``source`` entry: the
    file under ``source.root`` the extractor listed, or None and why not (:data:`GONE`,
    :data:`IN_RECORDS`, :data:`OUTSIDE`, or a kind unknown here). An id is never absolute, ``~`` or
    a URL, and never leaves the root by ``..``; in a folder source (whose walk follows no link below
    the class folders) the resolved path stays inside the resolved root. Nothing is opened."""
    kind, root = source.get("kind"), source.get("root")
    if kind not in FOLDER_KINDS + LISTED_KINDS:
        return None, IN_RECORDS if kind in RECORD_KINDS else f"from a source of kind {kind!r}, whose ids name no files"
    if not isinstance(root, str) or "://" in root or not os.path.isdir(root):
        return None, GONE
    rel = os.path.normpath(image_id) if image_id and "\0" not in image_id else ".."
    if os.path.isabs(rel) or rel.startswith("~") or rel == ".." or rel.startswith(f"..{os.sep}") or "://" in rel:
        return None, OUTSIDE
    path = os.path.join(root, rel)
    if kind in FOLDER_KINDS:
        real, top = os.path.realpath(path), os.path.realpath(root)
        if os.path.commonpath([real, top]) != top:
            return None, OUTSIDE
    return Path(path), ""


def decode(path: Path, box: tuple[int, int]) -> Any:
    """The image at ``path`` as a Pillow RGB image, a JPEG decoded already scaled towards ``box``
    ``(width, height)`` (``draft``); raises :class:`PictureError` (one line, the reason) for a file that
    is not regular, too large, declares more than ``DEFAULT_MAX_PIXELS`` pixels, or does not decode."""
    from PIL import Image

    try:
        with os.fdopen(open_input(path), "rb") as fh:  # a FIFO or device: refused, never waited on
            data = fh.read(DEFAULT_MAX_INPUT_BYTES + 1)
        if len(data) > DEFAULT_MAX_INPUT_BYTES:
            raise PictureError(f"file too large: over {DEFAULT_MAX_INPUT_BYTES} bytes")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the check below says it in one line
            im = Image.open(io.BytesIO(data))  # reads the header only
        width, height = im.size
        if width * height > DEFAULT_MAX_PIXELS:
            raise PictureError(f"image too large: {width}x{height} pixels > {DEFAULT_MAX_PIXELS}")
        im.draft("RGB", box)
        return im.convert("RGB")
    except (PictureError, FileNotFoundError):
        raise
    except FeatcacheError as exc:
        raise PictureError(str(exc).split(": ", 1)[-1]) from None
    except OSError as exc:
        raise PictureError(exc.strerror or str(exc) or type(exc).__name__) from None
    except Image.DecompressionBombError as exc:  # Image.open's own refusal, past twice the cap
        raise PictureError(f"image too large: {str(exc)[:200]}") from None
    except (ValueError, EOFError, SyntaxError, MemoryError) as exc:
        raise PictureError(f"{type(exc).__name__}: {str(exc)[:200]}") from None


class PictureError(Exception):
    """A source image that cannot be drawn; ``str(exc)`` is the reason, one line."""


POLICIES = ("squash", "centre-crop", "pad")  # the extractor's resize policies (shared.backbones.RESIZE_POLICIES)
PAD_GREY = 128  # what "pad" fills with (mid-grey, shared.backbones.PAD_VALUE rounded)


def resize_policy(fingerprint: Mapping[str, Any]) -> str:
    """The extractor's resize policy recorded in a cache's fingerprint (``resize``: "...,<policy>")."""
    policy = str(fingerprint.get("resize", "")).rsplit(",", 1)[-1]
    return policy if policy in POLICIES else "squash"


def as_seen(im: Any, size: tuple[int, int], policy: str = "squash") -> Any:
    """The Pillow image ``im`` as the backbone saw it at ``size`` (h, w): stretched (``squash``), its
    centred box of that aspect ratio (``centre-crop``) or centred on mid-grey bands (``pad``), resized."""
    import PIL.Image

    w, h = im.size
    target = size[1] / size[0]  # width / height
    if policy == "centre-crop" and w and h:
        cw, ch = (round(h * target), h) if w / h > target else (w, round(w / target))
        left, top = (w - cw) // 2, (h - ch) // 2
        im = im.crop((left, top, left + cw, top + ch))
    elif policy == "pad" and w and h:
        pw, ph = (w, round(w / target)) if w / h > target else (round(h * target), h)
        canvas = PIL.Image.new("RGB", (pw, ph), (PAD_GREY,) * 3)
        canvas.paste(im, ((pw - w) // 2, (ph - h) // 2))
        im = canvas
    return im.resize((size[1], size[0]), PIL.Image.Resampling.BILINEAR, reducing_gap=2.0)


def load_source(
    source: Mapping[str, Any], image_id: str, size: tuple[int, int], policy: str = "squash"
) -> tuple[np.ndarray, str]:
    """Row ``image_id``'s source image (:func:`source_image`) resized to ``size`` (h, w) as uint8 RGB
    (with the extractor's resize ``policy``: :func:`as_seen`), and where it came from; a grey square,
    and why, when it cannot be drawn."""
    grey = np.full((*size, 3), 128, np.uint8)
    path, why = source_image(source, image_id)
    if path is None:
        return grey, f"grey square ({image_id}: {why})"
    try:
        import PIL.Image  # noqa: F401 (Pillow is optional: the viz extra)
    except ImportError:
        return grey, "grey square (pip install 'featcache[viz]' to draw over the image)"
    try:
        im = as_seen(decode(path, (size[1], size[0])), size, policy)
    except FileNotFoundError:
        return grey, f"grey square ({path} is no longer there)"
    except PictureError as exc:
        return grey, f"grey square ({path}: {exc})"
    return np.asarray(im, dtype=np.uint8), str(path)


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
