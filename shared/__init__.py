"""What featcache's two stages share: the cache format, the backbone registry and the inspect command.

Importing this package loads numpy and h5py only, never TensorFlow (backbone builders import it
when called), so the inspection commands and any reader start fast. The tree says where a change
belongs, and the dependencies point one way (``.ci/run`` checks them with import-linter):

- ``cache/``: the cache format, readable and writable without TensorFlow: what other tools may
  depend on. It imports nothing else of featcache but ``errors`` and ``cores``.
- ``backbones.py``: the backbone registry (specs, weights, the fingerprint of a backbone's
  features); it uses ``cache`` and imports TensorFlow only inside its builders.
- ``inspection/``: ``featcache-inspect`` (``python -m featcache.shared``), on top of both.
- ``errors.py``, ``cli.py``, ``cores.py``: one-line errors, what every command does alike, and the
  count of usable cores.
"""

from .backbones import BackboneSpec, ResolvedWeights, get_backbone, register, resolve_weights
from .cache import FeatureCache, Manifest, PooledRows, open_cache
from .cache.schema import SCHEMA_VERSION
from .errors import FeatcacheError, FingerprintMismatchError, NotACacheError

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
