"""The cache format: what a cache on disk is, how it is written safely and how it is read.

This package's namespace is the cache's one front door: the extractor, the trainer, the inspect
commands and the public API import the names below (and the two public modules ``schema``, the layout:
dataset names, dtypes and shapes, and ``fsutil``, the safe file operations every stage's boundary
uses); every other module here is private (``_``-prefixed) and may change shape freely.
``tests/test_architecture.py`` holds both rules. The package needs numpy and h5py only and never imports
TensorFlow, the backbone registry or the inspect command; the one exception is ``_stream.dataset``,
which imports TensorFlow only when :meth:`FeatureCache.dataset` is called.

Private modules, for the reader of this folder: ``_manifest`` (the cache's table of contents, validated
on load), ``_fingerprint`` (the :class:`Recipe`: what features are a function of, and the no-mixing
rule), ``_listing`` (the inputs a cache was made from), ``_update`` (what changed in a source since),
``_split`` (train/val/test assignment), ``_paths`` (only the cache's own files, never through a link out
of it), ``_shard`` (the one shard opener, with every check), ``_blocks`` (chunk-aligned reads),
``_reader`` (:class:`FeatureCache`), ``_stream`` (a split streamed in blocks, and as a
``tf.data.Dataset``), ``_writer`` (shards written and committed atomically), ``_journal`` (crash-safe
appends), ``_lock`` and ``_parts`` (one writer per cache, or many workers on disjoint parts),
``_deflate`` (gzip'd rows on all cores), ``_rowindex`` (the per-row index ``rows.h5``), ``_compact``,
``_neighbours`` (the kept neighbour index), ``_external`` and ``_columnar`` (vectors imported from
elsewhere, Parquet out), ``_npz`` (declared arrays, never unpickled), ``_h5file``. ``docs/cache-format.md``
describes the files themselves.
"""

from . import _neighbours as neighbours
from . import _rowindex as rowindex
from ._columnar import write_parquet
from ._compact import DEFAULT_COMPACT_THRESHOLD, compact
from ._external import import_embeddings, read_embeddings
from ._fingerprint import (
    ENVIRONMENT_KEYS,
    FEED_DTYPES,
    RANDOM_PREFIX,
    UNRECORDED_FEED_DTYPE,
    Recipe,
    Views,
    describe,
    feed_dtype,
)
from ._listing import LISTING_NAME, load_listing, save_listing
from ._lock import CacheLock, describe_holder, holder_gone, pid_alive
from ._manifest import FailedInput, Manifest, ManifestError, ShardRecord, file_status, list_shards, now
from ._npz import load_declared
from ._parts import (
    WHOLE,
    Finalized,
    Part,
    awaiting_merge,
    exclusive,
    finalize,
    parts_dir,
    recorded_holders,
    remove_logs,
)
from ._paths import UnsafePathError, cache_path, shard_file_problem, shard_path
from ._reader import ROW, SHARD, SPLIT_UNIT, FeatureCache, PooledRows, label_problem, open_cache, split_problem
from ._shard import Shard, ShardError, cache_layout, open_shard_file
from ._split import hash_unit, parse_fractions, split_names
from ._stream import BlockStream
from ._writer import CacheWriter, ShardWriter, storage_options
from .schema import SCHEMA_VERSION, SPLITS

__all__ = [
    # reading: a cache, its shards (the one opener), its rows
    "FeatureCache",
    "PooledRows",
    "open_cache",
    "Shard",
    "ShardError",
    "cache_layout",
    "open_shard_file",
    "BlockStream",
    "ROW",
    "SHARD",
    "SPLIT_UNIT",
    "label_problem",
    "split_problem",
    "rowindex",
    # writing and committing, one writer or many parts
    "CacheWriter",
    "ShardWriter",
    "storage_options",
    "CacheLock",
    "describe_holder",
    "holder_gone",
    "pid_alive",
    "WHOLE",
    "Part",
    "Finalized",
    "finalize",
    "awaiting_merge",
    "exclusive",
    "parts_dir",
    "recorded_holders",
    "remove_logs",
    # the table of contents and the cache's own files
    "SCHEMA_VERSION",
    "Manifest",
    "ManifestError",
    "ShardRecord",
    "FailedInput",
    "file_status",
    "list_shards",
    "now",
    "UnsafePathError",
    "cache_path",
    "shard_file_problem",
    "shard_path",
    # the recipe (fingerprint)
    "Recipe",
    "Views",
    "describe",
    "feed_dtype",
    "ENVIRONMENT_KEYS",
    "FEED_DTYPES",
    "RANDOM_PREFIX",
    "UNRECORDED_FEED_DTYPE",
    # the inputs and the split
    "LISTING_NAME",
    "load_listing",
    "save_listing",
    "SPLITS",
    "hash_unit",
    "parse_fractions",
    "split_names",
    # derived and imported data
    "compact",
    "DEFAULT_COMPACT_THRESHOLD",
    "neighbours",
    "import_embeddings",
    "read_embeddings",
    "write_parquet",
    "load_declared",
]
