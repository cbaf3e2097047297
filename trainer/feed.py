"""Feeding the training loop: one split's inputs in batches, held in memory or streamed from the shards.

Both ways yield the same batches, row for row and bit for bit, for the same seed: the train order
is :meth:`~featcache.shared.cache._stream.BlockStream.order` either way (the split's chunk-aligned
blocks in a new random order every epoch, rows mixed inside a window of :data:`WINDOW_ROWS`), and
evaluation batches cut the split in index order at the same boundaries. In memory the order is
applied to arrays; streamed, the blocks are read in that order on a background thread, a bounded
queue of :data:`PREFETCH_BATCHES` batches ahead of the model (:func:`prefetch`), so memory holds one
window of rows whatever the cache's size.
"""

from __future__ import annotations

import ctypes
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from ..shared.cache import BlockStream, FeatureCache, Shard, schema
from .data import Split, require_finite

# Rows per read and rows mixed together, by what the batches hold: maps rows are 125 KB (float16),
# so a window of maps is ~64 MB held (plus one 128-row block being read); pooled rows are 5 KB.
BLOCK_ROWS = {schema.POOLED: 4096, schema.MAPS: 64}
WINDOW_ROWS = {schema.POOLED: 16384, schema.MAPS: 256}
PREFETCH_BATCHES = 2  # batches read ahead of the model when streaming
STATS_ROWS = 1024  # rows per step of the standardisation statistics (the same steps in both modes)
STD_FLOOR = 1e-6
MAPS_DTYPE = "float16"  # as the maps of map heads are held (half the memory of float32)

# glibc's mallopt(M_MMAP_THRESHOLD): allocations from this size up are mmap'd, so freeing returns them
M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES = -3, 1 << 20

T = TypeVar("T")


def return_freed_blocks_to_the_system() -> bool:
    """Have glibc serve allocations of 1 MB and more with their own mappings, returned on free (no
    effect, False, where there is no ``mallopt``). Why: a streamed epoch allocates and frees its
    blocks, windows and batches (1-32 MB each) on the prefetch thread and the main thread, and by
    default glibc raises its mmap threshold to 32 MB and keeps such frees in per-thread heaps it
    rarely returns. Measured, a linear and a map head streamed 4 epochs on 3,200 rows of maps:
    anonymous RSS +530 MB above the warmed-up process by default, +133 MB with this (the numpy
    arrays alive at once peak at ~90 MB)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


@dataclass(frozen=True)
class Need:
    """What a split's batches carry: ``pooled`` vectors, ``views`` (``V > 1`` views per row, view 0
    first; 1 = none) and ``maps``."""

    pooled: bool = True
    views: int = 1
    maps: bool = False


@dataclass
class Batch:
    """Rows of one split, sorted by position: ``pos (b,)`` int64 positions in the split, ``y (b,)``
    int32, ``pooled (b, C)`` float32 and ``views (b, V, C)`` float32 (standardised when the feed has
    statistics), ``maps (b, h, w, C)`` float16; each None unless asked for."""

    pos: np.ndarray
    y: np.ndarray
    pooled: np.ndarray | None = None
    views: np.ndarray | None = None
    maps: np.ndarray | None = None


def asked(array: np.ndarray | None) -> np.ndarray:
    """``array`` of a batch (or of a split in memory) that its :class:`Need` asked for: never None then."""
    assert array is not None, "a batch carries what its Need asks for"
    return array


class Feed:
    """One split's batches for the loop. ``split.pooled`` (and ``views``, ``maps``) in memory, or
    ``streamed``: read from ``cache``'s shards as they are consumed. ``mean_std`` (``(C,)`` each),
    once set, standardises pooled vectors and views."""

    def __init__(
        self,
        cache: FeatureCache | None,
        name: str,
        split: Split,
        need: Need,
        streamed: bool,
        seed: int,
        batch_size: int,
    ):
        self.cache, self.name, self.split, self.need, self.streamed = cache, name, split, need, streamed
        self.seed, self.batch_size = seed, batch_size
        self.mean_std: tuple[np.ndarray, np.ndarray] | None = None
        held = schema.MAPS if need.maps else schema.POOLED
        self.block_rows, self.window_rows = BLOCK_ROWS[held], WINDOW_ROWS[held]
        if streamed:
            return_freed_blocks_to_the_system()

    def __len__(self) -> int:
        return len(self.split)

    def _stream(self, batch_size: int, shuffle: bool) -> BlockStream:
        s = self.split
        return BlockStream(
            self.cache,
            self.name,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=self.seed,
            block_rows=self.block_rows,
            shuffle_buffer=self.window_rows,
            rows=(
                np.zeros(len(s), np.int64) if s.shard is None else s.shard,
                np.arange(len(s), dtype=np.int64) if s.row is None else s.row,
                s.index,
                s.y,
            ),
        )

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        """Every row once, in epoch ``epoch``'s shuffled order, in batches of ``batch_size``."""
        stream = self._stream(self.batch_size, shuffle=True)
        if not self.streamed:
            order = stream.order(epoch)
            for i in range(0, len(order), self.batch_size):
                yield self._take(np.sort(order[i : i + self.batch_size]), self.need)
            return
        yield from prefetch(self._read_batches(stream, epoch, self.need), PREFETCH_BATCHES)

    def eval_batches(self, size: int, need: Need | None = None) -> Iterator[Batch]:
        """Every row once, in index order, in batches of ``size``, carrying ``need`` (default: all)."""
        need = need or self.need
        if not len(self):
            return
        if not self.streamed:
            for i in range(0, len(self), size):
                yield self._take(np.arange(i, min(i + size, len(self))), need)
            return
        yield from prefetch(self._read_batches(self._stream(size, shuffle=False), 0, need), PREFETCH_BATCHES)

    def _take(self, pos: np.ndarray, need: Need) -> Batch:
        s = self.split
        return self._batch(
            pos,
            asked(s.pooled)[pos] if need.pooled else None,
            asked(s.views)[pos] if need.views > 1 else None,
            asked(s.maps)[pos] if need.maps else None,
        )

    def _read_batches(self, stream: BlockStream, epoch: int, need: Need) -> Iterator[Batch]:
        cache = self.cache
        assert cache is not None, "a streamed feed reads its cache's shards"

        def read(f: Shard, sel: np.ndarray) -> tuple[np.ndarray, ...]:
            index = f.read(schema.INDEX, sel)
            out = []
            if need.pooled or need.views > 1:
                pooled = f.read(schema.POOLED, sel, schema.POOLED_DTYPE)
                if need.views > 1:  # (b, V, C): view 0, then the cache's extra views
                    extra = f.read(schema.POOLED_VIEWS, sel, schema.POOLED_DTYPE)
                    views = np.concatenate([pooled[:, None], extra], axis=1)
                    require_finite(cache, schema.POOLED_VIEWS, index, views)
                    out.append(views)
                require_finite(cache, schema.POOLED, index, pooled)
                out.insert(0, pooled)
            if need.maps:
                maps = f.read(schema.MAPS, sel, MAPS_DTYPE)
                require_finite(cache, schema.MAPS, index, maps)
                out.append(maps)
            return tuple(out)

        for pos, *arrays in stream.batches(epoch, read):
            order = np.argsort(pos)
            pos, arrays = pos[order], [a[order] for a in arrays]
            pooled = arrays.pop(0) if (need.pooled or need.views > 1) else None
            views = arrays.pop(0) if need.views > 1 else None
            maps = arrays.pop(0) if need.maps else None
            yield self._batch(pos, pooled if need.pooled else None, views, maps)

    def _batch(self, pos: np.ndarray, pooled: Any, views: Any, maps: Any) -> Batch:
        if self.mean_std is not None:
            mean, std = self.mean_std
            pooled = None if pooled is None else (pooled - mean) / std
            views = None if views is None else (views - mean) / std
        return Batch(pos, self.split.y[pos], pooled, views, maps)


def standardizer(train: Feed) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std ``(C,)`` float32 of the train split's pooled vectors, in one pass of
    :data:`STATS_ROWS`-row steps merged in float64 (Chan et al.), the same steps in memory and streamed.
    The std is floored at 1e-6: ReLU features have channels that are zero on every train row, and
    those stay zero."""
    saved, train.mean_std = train.mean_std, None
    n, mean, m2 = 0, 0.0, 0.0
    try:
        for b in train.eval_batches(STATS_ROWS, Need(pooled=True)):
            x = asked(b.pooled).astype(np.float64)
            nb, mb = len(x), x.mean(axis=0)
            delta, total = mb - mean, n + nb
            mean = mean + delta * (nb / total)
            m2 = m2 + ((x - mb) ** 2).sum(axis=0) + delta**2 * (n * nb / total)
            n = total
    finally:
        train.mean_std = saved
    std = np.sqrt(m2 / n)
    return np.asarray(mean, np.float32), np.maximum(std, STD_FLOOR).astype(np.float32)


_DONE = object()


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetch(items: Iterator[T], depth: int) -> Iterator[T]:
    """``items``, produced on a background thread at most ``depth`` ahead of the consumer (reads
    overlap training; memory holds ``depth`` items). An error in the producer is raised here; when
    the consumer stops early, the producer stops and ``items`` is closed (its files with it)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 (handed to the consumer, raised there)
            put(_Failed(exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name="featcache-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()
