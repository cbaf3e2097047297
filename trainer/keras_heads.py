"""Trained heads as plain Keras models, alone or stacked onto their backbone.

Only built-in Keras layers are used, so a saved ``.keras`` file loads with ``keras.models.load_model``
and no featcache installed. A head's input standardisation (train-split mean and std) is a fixed
``Normalization`` layer inside the model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..shared.backbones import BackboneSpec, ResolvedWeights, build_backbone, import_tensorflow
from ..shared.errors import FeatcacheError
from .sweep import POOLED_KINDS, HeadConfig

import_tensorflow()
import keras  # noqa: E402


def head_model(
    cfg: HeadConfig,
    w: dict[str, np.ndarray],
    in_shape: tuple[int, ...],
    n_classes: int,
    standardize: tuple[np.ndarray, np.ndarray] | None = None,
) -> keras.Model:
    """The head as a Keras model from its input (pooled ``(C,)`` or maps ``(h, w, C)``) to class
    probabilities ``(n_classes,)``; ``w`` are the head's weights as :meth:`HeadGroup.head_weights` gives."""
    inp = keras.Input(in_shape, name="pooled" if cfg.kind in POOLED_KINDS else "maps")
    x = inp
    if standardize is not None and cfg.kind in POOLED_KINDS:
        mean, std = standardize
        x = keras.layers.Normalization(mean=mean, variance=np.square(std), name="standardize")(x)
    if cfg.kind == "linear":
        out = keras.layers.Dense(n_classes, activation="softmax", name="classify")
        y = out(x)
        out.set_weights([w["W"], w["b"]])
    elif cfg.kind == "mlp":
        hidden = keras.layers.Dense(cfg.hidden, activation="relu", name="hidden")
        out = keras.layers.Dense(n_classes, activation="softmax", name="classify")
        y = out(keras.layers.Dropout(cfg.dropout)(hidden(x)))
        hidden.set_weights([w["W1"], w["b1"]])
        out.set_weights([w["W2"], w["b2"]])
    else:
        positions = int(np.prod(in_shape[:-1]))
        conv = keras.layers.Conv2D(cfg.hidden, 1, activation="relu", name="project")
        f = keras.layers.Reshape((positions, cfg.hidden))(conv(x))
        score = keras.layers.Dense(1, use_bias=False, name="attention")
        att = keras.layers.Softmax(axis=1)(
            keras.layers.Reshape((positions, 1))(keras.layers.Reshape((positions,))(score(f)))
        )
        pooled = keras.layers.Flatten()(keras.layers.Dot(axes=(1, 1))([att, f]))
        out = keras.layers.Dense(n_classes, activation="softmax", name="classify")
        y = out(keras.layers.Dropout(cfg.dropout)(pooled))
        conv.set_weights([w["W1"][None, None], w["b1"]])
        score.set_weights([w["a"][:, None]])
        out.set_weights([w["W2"], w["b2"]])
    return keras.Model(inp, y, name=f"head_{cfg.kind}")


def full_model(spec: BackboneSpec, weights: ResolvedWeights, cfg: HeadConfig, head: keras.Model) -> keras.Model:
    """``(224, 224, 3)`` RGB in [0, 255] -> class probabilities: preprocessing, backbone, (pooling,) head."""
    if spec.rescale is None:
        raise FeatcacheError(
            f"backbone {spec.name!r} states no affine preprocessing: cannot build a self-contained model"
        )
    scale, offset = spec.rescale
    image = keras.Input((*spec.input_size, 3), name="image")
    x = keras.layers.Rescaling(scale, offset, name="preprocess")(image)
    x = build_backbone(spec, weights)(x, training=False)
    if cfg.kind in POOLED_KINDS:
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(image, head(x), name=f"featcache_{spec.name}_{cfg.kind}")


def load(path: Any) -> keras.Model:
    return keras.models.load_model(path)
