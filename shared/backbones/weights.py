"""Which weights a backbone is built with: ``imagenet`` (Keras' download cache, downloading if needed), a
weights file, ``random`` (seeded), or ``auto``. This is the only reader of ``$FEATCACHE_WEIGHTS``
(:data:`WEIGHTS_ENV`): ``auto`` means that file when it is set, so the command line and the API agree
(tests/test_architecture.py checks that no other module names or reads it).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from ..cache import RANDOM_PREFIX
from ..cache.fsutil import sha256_file
from ..errors import WeightsUnavailableError
from ._tf import import_keras
from .spec import BackboneSpec, ResolvedWeights

WEIGHTS_ENV = "FEATCACHE_WEIGHTS"

IMAGENET_CACHED = "cached"
IMAGENET_NOT_CACHED = "not cached (downloaded on first use)"
IMAGENET_NONE = "none"


def imagenet_status(spec: BackboneSpec) -> str:
    """Whether the spec's ImageNet file is in Keras' download cache (usable offline)."""
    if spec.imagenet_file is None:
        return IMAGENET_NONE
    found = any(c.is_file() for c in keras_cache_candidates(spec.imagenet_file[0]))
    return IMAGENET_CACHED if found else IMAGENET_NOT_CACHED


def keras_cache_candidates(file_name: str) -> list[Path]:
    """Where Keras' ``get_file`` keeps a downloaded model file (``$KERAS_HOME`` or ``~/.keras``)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return [Path(home) / "models" / file_name, Path("/tmp/.keras/models") / file_name]


def _imagenet_path(spec: BackboneSpec) -> Path:
    if spec.imagenet_file is None:
        raise WeightsUnavailableError(f"backbone {spec.name!r} has no ImageNet weights: use weights='random'")
    file_name, url = spec.imagenet_file
    for candidate in keras_cache_candidates(file_name):
        if candidate.is_file():
            return candidate
    keras = import_keras()
    try:
        return Path(keras.utils.get_file(file_name, url, cache_subdir="models"))
    except Exception as exc:  # keras raises a bare Exception on network failure
        reason = (
            str(exc).strip().split(" -- ")[-1].splitlines()[0][:200]
        )  # keras: "URL fetch failure on URL: ... -- why"
        raise WeightsUnavailableError(
            f"{keras_cache_candidates(file_name)[0]}: ImageNet weights for {spec.name} are not in Keras' cache "
            f"and could not be downloaded ({reason}); copy the file there, or pass weights=PATH "
            f"(or set {WEIGHTS_ENV}=PATH)"
        ) from None


def resolve_weights(spec: BackboneSpec, weights: str, seed: int = 0) -> ResolvedWeights:
    """Turn a ``weights`` value (``--weights`` on the command line) into the weights to load.

    ``weights`` is ``imagenet`` (Keras' cache, downloading if needed), ``random`` (seeded, meaningless
    features), a path to a weights file, or ``auto``: ``$FEATCACHE_WEIGHTS`` if set, else ImageNet if
    it can be had, else random with a warning. A model file's spec (``weights_file``) brings its own
    weights: ``imagenet`` and ``auto`` (the defaults) mean that file, and no other file replaces them.
    """
    if spec.weights_file is not None:
        own = Path(spec.weights_file)
        if weights in ("imagenet", "auto") or Path(weights).expanduser().resolve() == own:
            return ResolvedWeights("file", str(own), sha256_file(own))
        raise WeightsUnavailableError(
            f"{own}: a model file carries its own weights; weights={weights!r} cannot replace them"
        )
    if weights == "random":
        return ResolvedWeights("random", None, f"{RANDOM_PREFIX}{seed}", seed)
    if weights == "auto":
        env = os.environ.get(WEIGHTS_ENV)
        if env:
            return resolve_weights(spec, env, seed)
        if spec.imagenet_file is None:
            return resolve_weights(spec, "random", seed)
        try:
            return resolve_weights(spec, "imagenet", seed)
        except WeightsUnavailableError as exc:
            warnings.warn(f"{exc}. Falling back to RANDOM weights: the features will be meaningless.", stacklevel=2)
            return resolve_weights(spec, "random", seed)
    if weights == "imagenet":
        path = _imagenet_path(spec)
        return ResolvedWeights("imagenet", str(path), sha256_file(path))
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(f"{path}: weights file not found (expected imagenet, random, auto or a file)")
    return ResolvedWeights("file", str(path.resolve()), sha256_file(path))
