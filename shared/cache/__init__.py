"""The cache format: what a cache on disk is, how it is written safely and how it is read.

This is the part of featcache other tools may depend on. It needs numpy and h5py only and never
imports TensorFlow, the backbone registry or the inspect command (``tests/test_architecture.py``
checks the import contracts); the one exception is ``tfdata``, imported only when
:meth:`FeatureCache.dataset` is called.

Modules: ``schema`` (names, dtypes, layout constants), ``manifest`` (the cache's table of contents,
validated on load), ``fingerprint`` (what features are a function of, and the no-mixing rule),
``listing`` (the inputs a cache was made from), ``update`` (what changed in a source since),
``split`` (train/val/test assignment), ``paths`` (only the cache's own files, never through a link
out of it), ``reader`` (:class:`FeatureCache`), ``tfdata`` (a split as a ``tf.data.Dataset``),
``writer`` (shards written and committed atomically), ``lock`` and ``parts`` (one writer per cache,
or many workers on disjoint parts), ``deflate`` (gzip'd rows on all cores), ``fsutil`` (atomic
files, no symbolic links followed). ``docs/cache-format.md`` describes the files themselves.
"""

from .manifest import Manifest
from .reader import FeatureCache, PooledRows, open_cache
from .schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "FeatureCache", "Manifest", "PooledRows", "open_cache"]
