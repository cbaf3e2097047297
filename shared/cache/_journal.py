"""Commit journals: one small fsync'd record per finished shard, appended beside the manifest.

Rewriting ``manifest.json`` after every shard costs O(shards so far) per shard (a 10,000-shard
cache would write gigabytes of bookkeeping); appending one record to a journal costs O(1). Every
writer (a single run is part 0/1) appends to its own journal ``CACHE/parts/part-I-of-N.journal``:
no two processes ever append to the same file, so no record can interleave with another's, on any
filesystem (O_APPEND is not atomic over NFS). :func:`featcache.shared.cache._manifest.Manifest.load`
replays the journals after ``manifest.json``; a *fold* (:func:`featcache.shared.cache._parts.fold`)
writes the replayed manifest atomically and then retires the journals (see docs/cache-format.md).

File format: lines, each ``CRC SP JSON LF``, where ``CRC`` is the 8 lower-case hex digits of the
zlib CRC-32 of the JSON bytes. The first line is the header ``{"format": "featcache-journal",
"id": <random hex>, "generation": <the manifest's created>, "part": "I/N"}``; every other line is a
record ``{"shard": <shard record as in the manifest>, "failed": [<failed inputs of that shard>]}``.
A line without its LF (a kill mid-append) or whose CRC does not match is ignored; so is a record
the manifest's validation refuses. Nothing here opens a path read from a journal.
"""

from __future__ import annotations

import json
import os
import re
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FeatcacheError
from .fsutil import fsync_dir, open_regular

FORMAT = "featcache-journal"
SUFFIX = ".journal"
NAME_RE = re.compile(r"^part-(\d+)-of-(\d+)\.journal$")
# Longest header line read (the header is ~150 bytes; a longer first line is not a journal).
MAX_HEADER_BYTES = 4096
# Longest record line accepted (a shard record with many failed inputs); longer lines are skipped.
MAX_RECORD_BYTES = 1 << 24
# Bytes of a journal read at a time.
READ_CHUNK = 1 << 20


def frame(obj: Any) -> bytes:
    """``obj`` as one journal line: CRC-32 in hex, a space, compact JSON, a newline."""
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return b"%08x %s\n" % (zlib.crc32(body), body)


def unframe(line: bytes) -> Any | None:
    """The JSON value of one line (without its LF), or None when its CRC or JSON is wrong."""
    if len(line) < 10 or line[8:9] != b" ":
        return None
    body = line[9:]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


@dataclass
class Scan:
    """What :func:`scan` read from one journal: its header's ``id``, ``generation`` and ``part``,
    the records from the start offset on as ``(offset of the line, value)``, and ``end``: the offset
    just past the last complete line (where the next replay starts)."""

    id: str
    generation: str
    part: str
    records: list[tuple[int, Any]] = field(default_factory=list)
    end: int = 0


def scan(path: Path, start: int = 0) -> Scan | None:
    """Read the journal at ``path`` from byte ``start`` (0: just after the header). None when it is
    not a journal (no valid header), missing, or not a regular file (a link is never followed)."""
    try:
        fd = open_regular(path, os.O_RDONLY)
    except (OSError, FeatcacheError):  # missing, or a link or FIFO planted under its name
        return None
    try:
        head = os.pread(fd, MAX_HEADER_BYTES, 0)
        nl = head.find(b"\n")
        header = unframe(head[:nl]) if nl >= 0 else None
        if not (
            isinstance(header, dict)
            and header.get("format") == FORMAT
            and all(isinstance(header.get(k), str) for k in ("id", "generation", "part"))
        ):
            return None
        out = Scan(header["id"], header["generation"], header["part"], end=nl + 1)
        pos = max(start, nl + 1)
        size = os.fstat(fd).st_size
        if pos > size:  # the manifest's offset is past this file's end: it is not the file it saw
            pos = nl + 1
        out.end = _read_records(fd, pos, size, out.records)
    finally:
        os.close(fd)
    return out


def _read_records(fd: int, pos: int, size: int, records: list[tuple[int, Any]]) -> int:
    """Append ``(offset, value)`` of each valid complete line of ``fd`` from ``pos`` to ``size`` to
    ``records``, reading :data:`READ_CHUNK` bytes at a time (a journal is untrusted: it may be huge,
    one endless line, or sparse), so memory stays under ``MAX_RECORD_BYTES`` plus a chunk; return the
    offset just past the last complete line."""
    buf, base, end, skipping, read_at = b"", pos, pos, False, pos
    while read_at < size:
        data = os.pread(fd, min(READ_CHUNK, size - read_at), read_at)
        if not data:
            break
        read_at += len(data)
        if skipping and b"\n" not in data:
            base += len(data)  # still inside the overlong line
            continue
        at, look = 0, len(buf)  # lines end in the new data only
        buf += data
        while (nl := buf.find(b"\n", max(at, look))) >= 0:
            if not skipping and nl - at <= MAX_RECORD_BYTES:
                value = unframe(buf[at:nl])
                if value is not None:
                    records.append((base + at, value))
            skipping, at = False, nl + 1
            end = base + at
        buf, base = buf[at:], base + at
        if len(buf) > MAX_RECORD_BYTES:  # a line too long for a record: dropped up to its end
            skipping, base, buf = True, base + len(buf), b""
    return end


class JournalWriter:
    """Appends records to a new journal at ``path`` (whatever was there is unlinked first, never
    written through). Each :meth:`append` is one ``write`` of one line and an ``fdatasync``: when it
    returns, the record survives a power cut; a kill in the middle leaves a torn line readers ignore."""

    def __init__(self, path: Path, generation: str, part: str):
        self.path = path
        self.id = uuid.uuid4().hex
        self.records = 0
        self.bytes = 0
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self._fd: int | None = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
        )
        self._write(frame({"format": FORMAT, "id": self.id, "generation": generation, "part": part}))
        os.fsync(self._fd)
        fsync_dir(path.parent)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        assert self._fd is not None, "callers check that the journal is open"
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self.bytes += len(data)

    def append(self, obj: Any) -> None:
        """Append one record durably. A failed write (disk full) raises an ``OSError`` naming the
        journal (a write or sync on a descriptor names no file); a torn record at the end is
        ignored by replay, as after a kill."""
        if self._fd is None:
            raise ValueError(f"{self.path}: journal is closed")
        try:
            self._write(frame(obj))
            os.fdatasync(self._fd)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror or str(exc), str(self.path)) from exc
        self.records += 1

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
