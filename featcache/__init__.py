"""featcache: compute a backbone's features once into an HDF5 cache, then train many cheap heads on it.

The three things a Python user calls::

    import featcache

    result = featcache.extract("data/sample", "cache/sample", weights="auto")  # stage 1 (TensorFlow)
    cache = featcache.open_cache("cache/sample")                               # read it (numpy, h5py)
    sweep = featcache.train("cache/sample", head=["linear", "mlp"], lr=[1e-3, 1e-2])  # stage 2

and ``cache.dataset(split="train")`` streams ``(features, label)`` into a ``tf.data`` pipeline for a
Keras model of one's own. Each call has the command line's defaults; errors are
:class:`FeatcacheError` whose one-line messages name the file and the keyword argument at fault.

The import name holds three packages (their folders sit at the top of the repository):
``featcache.extractor`` (stage 1), ``featcache.trainer`` (stage 2) and ``featcache.shared`` (the
cache format, the backbone registry and the inspect command).

Importing ``featcache`` loads numpy and h5py only; TensorFlow is imported when a job runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .extractor.api import ExtractResult, extract
from .shared.cache import FeatureCache, PooledRows, open_cache
from .shared.errors import FeatcacheError
from .shared.version import __version__

__all__ = [
    "__version__",
    "ExtractResult",
    "FeatcacheError",
    "FeatureCache",
    "PooledRows",
    "extract",
    "import_embeddings",
    "open_cache",
    "train",
]


def outliers(cache: str | Path, **options: Any) -> list[dict[str, Any]]:
    """The rows of ``cache`` unlike any other, most isolated first (what ``featcache-inspect outliers``
    lists): each a dict with ``rank, id, index, split, label, isolation, nearest_id, reason``.
    ``options``: ``k`` (neighbours, default 5), ``split``, ``per_class``, ``exact``, ``progress``; see
    :func:`featcache.shared.inspection.outliers.find_outliers`. No TensorFlow."""
    from .shared.inspection.outliers import find_outliers

    return find_outliers(open_cache(cache), **options)


def import_embeddings(cache_dir: str | Path, pooled: Any, *, ids: Any, **options: Any) -> Any:
    """Make a cache at ``cache_dir`` of vectors computed elsewhere (CLIP, DINOv2, any model): ``pooled``
    ``(N, C)`` floats, ``ids`` N unique strings; ``options``: ``labels`` (N ints, -1 unknown),
    ``splits`` (N of ``"train"``/``"val"``/``"test"``), ``classes`` (names), ``name`` (what the vectors
    are; default ``"external"``), ``shard_size``, ``overwrite``, ``progress``. No maps; fingerprinted
    by the sha256 of the vectors. Every inspect command and the trainer's pooled heads accept it; bad
    input is refused with one line naming the argument, before anything is written. Returns the
    cache's :class:`~featcache.shared.cache.Manifest`. See
    :func:`featcache.shared.cache.import_embeddings`."""
    import inspect

    from .shared.arguments import keywords
    from .shared.cache import import_embeddings as make

    known = [n for n in inspect.signature(make).parameters if n not in ("cache_dir", "pooled")]
    keywords("import_embeddings", options, [n for n in known if n != "ids"])
    return make(cache_dir, pooled, ids=ids, **options)


def train(cache: str | Path | list[str | Path], **sweep: Any) -> Any:
    """Train a sweep of heads on ``cache`` (what ``featcache-train CACHE`` does) and return its
    :class:`~featcache.trainer.api.SweepResult`. ``cache`` may be a list of caches of the same images
    made by different backbones: the same grid is trained on each, all heads ranked together.

    ``sweep`` holds the command line's options as keyword arguments, with its defaults: the grid
    (``head``, ``lr``, ``weight_decay``, ``hidden``, ``dropout``, ``label_smoothing``: one value or a
    list), a sweep file (``sweep``), settings (``epochs``, ``batch_size``, ``patience``, ``seed``,
    ``standardize``, ``val_fraction``, ``max_memory_gb``, ``stream``, ``allow_partial``), ``runs`` (the folder of run
    directories) and ``progress``; see :func:`featcache.trainer.api.train`. Heads read pooled vectors
    ``(N, C)`` float32 or maps ``(N, h, w, C)`` from the cache only. Imported when called, so that
    ``import featcache`` loads no TensorFlow.
    """
    import inspect

    from .shared.arguments import keywords
    from .trainer import api

    keywords("train", sweep, [name for name in inspect.signature(api.train).parameters if name != "cache"])
    return api.train(cache, **sweep)
