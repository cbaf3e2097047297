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

from ..errors import FingerprintMismatchError

IDENTITY_KEYS = (
    "backbone",
    "weights_sha256",
    "input_size",
    "output_shape",
    "resize",
    "preprocessing",
    "compute_dtype",
    "maps_dtype",
    "augment",  # views per image and their recipe; absent (None) in one-view caches
    "feed_dtype",  # images rounded to uint8 before preprocessing; absent in float32-fed caches
    "taps",  # the layers whose pooled outputs are stored (dataset taps); absent without taps
    "top_input",  # the last block's input stored (dataset top_input); absent when not kept
)
# Identity keys a fingerprint may leave out (their absence is a value: one view per image; images
# fed as float32, the only way before feed_dtype existed).
OPTIONAL_IDENTITY_KEYS = ("augment", "feed_dtype", "taps", "top_input")
# What the extractor ships to the device: resized images rounded to uint8 (preprocessed on the
# device) or float32 preprocessed on the host. The value a fingerprint without the key stands for:
FEED_DTYPES = ("uint8", "float32")
UNRECORDED_FEED_DTYPE = "float32"
ENVIRONMENT_KEYS = ("tensorflow", "keras", "onednn")


def differences(recorded: dict[str, Any], current: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    """``key: recorded -> current`` for each of ``keys`` that differs (a missing key as the value its
    absence stands for)."""

    def value(fp: dict[str, Any], key: str) -> Any:
        return feed_dtype(fp) if key == "feed_dtype" else fp.get(key)

    pairs = [(k, value(recorded, k), value(current, k)) for k in keys]
    return [f"{k}: {old!r} -> {new!r}" for k, old, new in pairs if old != new]


def check_compatible(recorded: dict[str, Any], current: dict[str, Any], where: str) -> None:
    """Refuse to mix features from another identity; warn when only the environment changed.

    ``where`` names the cache (a path) for the message.
    """
    diff = differences(recorded, current, IDENTITY_KEYS)
    if diff:
        raise FingerprintMismatchError(
            f"{where}: features would be mixed; the cache was made with different "
            + "; ".join(diff)
            + " (use overwrite=True to start over, or another cache directory)"
        )
    env = differences(recorded, current, ENVIRONMENT_KEYS)
    if env:
        warnings.warn(
            f"{where}: library environment changed ({'; '.join(env)}); values may differ by round-off", stacklevel=2
        )


def feed_dtype(fp: dict[str, Any]) -> str:
    """How the images of the cache with fingerprint ``fp`` were fed (``float32`` when not recorded)."""
    return fp.get("feed_dtype") or UNRECORDED_FEED_DTYPE


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
