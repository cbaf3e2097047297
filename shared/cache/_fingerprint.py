"""What a cache's features are a function of, and the rule that keeps them from being mixed.

The fingerprint is a flat JSON object in the manifest and in every shard's attributes. Its
*identity* keys decide the numbers: rows computed under different identities must never share a
cache. Its *environment* keys (library versions, oneDNN) move results by round-off only; a change is
reported, not refused.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from typing import Any

from ..errors import FeatcacheError, FingerprintMismatchError

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
    "maps",  # false in a cache of imported vectors (no maps); absent when maps are stored
    "taps",  # the layers whose pooled outputs are stored (dataset taps); absent without taps
    "top_input",  # the last block's input stored (dataset top_input); absent when not kept
)
# Identity keys a fingerprint may leave out (their absence is a value: one view per image; images
# fed as float32, the only way before feed_dtype existed; maps stored; no taps; no top input).
OPTIONAL_IDENTITY_KEYS = ("augment", "feed_dtype", "maps", "taps", "top_input")
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
    if fp.get("maps") is False:
        return (
            f"vectors imported as {str(fp.get('backbone')).removeprefix('external:')!r} "
            f"({fp.get('output_shape', [0])[-1]}-d, no maps), sha256 {str(fp.get('weights_sha256'))[:12]}"
        )
    if fp.get("random_weights"):
        weights = f"RANDOM weights ({fp.get('weights_sha256')}): features are meaningless"
    else:
        weights = f"{fp.get('weights_source')} weights sha256 {str(fp.get('weights_sha256'))[:12]}"
    return f"{fp.get('backbone')} {fp.get('input_size')} -> {fp.get('output_shape')}, {weights}"


# What the fingerprint's ``augment`` value says beside the numbers (a description of the views for
# people; fixed for AUGMENT version 1), kept verbatim through a parse.
_AUGMENT_NUMBERS = ("views", "crop_scale", "crop_ratio")


@dataclass(frozen=True)
class Views:
    """A fingerprint's ``augment``: ``views`` per image (> 1), the crops' area-fraction and aspect-ratio
    ranges, and the rest of the record (its version and description) as written."""

    views: int
    crop_scale: tuple[float, float]
    crop_ratio: tuple[float, float]
    described: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, augment: Any, where: str) -> Views | None:
        """The views of a fingerprint's ``augment`` value (None: one view); a one-line error when malformed."""
        if augment is None:
            return None
        ok = isinstance(augment, dict) and _is_int(augment.get("views")) and augment["views"] > 1
        pairs = [augment.get(k) for k in ("crop_scale", "crop_ratio")] if ok else []
        ok = ok and all(
            isinstance(p, list)
            and len(p) == 2
            and all(isinstance(x, int | float) and not isinstance(x, bool) for x in p)
            for p in pairs
        )
        if not ok:
            shown = repr(augment)[:120]
            raise FeatcacheError(
                f"{where}: fingerprint.augment: expected views > 1 and crop_scale, crop_ratio pairs, got {shown}"
            )
        described = tuple((k, v) for k, v in augment.items() if k not in _AUGMENT_NUMBERS)
        scale, ratio = (tuple(float(x) for x in p) for p in pairs)
        return cls(augment["views"], scale, ratio, described)  # type: ignore[arg-type]

    def record(self) -> dict[str, Any]:
        """The fingerprint's ``augment`` value."""
        out = dict(self.described)
        out.update(views=self.views, crop_scale=list(self.crop_scale), crop_ratio=list(self.crop_ratio))
        return out


@dataclass(frozen=True)
class Recipe:
    """The fingerprint as a typed object: what a cache's features are a function of, read once.

    :meth:`parse` checks a fingerprint dict (from a manifest, a shard or a run's record: untrusted) and
    :meth:`fingerprint` writes it back; ``parse(fp).fingerprint() == fp`` for every fingerprint the
    extractor makes (tests/test_recipe.py). Code that needs a field of a recorded fingerprint reads it
    here (:attr:`resize_policy`, :attr:`random_seed`, :attr:`views`), never by indexing the dict."""

    backbone: str
    weights_sha256: str
    input_size: tuple[int, int]
    output_shape: tuple[int, int, int]
    resize: str
    preprocessing: str
    compute_dtype: str
    maps_dtype: str
    weights_source: str | None = None
    weights_path: str | None = None
    random_weights: bool = False
    pooled_width: int | None = None
    augment: Views | None = None
    feed_dtype: str | None = None  # None: not recorded (fed as float32, the only way before the choice)
    model_file: str | None = None  # a saved Keras model as the backbone, and its layer giving the maps
    layer: str | None = None
    environment: tuple[tuple[str, Any], ...] = ()
    other: tuple[tuple[str, Any], ...] = ()  # keys this featcache does not know, kept as written

    @classmethod
    def parse(cls, fp: Any, where: str) -> Recipe:
        """The recipe of fingerprint ``fp``; a :class:`FeatcacheError` naming ``where`` and the key when a
        field is missing or of the wrong type."""
        if not isinstance(fp, dict):
            raise FeatcacheError(f"{where}: the fingerprint is not an object")
        known = set(_STRINGS) | set(_OPTIONAL_STRINGS) | {*ENVIRONMENT_KEYS, "input_size", "output_shape"}
        known |= {"random_weights", "pooled_width", "augment"}
        values: dict[str, Any] = {}
        for key in _STRINGS:
            values[key] = _typed(fp, key, str, where)
        for key in _OPTIONAL_STRINGS:
            values[key] = _typed(fp, key, str, where, optional=True)
        for key, length in (("input_size", 2), ("output_shape", 3)):
            v = fp.get(key)
            if not (isinstance(v, list) and len(v) == length and all(_is_int(x) and x > 0 for x in v)):
                raise FeatcacheError(f"{where}: fingerprint.{key}: expected {length} positive integers, got {v!r}")
            values[key] = tuple(v)
        values["random_weights"] = bool(_typed(fp, "random_weights", bool, where, optional=True))
        width = fp.get("pooled_width")
        if width is not None and not _is_int(width):
            raise FeatcacheError(f"{where}: fingerprint.pooled_width: expected an integer, got {width!r}")
        values["pooled_width"] = width
        values["augment"] = Views.parse(fp.get("augment"), where)
        values["environment"] = tuple((k, fp.get(k)) for k in ENVIRONMENT_KEYS)
        values["other"] = tuple((k, v) for k, v in fp.items() if k not in known)
        return cls(**values)

    def fingerprint(self) -> dict[str, Any]:
        """The fingerprint dict (the manifest's and every shard's), in the order the extractor writes it."""
        fp: dict[str, Any] = {
            "backbone": self.backbone,
            "weights_source": self.weights_source,
            "weights_path": self.weights_path,
            "weights_sha256": self.weights_sha256,
            "random_weights": self.random_weights,
            "input_size": list(self.input_size),
            "output_shape": list(self.output_shape),
            "pooled_width": self.pooled_width,
            "resize": self.resize,
            "preprocessing": self.preprocessing,
            "compute_dtype": self.compute_dtype,
            "maps_dtype": self.maps_dtype,
        }
        if self.model_file is not None:
            fp.update(model_file=self.model_file, layer=self.layer)
        if self.augment is not None:
            fp["augment"] = self.augment.record()
        if self.feed_dtype is not None:
            fp["feed_dtype"] = self.feed_dtype
        fp.update(dict(self.environment))
        fp.update(dict(self.other))
        return fp

    @property
    def resize_policy(self) -> str:
        """How an image became the square input (``squash``, ``centre-crop``, ``pad``): the last word of ``resize``."""
        return self.resize.rsplit(",", 1)[-1]

    @property
    def views(self) -> int:
        """Views per image: 1, or the ``augment`` record's."""
        return 1 if self.augment is None else self.augment.views

    @property
    def fed_as(self) -> str:
        """How images were fed to the backbone (:func:`feed_dtype`)."""
        return self.feed_dtype or UNRECORDED_FEED_DTYPE

    @property
    def random_seed(self) -> int | None:
        """The seed of random weights (their ``weights_sha256`` is ``random:<seed>``), else None."""
        if not self.weights_sha256.startswith(RANDOM_PREFIX):
            return None
        seed = self.weights_sha256[len(RANDOM_PREFIX) :]
        return int(seed) if seed.isdigit() else None


_STRINGS = ("backbone", "weights_sha256", "resize", "preprocessing", "compute_dtype", "maps_dtype")
_OPTIONAL_STRINGS = ("weights_source", "weights_path", "feed_dtype", "model_file", "layer")
# How a random-weights fingerprint spells its weights' sha256: ``random:<seed>``.
RANDOM_PREFIX = "random:"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _typed(fp: dict[str, Any], key: str, kind: type, where: str, optional: bool = False) -> Any:
    v = fp.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, kind):
        got = "missing" if key not in fp else f"{type(v).__name__} {v!r}"[:80]
        raise FeatcacheError(f"{where}: fingerprint.{key}: expected a {kind.__name__}, got {got}")
    return v
