"""Map rows stored one per gzip chunk, compressed and decompressed on a pool of threads.

h5py holds the GIL while its gzip filter runs (~0.8 ms to compress a 125 KB float16 row, ~0.3 ms
to inflate one), so writing or reading maps through it uses one core and stalls every other Python
thread (on the extractor, the one feeding the backbone). zlib releases the GIL: doing the
(de)compression here, several rows at a time, and moving the compressed bytes with HDF5's direct
chunk write and read, uses every core. The bytes are exactly those of h5py's own gzip filter
(zlib's deflate at the same level), so any HDF5 reader reads the files, and this module reads any
file written by the filter.
"""

from __future__ import annotations

import zlib
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np

from ..cores import usable_cores
from ..errors import FeatcacheError

# Threads per process, shared by every dataset: the cores, at most 8 (past that the disk, not
# zlib, limits a writer).
THREADS = min(8, usable_cores())
_POOLS: dict[int, ThreadPoolExecutor] = {}
_FILTER_SKIPPED = 1  # bit 0 of a chunk's filter mask: the gzip filter was not applied to it


def _pool(threads: int) -> ThreadPoolExecutor:
    return _POOLS.get(threads) or _POOLS.setdefault(
        threads, ThreadPoolExecutor(threads, thread_name_prefix="featcache-zlib")
    )


def is_row_gzip(dset: h5py.Dataset) -> bool:
    """Whether ``dset`` is stored one row per chunk with gzip as its only filter (featcache's maps)."""
    return (
        dset.chunks is not None
        and dset.chunks == (1, *dset.shape[1:])
        and dset.compression == "gzip"
        and dset.id.get_create_plist().get_nfilters() == 1
    )


def append(dset: h5py.Dataset, rows: np.ndarray, level: int, threads: int = THREADS) -> None:
    """Append ``rows`` ``(b, *dset.shape[1:])`` (cast to ``dset.dtype``) to ``dset``, a resizable
    :func:`is_row_gzip` dataset written at gzip ``level``."""
    rows = np.ascontiguousarray(rows, dtype=dset.dtype)
    n = dset.shape[0]
    dset.resize(n + len(rows), axis=0)
    zeros = (0,) * (dset.ndim - 1)
    for i, chunk in enumerate(_pool(threads).map(lambda row: zlib.compress(row, level), rows)):
        dset.id.write_direct_chunk((n + i, *zeros), chunk)


def read_rows(
    dset: h5py.Dataset, rows: np.ndarray, dtype: np.dtype | str | None = None, threads: int = THREADS
) -> np.ndarray:
    """Rows ``rows`` (positions, any order) of an :func:`is_row_gzip` dataset as one array
    ``(len(rows), *dset.shape[1:])`` of ``dtype`` (default: as stored); a chunk that does not
    inflate raises :class:`FeatcacheError` naming the file and the row."""
    shape = dset.shape[1:]
    zeros = (0,) * len(shape)
    raw = [dset.id.read_direct_chunk((int(i), *zeros)) for i in rows]
    out = np.empty((len(rows), *shape), dtype=dset.dtype if dtype is None else dtype)

    def inflate(k: int) -> None:
        mask, data = raw[k]
        try:
            data = data if mask & _FILTER_SKIPPED else zlib.decompress(data)
        except zlib.error as exc:
            raise FeatcacheError(
                f"{dset.file.filename}: row {int(rows[k])} of {dset.name} does not inflate ({exc})"
            ) from None
        out[k] = np.frombuffer(data, dtype=dset.dtype).reshape(shape)

    for _ in _pool(threads).map(inflate, range(len(rows))):
        pass
    return out
