"""The backbone registry: each backbone's facts stated once, next to its builder.

The extractor builds a backbone from here to compute features; the trainer rebuilds the same one to
export a head stacked on it. Neither imports TensorFlow at module level: builders import it when
called, so ``import featcache.shared`` stays fast for the inspection commands.

A backbone is a :class:`BackboneSpec`. Built-ins: ``mobilenet_v2`` (the product) and ``tiny`` (a
fixed random conv net with MobileNetV2's output shape, for tests and smoke runs: its features are
random projections of 8x8 patches, different for every image, unlike a random MobileNetV2 whose
output is the same vector for every image). Others plug in by :func:`register` or by naming a
``module:attribute`` that holds a spec.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .cache.fingerprint import ENVIRONMENT_KEYS
from .cache.fsutil import sha256_file
from .errors import FeatcacheError, WeightsUnavailableError

if TYPE_CHECKING:  # pragma: no cover
    import keras

WEIGHTS_ENV = "FEATCACHE_WEIGHTS"
RANDOM_PREFIX = "random:"

# Keras' own ImageNet file for MobileNetV2 1.0/224 without the top (keras/src/applications/mobilenet_v2.py).
MOBILENET_V2_WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
MOBILENET_V2_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/" + MOBILENET_V2_WEIGHTS_FILE
)


# Set before TensorFlow's first import unless the user set them: quiet start-up, oneDNN kernels on.
TF_DEFAULT_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "1"}


def import_tensorflow() -> Any:
    """Import TensorFlow with featcache's defaults, once.

    oneDNN must be switched on before the first import to matter: on CPUs without AVX-512 it is off by
    default and the backbone runs ~1.3x faster with it (numerics differ by ~1e-4). The user's own
    settings of these variables win.
    """
    for key, value in TF_DEFAULT_ENV.items():
        os.environ.setdefault(key, value)
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise FeatcacheError(
            f"TensorFlow is not installed ({exc}); install featcache with an extra: "
            "pip install 'featcache[cpu]' (or [gpu], or [tf])"
        ) from None
    return tf


@dataclass(frozen=True)
class ResolvedWeights:
    """Which weights a backbone is built with, and their identity for the fingerprint.

    ``source`` is ``"imagenet"``, ``"file"`` or ``"random"``; ``sha256`` is the hex digest of the file
    actually loaded, or ``"random:<seed>"``.
    """

    source: str
    path: str | None
    sha256: str
    seed: int | None = None

    @property
    def random(self) -> bool:
        return self.source == "random"


@dataclass(frozen=True)
class BackboneSpec:
    """A feature extractor: images of ``input_size`` in, maps of ``output_shape`` out.

    ``build(weights)`` returns a Keras model from ``(B, H, W, 3)`` float32 preprocessed images to
    ``(B, h, w, C)`` float32 maps. ``preprocess`` names (``module:function``) the function that maps
    RGB values in [0, 255] to the model's input range; ``preprocessing`` says what it does in words.
    ``imagenet_file`` is ``(file name, URL)`` in Keras' download cache, or None when the backbone has
    no pretrained weights.
    """

    name: str
    input_size: tuple[int, int]
    output_shape: tuple[int, int, int]
    build: Callable[[ResolvedWeights], "keras.Model"]
    preprocess: str
    preprocessing: str
    imagenet_file: tuple[str, str] | None = None
    description: str = ""
    # ``preprocess`` as an affine map ``x * scale + offset``, for models exported with a built-in
    # Rescaling layer (None when the preprocessing is not affine).
    rescale: tuple[float, float] | None = None

    @property
    def channels(self) -> int:
        """Length of the pooled vector."""
        return self.output_shape[-1]

    def preprocess_fn(self) -> Callable[[Any], Any]:
        """The preprocessing function itself (imports its module)."""
        module, attr = self.preprocess.split(":")
        import_tensorflow()
        return getattr(importlib.import_module(module), attr)


def _build_mobilenet_v2(weights: ResolvedWeights) -> "keras.Model":
    import_tensorflow()
    import keras

    if weights.random:
        keras.utils.set_random_seed(weights.seed or 0)
    return keras.applications.MobileNetV2(
        include_top=False, input_shape=(224, 224, 3), weights=None if weights.random else weights.path
    )


TINY_PATCH = 8
TINY_HIDDEN = 24


def _build_tiny(weights: ResolvedWeights) -> "keras.Model":
    import_tensorflow()
    import keras
    import numpy as np

    if not weights.random:
        raise WeightsUnavailableError("backbone 'tiny' has no pretrained weights: use weights='random'")
    rng = np.random.default_rng(weights.seed or 0)
    model = keras.Sequential(
        [
            keras.Input((224, 224, 3)),
            keras.layers.Conv2D(TINY_HIDDEN, TINY_PATCH, strides=TINY_PATCH, activation="relu"),  # 28x28
            keras.layers.AveragePooling2D(4),  # 7x7
            keras.layers.Conv2D(1280, 1),
            keras.layers.ReLU(max_value=6.0),
        ],
        name="tiny",
    )
    fan_in = TINY_PATCH * TINY_PATCH * 3
    model.set_weights(
        [
            (rng.standard_normal((TINY_PATCH, TINY_PATCH, 3, TINY_HIDDEN)) / np.sqrt(fan_in)).astype("float32"),
            rng.uniform(0.0, 0.2, TINY_HIDDEN).astype("float32"),
            (rng.standard_normal((1, 1, TINY_HIDDEN, 1280)) * 2.0 / np.sqrt(TINY_HIDDEN)).astype("float32"),
            rng.uniform(-0.5, 0.5, 1280).astype("float32"),
        ]
    )
    return model


_MOBILENET_PREPROCESS = "keras.applications.mobilenet_v2:preprocess_input"
_MOBILENET_PREPROCESSING = "RGB in [0, 255] -> x / 127.5 - 1 (mobilenet_v2.preprocess_input)"
_MOBILENET_RESCALE = (1 / 127.5, -1.0)

_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add (or replace) a backbone under ``spec.name``."""
    _REGISTRY[spec.name] = spec
    return spec


register(
    BackboneSpec(
        name="mobilenet_v2",
        input_size=(224, 224),
        output_shape=(7, 7, 1280),
        build=_build_mobilenet_v2,
        preprocess=_MOBILENET_PREPROCESS,
        preprocessing=_MOBILENET_PREPROCESSING,
        imagenet_file=(MOBILENET_V2_WEIGHTS_FILE, MOBILENET_V2_WEIGHTS_URL),
        description="Keras MobileNetV2 1.0, include_top=False, 224x224",
        rescale=_MOBILENET_RESCALE,
    )
)
register(
    BackboneSpec(
        name="tiny",
        input_size=(224, 224),
        output_shape=(7, 7, 1280),
        build=_build_tiny,
        preprocess=_MOBILENET_PREPROCESS,
        preprocessing=_MOBILENET_PREPROCESSING,
        description="fixed random 2-layer conv net with MobileNetV2's output shape (tests, smoke runs)",
        rescale=_MOBILENET_RESCALE,
    )
)


def names() -> list[str]:
    """Registered backbone names."""
    return sorted(_REGISTRY)


def get_backbone(name: str) -> BackboneSpec:
    """The spec registered as ``name``, or the one at ``module:attribute``."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        module, attr = name.split(":", 1)
        try:
            spec = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise FeatcacheError(f"backbone {name!r}: cannot import it ({exc})") from None
        if not isinstance(spec, BackboneSpec):
            raise FeatcacheError(f"backbone {name!r}: {type(spec).__name__} is not a BackboneSpec")
        return spec
    raise FeatcacheError(f"unknown backbone {name!r}; known: {', '.join(names())} (or module:attribute)")


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
    import_tensorflow()
    import keras

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
    it can be had, else random with a warning.
    """
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


def build_backbone(spec: BackboneSpec, weights: ResolvedWeights) -> "keras.Model":
    """Build the model and check that it gives the output shape the spec promises."""
    try:
        model = spec.build(weights)
    except (OSError, ValueError) as exc:
        raise WeightsUnavailableError(f"{weights.path}: cannot load {spec.name} weights ({exc})") from None
    got = tuple(model.output_shape[1:])
    if got != tuple(spec.output_shape):
        raise FeatcacheError(f"backbone {spec.name!r} gives maps of shape {got}, its spec says {spec.output_shape}")
    return model


# How images become backbone inputs: decoded to RGB uint8 (a JPEG whose short side is at least 4, 8
# or 16 times the target is decoded scaled down by 2, 4 or 8 in the DCT domain), resized to the
# backbone's input size without keeping the aspect ratio (Keras' image_dataset_from_directory
# default), bilinear with antialiasing so that large images are averaged, not aliased.
RESIZE = "jpeg-dct-prescale-to-2x,bilinear,antialias,squash"
# The resize policies (see featcache.extractor.pipeline.resize); the fingerprint's ``resize`` ends in
# the policy's name, so caches made before the choice existed (all squash) keep their identity.
RESIZE_POLICIES = ("squash", "centre-crop", "pad")
DEFAULT_RESIZE = "squash"
DEFAULT_CROP_SCALE = (0.35, 1.0)  # area fraction of a random-resized-crop view
DEFAULT_CROP_RATIO = (3 / 4, 4 / 3)  # its aspect ratio (width / height)
AUGMENT_VERSION = 1  # bump when make_view's recipe changes: old and new views must not mix


@dataclass(frozen=True)
class Augment:
    """How each image becomes its views (see :func:`featcache.extractor.pipeline.make_view`):
    ``views`` per image (view 0 the plain image, 1 its mirror, 2+ random-resized crops), the crops'
    area fraction and aspect-ratio ranges, and the ``resize`` policy of every view."""

    views: int = 1
    crop_scale: tuple[float, float] = DEFAULT_CROP_SCALE
    crop_ratio: tuple[float, float] = DEFAULT_CROP_RATIO
    resize: str = DEFAULT_RESIZE

    def __post_init__(self) -> None:
        if self.views < 1:
            raise FeatcacheError(f"views={self.views}: at least 1 (the plain image)")
        if self.resize not in RESIZE_POLICIES:
            raise FeatcacheError(f"resize={self.resize!r}: choose from {', '.join(RESIZE_POLICIES)}")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise FeatcacheError(f"crop_scale={self.crop_scale}: need 0 < low <= high <= 1")
        lo, hi = self.crop_ratio
        if not 0 < lo <= hi:
            raise FeatcacheError(f"crop_ratio={self.crop_ratio}: need 0 < low <= high")

    def resize_key(self) -> str:
        """The fingerprint's ``resize`` value."""
        return RESIZE.rsplit(",", 1)[0] + "," + self.resize

    def fingerprint(self) -> dict[str, Any] | None:
        """The fingerprint's ``augment`` value: None for one view (the key is then left out, as in
        caches made before views existed)."""
        if self.views == 1:
            return None
        return {
            "version": AUGMENT_VERSION,
            "views": self.views,
            "view_1": "horizontal flip",
            "view_2_up": "random-resized crop, squashed, flipped with p=0.5",
            "crop_scale": [float(v) for v in self.crop_scale],
            "crop_ratio": [float(v) for v in self.crop_ratio],
            "seed": "siphash(id:view)",
            "maps": "view 0",
        }


def make_fingerprint(
    spec: BackboneSpec,
    weights: ResolvedWeights,
    *,
    maps_dtype: str,
    compute_dtype: str = "float32",
    environment: dict[str, Any] | None = None,
    augment: Augment | None = None,
) -> dict[str, Any]:
    """The fingerprint of features computed by ``spec`` with ``weights`` (and ``augment``'s resize
    policy and views; the ``augment`` key only with more than one view)."""
    augment = augment or Augment()
    fp: dict[str, Any] = {
        "backbone": spec.name,
        "weights_source": weights.source,
        "weights_path": weights.path,
        "weights_sha256": weights.sha256,
        "random_weights": weights.random,
        "input_size": list(spec.input_size),
        "output_shape": list(spec.output_shape),
        "resize": augment.resize_key(),
        "preprocessing": spec.preprocessing,
        "compute_dtype": compute_dtype,
        "maps_dtype": maps_dtype,
    }
    if augment.views > 1:
        fp["augment"] = augment.fingerprint()
    for key in ENVIRONMENT_KEYS:
        fp[key] = (environment or {}).get(key)
    return fp
