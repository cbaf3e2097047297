"""Reading one input safely: refuse what is not a regular file, too many bytes, or too many pixels.

A listing may name anything: a FIFO called ``x.jpg`` (reading it blocks forever), ``/dev/zero``
(reading it never ends), a directory, a socket, a 1 MB PNG declaring 20000x20000 pixels (1.2 GB
once decoded). :func:`read_input` is the only way the extractor reads an input's bytes: it looks at
the file type before opening anything, opens without blocking, reads at most ``max_input_bytes``
and reads the image's declared size from its header (without decoding) before handing the bytes to
the decoder. Each refusal is a :class:`RefusedInput` whose message is the one-line reason recorded
in the manifest.

No TensorFlow here: the reader calls this from its tf.data map, and the CLI only needs the defaults.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass

from ..shared.errors import FeatcacheError
from ..shared.limits import DEFAULT_MAX_INPUT_BYTES, DEFAULT_MAX_PIXELS

_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (not DHT, JPG, DAC)
_JPEG_NO_LENGTH = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RSTn, SOI: markers without a segment
_JXL_MAGICS = (b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders


class RefusedInput(ValueError):
    """An input the extractor will not read; ``str(exc)`` is the reason, one line."""


@dataclass(frozen=True)
class InputLimits:
    """The most one input may cost: ``max_input_bytes`` bytes read, ``max_pixels`` pixels decoded
    (width x height x frames, as the header declares them)."""

    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        for name in ("max_input_bytes", "max_pixels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise FeatcacheError(f"{name}={value!r}: must be a positive integer")


def file_kind(mode: int) -> str | None:
    """What a non-regular file is (``"a named pipe (FIFO)"``...), or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")


def _check_file(st: os.stat_result, limits: InputLimits) -> None:
    kind = file_kind(st.st_mode)
    if kind is not None:
        raise RefusedInput(f"not a regular file: {kind}" if kind != "a directory" else "is a directory")
    if st.st_size == 0:
        raise RefusedInput("empty file (0 bytes)")
    if st.st_size > limits.max_input_bytes:
        raise RefusedInput(f"file too large: {st.st_size} bytes > max_input_bytes={limits.max_input_bytes}")


def read_input(path: bytes | str, limits: InputLimits) -> bytes:
    """The bytes of the image at ``path``, or :class:`RefusedInput` (``OSError`` when it cannot be read).

    The file type and size are checked with ``stat`` before opening (opening some devices has side
    effects), then again on the open descriptor (the name may have been swapped in between); the
    open never blocks (a FIFO), and at most ``max_input_bytes + 1`` bytes are read (a file that
    grows while read is refused too).
    """
    _check_file(os.stat(path), limits)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        _check_file(os.fstat(fd), limits)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(limits.max_input_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > limits.max_input_bytes:
        raise RefusedInput(f"file too large: grew past max_input_bytes={limits.max_input_bytes} while read")
    check_pixels(data, limits)
    return data


def check_pixels(data: bytes, limits: InputLimits) -> None:
    """Refuse an image whose header declares more than ``max_pixels`` pixels (all frames counted)."""
    size = declared_size(data)
    if size is None:
        return  # not an image format we know: the decoder says why it cannot read it
    fmt, width, height, frames = size
    pixels = width * height * frames
    if pixels > limits.max_pixels:
        many = f" x {frames} frames" if frames > 1 else ""
        raise RefusedInput(
            f"image too large: {fmt} of {width}x{height}{many} = {pixels} pixels > max_pixels={limits.max_pixels}"
        )


def declared_size(data: bytes) -> tuple[str, int, int, int] | None:
    """``(format, width, height, frames)`` as the header declares them, read without decoding;
    None when ``data`` is not a JPEG, PNG, GIF, BMP or WebP (or its header is cut short: the
    decoder then fails on it anyway). A JPEG XL, which the decoder would accept but whose size is
    not read here, is refused, and so is a TIFF, which it cannot decode (with a reason saying so)."""
    try:
        if data[:3] == b"\xff\xd8\xff":
            return _jpeg_size(data)
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            width, height = struct.unpack_from(">II", data, 16)
            return "PNG", width, height, 1
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return _gif_size(data)
        if data[:2] == b"BM":
            return _bmp_size(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
    except struct.error:  # cut short inside the header
        return None
    if data.startswith(_JXL_MAGICS):
        raise RefusedInput("JPEG XL is not accepted (its pixel count cannot be checked before decoding)")
    if data.startswith(_TIFF_MAGICS):
        raise RefusedInput(
            "TIFF is not read: TensorFlow's decoder reads JPEG, PNG, GIF, BMP and WebP only; convert it to one of those"
        )
    return None


def _jpeg_size(data: bytes) -> tuple[str, int, int, int] | None:
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in _JPEG_NO_LENGTH:
            at += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            return None
        (length,) = struct.unpack_from(">H", data, at + 2)
        if marker in _JPEG_SOF:
            height, width = struct.unpack_from(">HH", data, at + 5)
            return "JPEG", width, height, 1
        at += 2 + length
    return None


def _gif_size(data: bytes) -> tuple[str, int, int, int]:
    """The canvas grown to every frame's extent, and the number of frames: the decoder keeps every
    frame's pixels in memory, whatever frame it returns."""
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    at = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames = 0
    n = len(data)
    while at < n:
        block = data[at]
        if block == 0x2C:  # image descriptor
            left, top, w, h, fflags = struct.unpack_from("<HHHHB", data, at + 1)
            width, height = max(width, left + w), max(height, top + h)
            frames += 1
            at += 10 + (3 << ((fflags & 7) + 1) if fflags & 0x80 else 0) + 1  # + LZW minimum code size
        elif block == 0x21:  # extension: label, then sub-blocks
            at += 2
        else:  # trailer or garbage
            break
        while at < n and data[at]:  # sub-blocks up to the empty one
            at += data[at] + 1
        at += 1
    return "GIF", width, height, max(frames, 1)


def _bmp_size(data: bytes) -> tuple[str, int, int, int]:
    (header,) = struct.unpack_from("<I", data, 14)
    if header == 12:  # BITMAPCOREHEADER: 16-bit sizes
        width, height = struct.unpack_from("<HH", data, 18)
    else:
        width, height = struct.unpack_from("<ii", data, 18)
    return "BMP", abs(width), abs(height), 1


def _webp_size(data: bytes) -> tuple[str, int, int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        frames, at = 0, 12
        while at + 8 <= len(data):  # count the animation frames (RIFF chunks, padded to even sizes)
            (size,) = struct.unpack_from("<I", data, at + 4)
            frames += data[at : at + 4] == b"ANMF"
            at += 8 + size + (size & 1)
        return "WebP", w, h, max(frames, 1)
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack_from("<HH", data, 26)
        return "WebP", w & 0x3FFF, h & 0x3FFF, 1
    if chunk == b"VP8L" and data[20] == 0x2F:
        (bits,) = struct.unpack_from("<I", data, 21)
        return "WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, 1
    return None
