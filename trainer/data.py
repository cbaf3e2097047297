"""What the trainer reads from a cache: labelled rows per split, and their inputs.

Pooled vectors are loaded whole (5 KB per row). Maps, for map heads, are read in large chunk-aligned
blocks (``FeatureCache.iter_maps``), never row by row, into one float16 array per split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..shared.cache.reader import FeatureCache
from ..shared.cache.schema import SPLIT_CODES
from ..shared.cache.split import hash_unit
from ..shared.errors import FeatcacheError

MAPS_READ_ROWS = 1024
CARVE_SALT = "featcache-carve-val:"


@dataclass
class Split:
    """Rows of one split: ``index (n,)`` listing positions, ``id (n,)``, ``y (n,)`` int32 labels,
    ``pooled (n, C)`` float32, ``maps (n, h, w, C)`` float16 once loaded, and ``views (n, V, C)``
    float32, every view's pooled vector (view 0 = ``pooled``), when the cache has views and they
    were asked for."""

    index: np.ndarray
    id: np.ndarray
    y: np.ndarray
    pooled: np.ndarray
    maps: np.ndarray | None = None
    views: np.ndarray | None = None

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

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def load_dataset(
    cache: FeatureCache, *, val_fraction: float = 0.1, allow_partial: bool = False, views: bool = False
) -> Dataset:
    """The cache's labelled rows split into train/val/test.

    Refuses an unfinished cache unless ``allow_partial`` and a cache with no labels. When the cache has
    no val rows, ``val_fraction`` of train is carved off by a hash of the id (stable, seed-free).
    With ``views`` and a cache extracted with views, each split's ``views`` is loaded too.
    """
    if not allow_partial:
        cache.require_complete()
    rows = cache.load_pooled()
    labelled = rows.label >= 0
    if not labelled.any():
        raise FeatcacheError(
            f"{cache.path}: the cache has no labelled rows: nothing to train on "
            "(extract from class folders or a CSV with labels)"
        )
    notes = []
    if cache.random_weights:
        notes.append("the cache was made with RANDOM weights: every accuracy below is meaningless")
    split = rows.split.copy()
    val_carved = False
    if not np.any(labelled & (split == SPLIT_CODES["val"])):
        train_rows = np.flatnonzero(labelled & (split == SPLIT_CODES["train"]))
        u = hash_unit(CARVE_SALT + i for i in rows.id[train_rows])
        carve = train_rows[u < val_fraction]
        if len(carve) == 0 and len(train_rows) > 1:  # tiny caches: at least one val row
            carve = train_rows[[int(np.argmin(u))]]
        split[carve] = SPLIT_CODES["val"]
        val_carved = True
        notes.append(f"no val rows in the cache: {len(carve)} of {len(train_rows)} train rows carved off as val")

    all_views = cache.load_pooled_views() if views and cache.views > 1 else None

    def part(name: str) -> Split:
        sel = labelled & (split == SPLIT_CODES[name])
        v = None if all_views is None else all_views[sel]
        return Split(rows.index[sel], rows.id[sel], rows.label[sel].astype(np.int32), rows.pooled[sel], views=v)

    ds = Dataset(
        list(cache.classes), part("train"), part("val"), part("test"), val_carved, int((~labelled).sum()), notes
    )
    if len(ds.train) == 0:
        raise FeatcacheError(f"{cache.path}: no labelled train rows")
    if len(ds.val) == 0:
        raise FeatcacheError(f"{cache.path}: no labelled val rows (raise --val-fraction)")
    if len(ds.test) == 0:
        notes.append("no test rows: test accuracy is not reported")
    missing = [c for k, c in enumerate(ds.classes) if not np.any(ds.train.y == k)]
    if missing:
        notes.append(f"classes with no train rows (never predicted well): {', '.join(missing[:10])}")
    return ds


def load_maps(cache: FeatureCache, ds: Dataset, budget_gb: float) -> None:
    """Read the maps of every split into memory (float16), refusing beyond ``budget_gb``."""
    need = sum(len(s) for s in (ds.train, ds.val, ds.test)) * int(np.prod(cache.maps_shape)) * 2 / 1e9
    if need > budget_gb:
        raise FeatcacheError(
            f"{cache.path}: map heads need {need:.1f} GB of maps in memory, above "
            f"--max-maps-gb {budget_gb:g}; raise it or train pooled heads only"
        )
    for s in (ds.train, ds.val, ds.test):
        out = np.empty((len(s), *cache.maps_shape), np.float16)
        pos = {int(i): k for k, i in enumerate(s.index)}
        for index, block in cache.iter_maps(block_rows=MAPS_READ_ROWS, indices=s.index, dtype="float16"):
            out[[pos[int(i)] for i in index]] = block
        s.maps = out


def standardizer(train: Split) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std ``(C,)`` of the train split's pooled vectors. The std is floored at
    1e-6: ReLU features have channels that are zero on every train row, and those stay zero."""
    mean = train.pooled.mean(axis=0)
    std = train.pooled.std(axis=0)
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)
