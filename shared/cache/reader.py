"""Reading a cache: what the trainer and the inspection commands use.

Only shards listed in the manifest are read. Each shard's own fingerprint attribute is checked
against the manifest's, so a shard file copied in from another cache is refused, not mixed.

h5py serialises every call under one global lock, so reads here are whole datasets or large,
chunk-aligned blocks, never row by row.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import deflate, schema
from ..errors import FeatcacheError, FingerprintMismatchError
from .fingerprint import IDENTITY_KEYS, check_compatible, differences
from .manifest import Manifest, ShardRecord
from .parts import list_shards
from .split import assign_splits

DEFAULT_BLOCK_ROWS = 256


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
    and reason when ``path`` is not a readable cache."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest = Manifest.load(self.path)

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
    def num_rows(self) -> int:
        return self.manifest.rows

    @property
    def shards(self) -> list[ShardRecord]:
        return self.manifest.shards

    @property
    def maps_shape(self) -> tuple[int, int, int]:
        return tuple(self.fingerprint["output_shape"])  # type: ignore[return-value]

    def shard_path(self, record: ShardRecord) -> Path:
        return self.path / record.file

    def check_fingerprint(self, expected: dict[str, Any]) -> None:
        """Raise :class:`FingerprintMismatchError` unless ``expected`` has this cache's identity."""
        check_compatible(self.fingerprint, expected, str(self.path))

    def require_complete(self) -> None:
        """Raise unless every shard of the plan is written."""
        missing = self.manifest.missing_shards()
        if missing:
            raise FeatcacheError(
                f"{self.path}: cache is incomplete: {len(missing)} of {self.manifest.num_shards} shards missing "
                f"({list_shards(missing)}); re-run the extraction to finish it (finalize=True merges what parallel "
                "workers finished), or train on what is there with allow_partial=True"
            )

    def open_shard(self, record: ShardRecord) -> h5py.File:
        """Open one shard read-only, checking it is HDF5 and carries this cache's fingerprint."""
        path = self.shard_path(record)
        try:
            f = h5py.File(path, "r")
        except FileNotFoundError:
            raise FeatcacheError(f"{path}: shard listed in the manifest is missing") from None
        except OSError as exc:
            raise FeatcacheError(f"{path}: shard is not a readable HDF5 file ({exc})") from None
        try:
            fp = json.loads(f.attrs["fingerprint"])
        except (KeyError, ValueError):
            f.close()
            raise FeatcacheError(f"{path}: shard has no fingerprint attribute") from None
        diff = differences(self.fingerprint, fp, IDENTITY_KEYS)
        if diff:
            f.close()
            raise FingerprintMismatchError(f"{path}: shard was made with different {'; '.join(diff)}")
        return f

    def read_columns(self, columns: tuple[str, ...] = (schema.LABEL, schema.ID, schema.INDEX, schema.SPLIT)) -> dict[str, np.ndarray]:
        """The named per-row datasets of every shard, concatenated in index order (ids as str objects).

        Maps are not a column here: use :meth:`iter_maps`.
        """
        parts: dict[str, list[np.ndarray]] = {k: [] for k in columns}
        for record in self.shards:
            with self.open_shard(record) as f:
                try:
                    for key in columns:
                        parts[key].append(f[key].asstr()[()].astype(object) if key == schema.ID else f[key][()])
                except (KeyError, OSError) as exc:
                    raise FeatcacheError(f"{self.shard_path(record)}: cannot read dataset ({exc})") from None
        empty = {
            schema.POOLED: np.zeros((0, self.maps_shape[-1]), schema.POOLED_DTYPE),
            schema.LABEL: np.zeros(0, schema.LABEL_DTYPE),
            schema.ID: np.zeros(0, object),
            schema.INDEX: np.zeros(0, schema.INDEX_DTYPE),
            schema.SPLIT: np.zeros(0, schema.SPLIT_DTYPE),
            schema.POOLED_VIEWS: np.zeros((0, max(self.views - 1, 0), self.maps_shape[-1]), schema.POOLED_DTYPE),
        }
        return {k: np.concatenate(v) if v else empty[k] for k, v in parts.items()}

    def splits(self, ids: np.ndarray, given: np.ndarray) -> np.ndarray:
        """Split codes of rows: the source's own (``given``), else by hash of the id with the cache's fractions."""
        return assign_splits(ids, given, self.manifest.split["fractions"])

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

    def iter_maps(
        self, block_rows: int = DEFAULT_BLOCK_ROWS, indices: np.ndarray | None = None, dtype: str | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(index (b,), maps (b, h, w, c))`` blocks of at most ``block_rows`` rows, in index order.

        Each block is one contiguous, chunk-aligned read; gzip'd rows (the default storage) are
        inflated on all cores (:mod:`featcache.shared.cache.deflate`). ``indices`` keeps only those listing
        positions (e.g. one split); ``dtype`` casts the maps (default: as stored).
        """
        keep = None if indices is None else np.asarray(indices, dtype=np.int64)
        step = max(schema.MAPS_CHUNK_ROWS, block_rows - block_rows % schema.MAPS_CHUNK_ROWS)
        for record in self.shards:
            with self.open_shard(record) as f:
                index = f[schema.INDEX][()]
                rows = np.arange(len(index)) if keep is None else np.flatnonzero(np.isin(index, keep))
                if len(rows) == 0:
                    continue
                maps = f[schema.MAPS]
                for sel in aligned_blocks(rows, step):
                    yield index[sel], read_block(maps, sel, dtype)

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
        to ``model.fit``. Imports TensorFlow; see :func:`featcache.shared.cache.tfdata.dataset` for
        ``options`` (``shuffle_buffer``, ``block_rows``, ``dtype``, ``with_index``).
        """
        from .tfdata import dataset

        return dataset(self, split, features, batch_size=batch_size, shuffle=shuffle, seed=seed, **options)


def aligned_blocks(rows: np.ndarray, step: int) -> Iterator[np.ndarray]:
    """Sorted row positions ``rows`` of one shard cut into the ``step``-aligned blocks that hold any."""
    if len(rows) == 0:
        return
    for start in range(int(rows[0]) - int(rows[0]) % step, int(rows[-1]) + 1, step):
        sel = rows[(rows >= start) & (rows < start + step)]
        if len(sel):
            yield sel


def read_block(dset: h5py.Dataset, sel: np.ndarray, dtype: str | None = None) -> np.ndarray:
    """Rows ``sel`` (sorted positions inside one aligned block) of ``dset``, cast to ``dtype``.

    gzip'd map rows (the default storage) are inflated on all cores straight into ``dtype``
    (:mod:`featcache.shared.cache.deflate`); anything else is one contiguous h5py read."""
    if deflate.is_row_gzip(dset):
        return deflate.read_rows(dset, sel, dtype)
    start, stop = int(sel[0]), int(sel[-1]) + 1
    block = dset[start:stop] if len(sel) == stop - start else dset[start:stop][sel - start]
    return block if dtype is None else block.astype(dtype)


def open_cache(path: str | Path) -> FeatureCache:
    """Open the cache at ``path`` for reading."""
    return FeatureCache(path)
