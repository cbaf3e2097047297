"""Reading a cache's rows in blocks: the pseudo-columns that say where a row is stored, and the
block reads that both the reader (:mod:`.reader`) and the tf.data bridge (:mod:`.tfdata`) use.

A block is a run of sorted row positions inside one ``step``-aligned window of a shard: one
contiguous HDF5 read (or one parallel inflate of gzip'd map rows) serves all of them.
"""

from __future__ import annotations

from collections.abc import Iterator

import h5py
import numpy as np

from . import _deflate as deflate

DEFAULT_BLOCK_ROWS = 256
# Pseudo-columns of FeatureCache.read_columns: where each row is stored, for reading it again later
# without a scan (both int64): its position in its shard file, and its shard's position in ``shards``.
ROW = "row"
SHARD = "shard"
# Dtypes maps may be read as (iter_maps, dataset): floats only, never a silent cast to integers.
FLOAT_DTYPES = ("float16", "float32", "float64")


def aligned_blocks(rows: np.ndarray, step: int) -> Iterator[np.ndarray]:
    """Sorted row positions ``rows`` of one shard cut into the ``step``-aligned blocks that hold any."""
    if len(rows) == 0:
        return
    for start in range(int(rows[0]) - int(rows[0]) % step, int(rows[-1]) + 1, step):
        sel = rows[(rows >= start) & (rows < start + step)]
        if len(sel):
            yield sel


def read_block(dset: h5py.Dataset, sel: np.ndarray, dtype: np.dtype | str | None = None) -> np.ndarray:
    """Rows ``sel`` (sorted positions inside one aligned block) of ``dset``, cast to ``dtype``.

    gzip'd map rows (the default storage) are inflated on all cores straight into ``dtype``
    (:mod:`featcache.shared.cache._deflate`); anything else is one contiguous h5py read."""
    if deflate.is_row_gzip(dset):
        return deflate.read_rows(dset, sel, dtype)
    start, stop = int(sel[0]), int(sel[-1]) + 1
    block = dset[start:stop] if len(sel) == stop - start else dset[start:stop][sel - start]
    return block if dtype is None else block.astype(dtype, copy=False)
