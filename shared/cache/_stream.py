"""A cache as a ``tf.data.Dataset``: one split's ``(features, label)`` batches, streamed from the shards.

This lets a Keras model of one's own train on cached features with plain ``model.fit``, without
loading the cache into memory first. The rows are read the way :meth:`FeatureCache.iter_maps`
reads them: chunk-aligned blocks of a shard, gzip'd map rows inflated on all cores
(:mod:`featcache.shared.cache._deflate`). Shuffling is in two stages, so that memory stays bounded
whatever the cache's size: every epoch the blocks are visited in a new random order, and rows are
mixed inside a window of ``shuffle_buffer`` rows (several blocks) before being cut into batches.
Both draw from ``numpy.random.default_rng([seed, epoch])``, so a dataset made with the same seed
yields the same batches, epoch after epoch.

The only module of the cache format that imports TensorFlow, and only inside :func:`dataset`
(``pyproject.toml`` exempts it from the import contract); :class:`BlockStream`, the numpy side,
does not.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ..arguments import bool_arg, choice_arg, dtype_arg, int_arg
from ..errors import FeatcacheError
from . import schema
from ._blocks import DEFAULT_BLOCK_ROWS as MAPS_BLOCK_ROWS
from ._blocks import FLOAT_DTYPES, ROW, SHARD, aligned_blocks
from ._shard import Shard

if TYPE_CHECKING:
    import tensorflow as tf

    from ._reader import FeatureCache

FEATURES = (schema.POOLED, schema.MAPS)
# Rows per read: maps as the reader's iter_maps (256 rows, ~64 MB as float32); pooled rows are
# 5 KB, so a block is a whole shard.
DEFAULT_BLOCK_ROWS = {schema.POOLED: 4096, schema.MAPS: MAPS_BLOCK_ROWS}
# Rows mixed together when shuffling: ~80 MB of pooled vectors, ~250 MB of float32 maps.
DEFAULT_SHUFFLE_ROWS = {schema.POOLED: 16384, schema.MAPS: 1024}
# Batches made ahead of the model (tf.data prefetch).
PREFETCH_BATCHES = 2
# What BlockStream.batches reads of a block: (open shard file, sorted rows in it) -> arrays of those rows.
Reader = Callable[[Shard, np.ndarray], tuple[np.ndarray, ...]]


class BlockStream:
    """Which rows of ``cache`` one split holds, and their batches, epoch by epoch (numpy only).

    ``features`` is ``"pooled"`` (batches ``(b, C)``) or ``"maps"`` (``(b, H, W, C)``), cast to
    ``dtype``; labels are ``(b,)`` int32, indices ``(b,)`` int64 listing positions. Rows without a
    label are left out. ``peak_rows`` counts the most rows held at once (the memory bound:
    ``shuffle_buffer + block_rows + batch_size`` when shuffling).

    ``rows`` gives the split's rows instead (e.g. the trainer's, with val carved from train):
    ``(shard (n,), row (n,), index (n,), label (n,))``, the ``SHARD`` and ``ROW`` pseudo-columns of
    :meth:`FeatureCache.read_columns`, listing positions and labels, in index order. With ``rows``,
    ``cache`` may be None for a stream that only gives the :meth:`order` of rows held elsewhere.
    """

    def __init__(
        self,
        cache: FeatureCache | None,
        split: str = "train",
        features: str = schema.POOLED,
        *,
        batch_size: int = 32,
        shuffle: bool | None = None,
        seed: int = 0,
        block_rows: int | None = None,
        shuffle_buffer: int | None = None,
        dtype: str = "float32",
        rows: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
    ):
        where = "rows" if cache is None else cache.path
        try:  # the arguments of FeatureCache.dataset, checked where they enter (featcache.shared.arguments)
            self.split = choice_arg("split", split, schema.SPLITS)
            self.features = choice_arg("features", features, FEATURES)
            self.batch_size = int_arg("batch_size", batch_size, minimum=1)
            shuffle = bool_arg("shuffle", shuffle, optional=True)
            self.seed = int_arg("seed", seed, minimum=0)
            self.dtype = np.dtype(dtype_arg("dtype", dtype, FLOAT_DTYPES))
            block_rows = int_arg("block_rows", block_rows, minimum=1, optional=True)
            shuffle_buffer = int_arg("shuffle_buffer", shuffle_buffer, minimum=1, optional=True)
        except FeatcacheError as exc:
            raise FeatcacheError(f"{where}: {exc}") from None
        if cache is not None and self.features == schema.MAPS:
            cache.require_maps('features="maps" needs them; use features="pooled"')
        self.cache = cache
        self.shuffle = split == "train" if shuffle is None else shuffle
        self.block_rows = max(schema.MAPS_CHUNK_ROWS, block_rows or DEFAULT_BLOCK_ROWS[features])
        self.shuffle_buffer = shuffle_buffer or DEFAULT_SHUFFLE_ROWS[features]
        self.peak_rows = 0
        if rows is None:
            assert cache is not None, "a stream without a cache is given its rows"
            c = cache.read_columns((schema.LABEL, schema.ID, schema.INDEX, schema.SPLIT, ROW, SHARD))
            code = schema.SPLIT_CODES[split]
            keep = (cache.splits(c[schema.ID], c[schema.SPLIT]) == code) & (c[schema.LABEL] != schema.UNKNOWN_LABEL)
            rows = (c[SHARD][keep], c[ROW][keep], c[schema.INDEX][keep], c[schema.LABEL][keep])
        shard, row, self.index, self.label = rows
        # (shard record, rows in its file, first position in the split) of every block of the split:
        # blocks partition the split's positions 0..rows-1 in order
        self.blocks: list[tuple[Any, np.ndarray, int]] = []
        cuts = np.flatnonzero(np.diff(shard)) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(shard)], strict=True):
            if hi > lo:
                at = int(lo)
                for sel in aligned_blocks(row[lo:hi], self.block_rows):
                    record = None if cache is None else cache.shards[int(shard[lo])]
                    self.blocks.append((record, sel, at))
                    at += len(sel)
        self.rows = len(self.index)
        if not self.rows:
            raise FeatcacheError(f"{where}: no labelled rows in split {split!r}")

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """One row's features: ``(C,)`` pooled or ``(H, W, C)`` maps."""
        assert self.cache is not None, "a stream without a cache gives only order()"
        shape = tuple(self.cache.maps_shape)
        return shape[-1:] if self.features == schema.POOLED else shape

    @property
    def num_batches(self) -> int:
        return -(-self.rows // self.batch_size)

    def _file(self, files: dict[str, Shard], record: Any) -> Shard:
        """The open shard of ``record`` (its datasets checked against the cache's layout when opened: a
        damaged shard read block by block would fail mid-epoch with a numpy traceback, or give fewer rows
        without a word); the last shard opened stays open (sequential blocks share it)."""
        f = files.get(record.file)
        assert self.cache is not None, "a stream without a cache gives only order()"
        if f is None:
            for old in files.values():
                old.close()
            files.clear()
            f = files[record.file] = self.cache.open_shard(record)
        return f

    def epoch(self, epoch: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(features, label, index)`` batches of epoch ``epoch``: every row of the split once."""
        for pos, x in self.batches(epoch, lambda f, sel: (f.read(self.features, sel, self.dtype),)):
            yield x, self.label[pos].astype(np.int32), self.index[pos].astype(np.int64)

    def order(self, epoch: int = 0) -> np.ndarray:
        """``(rows,)`` int64: the split's positions in the order :meth:`epoch` yields them, read from
        no file (the shuffle depends on the blocks' sizes only). Training in memory in this order is
        training on the stream."""
        parts = [pos for (pos,) in self.batches(epoch, None)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def batches(self, epoch: int, read: Reader | None) -> Iterator[tuple[np.ndarray, ...]]:
        """Yield ``(positions (b,), *read(shard file, rows))`` batches of epoch ``epoch``.

        ``positions`` index the split's rows (``self.index``, ``self.label``); ``read`` returns arrays
        of one shard's ``rows`` (sorted positions in its file), e.g. its maps. ``read=None`` opens no
        file and yields positions only. Shuffled in two stages when ``shuffle``: the blocks in a
        new order every epoch, the rows inside a window of ``shuffle_buffer`` rows."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.blocks)) if self.shuffle else range(len(self.blocks))
        window = self.shuffle_buffer if self.shuffle else self.batch_size
        held: list[tuple[np.ndarray, ...]] = []
        files: dict[str, Shard] = {}
        try:
            for b in order:
                record, sel, at = self.blocks[b]
                pos = np.arange(at, at + len(sel), dtype=np.int64)
                held.append((pos,) if read is None else (pos, *read(self._file(files, record), sel)))
                count = sum(len(h[0]) for h in held)
                self.peak_rows = max(self.peak_rows, count)
                if count >= window:
                    held = yield from self._emit(held, rng, final=False)
            yield from self._emit(held, rng, final=True)
        finally:
            for f in files.values():
                f.close()

    def _emit(self, held: list, rng: np.random.Generator, final: bool):  # noqa: ANN202 (a generator)
        """Mix the rows held (when shuffling), yield every full batch (and the last part one when
        ``final``), and return what is left over as the new held list. ``held`` is emptied as the
        rows are copied into place, so a window is in memory once, not three times."""
        if not held:
            return []
        n = sum(len(h[0]) for h in held)
        # row j of the concatenated blocks goes to place[j]: the rows concatenated, then permuted
        place = np.argsort(rng.permutation(n)) if self.shuffle else np.arange(n)
        arrays = [np.empty((n, *a.shape[1:]), a.dtype) for a in held[0]]
        at = 0
        while held:
            h = held.pop(0)
            for out, a in zip(arrays, h, strict=True):
                out[place[at : at + len(a)]] = a
            at += len(h[0])
        b = self.batch_size
        full = n if final else n - n % b
        for s in range(0, full, b):  # copies: a batch held downstream (prefetched) does not hold the window
            yield tuple(a[s : s + b].copy() for a in arrays)
        return [] if full == n else [tuple(a[full:].copy() for a in arrays)]


def dataset(
    cache: FeatureCache,
    split: str = "train",
    features: str = schema.POOLED,
    *,
    batch_size: int = 32,
    shuffle: bool | None = None,
    seed: int = 0,
    block_rows: int | None = None,
    shuffle_buffer: int | None = None,
    dtype: str = "float32",
    with_index: bool = False,
) -> "tf.data.Dataset":
    """A ``tf.data.Dataset`` of ``(features, label)`` batches of ``split`` (see :class:`BlockStream`).

    ``features``: ``(b, C)`` pooled or ``(b, H, W, C)`` maps, of ``dtype`` (float32 by default);
    ``label``: ``(b,)`` int32 class numbers (for ``sparse_categorical_crossentropy``). Each
    iteration is one epoch (``model.fit`` iterates once per epoch), shuffled anew when ``shuffle``
    (default: for the train split only). Its cardinality is known, so Keras shows steps per epoch.
    ``with_index=True`` adds the rows' ``(b,)`` int64 listing positions as a third element (for
    matching predictions to ids; not for ``fit``, which would read it as sample weights).
    """
    with_index = bool_arg("with_index", with_index)
    stream = BlockStream(
        cache,
        split,
        features,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        block_rows=block_rows,
        shuffle_buffer=shuffle_buffer,
        dtype=dtype,
    )
    import tensorflow as tf

    spec = [
        tf.TensorSpec((None, *stream.feature_shape), tf.as_dtype(stream.dtype)),
        tf.TensorSpec((None,), tf.int32),
        tf.TensorSpec((None,), tf.int64),
    ][: 3 if with_index else 2]
    epochs = itertools.count()

    def batches() -> Iterator[tuple[np.ndarray, ...]]:
        for batch in stream.epoch(next(epochs)):
            yield batch[: len(spec)]

    ds = tf.data.Dataset.from_generator(batches, output_signature=tuple(spec))
    return ds.apply(tf.data.experimental.assert_cardinality(stream.num_batches)).prefetch(PREFETCH_BATCHES)
