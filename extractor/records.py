"""Inputs inside container files (TFRecord, tar shards) and behind URLs: where an input's bytes come from.

A record-based source lists, per input, its container file and the byte slice ``(offset, length)``
holding it; this module finds those slices once at listing time and reads any one of them later:

* **TFRecord**: ``length`` (uint64 LE) + masked CRC-32C of the length (uint32) + data + masked CRC-32C
  of the data (uint32), repeated. :func:`scan_tfrecord` walks the headers in pure Python (checking each
  length's CRC, so a garbled or cut file is found at listing time, not as a huge read later); the
  data is a serialized ``tf.train.Example``, decoded by :func:`parse_example` (a small protobuf
  wire-format reader: no TensorFlow needed to list a source). The data CRC is not checked (no fast
  CRC-32C here); a damaged payload fails to parse or to decode and is recorded as such.
* **tar** (WebDataset layout): :func:`scan_tar` reads the archive once with ``tarfile`` in
  streaming mode and keeps each member's data offset and size; the image is read later as that slice
  (nothing is extracted to disk).
* **GZIP** (``.gz`` TFRecord, ``.tar.gz``/``.tgz``): offsets are positions in the *decompressed*
  stream. A gzip stream cannot be seeked, so :class:`GzipCursors` keeps the stream open per
  container and moves forward through it; the extractor reads such sources' records sequentially
  in listing order (``make_dataset(sequential_reads=True)``), so a run decompresses each container
  about once (a read behind the cursor restarts from the file's beginning: correct, only slower).
* **URLs** (``gs://``, ``s3://``, ``file://``, ``ram://``...: any ``scheme://``) are opened with
  ``tf.io.gfile`` (TensorFlow imported then); local paths keep the hardened ``os`` reads of
  :mod:`featcache.extractor.inputs` (regular files only, opened without blocking, bounded sizes).

Every refusal while reading is a :class:`~featcache.extractor.inputs.RefusedInput` whose message
is the one-line reason recorded in the manifest.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
import tarfile
import threading
import zlib
from collections import OrderedDict
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import IO, Any, cast

from .inputs import InputLimits, RefusedInput, _check_file, file_kind

URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
TFRECORD_HEADER = 12  # length uint64 + its masked crc uint32
TFRECORD_FOOTER = 4  # masked crc of the data
# At most this many bytes are read of a tar member that holds a label (.cls, .json).
MAX_LABEL_BYTES = 64 * 1024
# Longest tar member name listed (a GNU long name can be any size; ids are held for every input).
MAX_MEMBER_NAME = 4096
GZIP_SUFFIXES = (".gz", ".gzip", ".tgz")
OPEN_GZIP_STREAMS = 2  # gzip containers kept open per process (reads go through one at a time)


def is_url(path: str | bytes) -> bool:
    """Whether ``path`` is a URL (``scheme://...``): such paths are read through ``tf.io.gfile``."""
    return URL_SCHEME.match(os.fsdecode(path)) is not None


def is_gzip(path: str | bytes) -> bool:
    """Whether a container is GZIP-compressed, by its name (``.gz``, ``.gzip``, ``.tgz``)."""
    return os.fsdecode(path).lower().endswith(GZIP_SUFFIXES)


def gfile() -> Any:
    """``tf.io.gfile`` (TensorFlow is imported on first use: only sources given as URLs need it)."""
    from ..shared.backbones import import_tensorflow

    return import_tensorflow().io.gfile


def stat_path(path: str | bytes) -> tuple[int, int]:
    """``(size in bytes, modification time in ns)`` of a local file or URL; ``(-1, 0)`` when it
    cannot be stat'ed (the listing's changed-input detection compares these)."""
    try:
        if is_url(path):
            st = gfile().stat(os.fsdecode(path))
            return int(st.length), int(st.mtime_nsec)
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except Exception:  # noqa: BLE001  (gfile raises tf.errors.*; any failure means "cannot be stat'ed")
        return -1, 0


# -- local and remote opening ---------------------------------------------------------------------


def open_container(path: str | bytes) -> IO[bytes]:
    """A binary file object on a container: a URL through ``tf.io.gfile``, a local path only when it
    is a regular file (checked before opening and on the open descriptor; opened without blocking).
    Raises :class:`RefusedInput` for what is not a regular file, ``OSError`` when it cannot be opened."""
    if is_url(path):
        name = os.fsdecode(path)
        _check_file_url(name)
        try:
            return gfile().GFile(name, "rb")
        except Exception as exc:  # noqa: BLE001
            raise OSError(f"cannot open {name}: {exc}") from None
    kind = file_kind(os.stat(path).st_mode)
    if kind is not None:
        raise RefusedInput(f"container is not a regular file: {kind}")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        kind = file_kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise RefusedInput(f"container is not a regular file: {kind}")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_file_url(name: str) -> None:
    """A ``file://`` URL must name a regular file too: ``tf.io.gfile`` opens it with a blocking
    ``open``, so a FIFO there would hang the job (and a device would be read without end)."""
    if name[:7].lower() != "file://":
        return
    try:
        st = os.stat(name[7:])
    except OSError:
        return  # missing or unreadable: gfile says so
    kind = file_kind(st.st_mode)
    if kind is not None:
        raise RefusedInput(f"container is not a regular file: {kind}")


def open_stream(path: str | bytes) -> IO[bytes]:
    """:func:`open_container`, decompressed when the name says GZIP (:func:`is_gzip`)."""
    fh = open_container(path)
    # a GzipFile is a binary stream; typeshed does not derive it from IO[bytes]
    return cast(IO[bytes], gzip.GzipFile(fileobj=fh, mode="rb")) if is_gzip(path) else fh


def read_url(path: str | bytes, limits: InputLimits) -> bytes:
    """A whole file at a URL, at most ``max_input_bytes`` (the size is checked before reading)."""
    name = os.fsdecode(path)
    _check_file_url(name)
    g = gfile()
    try:
        size = int(g.stat(name).length)
    except Exception as exc:  # noqa: BLE001
        raise OSError(f"cannot stat {name}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    if size == 0:
        raise RefusedInput("empty file (0 bytes)")
    if size > limits.max_input_bytes:
        raise RefusedInput(f"file too large: {size} bytes > max_input_bytes={limits.max_input_bytes}")
    with g.GFile(name, "rb") as fh:
        data = fh.read(limits.max_input_bytes + 1)
    if len(data) > limits.max_input_bytes:
        raise RefusedInput(f"file too large: grew past max_input_bytes={limits.max_input_bytes} while read")
    return data


def url_exists(path: str) -> bool:
    return bool(gfile().exists(path))


# -- reading one record ---------------------------------------------------------------------------


class GzipCursors:
    """Open decompressed streams, one per gzip container (the last :data:`OPEN_GZIP_STREAMS`), so
    that reading the records of a container in order decompresses it once: ``GzipFile.seek`` moves
    forward by decompressing and backward by starting over."""

    def __init__(self, keep: int = OPEN_GZIP_STREAMS):
        self._keep = keep
        self._open: OrderedDict[bytes, gzip.GzipFile] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, path: bytes, offset: int, length: int) -> bytes:
        with self._lock:
            stream = self._open.pop(path, None)
            if stream is None:
                stream = gzip.GzipFile(fileobj=open_container(path), mode="rb")
            try:
                stream.seek(offset)
                data = stream.read(length)
            except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
                _close(stream)
                raise RefusedInput(f"damaged gzip stream before byte {offset + length} ({exc})") from None
            self._open[path] = stream
            while len(self._open) > self._keep:
                _close(self._open.popitem(last=False)[1])
            return data

    def close(self) -> None:
        with self._lock:
            while self._open:
                _close(self._open.popitem()[1])


def _close(stream: gzip.GzipFile) -> None:
    fileobj = stream.fileobj
    stream.close()
    if fileobj is not None:
        # typeshed types fileobj as a read-only or write-only protocol; here it is open_container's IO[bytes]
        fileobj.close()  # type: ignore[union-attr]


_GZIP_CURSORS = GzipCursors()


def close_streams() -> None:
    """Close the gzip streams kept open (at the end of a run: a container rewritten before the next
    run must be opened afresh)."""
    _GZIP_CURSORS.close()


def read_slice(path: bytes, offset: int, length: int, limits: InputLimits) -> bytes:
    """``length`` bytes at ``offset`` of the container ``path`` (of its decompressed stream when
    gzip'd), or :class:`RefusedInput`: a record over ``max_input_bytes``, a container that is not a
    regular file, or one that ends before the slice does (truncated)."""
    if length > limits.max_input_bytes:
        raise RefusedInput(f"record too large: {length} bytes > max_input_bytes={limits.max_input_bytes}")
    if length == 0:
        raise RefusedInput("empty record (0 bytes)")
    if is_gzip(path):
        data = _GZIP_CURSORS.read(path, offset, length)
    elif is_url(path):
        with open_container(path) as fh:
            fh.seek(offset)
            data = fh.read(length)
    else:
        _check_container(os.stat(path))
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            _check_container(os.fstat(fd))
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
    if len(data) < length:
        raise RefusedInput(
            f"truncated: the record at byte {offset} needs {length} bytes, the file ends after {len(data)}"
        )
    return data


def _check_container(st: os.stat_result) -> None:
    """A container must be a regular file (its size is no limit: records are bounded one by one)."""
    _check_file(st, InputLimits(max_input_bytes=max(st.st_size, 1)))


# -- TFRecord -------------------------------------------------------------------------------------


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C of ``data``, rotated right by 15 bits plus 0xA282EAD8 (pure
    Python: used on the 8-byte length headers only)."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC32C[(crc ^ b) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


@dataclass(frozen=True)
class ScannedRecord:
    """One TFRecord record: its data's ``offset`` and ``length`` in the (decompressed) stream, the
    data itself (``None`` with a ``problem`` when the record is cut or its header is damaged)."""

    offset: int
    length: int
    data: bytes | None
    problem: str | None = None


def scan_tfrecord(stream: IO[bytes], max_record_bytes: int) -> Iterator[ScannedRecord]:
    """Each record of a TFRecord stream, in order. A record longer than ``max_record_bytes`` is
    skipped with a ``problem``; a damaged length header or a file ending inside a record yields a
    last record with a ``problem`` (the scan cannot find the records after it)."""
    at = 0
    while True:
        try:
            head = stream.read(TFRECORD_HEADER)
        except (EOFError, OSError, zlib.error) as exc:  # a gzip stream cut short or damaged
            yield ScannedRecord(at + TFRECORD_HEADER, 0, None, f"truncated: damaged stream at byte {at} ({exc})")
            return
        if not head:
            return
        if len(head) < TFRECORD_HEADER:
            yield ScannedRecord(at, 0, None, f"truncated: the file ends inside the record header at byte {at}")
            return
        length, crc = struct.unpack("<QI", head)
        if masked_crc32c(head[:8]) != crc:
            yield ScannedRecord(at + TFRECORD_HEADER, 0, None, f"damaged record header at byte {at} (length CRC)")
            return
        start = at + TFRECORD_HEADER
        try:
            if length > max_record_bytes:  # skipped, not held in memory: reading it is refused later
                skipped = _skip(stream, length + TFRECORD_FOOTER)
                if skipped < length + TFRECORD_FOOTER:
                    yield ScannedRecord(start, length, None, f"truncated: the record needs {length} bytes")
                    return
                yield ScannedRecord(start, length, None, f"record too large: {length} bytes > {max_record_bytes}")
                at = start + length + TFRECORD_FOOTER
                continue
            data = stream.read(length)
            tail = stream.read(TFRECORD_FOOTER)
        except (EOFError, OSError, zlib.error) as exc:
            yield ScannedRecord(start, length, None, f"truncated: damaged stream inside the record ({exc})")
            return
        if len(data) < length or len(tail) < TFRECORD_FOOTER:
            got = len(data)
            yield ScannedRecord(start, length, None, f"truncated: the record needs {length} bytes, {got} are left")
            return
        yield ScannedRecord(start, length, data)
        at = start + length + TFRECORD_FOOTER


def _skip(stream: IO[bytes], n: int, chunk: int = 1 << 20) -> int:
    """Read and drop ``n`` bytes of ``stream``; the number actually there."""
    done = 0
    while done < n:
        got = len(stream.read(min(chunk, n - done)))
        if not got:
            break
        done += got
    return done


# A tf.train.Example's feature: a list of bytes, of floats or of ints.
Feature = list[bytes] | list[float] | list[int]


def _varint(buf: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(buf) or shift > 63:
            raise ValueError("bad varint")
        b = buf[at]
        at += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, at


def _fields(buf: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, Any]]:
    """``(field number, wire type, value)`` of a protobuf message: the value is an int for varints,
    ``(start, stop)`` into ``buf`` for length-delimited fields, the raw bytes for fixed-size ones."""
    at, end = start, len(buf) if end is None else end
    value: Any  # as the wire type says: an int, a (start, stop) pair or bytes
    while at < end:
        key, at = _varint(buf, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(buf, at)
        elif wire == 2:
            size, at = _varint(buf, at)
            value, at = (at, at + size), at + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, at = buf[at : at + size], at + size
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if at > end:
            raise ValueError("field runs past the end of its message")
        yield number, wire, value


def _feature(buf: bytes, start: int, end: int) -> Feature:
    """A ``Feature`` message: its one list (``bytes_list`` 1, ``float_list`` 2, ``int64_list`` 3)."""
    out: list = []
    for number, wire, value in _fields(buf, start, end):
        if wire != 2 or number not in (1, 2, 3):
            continue
        for n, w, v in _fields(buf, *value):
            if n != 1:
                continue
            if number == 1 and w == 2:
                out.append(buf[v[0] : v[1]])
            elif number == 2:  # packed (a multiple of 4 bytes) or one fixed32
                if w == 2 and (v[1] - v[0]) % 4 == 0:
                    out += struct.unpack(f"<{(v[1] - v[0]) // 4}f", buf[v[0] : v[1]])
                elif w == 5:
                    out += struct.unpack("<f", v)
                else:
                    raise ValueError("malformed float_list")
            elif number == 3:  # one varint or packed varints
                if w not in (0, 2):
                    raise ValueError("malformed int64_list")
                items = [v] if w == 0 else _packed_varints(buf, *v)
                out += [x - (1 << 64) if x >= 1 << 63 else x for x in items]
    return out


def _packed_varints(buf: bytes, start: int, end: int) -> list[int]:
    out = []
    while start < end:
        v, start = _varint(buf, start)
        out.append(v)
    return out


def parse_example(data: bytes, keys: Collection[str]) -> dict[str, Feature]:
    """The features named ``keys`` of a serialized ``tf.train.Example`` (those it has), as lists.
    Raises ``ValueError`` when ``data`` is not a well-formed Example."""
    out: dict[str, Feature] = {}
    for number, wire, value in _fields(data):
        if number != 1 or wire != 2:  # Example.features
            continue
        for n, w, entry in _fields(data, *value):  # Features.feature: map<string, Feature> entries
            if n != 1 or w != 2:
                continue
            key: str | None = None
            feat: tuple[int, int] | None = None
            for en, ew, ev in _fields(data, *entry):
                if en == 1 and ew == 2:
                    key = data[ev[0] : ev[1]].decode("utf-8", "surrogateescape")
                elif en == 2 and ew == 2:
                    feat = ev
            if key is not None and key in keys:
                out[key] = _feature(data, *feat) if feat is not None else []
    return out


def example_image(data: bytes, image_key: str) -> bytes:
    """The encoded image of a serialized Example (its ``image_key`` feature's first bytes value),
    or :class:`RefusedInput` saying why there is none."""
    try:
        feats = parse_example(data, {image_key})
    except ValueError as exc:
        raise RefusedInput(f"not a tf.train.Example ({exc})") from None
    value = feats.get(image_key)
    if not value or not isinstance(value[0], bytes):
        raise RefusedInput(f"the record has no bytes feature {image_key!r}")
    if not value[0]:
        raise RefusedInput(f"the record's image {image_key!r} is empty (0 bytes)")
    return value[0]


# -- tar ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TarMember:
    """A regular file in a tar stream: ``name``, its data's ``offset`` and ``size`` in the
    (decompressed) stream, and its content when it is small and asked for (labels)."""

    name: str
    offset: int
    size: int
    content: bytes | None = None


def scan_tar(stream: IO[bytes], want_content: Collection[str]) -> tuple[list[TarMember], str | None]:
    """The regular members of a tar stream, in order, reading the content of those whose extension
    (after the first dot of the base name, lower case) is in ``want_content`` (at most
    :data:`MAX_LABEL_BYTES`); and a problem when the archive could not be read to its end. Members
    whose name is longer than :data:`MAX_MEMBER_NAME` characters are not listed (ids stay small)."""
    members: list[TarMember] = []
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for m in tar:
                # streaming: keep no TarInfo (a tar may hold millions of members); TarFile.members exists at
                # run time, typeshed does not declare it
                tar.members = []  # type: ignore[attr-defined]
                if not m.isfile() or len(m.name) > MAX_MEMBER_NAME:
                    continue
                content = None
                if member_extension(m.name) in want_content and m.size <= MAX_LABEL_BYTES:
                    fh = tar.extractfile(m)
                    content = fh.read() if fh is not None else None
                members.append(TarMember(m.name, m.offset_data, m.size, content))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        return members, f"unreadable after {len(members)} members ({type(exc).__name__}: {exc})"
    return members, None


def member_key(name: str) -> str:
    """A WebDataset key: the member's path up to the first dot of its base name."""
    head, _, base = name.rpartition("/")
    stem = base.split(".", 1)[0]
    return f"{head}/{stem}" if head else stem


def member_extension(name: str) -> str:
    """A WebDataset extension: what follows the first dot of the base name, lower case."""
    base = name.rpartition("/")[2]
    return base.split(".", 1)[1].lower() if "." in base else ""


# -- a listing's records --------------------------------------------------------------------------

RECORD_FORMATS = ("tfrecord", "tar")
DEFAULT_IMAGE_KEY = "image/encoded"


@dataclass
class Records:
    """Where each input of a record-based source is, beside its container path (``Source.paths``):
    ``offsets`` and ``lengths`` ``(n,)`` int64, the byte slice of the record in its container's
    (decompressed) stream; ``problems`` what the listing already found wrong with some (a cut
    record: reading it fails with that reason). ``format`` says what a slice holds: a serialized
    ``tf.train.Example`` whose ``image_key`` feature is the image (``"tfrecord"``), or the image
    itself (``"tar"``)."""

    format: str
    offsets: Any
    lengths: Any
    problems: dict[int, str]
    image_key: str = DEFAULT_IMAGE_KEY

    def read(self, i: int, path: bytes, limits: InputLimits) -> bytes:
        """The encoded image of record ``i`` (in ``path``), or :class:`RefusedInput` saying why not."""
        if i in self.problems:
            raise RefusedInput(self.problems[i])
        data = read_slice(path, int(self.offsets[i]), int(self.lengths[i]), limits)
        return example_image(data, self.image_key) if self.format == "tfrecord" else data

    def take(self, positions: Any) -> Records:
        """The records at ``positions`` (``(m,)`` int64 into this listing; -1 for an input that is
        gone, which reads as a refusal)."""
        import numpy as np

        pos = np.asarray(positions, dtype=np.int64)
        ok = pos >= 0
        problems = {k: self.problems[int(p)] for k, p in enumerate(pos.tolist()) if p in self.problems}
        problems.update({int(k): "no longer in the source" for k in np.flatnonzero(~ok)})
        return Records(
            self.format,
            np.where(ok, np.asarray(self.offsets)[np.maximum(pos, 0)], 0),
            np.where(ok, np.asarray(self.lengths)[np.maximum(pos, 0)], 0),
            problems,
            self.image_key,
        )
