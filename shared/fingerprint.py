"""What a cache's features are a function of, and the rule that keeps them from being mixed.

The fingerprint is a flat JSON object in the manifest and in every shard's attributes. Its
*identity* keys decide the numbers: rows computed under different identities must never share a
cache. Its *environment* keys (library versions, oneDNN) move results by round-off only; a change is
reported, not refused.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

from .backbones import BackboneSpec, ResolvedWeights
from .errors import FingerprintMismatchError

IDENTITY_KEYS = (
    "backbone",
    "weights_sha256",
    "input_size",
    "output_shape",
    "resize",
    "preprocessing",
    "compute_dtype",
    "maps_dtype",
)
ENVIRONMENT_KEYS = ("tensorflow", "keras", "onednn")

# How images become backbone inputs: decoded to RGB uint8 (a JPEG whose short side is at least 4, 8
# or 16 times the target is decoded scaled down by 2, 4 or 8 in the DCT domain), resized to the
# backbone's input size without keeping the aspect ratio (Keras' image_dataset_from_directory
# default), bilinear with antialiasing so that large images are averaged, not aliased.
RESIZE = "jpeg-dct-prescale-to-2x,bilinear,antialias,squash"


def make_fingerprint(
    spec: BackboneSpec,
    weights: ResolvedWeights,
    *,
    maps_dtype: str,
    compute_dtype: str = "float32",
    environment: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The fingerprint of features computed by ``spec`` with ``weights``."""
    fp: dict[str, Any] = {
        "backbone": spec.name,
        "weights_source": weights.source,
        "weights_path": weights.path,
        "weights_sha256": weights.sha256,
        "random_weights": weights.random,
        "input_size": list(spec.input_size),
        "output_shape": list(spec.output_shape),
        "resize": RESIZE,
        "preprocessing": spec.preprocessing,
        "compute_dtype": compute_dtype,
        "maps_dtype": maps_dtype,
    }
    for key in ENVIRONMENT_KEYS:
        fp[key] = (environment or {}).get(key)
    return fp


def differences(recorded: dict[str, Any], current: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    """``key: recorded -> current`` for each of ``keys`` that differs."""
    return [f"{k}: {recorded.get(k)!r} -> {current.get(k)!r}" for k in keys if recorded.get(k) != current.get(k)]


def check_compatible(recorded: dict[str, Any], current: dict[str, Any], where: str) -> None:
    """Refuse to mix features from another identity; warn when only the environment changed.

    ``where`` names the cache (a path) for the message.
    """
    diff = differences(recorded, current, IDENTITY_KEYS)
    if diff:
        raise FingerprintMismatchError(
            f"{where}: features would be mixed; the cache was made with different "
            + "; ".join(diff)
            + " (use --overwrite to start over, or another cache directory)"
        )
    env = differences(recorded, current, ENVIRONMENT_KEYS)
    if env:
        warnings.warn(f"{where}: library environment changed ({'; '.join(env)}); values may differ by round-off", stacklevel=2)


def to_attr(fp: dict[str, Any]) -> str:
    """The fingerprint as the JSON string stored in each shard's attributes."""
    return json.dumps(fp, sort_keys=True)


def describe(fp: dict[str, Any]) -> str:
    """One line for people: backbone, weights, and a loud note when they are random."""
    if fp.get("random_weights"):
        weights = f"RANDOM weights ({fp.get('weights_sha256')}): features are meaningless"
    else:
        weights = f"{fp.get('weights_source')} weights sha256 {str(fp.get('weights_sha256'))[:12]}"
    return f"{fp.get('backbone')} {fp.get('input_size')} -> {fp.get('output_shape')}, {weights}"
