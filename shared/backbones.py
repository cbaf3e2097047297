"""The backbone registry: each backbone's facts stated once, next to its builder.

The extractor builds a backbone from here to compute features; the trainer rebuilds the same one to
export a head stacked on it. Neither imports TensorFlow at module level: builders import it when
called, so ``import featcache.shared`` stays fast for the inspection commands.

A backbone is a :class:`BackboneSpec`. Built-ins: the Keras applications people use for features
(``mobilenet_v2``, the product; ``mobilenet_v3_large``, ``efficientnet_v2_b0``, ``efficientnet_v2_s``,
``resnet50``, ``convnext_tiny``), each at its own input size with its own preprocessing, and ``tiny``
(a fixed random conv net with MobileNetV2's output shape, for tests and smoke runs: its features are
random projections of 8x8 patches, different for every image, unlike a random MobileNetV2 whose
output is the same vector for every image). Others plug in by :func:`register`, by naming a
``module:attribute`` that holds a spec, or as a saved Keras model file (:func:`model_file_spec`).
:func:`listing` is the table ``featcache-extract --backbone list`` prints. See docs/backbones.md.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .cache import ENVIRONMENT_KEYS, FEED_DTYPES, RANDOM_PREFIX, UNRECORDED_FEED_DTYPE, Recipe, Views
from .cache.fsutil import sha256_file
from .errors import FeatcacheError, WeightsUnavailableError
from .quiet import verbose

if TYPE_CHECKING:  # pragma: no cover
    import keras

WEIGHTS_ENV = "FEATCACHE_WEIGHTS"

# Where Keras downloads its applications' ImageNet files from (keras/src/applications/*.py: each
# module's BASE_WEIGHT(S)_PATH plus the file name it builds); the files land in Keras' download cache
# under the same name, which is where ``weights="imagenet"`` looks first (no network needed then).
KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"

# Keras' own ImageNet file for MobileNetV2 1.0/224 without the top (keras/src/applications/mobilenet_v2.py).
MOBILENET_V2_WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
MOBILENET_V2_WEIGHTS_URL = KERAS_WEIGHTS_URL + "mobilenet_v2/" + MOBILENET_V2_WEIGHTS_FILE


def keras_file(folder: str, file_name: str) -> tuple[str, str]:
    """``(file name, URL)`` of a Keras applications weights file kept under ``folder`` on Keras' server."""
    return file_name, f"{KERAS_WEIGHTS_URL}{folder}/{file_name}"


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
    if not verbose():  # tf.function retracing and other Python-side WARNINGs; errors still show
        tf.get_logger().setLevel("ERROR")
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
    RGB values in [0, 255] to what ``build``'s model takes (the identity, :func:`rgb_as_is`, when the
    model preprocesses inside); ``preprocessing`` says what it does in words (recorded in the
    fingerprint: change it and old caches are refused). ``imagenet_file`` is ``(file name, URL)`` in
    Keras' download cache, or None when the backbone has no pretrained weights.

    ``build_top`` (optional) builds the same network with its ImageNet classifier, taking the same
    preprocessed images to ``(B, 1000)`` probabilities; ``top_file`` is Keras' file for it. They let
    tests check the whole input path against known labels (tests/test_sanity.py).
    ``identity`` adds entries to the fingerprint (a model file's path and layer); ``weights_file`` is
    set when the weights come inside the model file itself.
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
    build_top: Callable[[ResolvedWeights], "keras.Model"] | None = None
    top_file: tuple[str, str] | None = None
    identity: tuple[tuple[str, Any], ...] = ()
    weights_file: str | None = None
    # Layer taps (docs/cache-format.md): the layers whose spatial means a cache stores by default
    # (``taps="default"``), with their widths, and the backbone's last block: the layer whose output
    # feeds it (kept with ``keep_top_input=True``) with that output's shape, and the block's layers in
    # order (the ``top`` head fine-tunes copies of them; export splices them back).
    taps: tuple[tuple[str, int], ...] = ()
    top_input: tuple[str, tuple[int, int, int]] | None = None
    top_layers: tuple[str, ...] = ()

    @property
    def channels(self) -> int:
        """Length of the pooled vector."""
        return self.output_shape[-1]

    def preprocess_fn(self) -> Callable[[Any], Any]:
        """The preprocessing function itself (imports its module)."""
        module, attr = self.preprocess.split(":")
        import_tensorflow()
        return getattr(importlib.import_module(module), attr)


def rgb_as_is(x: Any) -> Any:
    """The preprocessing of models that preprocess inside (``include_preprocessing=True``): none.

    Feeding such a model ``preprocess_input``'s output would preprocess twice; this keeps RGB in
    [0, 255] as the model expects.
    """
    return x


def rgb_unit(x: Any) -> Any:
    """RGB in [0, 255] -> [0, 1] (``x / 255``)."""
    return x / 255.0


def preprocess_caffe(x: Any) -> Any:
    """Keras' ``caffe`` mode: RGB -> BGR, minus the ImageNet mean per channel (no scaling)."""
    import keras

    return keras.applications.imagenet_utils.preprocess_input(x, mode="caffe")


def preprocess_torch(x: Any) -> Any:
    """Keras' ``torch`` mode: RGB / 255, minus the ImageNet mean, divided by its std per channel."""
    import keras

    return keras.applications.imagenet_utils.preprocess_input(x, mode="torch")


def _build_keras_app(
    constructor: str, input_size: tuple[int, int], kwargs: dict[str, Any], include_top: bool, weights: ResolvedWeights
) -> "keras.Model":
    """``keras.applications.<constructor>`` at ``input_size``, random (seeded) or from ``weights.path``."""
    import_tensorflow()
    import keras

    if weights.random:
        keras.utils.set_random_seed(weights.seed or 0)
    return getattr(keras.applications, constructor)(
        include_top=include_top,
        input_shape=(*input_size, 3),
        weights=None if weights.random else weights.path,
        **kwargs,
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
            keras.layers.Conv2D(TINY_HIDDEN, TINY_PATCH, strides=TINY_PATCH, activation="relu", name="patches"),
            keras.layers.AveragePooling2D(4, name="pool"),  # 7x7
            keras.layers.Conv2D(1280, 1, name="top_conv"),
            keras.layers.ReLU(max_value=6.0, name="top_relu"),
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


# Preprocessing schemes, each stated once: (function, words for the fingerprint, affine form or None).
# A model file names one with preprocess=...; the registered backbones below use them too.
_MOBILENET_PREPROCESS = "keras.applications.mobilenet_v2:preprocess_input"
_MOBILENET_PREPROCESSING = "RGB in [0, 255] -> x / 127.5 - 1 (mobilenet_v2.preprocess_input)"
_MOBILENET_RESCALE = (1 / 127.5, -1.0)
PREPROCESS_SCHEMES: dict[str, tuple[str, str, tuple[float, float] | None]] = {
    "raw": (f"{__name__}:rgb_as_is", "RGB in [0, 255] as is (the model preprocesses inside)", (1.0, 0.0)),
    "tf": (_MOBILENET_PREPROCESS, _MOBILENET_PREPROCESSING, _MOBILENET_RESCALE),
    "unit": (f"{__name__}:rgb_unit", "RGB in [0, 255] -> x / 255", (1 / 255, 0.0)),
    "caffe": (
        f"{__name__}:preprocess_caffe",
        "RGB in [0, 255] -> BGR minus the ImageNet mean (103.939, 116.779, 123.68) (imagenet_utils 'caffe')",
        None,
    ),
    "torch": (
        f"{__name__}:preprocess_torch",
        "RGB in [0, 255] -> (x / 255 - ImageNet mean) / ImageNet std (imagenet_utils 'torch')",
        None,
    ),
}

_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add (or replace) a backbone under ``spec.name``."""
    _REGISTRY[spec.name] = spec
    return spec


def keras_application(
    name: str,
    constructor: str,
    input_size: tuple[int, int],
    output_shape: tuple[int, int, int],
    *,
    preprocess: str,
    preprocessing: str,
    rescale: tuple[float, float] | None,
    imagenet_file: tuple[str, str] | None,
    top_file: tuple[str, str] | None,
    description: str,
    taps: tuple[tuple[str, int], ...] = (),
    top_input: tuple[str, tuple[int, int, int]] | None = None,
    top_layers: tuple[str, ...] = (),
    **kwargs: Any,
) -> BackboneSpec:
    """A spec for ``keras.applications.<constructor>`` (``include_top=False``; ``kwargs`` go to it).

    ``build_top`` is the same call with ``include_top=True``, for the sanity check against labels.
    """
    return BackboneSpec(
        name=name,
        input_size=input_size,
        output_shape=output_shape,
        build=functools.partial(_build_keras_app, constructor, input_size, kwargs, False),
        preprocess=preprocess,
        preprocessing=preprocessing,
        imagenet_file=imagenet_file,
        description=description,
        rescale=rescale,
        build_top=functools.partial(_build_keras_app, constructor, input_size, kwargs, True),
        top_file=top_file,
        taps=taps,
        top_input=top_input,
        top_layers=top_layers,
    )


# Models with include_preprocessing=True take RGB in [0, 255]: the extractor feeds them as is.
PREPROCESSING_INSIDE = "RGB in [0, 255] as is; the model preprocesses inside (include_preprocessing=True: {})"

for _spec in (
    keras_application(
        "mobilenet_v2",
        "MobileNetV2",
        (224, 224),
        (7, 7, 1280),
        preprocess=_MOBILENET_PREPROCESS,
        preprocessing=_MOBILENET_PREPROCESSING,
        rescale=_MOBILENET_RESCALE,
        imagenet_file=(MOBILENET_V2_WEIGHTS_FILE, MOBILENET_V2_WEIGHTS_URL),
        top_file=keras_file("mobilenet_v2", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"),
        description="Keras MobileNetV2 1.0, include_top=False, 224x224",
        # measured on CIFAR-10 dev and on photographs (issue #29, bench/taps.py): the pooled outputs of
        # these two layers concatenated to the pooled 1280 raise a logistic regression by 1-1.5 points
        taps=(("block_13_expand_relu", 576), ("block_16_project_BN", 320)),
        top_input=("block_16_project_BN", (7, 7, 320)),
        top_layers=("Conv_1", "Conv_1_bn", "out_relu"),
    ),
    keras_application(
        "mobilenet_v3_large",
        "MobileNetV3Large",
        (224, 224),
        (7, 7, 960),
        preprocess=PREPROCESS_SCHEMES["raw"][0],
        preprocessing=PREPROCESSING_INSIDE.format("x / 127.5 - 1"),
        rescale=(1.0, 0.0),
        imagenet_file=keras_file("mobilenet_v3", "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5"),
        top_file=keras_file("mobilenet_v3", "weights_mobilenet_v3_large_224_1.0_float.h5"),
        description="Keras MobileNetV3Large 1.0, include_top=False, 224x224 (maps before the 1280-wide top conv)",
        include_preprocessing=True,
    ),
    keras_application(
        "efficientnet_v2_b0",
        "EfficientNetV2B0",
        (224, 224),
        (7, 7, 1280),
        preprocess=PREPROCESS_SCHEMES["raw"][0],
        preprocessing=PREPROCESSING_INSIDE.format("x / 255, minus ImageNet mean, over ImageNet std"),
        rescale=(1.0, 0.0),
        imagenet_file=keras_file("efficientnet_v2", "efficientnetv2-b0_notop.h5"),
        top_file=keras_file("efficientnet_v2", "efficientnetv2-b0.h5"),
        description="Keras EfficientNetV2B0, include_top=False, 224x224",
        include_preprocessing=True,
    ),
    keras_application(
        "efficientnet_v2_s",
        "EfficientNetV2S",
        (384, 384),
        (12, 12, 1280),
        preprocess=PREPROCESS_SCHEMES["raw"][0],
        preprocessing=PREPROCESSING_INSIDE.format("x / 128 - 1"),
        rescale=(1.0, 0.0),
        imagenet_file=keras_file("efficientnet_v2", "efficientnetv2-s_notop.h5"),
        top_file=keras_file("efficientnet_v2", "efficientnetv2-s.h5"),
        description="Keras EfficientNetV2S, include_top=False, 384x384 (its native size; ~8x MobileNetV2's work)",
        include_preprocessing=True,
    ),
    keras_application(
        "resnet50",
        "ResNet50",
        (224, 224),
        (7, 7, 2048),
        preprocess="keras.applications.resnet50:preprocess_input",
        preprocessing=(
            "RGB in [0, 255] -> BGR minus the ImageNet mean (103.939, 116.779, 123.68) (resnet50.preprocess_input)"
        ),
        rescale=None,
        imagenet_file=keras_file("resnet", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        top_file=keras_file("resnet", "resnet50_weights_tf_dim_ordering_tf_kernels.h5"),
        description="Keras ResNet50 (v1), include_top=False, 224x224",
    ),
    keras_application(
        "convnext_tiny",
        "ConvNeXtTiny",
        (224, 224),
        (7, 7, 768),
        preprocess=PREPROCESS_SCHEMES["raw"][0],
        preprocessing=PREPROCESSING_INSIDE.format("minus ImageNet mean * 255, over ImageNet std * 255"),
        rescale=(1.0, 0.0),
        imagenet_file=keras_file("convnext", "convnext_tiny_notop.h5"),
        top_file=keras_file("convnext", "convnext_tiny.h5"),
        description="Keras ConvNeXtTiny, include_top=False, 224x224 (maps before the head's LayerNorm)",
        include_preprocessing=True,
    ),
):
    register(_spec)

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
        taps=(("patches", TINY_HIDDEN),),
        top_input=("pool", (7, 7, TINY_HIDDEN)),
        top_layers=("top_conv", "top_relu"),
    )
)


def names() -> list[str]:
    """Registered backbone names."""
    return sorted(_REGISTRY)


def get_backbone(name: str, *, layer: str | None = None, preprocess: str | None = None) -> BackboneSpec:
    """The spec registered as ``name``, the one at ``module:attribute``, or a saved Keras model file.

    ``layer`` and ``preprocess`` apply to a model file only (see :func:`model_file_spec`).
    """
    if is_model_file(name):
        return model_file_spec(name, layer=layer, preprocess=preprocess)
    if layer is not None or preprocess is not None:
        raise FeatcacheError(
            f"backbone {name!r}: layer= and preprocess= apply to a model file (.keras, .h5), "
            "not to a registered backbone"
        )
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
    raise FeatcacheError(
        f"unknown backbone {name!r}; known: {', '.join(names())} (or module:attribute, or a .keras model file)"
    )


MODEL_FILE_SUFFIXES = (".keras", ".h5")


def is_model_file(name: str) -> bool:
    """Whether a backbone name is a path to a saved model (by its suffix, or an existing folder)."""
    return Path(name).suffix.lower() in MODEL_FILE_SUFFIXES or Path(name).expanduser().is_dir()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _model_file_layer(model: "keras.Model", path: Path, layer: str | None) -> tuple[str, Any]:
    """The name and symbolic output of the layer whose output becomes the maps (the model's output
    when ``layer`` is None)."""
    if layer is None:
        if len(model.outputs) != 1:
            raise FeatcacheError(f"{path}: the model has {len(model.outputs)} outputs; name one layer with layer=NAME")
        return model.layers[-1].name, model.outputs[0]
    try:
        target = model.get_layer(layer)
    except ValueError:
        known = ", ".join(x.name for x in model.layers[-5:])
        raise FeatcacheError(f"{path}: no layer named {layer!r} (its last layers: {known})") from None
    try:
        return layer, target.output
    except (AttributeError, ValueError) as exc:  # a layer called several times has no single output
        raise FeatcacheError(f"{path}: layer {layer!r} has no single output ({_one_line(exc)})") from None


def _build_model_file(model: "keras.Model", path: str, weights: ResolvedWeights) -> "keras.Model":
    """The already loaded sub-model; its weights are the file's (``resolve_weights`` made sure)."""
    if weights.path != path:
        raise WeightsUnavailableError(
            f"{path}: the model file carries its weights, not {weights.path or weights.sha256}"
        )
    return model


def model_file_spec(path: str | Path, *, layer: str | None = None, preprocess: str | None = None) -> BackboneSpec:
    """A user's saved Keras model (``.keras``, or a full-model ``.h5``) as a backbone.

    The maps are the output of the layer named ``layer`` (the model's output when None), which must
    be ``(B, h, w, C)`` with fixed ``h, w, C``; the input size is read from the model, which must take
    fixed-size ``(B, H, W, 3)`` RGB. ``preprocess`` must say what the model expects, as one of
    :data:`PREPROCESS_SCHEMES` (``raw``: RGB in [0, 255] as is) or ``module:function``: featcache will
    not guess, since a wrong guess silently costs accuracy. The file's sha256 (its weights), the
    layer and the input size go into the fingerprint. Loading the model imports TensorFlow.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise FeatcacheError(
            f"{p}: a folder (TensorFlow SavedModel?): Keras 3 loads .keras and .h5 model files only; "
            "save the model with model.save('model.keras')"
        )
    if not p.is_file():
        raise FeatcacheError(f"{p}: model file not found")
    if preprocess is None:
        raise FeatcacheError(
            f"{p}: say what the model expects with preprocess= ({', '.join(PREPROCESS_SCHEMES)} or "
            "module:function); featcache does not guess"
        )
    if preprocess in PREPROCESS_SCHEMES:
        fn, words, rescale = PREPROCESS_SCHEMES[preprocess]
    elif ":" in preprocess:
        fn, words, rescale = preprocess, f"RGB in [0, 255] -> {preprocess}", None
    else:
        raise FeatcacheError(
            f"{p}: unknown preprocess={preprocess!r}; choose {', '.join(PREPROCESS_SCHEMES)} or module:function"
        )
    import_tensorflow()
    import keras

    try:
        model = keras.models.load_model(p, compile=False)
    except Exception as exc:  # keras raises many kinds, all meaning "not a model it can load"
        raise FeatcacheError(f"{p}: cannot load a Keras model from it ({_one_line(exc)})") from None
    if not isinstance(model, keras.Model) or len(model.inputs) != 1:
        raise FeatcacheError(f"{p}: featcache needs a model with one image input")
    in_shape = tuple(model.inputs[0].shape)
    if len(in_shape) != 4 or in_shape[3] != 3 or None in in_shape[1:3]:
        raise FeatcacheError(f"{p}: the model's input has shape {in_shape}; featcache needs fixed (batch, H, W, 3)")
    layer_name, out = _model_file_layer(model, p, layer)
    out_shape = tuple(out.shape)
    if len(out_shape) != 4 or None in out_shape[1:]:
        raise FeatcacheError(
            f"{p}: layer {layer_name!r} gives output of shape {out_shape}, not (batch, h, w, C) maps; "
            "name a 4-D layer with layer=NAME"
        )
    resolved = str(p.resolve())
    sub = keras.Model(model.inputs[0], out, name=f"{model.name}_to_{layer_name}")
    return BackboneSpec(
        name=f"{p.name}[{layer_name}]",
        input_size=(int(in_shape[1]), int(in_shape[2])),
        output_shape=(int(out_shape[1]), int(out_shape[2]), int(out_shape[3])),
        build=functools.partial(_build_model_file, sub, resolved),
        preprocess=fn,
        preprocessing=words,
        description=f"user model {resolved}, layer {layer_name}",
        rescale=rescale,
        identity=(("model_file", resolved), ("layer", layer_name)),
        weights_file=resolved,
    )


IMAGENET_CACHED = "cached"
IMAGENET_NOT_CACHED = "not cached (downloaded on first use)"
IMAGENET_NONE = "none"


def imagenet_status(spec: BackboneSpec) -> str:
    """Whether the spec's ImageNet file is in Keras' download cache (usable offline)."""
    if spec.imagenet_file is None:
        return IMAGENET_NONE
    found = any(c.is_file() for c in keras_cache_candidates(spec.imagenet_file[0]))
    return IMAGENET_CACHED if found else IMAGENET_NOT_CACHED


def listing() -> str:
    """The registered backbones as a table: what ``featcache-extract --backbone list`` prints.

    Reads no model and imports no TensorFlow (the shapes are the specs' own, checked by
    :func:`build_backbone` whenever one is built).
    """
    header = ("name", "input", "maps", "pooled", "ImageNet weights", "preprocessing (what the extractor feeds)")
    rows = [header]
    for n in names():
        spec = _REGISTRY[n]
        rows.append(
            (
                n,
                "x".join(map(str, spec.input_size)),
                "x".join(map(str, spec.output_shape)),
                str(spec.channels),
                imagenet_status(spec),
                spec.preprocessing,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = ["  ".join([c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)] + [r[-1]]) for r in rows]
    home = keras_cache_candidates("")[0]
    lines.append(
        f"ImageNet weights are looked up in Keras' download cache ({home}); a model file works too: "
        "a .keras path with a layer and a preprocessing (docs/backbones.md)."
    )
    return "\n".join(lines)


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
PAD_VALUE = 127.5  # what "pad" fills with: mid-grey, 0 after MobileNet's [-1, 1] scaling
DEFAULT_RESIZE = "squash"
# A new cache's images go to the device as uint8 (4x fewer bytes than float32; cast and preprocessed
# there). An existing cache keeps what its fingerprint records (see fingerprint.feed_dtype).
DEFAULT_FEED_DTYPE = "uint8"


def check_feed_dtype(value: str) -> str:
    """``value`` if it is one of :data:`FEED_DTYPES`, else a one-line :class:`FeatcacheError`."""
    if value not in FEED_DTYPES:
        raise FeatcacheError(f"feed_dtype={value!r}: choose from {', '.join(FEED_DTYPES)}")
    return value


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
    feed_dtype: str = UNRECORDED_FEED_DTYPE,
    taps: tuple[tuple[str, int], ...] = (),
    top_input: bool = False,
) -> dict[str, Any]:
    """The fingerprint of features computed by ``spec`` with ``weights`` (and ``augment``'s resize
    policy and views; the ``augment`` key only with more than one view; the ``feed_dtype`` key only
    when images were rounded to uint8, so float32-fed caches, old and new, agree; the ``taps`` key
    only with taps (:func:`resolve_taps`), ``top_input`` only when kept (:func:`top_input_entry`))."""
    augment = augment or Augment()
    identity = dict(spec.identity)
    recipe = Recipe(
        backbone=spec.name,
        weights_source=weights.source,
        weights_path=weights.path,
        weights_sha256=weights.sha256,
        random_weights=weights.random,
        input_size=tuple(spec.input_size),  # type: ignore[arg-type]
        output_shape=tuple(spec.output_shape),  # type: ignore[arg-type]
        pooled_width=spec.channels,
        resize=augment.resize_key(),
        preprocessing=spec.preprocessing,
        compute_dtype=compute_dtype,
        maps_dtype=maps_dtype,
        model_file=identity.pop("model_file", None),
        layer=identity.pop("layer", None),
        augment=Views.parse(augment.fingerprint(), "views"),
        feed_dtype=None if feed_dtype == UNRECORDED_FEED_DTYPE else feed_dtype,
        environment=tuple((key, (environment or {}).get(key)) for key in ENVIRONMENT_KEYS),
        other=(
            *identity.items(),
            *((("taps", _taps_entry(taps)),) if taps else ()),
            *((("top_input", top_input_entry(spec)),) if top_input else ()),
        ),
    )
    return recipe.fingerprint()


TAPS_DEFAULT, TAPS_NONE = "default", "none"


def tap_names(spec: BackboneSpec, value: str) -> tuple[str, ...]:
    """The layer names ``taps=value`` asks for: ``"default"`` (the spec's own, none for a backbone that
    names none), ``"none"``, or names joined by commas."""
    if value == TAPS_DEFAULT:
        return tuple(n for n, _ in spec.taps)
    if value == TAPS_NONE:
        return ()
    names = tuple(n.strip() for n in value.split(","))
    if not all(names) or len(set(names)) != len(names):
        raise FeatcacheError(
            f"taps={value!r}: expected {TAPS_DEFAULT!r}, {TAPS_NONE!r} or distinct layer names joined by commas"
        )
    return names


def resolve_taps(spec: BackboneSpec, weights: ResolvedWeights, value: str) -> tuple[tuple[str, int], ...]:
    """``taps=value`` as ``((layer, width), ...)``. Layers the spec lists take their widths from it (no
    TensorFlow); any other name is looked up in the built backbone, whose output there must be
    ``(B, h, w, C)`` maps: else a one-line :class:`FeatcacheError` naming ``taps=``."""
    names = tap_names(spec, value)
    known = dict(spec.taps)
    if spec.top_input is not None:
        known.setdefault(spec.top_input[0], spec.top_input[1][-1])
    if all(n in known for n in names):
        return tuple((n, known[n]) for n in names)
    model = build_backbone(spec, weights)
    out = []
    for n in names:
        try:
            shape = tuple(model.get_layer(n).output.shape)
        except ValueError:
            raise FeatcacheError(
                f"taps={value!r}: backbone {spec.name!r} has no layer {n!r} (its taps by default: "
                f"{', '.join(tap_names(spec, TAPS_DEFAULT)) or 'none'})"
            ) from None
        if len(shape) != 4 or shape[-1] is None:
            raise FeatcacheError(f"taps={value!r}: layer {n!r} gives {shape}, not (batch, h, w, C) maps")
        out.append((n, int(shape[-1])))
    return tuple(out)


def top_input_entry(spec: BackboneSpec) -> dict[str, Any]:
    """The fingerprint's ``top_input`` value: the layer whose output is kept, its shape, the layers it
    feeds; a one-line :class:`FeatcacheError` for a backbone whose last block is not named."""
    if spec.top_input is None or not spec.top_layers:
        raise FeatcacheError(
            f"keep_top_input=True: backbone {spec.name!r} names no last block (BackboneSpec.top_input, top_layers)"
        )
    layer, shape = spec.top_input
    return {"layer": layer, "shape": [int(v) for v in shape], "dtype": "float16", "top": list(spec.top_layers)}


def _taps_entry(taps: tuple[tuple[str, int], ...]) -> dict[str, Any]:
    """The fingerprint's ``taps`` value: the tapped layers in order, their widths, how they are pooled."""
    return {
        "layers": [n for n, _ in taps],
        "widths": [int(w) for _, w in taps],
        "pool": "spatial mean of the float32 output",
    }
