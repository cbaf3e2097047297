"""``CACHE/neighbours.npz``: the inspection commands' neighbour index, kept in the cache (derived data).

Past :data:`featcache.shared.inspection.knn.EXACT_MAX_ROWS` rows the inspection commands (near-duplicates,
outliers, the neighbours' label agreement of suspects) search each row's nearest rows through an
inverted-file index (:mod:`featcache.shared.inspection.knn`). Building it and searching it costs minutes
at 10^6 rows, so its result is kept: the index (reduction axes, list centres, each row's list) and the
neighbour graph (each row's ``k`` nearest rows and their cosines), with the key of the rows it was made
from: the sha256 of every shard the manifest lists, in order, and of the dead rows' positions.

- **current** (same key): used as it is;
- **a prefix** (the same shards first, and more after them, no new dead rows: what ``--update`` adding
  images makes): extended, the new rows searched and merged in, never rebuilt;
- anything else (a shard replaced, compacted or quarantined; rows retired): rebuilt and written anew.

It is untrusted like every file read from disk: a regular file (never through a link), an ``.npz`` whose
declared shapes and dtypes are checked before any array is inflated, with values in range (row numbers
inside the rows, lists inside the centres), else ignored (and rebuilt); the cosines are recomputed from
the vectors when it is loaded, so every similarity reported is exact whatever the file says. Written
atomically (a dot-name, fsync, rename); a cache that cannot be written (read-only) is searched without it.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._manifest import Manifest
from ._npz import declared_arrays
from .fsutil import NotARegularFileError, create_new, fsync_dir, open_regular, temp_path_for

NAME = "neighbours.npz"
VERSION = 1
ARRAYS = ("version", "shards", "dead", "axes", "centres", "assign", "rows", "cos")


@dataclass
class Key:
    """What the rows of a cache are made of: each listed shard's sha256, in manifest order, and the
    sha256 of the dead rows' positions."""

    shards: list[str]
    dead: str

    @classmethod
    def of(cls, manifest: Manifest) -> Key:
        dead = hashlib.sha256(np.asarray(sorted(manifest.dead), dtype="<i8").tobytes()).hexdigest()
        return cls([s.sha256 for s in manifest.shards], dead)


@dataclass
class Stored:
    """An index as kept: ``axes (c, d)``, ``centres (lists, d)`` float32, ``assign (n,)`` int32 (each
    row's list), ``rows (n, k)`` int64 (-1: none) and ``cos (n, k)`` float32, for the rows of ``key``."""

    key: Key
    axes: np.ndarray
    centres: np.ndarray
    assign: np.ndarray
    rows: np.ndarray
    cos: np.ndarray


def path_of(cache_dir: str | os.PathLike[str]) -> Path:
    return Path(cache_dir) / NAME


def save(cache_dir: str | os.PathLike[str], stored: Stored) -> bool:
    """Write ``stored`` atomically; False (nothing written) when the cache cannot be written."""
    final = path_of(cache_dir)
    tmp = temp_path_for(final)
    try:
        with os.fdopen(create_new(tmp), "wb") as fh:
            np.savez(
                fh,
                version=np.int64(VERSION),
                shards=np.array(stored.key.shards, dtype="<U64"),
                dead=np.array(stored.key.dead, dtype="<U64"),
                axes=stored.axes.astype(np.float32),
                centres=stored.centres.astype(np.float32),
                assign=stored.assign.astype(np.int32),
                rows=stored.rows.astype(np.int64),
                cos=stored.cos.astype(np.float32),
            )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
    return True


def load(cache_dir: str | os.PathLike[str], channels: int, rows_of: dict[int, int]) -> Stored | None:
    """The kept index of the cache at ``cache_dir`` for vectors of ``channels``, or None when there is
    none or it is not a well-formed index (a link, a FIFO, a corrupt zip, shapes or values out of range).
    ``rows_of``: the number of rows of its key's shards, by how many shards it names (the reader's
    count of the first ``s`` shards), so that its arrays can be checked before they are read."""
    path = path_of(cache_dir)
    if not os.path.lexists(path):
        return None
    try:
        fd = open_regular(path, os.O_RDONLY)
    except (NotARegularFileError, OSError):
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            data = fh.read()
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            declared = declared_arrays(z, ARRAYS)
        (s,), _ = declared["shards"]
        n = rows_of.get(int(s))
        if n is None:
            return None
        (lists, d), _ = declared["centres"]
        k = declared["rows"][0][1] if len(declared["rows"][0]) == 2 else -1
        expected = {
            "version": ((), "i"),
            "shards": ((s,), "U"),
            "dead": ((), "U"),
            "axes": ((channels, d), "f"),
            "centres": ((lists, d), "f"),
            "assign": ((n,), "i"),
            "rows": ((n, k), "i"),
            "cos": ((n, k), "f"),
        }
        for name, (shape, kind) in expected.items():
            got_shape, dtype = declared[name]
            if got_shape != shape or dtype.kind != kind or k < 1 or not 0 < d <= channels or lists < 1:
                return None
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            a = {name: z[name] for name in ARRAYS}
    except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile, MemoryError):
        return None
    if int(a["version"]) != VERSION:
        return None
    rows, assign = a["rows"], a["assign"]
    if len(rows) and (rows.min() < -1 or rows.max() >= len(rows)):
        return None
    if len(assign) and (assign.min() < 0 or assign.max() >= len(a["centres"])):
        return None
    if not (np.isfinite(a["axes"]).all() and np.isfinite(a["centres"]).all()):
        return None
    key = Key([str(v) for v in a["shards"].tolist()], str(a["dead"]))
    return Stored(key, a["axes"], a["centres"], assign.astype(np.int64), rows.astype(np.int64), a["cos"])


__all__ = ["NAME", "Key", "Stored", "load", "path_of", "save"]
