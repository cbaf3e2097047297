"""Reading a cache: what the trainer and the inspection commands use.

Only shards listed in the manifest are read, at the paths :func:`~featcache.shared.cache._paths.shard_path`
allows. Before a shard is used its identity is checked against its manifest record (cheaply: no
checksum, that is ``verify``'s job): its fingerprint, its byte size, its shard number, inputs and row
count, its index values, and the cache's ``listing_sha256`` it was written for (shards of older caches
lack that attribute and are checked without it). A shard file copied in from another cache is refused
with one line naming the file and what differs, never mixed in.

An updated cache (docs/updates.md) is read as its manifest says, by every method here: rows whose
input was removed or modified since they were written (the manifest's ``dead``) are skipped, and
rows relabelled since carry their new label and split. Readers therefore see the same rows as a
cache extracted from scratch from the current source (in another order).

Columns the cache's row index holds (labels, ids, index, splits: ``rows.h5``, written once the cache
is complete) are read from it, in one file, while it is current; else from every shard
(:mod:`~featcache.shared.cache._rowindex`).

h5py serialises every call under one global lock, so reads here are whole datasets or large,
chunk-aligned blocks, never row by row.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..arguments import bool_arg, dict_arg, dtype_arg, int_arg, keywords, path_arg, positions_arg
from ..errors import FeatcacheError
from . import _rowindex as rowindex
from . import schema
from ._blocks import DEFAULT_BLOCK_ROWS, FLOAT_DTYPES, ROW, SHARD, aligned_blocks
from ._fingerprint import check_compatible
from ._manifest import SHARDS_LISTED, Manifest, ShardRecord, list_shards
from ._paths import shard_path
from ._shard import Layout, Shard, cache_layout, open_shard_file
from ._split import assign_splits

# Pseudo-column: (n,) float64 hash_unit of each row's id, what a split by hash needs (FeatureCache.splits),
# from the row index when it is current, else NaN ("hash it when needed").
SPLIT_UNIT = rowindex.SPLIT_UNIT
# What read_columns reads: per-row datasets except maps (iter_maps), and the pseudo-columns.
COLUMNS = (
    schema.POOLED,
    schema.LABEL,
    schema.ID,
    schema.INDEX,
    schema.SPLIT,
    schema.POOLED_VIEWS,
    schema.TAPS,
    schema.TAPS_VIEWS,
    ROW,
    SHARD,
    SPLIT_UNIT,
)
# dataset()'s keyword arguments beyond its named ones (featcache.shared.cache._stream.dataset)
DATASET_OPTIONS = ("shuffle_buffer", "block_rows", "dtype", "with_index")


@dataclass
class PooledRows:
    """All pooled vectors of a cache, in index order.

    ``pooled`` ``(N, C)`` float32; ``label`` ``(N,)`` int32 (-1 unknown); ``id`` ``(N,)`` str objects;
    ``index`` ``(N,)`` int64 listing positions; ``split`` ``(N,)`` int8 codes (the source's own, or by
    hash of the id).
    """

    pooled: np.ndarray
    label: np.ndarray
    id: np.ndarray
    index: np.ndarray
    split: np.ndarray

    def __len__(self) -> int:
        return len(self.index)


class FeatureCache:
    """A cache opened for reading. ``FeatureCache(path)`` raises :class:`NotACacheError` with the file
    and reason when ``path`` is not a readable cache. ``row_index=False`` never uses the row index
    (``rows.h5``): every column is read from the shards (what the index is compared with)."""

    def __init__(self, path: str | Path, *, row_index: bool = True):
        self.path = path_arg("path", path)
        self._use_row_index = bool_arg("row_index", row_index)  # False: always read every shard (benchmarks, verify)
        self.manifest = Manifest.load(self.path)
        m = self.manifest
        # every per-row dataset the cache's shards hold: name -> (one row's shape, dtype) (schema.layout_of)
        self.layout: Layout = cache_layout(m)
        self._dead = np.asarray(sorted(m.dead), dtype=np.int64)
        relabelled = np.asarray(sorted(m.relabelled), dtype=np.int64).reshape(-1, 3)
        self._relabel_index = relabelled[:, 0]
        self._relabel_label = relabelled[:, 1].astype(schema.LABEL_DTYPE)
        self._relabel_split = relabelled[:, 2].astype(schema.SPLIT_DTYPE)
        # per generation whose class list differs from the cache's: its label numbers -> the cache's
        number = {c: k for k, c in enumerate(m.classes)}
        self._label_maps = {
            g.generation: np.array([number.get(c, schema.UNKNOWN_LABEL) for c in g.classes], dtype=schema.LABEL_DTYPE)
            for g in m.generations
            if g.classes != m.classes
        }

    @property
    def generation(self) -> int:
        """How many updates the cache has had (0: made in one go). Changes whenever what readers see
        changes, so a result can record which state of the cache it was computed from."""
        return self.manifest.generation

    @property
    def dead_rows(self) -> int:
        """Rows still in shard files but retired by an update (readers skip them)."""
        return len(self.manifest.dead)

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.manifest.fingerprint

    @property
    def classes(self) -> list[str]:
        return self.manifest.classes

    @property
    def random_weights(self) -> bool:
        return bool(self.fingerprint.get("random_weights"))

    @property
    def views(self) -> int:
        """Views per row: 1, or ``V`` when extracted with views (``pooled_views`` holds views 1..V-1)."""
        return schema.views_of(self.fingerprint)

    @property
    def taps(self) -> list[tuple[str, int]]:
        """The tapped layers and their widths, in the order of the ``taps`` columns (``[]``: none)."""
        return schema.taps_of(self.fingerprint)

    @property
    def num_rows(self) -> int:
        """Rows readers see (dead rows excluded)."""
        return self.manifest.live_rows

    @property
    def shards(self) -> list[ShardRecord]:
        return self.manifest.shards

    @property
    def has_maps(self) -> bool:
        """Whether the shards hold feature maps (False for a cache of imported vectors)."""
        return schema.has_maps(self.fingerprint)

    def require_maps(self, what: str) -> None:
        """Raise one line ending with ``what`` (what needs maps, and why) when the cache has none."""
        if not self.has_maps:
            raise FeatcacheError(
                f"{self.path}: the cache has no maps (vectors imported as "
                f"{str(self.fingerprint.get('backbone')).removeprefix(schema.EXTERNAL_PREFIX)!r}, pooled only): "
                f"{what}"
            )

    @property
    def maps_shape(self) -> tuple[int, int, int]:
        return tuple(self.fingerprint["output_shape"])

    def shard_path(self, record: ShardRecord) -> Path:
        """The record's file, checked to be the cache's own (:func:`~featcache.shared.cache._paths.shard_path`)."""
        return shard_path(self.path, record.file, record.shard)

    def check_fingerprint(self, expected: dict[str, Any]) -> None:
        """Raise :class:`FingerprintMismatchError` unless ``expected`` (a fingerprint dict) has this
        cache's identity."""
        check_compatible(self.fingerprint, dict_arg("expected", expected), str(self.path))

    def require_complete(self) -> None:
        """Raise unless every shard of the plan is written."""
        count = self.manifest.missing_count
        if count:
            missing = self.manifest.missing_shards(limit=SHARDS_LISTED)
            raise FeatcacheError(
                f"{self.path}: cache is incomplete: {count} of {self.manifest.num_shards} shards missing "
                f"({list_shards(missing)}{' ...' if count > len(missing) else ''}); re-run the extraction to "
                "finish it (finalize=True merges what parallel workers finished), or train on what is there "
                "with allow_partial=True"
            )

    def open_shard(self, record: ShardRecord, *, index_checked: bool = False) -> Shard:
        """Open one shard read-only (:func:`~featcache.shared.cache._shard.open_shard_file`: a regular
        file with the HDF5 signature), checking that it carries this cache's fingerprint, is the shard
        its record describes and holds the layout's datasets (:meth:`Shard.problem`).

        ``index_checked``: a current row index vouches for the file's size and its ``index`` values
        (copied from it when it was identity-checked, and it has kept its size and modification time
        since), so they are not read again; the fingerprint and the ``shard``/``first_index``/
        ``num_inputs``/listing attributes still are (~0.3 ms a shard): a file swapped in with the same
        size and ``touch -r`` (another shard of the cache, the same shard of a cache made with other
        weights) is refused, never read as this one."""
        # with a current index, the file was checked to be a regular file in shards/, inside the cache
        path = self.path / record.file if index_checked else self.shard_path(record)
        f = open_shard_file(path, self.layout, record.rows)
        try:
            size = record.bytes if index_checked else path.stat().st_size
            problem = f.problem(self.manifest, record, size, read_index=not index_checked)
            if problem is not None:
                raise problem
        except BaseException:
            f.close()
            raise
        return f

    def read_columns(
        self, columns: tuple[str, ...] = (schema.LABEL, schema.ID, schema.INDEX, schema.SPLIT)
    ) -> dict[str, np.ndarray]:
        """The named per-row datasets of every shard, concatenated in index order (ids as str objects).

        Maps are not a column here: use :meth:`iter_maps`. Dead rows are left out; labels and splits are
        the current ones (see the module docstring). The pseudo-columns :data:`ROW` and :data:`SHARD`
        say where each row is stored (read from no file); :data:`SPLIT_UNIT` is for :meth:`splits`.
        Columns the row index holds are read from it when it is current (one file,
        :mod:`~featcache.shared.cache._rowindex`), else from every shard.
        """
        parts: dict[str, list[np.ndarray]] = {k: [] for k in columns}
        for block in self.iter_columns(columns):
            for key in columns:
                parts[key].append(block[key])
        empty = {
            schema.POOLED_VIEWS: np.zeros((0, 0, self.maps_shape[-1]), schema.POOLED_DTYPE),  # views=1: none
            **{key: np.zeros((0, *tail), dtype) for key, (tail, dtype) in self.layout.items()},
            ROW: np.zeros(0, np.int64),
            SHARD: np.zeros(0, np.int64),
            SPLIT_UNIT: np.zeros(0, np.float64),
        }
        return {k: np.concatenate(v) if v else empty[k] for k, v in parts.items()}

    def iter_columns(
        self, columns: tuple[str, ...] = (schema.LABEL, schema.ID, schema.INDEX, schema.SPLIT)
    ) -> Iterator[dict[str, np.ndarray]]:
        """:meth:`read_columns` one shard at a time (in index order, shards without a live row skipped):
        memory bounded by a shard, for what streams a whole cache out (``export --format parquet``)."""
        if isinstance(columns, str) or not all(c in COLUMNS for c in columns):
            raise FeatcacheError(
                f"columns={columns!r}: expected a tuple of column names from {', '.join(COLUMNS)} (maps: iter_maps)"
            )
        for c in columns:
            if c in _LAYOUT_COLUMNS and c not in self.layout:
                raise FeatcacheError(f"{self.path}: the cache has no {c} dataset ({_HOW_TO_GET.get(c, 'views')})")
        wanted = tuple(dict.fromkeys((*columns, schema.INDEX)))
        stored = tuple(k for k in wanted if k not in (ROW, SHARD))
        for ordinal, record, where, read in self._stored_columns(stored):
            out: dict[str, np.ndarray] = {}
            try:
                index = read(schema.INDEX)
                live = self._live(index)
                for key in wanted:
                    if key == ROW:
                        value = np.arange(record.rows, dtype=np.int64)
                    elif key == SHARD:
                        value = np.full(record.rows, ordinal, np.int64)
                    else:
                        value = read(key)
                    if key == schema.LABEL:
                        # stored labels number the classes of the generation that wrote the shard
                        stored_classes = len(self.manifest.generation_of(record.shard).classes)
                        bad = label_problem(value, stored_classes)
                        if bad:
                            raise FeatcacheError(f"{where}: {bad}")
                        value = self._current_labels(record, value)
                    elif key == schema.SPLIT and (bad := split_problem(value)):
                        raise FeatcacheError(f"{where}: {bad}")
                    out[key] = value if live is None else value[live]
            except (KeyError, OSError, ValueError, TypeError) as exc:
                raise FeatcacheError(f"{where}: cannot read dataset ({exc})") from None
            if len(self._relabel_index):
                at = np.searchsorted(self._relabel_index, out[schema.INDEX])
                hit = (at < len(self._relabel_index)) & (
                    self._relabel_index[np.minimum(at, len(self._relabel_index) - 1)] == out[schema.INDEX]
                )
                for key, new in ((schema.LABEL, self._relabel_label), (schema.SPLIT, self._relabel_split)):
                    if key in out and hit.any():
                        out[key] = out[key].copy()
                        out[key][hit] = new[at[hit]]
            yield {k: out[k] for k in columns}

    def _stored_columns(
        self, keys: tuple[str, ...]
    ) -> Iterator[tuple[int, ShardRecord, Path, Callable[[str], np.ndarray]]]:
        """For each shard in manifest order: its ordinal, record, the file its labels and splits come
        from, and ``read(key)``, the shard's stored dataset ``key`` (checked shape and kind; ids as str
        objects; :data:`SPLIT_UNIT` NaN where the row index does not give it).

        With a current row index, the keys it holds come from it, and a shard is opened only for the
        others (pooled vectors), with the cheap part of the identity check (``index_checked=True`` of
        :meth:`open_shard`: the index was copied from the identity-checked shard, which has kept its
        size and modification time since). Without one, each shard is opened and fully checked."""
        in_index = tuple(k for k in keys if k in rowindex.ALL)
        stored = None
        if self._use_row_index:
            stored = rowindex.load(self.path, self.manifest, in_index or (schema.INDEX,))
        from_shards = [k for k in keys if stored is None or k not in stored]
        index_file = rowindex.index_path(self.path) if stored is not None else None
        opened: contextlib.AbstractContextManager[Shard | None]  # no shard opened when the index has every key
        for ordinal, record in enumerate(self.shards):
            if stored is None or index_file is None:  # both or neither
                where, opened, lo, hi = self.shard_path(record), self.open_shard(record), 0, 0
            else:
                where = index_file
                lo, hi = (int(v) for v in stored[rowindex.OFFSETS][ordinal : ordinal + 2])
                opened = self.open_shard(record, index_checked=True) if from_shards else contextlib.nullcontext()
            with opened as f:

                def read(
                    key: str, f: Shard | None = f, record: ShardRecord = record, lo: int = lo, hi: int = hi
                ) -> np.ndarray:
                    if stored is not None and key in stored:
                        return stored[key][lo:hi]
                    if key == SPLIT_UNIT:
                        return np.full(record.rows, np.nan)
                    assert f is not None, "a shard is opened for the keys the index does not hold"
                    return f.read(key)  # its errors name the shard: `where` may be the index

                yield ordinal, record, where, read

    def shard_columns(self, record: ShardRecord, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Datasets ``keys`` of one shard as stored (every row, labels in the numbering of the
        generation that wrote it), after the identity check of :meth:`open_shard`."""
        with self.open_shard(record) as f:
            return {key: f.read(key) for key in keys}

    def refresh_row_index(self) -> bool:
        """Write the row index (``rows.h5``) when the cache is complete and it is not current; return
        whether it was written. Call with the cache lock held (see :func:`rowindex.refresh`)."""
        return rowindex.refresh(self.path, self.manifest, lambda r: self.shard_columns(r, rowindex.COLUMNS))

    def _live(self, index: np.ndarray) -> np.ndarray | None:
        """Mask of the rows of ``index`` (listing positions, increasing: one shard's) that are not
        dead; None when all are live. O(rows + log dead) per shard, whatever the number of dead rows."""
        if not len(self._dead):
            return None
        dead = members(index, self._dead)
        return None if not dead.any() else ~dead

    def _current_labels(self, record: ShardRecord, label: np.ndarray) -> np.ndarray:
        """A shard's stored labels in the cache's current class numbering."""
        table = self._label_maps.get(self.manifest.generation_of(record.shard).generation)
        if table is None:
            return label
        if not len(table):
            return np.full_like(label, schema.UNKNOWN_LABEL)
        return np.where(label >= 0, table[np.clip(label, 0, max(len(table) - 1, 0))], label).astype(label.dtype)

    def splits(self, ids: np.ndarray, given: np.ndarray, units: np.ndarray | None = None) -> np.ndarray:
        """Split codes of rows: the source's own (``given``), else by hash of the id with the cache's
        fractions (``units``: the :data:`SPLIT_UNIT` column of the same rows, saving the hashing)."""
        return assign_splits(ids, given, self.manifest.split["fractions"], units)

    def load_pooled(self) -> PooledRows:
        """Every pooled vector with its label, id, index and split, in index order."""
        c = self.read_columns((schema.POOLED, schema.LABEL, schema.ID, schema.INDEX, schema.SPLIT))
        return PooledRows(
            pooled=c[schema.POOLED],
            label=c[schema.LABEL],
            id=c[schema.ID],
            index=c[schema.INDEX],
            split=self.splits(c[schema.ID], c[schema.SPLIT]),
        )

    def load_pooled_views(self) -> np.ndarray:
        """``(N, V, C)`` float32: every row's pooled vectors of all its views (view 0 first), in index
        order (the rows of :meth:`load_pooled`). A cache without views gives ``(N, 1, C)``."""
        if self.views == 1:
            return self.read_columns((schema.POOLED,))[schema.POOLED][:, None]
        c = self.read_columns((schema.POOLED, schema.POOLED_VIEWS))
        return np.concatenate([c[schema.POOLED][:, None], c[schema.POOLED_VIEWS]], axis=1)

    def load_taps_views(self) -> np.ndarray:
        """``(N, V, T)`` float32: every row's taps of all its views (view 0 first), in index order, as
        :meth:`load_pooled_views` for the pooled vectors."""
        if self.views == 1:
            return self.read_columns((schema.TAPS,))[schema.TAPS][:, None]
        c = self.read_columns((schema.TAPS, schema.TAPS_VIEWS))
        return np.concatenate([c[schema.TAPS][:, None], c[schema.TAPS_VIEWS]], axis=1)

    def iter_maps(
        self,
        block_rows: int = DEFAULT_BLOCK_ROWS,
        indices: ArrayLike | None = None,
        dtype: str | None = None,
        *,
        dataset: str = schema.MAPS,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(index (b,), maps (b, h, w, c))`` blocks of at most ``block_rows`` rows, in index order.

        Each block is one contiguous, chunk-aligned read; gzip'd rows (the default storage) are
        inflated on all cores (:mod:`featcache.shared.cache._deflate`). ``indices`` keeps only those listing
        positions (e.g. one split; each in ``0 .. num_inputs - 1``, else an error); ``dtype`` casts the
        maps to a float dtype (default: as stored). Dead rows are skipped. ``dataset="top_input"``
        reads the kept input of the backbone's last block instead of the maps, the same way.
        """
        if dataset not in (schema.MAPS, schema.TOP_INPUT):
            raise FeatcacheError(f"dataset={dataset!r}: expected {schema.MAPS!r} or {schema.TOP_INPUT!r}")
        if dataset not in self.layout:
            raise FeatcacheError(f"{self.path}: the cache has no {dataset} dataset ({_HOW_TO_GET[dataset]})")
        block_rows = int_arg("block_rows", block_rows, minimum=1)
        dtype = dtype_arg("dtype", dtype, FLOAT_DTYPES, optional=True)
        self.require_maps("iter_maps reads maps")
        keep = None if indices is None else np.unique(positions_arg("indices", indices, self.manifest.num_inputs))
        step = max(schema.MAPS_CHUNK_ROWS, block_rows - block_rows % schema.MAPS_CHUNK_ROWS)
        for record in self.shards:
            with self.open_shard(record) as f:
                index = f.read(schema.INDEX)
                rows = np.arange(len(index)) if keep is None else np.flatnonzero(members(index, keep))
                live = self._live(index[rows])
                if live is not None:
                    rows = rows[live]
                if len(rows) == 0:
                    continue
                for sel in aligned_blocks(rows, step):
                    yield index[sel], f.read(dataset, sel, dtype)

    def dataset(
        self,
        split: str = "train",
        features: str = "pooled",
        batch_size: int = 32,
        shuffle: bool | None = None,
        seed: int = 0,
        **options: Any,
    ) -> Any:
        """A ``tf.data.Dataset`` of ``(features, label)`` batches of one split, streamed from the shards.

        ``features="pooled"`` gives ``(b, C)`` float32, ``"maps"`` ``(b, H, W, C)`` float32; labels are
        ``(b,)`` int32 class numbers (unlabelled rows are left out). ``shuffle`` (default: only for
        ``"train"``) reorders rows every epoch, reproducibly for a ``seed``, in bounded memory. Feed it
        to ``model.fit``. Imports TensorFlow; see :func:`featcache.shared.cache._stream.dataset` for
        ``options`` (``shuffle_buffer``, ``block_rows``, ``dtype``, ``with_index``).
        """
        keywords("dataset", options, ("split", "features", "batch_size", "shuffle", "seed", *DATASET_OPTIONS))
        from ._stream import dataset

        return dataset(self, split, features, batch_size=batch_size, shuffle=shuffle, seed=seed, **options)


def members(values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """``np.isin(values, wanted)`` for increasing ``values`` (one shard's ``index``) and sorted
    ``wanted`` (unique), in O(len(values) log len(wanted)): only the part of ``wanted`` inside
    ``values``' range is looked at, so reading every shard costs O(total rows), not O(shards x wanted)."""
    if not len(values) or not len(wanted):
        return np.zeros(len(values), dtype=bool)
    lo = np.searchsorted(wanted, values[0], side="left")
    hi = np.searchsorted(wanted, values[-1], side="right")
    part = wanted[lo:hi]
    if not len(part):
        return np.zeros(len(values), dtype=bool)
    at = np.searchsorted(part, values).clip(0, len(part) - 1)
    return part[at] == values


# Columns checked against the cache's layout (one row's shape), present only in caches that have them.
_LAYOUT_COLUMNS = (schema.TAPS, schema.TAPS_VIEWS)
# How a cache gets an optional dataset (the extraction's argument).
_HOW_TO_GET = {
    schema.TAPS: "extract it with taps='default' or layer names",
    schema.TAPS_VIEWS: "extract it with taps and views",
    schema.TOP_INPUT: "extract it with keep_top_input=True",
}


def label_problem(label: np.ndarray, num_classes: int) -> str | None:
    """Why ``label`` ``(n,)`` int does not fit a manifest of ``num_classes`` classes (-1 = unknown), or None."""
    bad = (label < schema.UNKNOWN_LABEL) | (label >= num_classes)
    if not bad.any():
        return None
    return (
        f"label {int(label[bad][0])} is not a class of the manifest ({num_classes} classes, "
        f"-1 for unknown); {int(bad.sum())} rows affected"
    )


def split_problem(split: np.ndarray) -> str | None:
    """Why ``split`` ``(n,)`` int8 holds a code that is no split (0 train, 1 val, 2 test, -1 none), or None.

    Readers index the split names with these codes: an out-of-range code from a hand-edited shard
    must be one line naming the shard, never an IndexError (or a row silently in no split)."""
    bad = (split < schema.NO_SPLIT) | (split >= len(schema.SPLITS))
    if not bad.any():
        return None
    first = int(split[bad][0])
    return f"split code {first} is not a split (0 train, 1 val, 2 test, -1 none); {int(bad.sum())} rows affected"


def open_cache(path: str | Path) -> FeatureCache:
    """Open the cache at ``path`` (a str or Path) for reading."""
    return FeatureCache(path)
