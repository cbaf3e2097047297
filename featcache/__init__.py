"""featcache: compute a backbone's features once into an HDF5 cache, then train many cheap heads on it.

The import name holds three packages (their folders sit at the top of the repository):
``featcache.extractor`` (stage 1), ``featcache.trainer`` (stage 2) and ``featcache.shared`` (the
cache format, the backbone registry and the inspect command).

Importing ``featcache`` loads numpy and h5py only; TensorFlow is imported when a job runs.
"""

from .shared.cache.reader import FeatureCache, open_cache
from .shared.errors import FeatcacheError

__all__ = ["FeatcacheError", "FeatureCache", "open_cache"]
