"""The row index: every shard's small per-row columns in one file, so start-up is one read, not S.

A reader that wants one column of every row (the trainer's start-up: labels, ids, splits and where
each row is stored) opens every shard file: an HDF5 open, an identity check and a few small reads,
~2 ms a shard, 20-30 s for a cache of 10,000 shards. ``CACHE/rows.h5`` holds the ``label``, ``id``,
``index`` and ``split`` datasets of every shard, concatenated in manifest order, with each shard's
first row (``offsets``) and each id's split hash (``split_unit``). :func:`refresh` writes it when
the cache is complete (at the end of every extraction, ``finalize``, ``compact`` and ``verify
--fix``), atomically, under the cache lock.

It is derived data, never the truth, and is used only while it is current:

- its ``built_from`` attribute is :func:`records_digest` of the manifest's shard records it was
  built from (each shard's number, file, inputs, rows, bytes and sha256): any change to the shard
  set (an update, a compaction, a shard dropped by ``verify --fix``) makes it stale;
- each shard file must still be a regular file with the byte size of its record and the
  modification time the index recorded (``mtime_ns``): a shard replaced since makes it stale;
- its datasets must have the shapes, dtypes and per-shard row counts of the records, and each
  shard's ``index`` values must be increasing inside that shard's inputs (the checks
  :func:`featcache.shared.cache._shard.shard_identity_problem` makes on a shard).

A stale, missing or malformed index is ignored: the reader reads the shards, as it always could
(:meth:`featcache.shared.cache._reader.FeatureCache.read_columns`). Rows retired or relabelled by an
update are applied by the reader from the manifest, exactly as for columns read from shards, so the
index stores what the shards store. Pooled vectors and maps are not copied (5 KB and ~30 KB a row
for MobileNetV2): the index stays ~40 bytes a row, cheap to rewrite after an update.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from pathlib import Path

import h5py
import numpy as np

from ..errors import FeatcacheError
from . import schema
from ._h5file import own_dataset
from ._manifest import Manifest, ShardRecord
from ._paths import cache_path
from ._split import hash_unit
from .fsutil import atomic_write_bytes, remove_stale_temps, write_failure

FORMAT = "featcache-row-index"
VERSION = 1
# The per-row columns copied, in the shards' own dtypes (ids as UTF-8 variable-length strings).
COLUMNS = tuple(schema.ROW_COLUMNS)
# Derived from them, once: (n,) float64 hash_unit of each id (featcache.shared.cache._split), what a
# split by hash compares with the fractions. Hashing is ~1 us an id: 10 s per 10 million rows.
SPLIT_UNIT = "split_unit"
ALL = (*COLUMNS, SPLIT_UNIT)
# Ids are stored as one UTF-8 byte string (strict, as the shards' HDF5 UTF-8 strings), each id followed by a NUL
# (which no id holds: HDF5 strings, the shards' storage, end at one): read and split in ~0.7 s for 10
# million ids, against ~3 s for h5py's variable-length strings (one heap object a row).
ID_BYTES = "id_utf8"
ID_END = b"\x00"
ID_CHUNK = 1 << 20
# Smaller caches get smaller chunks (a chunk is stored whole: a 15-row cache's index was 1 MB), from
# a guess of the bytes an id takes with its NUL
ID_CHUNK_MIN = 1 << 10
ID_BYTES_GUESS = 32
OFFSETS = "offsets"  # (S + 1,) int64: shard k's rows are [offsets[k], offsets[k + 1])
MTIMES = "mtime_ns"  # (S,) int64: each shard file's st_mtime_ns when the index was built


def records_digest(shards: list[ShardRecord]) -> str:
    """Hex sha256 of what identifies the shard set: each record's shard, file, inputs, rows, bytes
    and sha256, in manifest order (``completed`` times are left out: they do not change content)."""
    digest = hashlib.sha256()
    for r in shards:
        digest.update(json.dumps([r.shard, r.file, r.first_index, r.num_inputs, r.rows, r.bytes, r.sha256]).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def index_path(cache_dir: str | os.PathLike[str]) -> Path:
    """``CACHE/rows.h5``, checked not to lead out of the cache."""
    return cache_path(cache_dir, schema.ROW_INDEX_NAME)


def _mtimes(cache_dir: Path, shards: list[ShardRecord]) -> np.ndarray | None:
    """``(S,)`` int64 ``st_mtime_ns`` of each shard file, or None when one is not a regular file of
    its record's byte size (a link, missing, replaced). Shard names were checked by the manifest's
    validation (``shards/shard-NNNNN.h5``): only ``shards/`` itself can lead out of the cache."""
    cache_path(cache_dir, schema.SHARDS_DIR)
    out = np.empty(len(shards), np.int64)
    for k, r in enumerate(shards):
        try:
            st = os.lstat(cache_dir / r.file)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size != r.bytes:
            return None
        out[k] = st.st_mtime_ns
    return out


def load(cache_dir: str | os.PathLike[str], m: Manifest, columns: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """``columns`` (of :data:`COLUMNS` and :data:`SPLIT_UNIT`) of every shard of ``m``, concatenated
    in manifest order, plus :data:`OFFSETS` ``(S + 1,)`` int64; ids as str objects. None when the index is
    missing, stale or malformed (see the module docstring): read the shards instead."""
    cache_dir = Path(cache_dir)
    try:
        path = index_path(cache_dir)
        st = os.lstat(path)
    except (OSError, FeatcacheError):  # missing, or a link leading out of the cache
        return None
    if not stat.S_ISREG(st.st_mode) or not m.shards or any(c not in ALL for c in columns):
        return None
    try:
        with h5py.File(path, "r") as f:
            if not (_attr_is(f, "format", FORMAT) and _attr_is(f, "version", VERSION)):
                return None
            if not _attr_is(f, "built_from", records_digest(m.shards)):
                return None
            datasets = {key: own_dataset(f, key) for key in (OFFSETS, MTIMES, ID_BYTES, *_KINDS)}
            if not _well_formed(datasets, m.shards):  # shapes first: nothing unbounded is read
                return None
            offsets = datasets[OFFSETS][()]
            if offsets[0] != 0 or not np.array_equal(np.diff(offsets), [r.rows for r in m.shards]):
                return None
            mtimes = _mtimes(cache_dir, m.shards)
            if mtimes is None or not np.array_equal(datasets[MTIMES][()], mtimes):
                return None
            out = {OFFSETS: offsets}
            for key in dict.fromkeys((*columns, schema.INDEX)):
                if key == schema.ID:
                    out[key] = decode_ids(datasets[ID_BYTES][()], int(offsets[-1]))
                else:
                    out[key] = datasets[key][()]
    except (OSError, KeyError, ValueError, TypeError, FeatcacheError):
        return None
    if not _index_values_fit(out[schema.INDEX], offsets, m.shards):
        return None
    if SPLIT_UNIT in out and not ((out[SPLIT_UNIT] >= 0) & (out[SPLIT_UNIT] <= 1)).all():
        return None  # no hash_unit of an id (NaN included): rows would move between splits unseen
    return out


# numpy dtype kind of each (N,) column (ids are ID_BYTES, checked apart)
# numpy dtype kind of each numeric column stored as itself (ids are stored as ID_BYTES)
_KINDS = {
    **{key: np.dtype(dtype).kind for key, dtype in schema.ROW_COLUMNS.items() if key != schema.ID},
    SPLIT_UNIT: "f",
}


def _attr_is(f: h5py.File, key: str, expected: str | int) -> bool:
    """Whether attribute ``key`` is ``expected``, of its type (a hand-edited array, an empty or a
    float attribute is not: no comparison of odd types, no ``int(inf)``)."""
    value = f.attrs.get(key)
    if isinstance(expected, str):
        return isinstance(value, str) and value == expected
    return isinstance(value, (int, np.integer)) and int(value) == expected


def _well_formed(datasets: dict[str, h5py.Dataset], shards: list[ShardRecord]) -> bool:
    """Whether the datasets have the shapes and dtypes ``shards`` imply, before any is read: a
    hand-edited index declaring a huge dataset (a few bytes on disk, compressed) is refused here,
    never allocated. The ids' bytes cannot exceed the shard files' (they are stored there
    uncompressed, as HDF5 variable-length strings)."""
    n = sum(r.rows for r in shards)
    offsets, mtimes, blob = datasets[OFFSETS], datasets[MTIMES], datasets[ID_BYTES]
    if offsets.shape != (len(shards) + 1,) or offsets.dtype.kind != "i":
        return False
    if mtimes.shape != (len(shards),) or mtimes.dtype.kind != "i":
        return False
    if any(datasets[key].shape != (n,) or datasets[key].dtype.kind != kind for key, kind in _KINDS.items()):
        return False
    return blob.ndim == 1 and blob.dtype == np.uint8 and blob.shape[0] <= sum(r.bytes for r in shards)


def encode_ids(ids: np.ndarray) -> bytes:
    """``ids`` ``(n,)`` str as UTF-8 bytes, each followed by :data:`ID_END` (:class:`FeatcacheError`
    for an id holding it or a lone surrogate, which no shard can store)."""
    try:
        data = b"".join(i.encode("utf-8") + ID_END for i in ids)
    except UnicodeEncodeError as exc:
        raise FeatcacheError(f"an id is not valid Unicode ({exc}): it cannot be in the row index") from None
    if data.count(ID_END) != len(ids):
        raise FeatcacheError("an id holds a NUL character: it cannot be in the row index")
    return data


def decode_ids(blob: np.ndarray, n: int) -> np.ndarray:
    """``(n,)`` str objects from :data:`ID_BYTES` ``(B,)`` uint8 (``ValueError`` unless it holds
    exactly ``n`` ids, in valid UTF-8: an id no shard can hold would reach the commands' output as
    a lone surrogate, which printing or writing it as UTF-8 refuses with a traceback)."""
    parts = blob.tobytes().decode("utf-8").split(ID_END.decode())
    if len(parts) != n + 1 or parts[-1]:
        raise ValueError(f"{ID_BYTES} holds {len(parts) - 1} ids, not {n}")
    out = np.empty(n, object)
    out[:] = parts[:-1]
    return out


def _index_values_fit(index: np.ndarray, offsets: np.ndarray, shards: list[ShardRecord]) -> bool:
    """Whether each shard's ``index`` values are increasing and inside its inputs (vectorised over
    every row: what the reader checks of one shard, for all of them at once)."""
    if not len(index):
        return True
    rows = np.diff(offsets)
    first = np.repeat(np.array([r.first_index for r in shards], np.int64), rows)
    stop = np.repeat(np.array([r.first_index + r.num_inputs for r in shards], np.int64), rows)
    if not ((index >= first) & (index < stop)).all():
        return False
    step = np.diff(index) > 0
    starts = offsets[1:-1][offsets[1:-1] < len(index)]  # a new shard begins: no order across shards
    step[starts[starts > 0] - 1] = True
    return bool(step.all())


def is_current(cache_dir: str | os.PathLike[str], m: Manifest) -> bool:
    """Whether ``rows.h5`` is present and current for ``m``: what every reader would use. Reads
    every column (~1.5 s for 10 million rows), as checking fewer would leave an index that readers
    refuse for ids that are not UTF-8 or a ``split_unit`` out of [0, 1] in place, never written anew."""
    return load(cache_dir, m, ALL) is not None


def refresh(cache_dir: str | os.PathLike[str], m: Manifest, read_shard) -> bool:  # noqa: ANN001
    """Write ``rows.h5`` for the complete cache of ``m`` unless it is current; return whether it
    was written. Call with the cache lock held. ``read_shard(record) -> {column: array}`` reads a
    shard's :data:`COLUMNS` (opened and identity-checked by the reader: a shard that fails raises,
    and no index is written). Built in memory (~40 bytes a row: 400 MB for 10 million rows, what
    the trainer's start-up holds too), then written under a dot-name, fsync'd and renamed: a kill
    leaves the old index or none, and the dot-file is removed by the next refresh. HDF5 never
    writes to the disk itself: when a full disk made its close fail, h5py raised a RuntimeError and
    then crashed the process (a segmentation fault) as it freed the file; now a full disk is the
    ``OSError`` of one write, and a :class:`FeatcacheError` naming ``rows.h5``."""
    cache_dir = Path(cache_dir)
    path = index_path(cache_dir)
    remove_stale_temps(cache_dir, lambda name: name == schema.ROW_INDEX_NAME)
    if not m.complete or not m.shards or is_current(cache_dir, m):
        return False
    mtimes = _mtimes(cache_dir, m.shards)
    if mtimes is None:
        return False  # a shard is not its record: readers fall back to the shards, which say why
    offsets = np.concatenate([[0], np.cumsum([r.rows for r in m.shards])]).astype(np.int64)
    n = int(offsets[-1])
    dtypes = {
        schema.LABEL: schema.LABEL_DTYPE,
        schema.INDEX: schema.INDEX_DTYPE,
        schema.SPLIT: schema.SPLIT_DTYPE,
        SPLIT_UNIT: "float64",
    }
    buf = io.BytesIO()  # HDF5 never writes to the disk: a full disk is the plain OSError of one write
    try:
        with h5py.File(buf, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["version"] = VERSION
            f.attrs["built_from"] = records_digest(m.shards)
            f.create_dataset(OFFSETS, data=offsets)
            f.create_dataset(MTIMES, data=mtimes)
            out = {key: f.create_dataset(key, shape=(n,), dtype=dtype) for key, dtype in dtypes.items()}
            blob = f.create_dataset(
                ID_BYTES,
                shape=(0,),
                maxshape=(None,),
                dtype=np.uint8,
                chunks=(min(ID_CHUNK, max(ID_CHUNK_MIN, ID_BYTES_GUESS * n)),),
            )
            for k, record in enumerate(m.shards):
                lo, hi = int(offsets[k]), int(offsets[k + 1])
                if hi > lo:
                    columns = read_shard(record)
                    for key in dtypes:
                        out[key][lo:hi] = hash_unit(columns[schema.ID]) if key == SPLIT_UNIT else columns[key]
                    data = encode_ids(columns[schema.ID])
                    if data:
                        blob.resize((len(blob) + len(data),))
                        blob[len(blob) - len(data) :] = np.frombuffer(data, np.uint8)
        atomic_write_bytes(path, buf.getbuffer())
    except (OSError, RuntimeError) as exc:
        raise FeatcacheError(f"{path}: cannot write the row index ({write_failure(exc)})") from None
    return True


def remove(cache_dir: str | os.PathLike[str]) -> None:
    """Delete ``rows.h5`` (a regular file only): what ``overwrite=True`` does with the old cache's."""
    path = index_path(cache_dir)
    try:
        if stat.S_ISREG(os.lstat(path).st_mode):
            path.unlink()
    except FileNotFoundError:
        pass
