"""The built-in backbones, each stated once (:func:`keras_application` for a Keras application), and the
one way a name becomes a spec (:func:`get_backbone`): a registered name, ``module:attribute`` or a model
file (:mod:`.model_files`).

Built-ins: the Keras applications people use for features (``mobilenet_v2``, the product;
``mobilenet_v3_large``, ``efficientnet_v2_b0``, ``efficientnet_v2_s``, ``resnet50``, ``convnext_tiny``),
each at its own input size with its own preprocessing, and ``tiny`` (a fixed random conv net with
MobileNetV2's output shape, for tests and smoke runs: its features are random projections of 8x8
patches, different for every image, unlike a random MobileNetV2 whose output is the same vector for
every image). Others plug in by :func:`register`. :func:`listing`, the table ``featcache-extract
--backbone list`` prints, is made from the registry. See docs/backbones.md.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from ..errors import FeatcacheError, WeightsUnavailableError
from ._tf import import_keras
from .model_files import imported_spec, is_model_file, model_file_spec
from .spec import PREPROCESS_SCHEMES, BackboneSpec, ResolvedWeights
from .weights import imagenet_status, keras_cache_candidates

if TYPE_CHECKING:  # pragma: no cover
    import keras

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


def _build_keras_app(
    constructor: str, input_size: tuple[int, int], kwargs: dict[str, Any], include_top: bool, weights: ResolvedWeights
) -> "keras.Model":
    """``keras.applications.<constructor>`` at ``input_size``, random (seeded) or from ``weights.path``."""
    keras = import_keras()
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
    import numpy as np

    keras = import_keras()

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


_MOBILENET_PREPROCESS, _MOBILENET_PREPROCESSING, _MOBILENET_RESCALE = PREPROCESS_SCHEMES["tf"]
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
        return imported_spec(name)
    raise FeatcacheError(
        f"unknown backbone {name!r}; known: {', '.join(names())} (or module:attribute, or a .keras model file)"
    )


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
