"""What the trainer reads from a cache: labelled rows per split, and their inputs.

In memory, pooled vectors are loaded whole (5 KB per row) and maps, for map heads, are read in large
chunk-aligned blocks (``FeatureCache.iter_maps``), never row by row, into one float16 array per
split. Streamed (``pooled=False``), only each row's label, id, split and place in the shards are
loaded, and :mod:`~featcache.trainer.feed` reads the inputs epoch by epoch.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np

from ..shared.cache import ROW, SHARD, SPLIT_UNIT, FeatureCache, PooledRows, hash_unit, schema
from ..shared.cache.schema import SPLIT_CODES
from ..shared.errors import FeatcacheError
from .heads import TAPS

MAPS_READ_ROWS = 1024
CARVE_SALT = "featcache-carve-val:"


@dataclass
class Split:
    """Rows of one split, in index order: ``index (n,)`` listing positions, ``id (n,)``, ``y (n,)``
    int32 labels, ``shard (n,)`` and ``row (n,)`` int64 where each is stored (the reader's ``SHARD``
    and ``ROW``), ``pooled (n, C)`` float32 (None when streamed), ``maps (n, h, w, C)`` float16 once
    loaded, and ``views (n, V, C)`` float32, every view's pooled vector (view 0 = ``pooled``), when
    the cache has views and they were asked for (in memory)."""

    index: np.ndarray
    id: np.ndarray
    y: np.ndarray
    pooled: np.ndarray | None
    shard: np.ndarray | None = None  # None: rows of one shard, in order (a dataset made in memory)
    row: np.ndarray | None = None
    maps: np.ndarray | None = None
    views: np.ndarray | None = None
    top: np.ndarray | None = None  # (n, h, w, c) float16: the input of the backbone's last block, once loaded

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Dataset:
    classes: list[str]
    train: Split
    val: Split
    test: Split
    val_carved: bool
    unlabelled_rows: int
    notes: list[str] = field(default_factory=list)
    cache: FeatureCache | None = None  # where streamed inputs are read from
    streamed: bool = False  # inputs read from the shards epoch by epoch, not held (trainer.feed)
    # loaded with the layer taps: each split's pooled (and views) are the pooled maps' C channels, then
    # the taps' T (heads of features "pooled" read the first C, "taps" all of them)
    taps: int = 0

    @property
    def channels(self) -> int:
        """Channels ``C`` of a pooled vector (of the pooled maps only, without the taps)."""
        if self.train.pooled is not None:
            return self.train.pooled.shape[1] - self.taps
        assert self.cache is not None, "a streamed dataset reads its inputs from its cache"
        return self.cache.maps_shape[-1]

    def width(self, features: str) -> int:
        """The width of what a pooled head of feature set ``features`` reads: ``C``, or ``C + T``."""
        return self.channels + (self.taps if features == TAPS else 0)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def shard_row(cache: FeatureCache, listing_index: int) -> tuple[Path, int]:
    """The shard file holding the row at listing position ``listing_index``, and the row's position in it
    (a bisection of the shards' input ranges, which are in order: one shard opened, whatever their number)."""
    shards = cache.shards
    at = bisect.bisect_right(shards, listing_index, key=lambda r: r.first_index) - 1
    if at >= 0 and listing_index < shards[at].first_index + shards[at].num_inputs:
        record = shards[at]
        with cache.open_shard(record) as f:
            return cache.shard_path(record), int(np.flatnonzero(f.read(schema.INDEX) == listing_index)[0])
    raise KeyError(listing_index)


def require_finite(cache: FeatureCache, what: str, index: np.ndarray, values: np.ndarray) -> None:
    """Raise, naming the shard and row, when a row of ``values`` ``(n, ...)`` (at listing positions
    ``index`` ``(n,)``) holds a NaN or an infinity: one such row turns every head's weights into NaN."""
    if len(values) == 0:
        return
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bad.any():
        i = int(index[np.argmax(bad)])
        path, row = shard_row(cache, i)
        raise FeatcacheError(
            f"{path}: row {row} (listing index {i}) has non-finite {what} values (NaN or inf; "
            f"{int(bad.sum())} such rows here): the cache is damaged; re-extract this shard"
        )


def load_rows(cache: FeatureCache) -> PooledRows:
    """Every pooled vector of the cache with its label, id, index and split, refusing non-finite ones."""
    rows = cache.load_pooled()
    require_finite(cache, schema.POOLED, rows.index, rows.pooled)
    return rows


def load_dataset(
    cache: FeatureCache,
    *,
    val_fraction: float = 0.1,
    allow_partial: bool = False,
    views: bool = False,
    pooled: bool = True,
    taps: bool = False,
) -> Dataset:
    """The cache's labelled rows split into train/val/test.

    Refuses an unfinished cache unless ``allow_partial`` and a cache with no labels. When the cache has
    no val rows, ``val_fraction`` of train is carved off by a hash of the id (stable, seed-free).
    With ``views`` and a cache extracted with views, each split's ``views`` is loaded too. Without
    ``pooled`` no input is loaded (a streamed dataset: see :mod:`~featcache.trainer.feed`). With
    ``taps`` the cache's layer taps are appended to each row's pooled vector (and views): a cache
    without them is a one-line error naming the extraction's option.
    """
    if taps:
        require_taps(cache)
        if not pooled:
            raise FeatcacheError(
                f"{cache.path}: heads with features='taps' read every row in memory; raise max_memory_gb "
                "(or leave taps out)"
            )
    if not allow_partial:
        cache.require_complete()
    rows, c = _read_rows(cache, pooled)
    labelled = rows.label >= 0
    notes = []
    if cache.random_weights:
        notes.append("the cache was made with RANDOM weights: every accuracy below is meaningless")
    split, val_carved = _carve_val(rows, labelled, val_fraction, notes)
    all_views = None
    if views and pooled and cache.views > 1:
        all_views = cache.load_pooled_views()
        require_finite(cache, schema.POOLED_VIEWS, rows.index, all_views)
    width = 0
    if taps:
        all_views, width = _append_taps(cache, rows, all_views)

    def part(name: str) -> Split:
        sel = labelled & (split == SPLIT_CODES[name])
        v = None if all_views is None else all_views[sel]
        x = None if rows.pooled is None else rows.pooled[sel]
        y = rows.label[sel].astype(np.int32)
        return Split(rows.index[sel], rows.id[sel], y, x, c[SHARD][sel], c[ROW][sel], views=v)

    ds = Dataset(
        list(cache.classes),
        part("train"),
        part("val"),
        part("test"),
        val_carved,
        int((~labelled).sum()),
        notes,
        cache,
        not pooled,
        width,
    )
    _check_splits(cache, ds)
    return ds


def _read_rows(cache: FeatureCache, pooled: bool) -> tuple[PooledRows, dict[str, np.ndarray]]:
    """Every row's label, id, listing position and split code (with ``pooled``, its pooled vector,
    checked finite; else ``rows.pooled`` is None), and the columns read (``SHARD`` and ``ROW``: where
    each row is stored). Refuses a cache with no rows, or with no labelled row."""
    columns = (schema.LABEL, schema.ID, schema.INDEX, schema.SPLIT, SHARD, ROW, SPLIT_UNIT)
    c = cache.read_columns(((schema.POOLED,) if pooled else ()) + columns)
    split_codes = cache.splits(c[schema.ID], c[schema.SPLIT], c[SPLIT_UNIT])
    # rows.pooled is None when streamed (not pooled): load_dataset's part() checks, nothing else reads it
    pooled_or_none = cast(np.ndarray, c.get(schema.POOLED))
    rows = PooledRows(pooled_or_none, c[schema.LABEL], c[schema.ID], c[schema.INDEX], split_codes)
    if len(rows.label) == 0:
        raise FeatcacheError(
            f"{cache.path}: the cache has no rows (every input failed when it was extracted: "
            "featcache-inspect summary lists why): nothing to train on"
        )
    if pooled:
        require_finite(cache, schema.POOLED, rows.index, rows.pooled)
    if not (rows.label >= 0).any():
        raise FeatcacheError(
            f"{cache.path}: the cache has no labelled rows: nothing to train on "
            "(extract from class folders or a CSV with labels)"
        )
    return rows, c


def _carve_val(
    rows: PooledRows, labelled: np.ndarray, val_fraction: float, notes: list[str]
) -> tuple[np.ndarray, bool]:
    """Each row's split code ``(n,)`` int8: the cache's, except that when no ``labelled`` row is in val,
    ``val_fraction`` of the labelled train rows (at least one) become val, picked by a hash of their id
    (stable, seed-free); with whether rows were carved so (then said in ``notes``)."""
    split = rows.split.copy()
    if np.any(labelled & (split == SPLIT_CODES["val"])):
        return split, False
    train_rows = np.flatnonzero(labelled & (split == SPLIT_CODES["train"]))
    u = hash_unit(CARVE_SALT + i for i in rows.id[train_rows])
    carve = train_rows[u < val_fraction]
    if len(carve) == 0 and len(train_rows) > 1:  # tiny caches: at least one val row
        carve = train_rows[[int(np.argmin(u))]]
    split[carve] = SPLIT_CODES["val"]
    notes.append(f"no val rows in the cache: {len(carve)} of {len(train_rows)} train rows carved off as val")
    return split, True


def _append_taps(cache: FeatureCache, rows: PooledRows, all_views: np.ndarray | None) -> tuple[np.ndarray | None, int]:
    """The cache's layer taps ``(n, T)`` appended to each row's pooled vector (``rows.pooled`` becomes
    ``(n, C + T)``) and, when ``all_views`` ``(n, V, C)`` are loaded, every view's taps to its view;
    returns the views and ``T``. Non-finite taps are refused, naming the shard and row."""
    if all_views is not None:
        tv = cache.load_taps_views()
        require_finite(cache, schema.TAPS, rows.index, tv)
        all_views = np.concatenate([all_views, tv], axis=2)
        t = tv[:, 0]
    else:
        t = cache.read_columns((schema.TAPS,))[schema.TAPS]
        require_finite(cache, schema.TAPS, rows.index, t)
    rows.pooled = np.concatenate([rows.pooled, t], axis=1)
    return all_views, t.shape[1]


def _check_splits(cache: FeatureCache, ds: Dataset) -> None:
    """Refuse ``ds`` when its train or val split is empty; add to its notes what makes the numbers less
    telling: no test rows, a single class, classes with no train rows."""
    if len(ds.train) == 0:
        raise FeatcacheError(f"{cache.path}: the train split is empty (no labelled train rows): nothing to train on")
    if len(ds.val) == 0:
        raise FeatcacheError(f"{cache.path}: the val split is empty (no labelled val rows): raise val_fraction")
    if len(ds.test) == 0:
        ds.notes.append("no test rows: test accuracy is not reported")
    present = np.unique(np.concatenate([ds.train.y, ds.val.y, ds.test.y]))
    if len(present) < 2:  # every head predicts it: accuracy 1.0 says nothing
        only = ds.classes[int(present[0])] if len(present) else "none"
        ds.notes.append(
            f"one class only ({only!r}) among the labelled rows: every head predicts it, so accuracy (1.0) and "
            "loss are meaningless; a classifier needs two classes or more"
        )
    missing = [c for k, c in enumerate(ds.classes) if not np.any(ds.train.y == k)]
    if missing:
        ds.notes.append(f"classes with no train rows (never predicted well): {', '.join(missing[:10])}")


def require_taps(cache: FeatureCache) -> None:
    """One line naming the extraction's option when ``cache`` has no layer taps."""
    if not cache.taps:
        raise FeatcacheError(
            f"{cache.path}: features='taps' needs the cache's layer taps, which it was extracted without: "
            "extract it again with taps='default' (featcache-extract --taps default)"
        )


def load_maps(cache: FeatureCache, ds: Dataset) -> None:
    """Read the maps of every split into memory (float16)."""
    for s in (ds.train, ds.val, ds.test):
        s.maps = read_maps(cache, s.index, "float16")


def load_top(cache: FeatureCache, ds: Dataset) -> None:
    """Read the top input of every split into memory (float16, as stored)."""
    for s in (ds.train, ds.val, ds.test):
        s.top = read_maps(cache, s.index, "float16", schema.TOP_INPUT)


def read_maps(cache: FeatureCache, index: np.ndarray, dtype: str, dataset: str = schema.MAPS) -> np.ndarray:
    """The maps ``(n, h, w, C)`` of the rows at listing positions ``index`` ``(n,)``, in that order,
    read in large chunk-aligned blocks (``dataset="top_input"``: the top input instead)."""
    shape = cache.maps_shape if dataset == schema.MAPS else cache.layout[dataset][0]
    out = np.empty((len(index), *shape), dtype)
    by_value = np.argsort(index, kind="stable")
    for block_index, block in cache.iter_maps(block_rows=MAPS_READ_ROWS, indices=index, dtype=dtype, dataset=dataset):
        require_finite(cache, dataset, block_index, block)
        out[by_value[np.searchsorted(index, block_index, sorter=by_value)]] = block
    return out


def memory_gb(cache: FeatureCache, maps: bool, views: bool, taps: bool = False) -> float:
    """GB the inputs of every live row would take in memory: pooled float32 (every view's with
    ``views``; with ``taps``, the layer taps after them), plus float16 maps with ``maps``. From the
    manifest alone (no shard is opened)."""
    channels = cache.maps_shape[-1] + (sum(w for _, w in cache.taps) if taps else 0)
    per_row = channels * 4 * (cache.views if views else 1) + (int(np.prod(cache.maps_shape)) * 2 if maps else 0)
    return cache.num_rows * per_row / 1e9
