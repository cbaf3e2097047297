"""What featcache's two stages share: the cache format and the backbone registry.

Importing this package loads numpy and h5py only, never TensorFlow (backbone builders import it
when called), so the inspection commands and any reader start fast.

Modules: ``schema`` (names, dtypes, layout constants), ``manifest``, ``fingerprint``, ``listing``,
``writer``, ``reader``, ``split``, ``lock``, ``parts`` (many workers, one cache), ``deflate``
(gzip'd rows on all cores), ``cores``, ``fsutil``, ``backbones`` (registry), ``errors``, ``cli``
(what every command does alike); ``inspection`` is ``featcache-inspect``, and ``verify``,
``similarity``, ``export`` and ``picture`` hold what its commands do.
"""

from .backbones import BackboneSpec, ResolvedWeights, get_backbone, register, resolve_weights
from .errors import FeatcacheError, FingerprintMismatchError, NotACacheError
from .manifest import Manifest
from .reader import FeatureCache, PooledRows, open_cache
from .schema import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "BackboneSpec",
    "FeatcacheError",
    "FeatureCache",
    "FingerprintMismatchError",
    "Manifest",
    "NotACacheError",
    "PooledRows",
    "ResolvedWeights",
    "get_backbone",
    "open_cache",
    "register",
    "resolve_weights",
]
