"""Trained heads as plain Keras models, alone or stacked onto their backbone.

Only built-in Keras layers and ``keras.ops`` are used, so a saved ``.keras`` file loads with
``keras.models.load_model`` (safe mode) and no featcache installed. A head's input standardisation
(train-split mean and std) is a fixed ``Normalization`` layer inside the model; a logistic-regression
head's power normalisation is ``keras.ops`` on its input, before its own ``Normalization``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..shared.backbones import PAD_VALUE, BackboneSpec, ResolvedWeights, build_backbone, import_tensorflow
from ..shared.cache.fsutil import check_input
from ..shared.errors import FeatcacheError
from .kinds import closed_form
from .pooling import GEM_EPS, GEM_MIN_P, MULTISCALE, region_matrix
from .sweep import HeadConfig

import_tensorflow()
import keras  # noqa: E402


def _linear(x: Any, cfg: HeadConfig, w: dict[str, np.ndarray], n_classes: int) -> Any:
    out = keras.layers.Dense(n_classes, activation="softmax", name="classify")
    y = out(x)
    out.set_weights([w["W"], w["b"]])
    return y


def _mlp(x: Any, cfg: HeadConfig, w: dict[str, np.ndarray], n_classes: int) -> Any:
    hidden = keras.layers.Dense(cfg.hidden, activation="relu", name="hidden")
    out = keras.layers.Dense(n_classes, activation="softmax", name="classify")
    y = out(keras.layers.Dropout(cfg.dropout)(hidden(x)))
    hidden.set_weights([w["W1"], w["b1"]])
    out.set_weights([w["W2"], w["b2"]])
    return y


def _attention_pool(f: Any, w: dict[str, np.ndarray]) -> Any:
    """``(B, P, h)`` -> ``(B, h)``: softmax over positions of ``f @ a``, the weighted sum of ``f``."""
    positions = f.shape[1]
    score = keras.layers.Dense(1, use_bias=False, name="attention")
    att = keras.layers.Softmax(axis=1)(
        keras.layers.Reshape((positions, 1))(keras.layers.Reshape((positions,))(score(f)))
    )
    score.set_weights([w["a"][:, None]])
    return keras.layers.Flatten()(keras.layers.Dot(axes=(1, 1))([att, f]))


def _gem_pool(f: Any, w: dict[str, np.ndarray]) -> Any:
    """``(B, P, h)`` -> ``(B, h)``: GeM with the head's learned power (fixed here), in ``keras.ops``
    (which a ``.keras`` file stores and loads like layers), computed as ``engine.gem_pool`` does."""
    p = max(float(w["p"]), GEM_MIN_P)
    m = keras.ops.maximum(f, GEM_EPS)
    top = keras.ops.max(m, axis=1, keepdims=True)
    return keras.ops.power(keras.ops.mean(keras.ops.power(m / top, p), axis=1), 1.0 / p) * top[:, 0]


def _region_pool(f: Any, regions: np.ndarray) -> Any:
    """``(B, P, h)`` -> ``(B, R * h)`` (channel fastest): the region means of ``regions (P, R)``, as a
    fixed Dense over the position axis."""
    mix = keras.layers.Dense(regions.shape[1], use_bias=False, trainable=False, name="regions")
    r = keras.layers.Permute((2, 1))(mix(keras.layers.Permute((2, 1))(f)))  # (B, R, h)
    mix.set_weights([regions])
    return keras.layers.Flatten()(r)


def _map(x: Any, cfg: HeadConfig, w: dict[str, np.ndarray], n_classes: int) -> Any:
    """1x1 conv + ReLU, the head's pooling (``cfg.pool``), dropout, softmax. The maps' augmentations
    are train-time only: nothing of them is in the model."""
    rows, cols = x.shape[1], x.shape[2]
    conv = keras.layers.Conv2D(cfg.hidden, 1, activation="relu", name="project")
    f = keras.layers.Reshape((rows * cols, cfg.hidden))(conv(x))
    conv.set_weights([w["W1"][None, None], w["b1"]])
    if cfg.pool == "attention":
        pooled = _attention_pool(f, w)
    elif cfg.pool == "gem":
        pooled = _gem_pool(f, w)
    else:
        pooled = _region_pool(f, region_matrix(rows, cols, (1,) if cfg.pool == "mean" else MULTISCALE))
    out = keras.layers.Dense(n_classes, activation="softmax", name="classify")
    y = out(keras.layers.Dropout(cfg.dropout)(pooled))
    out.set_weights([w["W2"], w["b2"]])
    return y


def _logreg(x: Any, cfg: HeadConfig, w: dict[str, np.ndarray], n_classes: int) -> Any:
    if cfg.power != 1:  # sign(x) |x|^power, as logreg.signed_power
        x = keras.ops.sign(x) * keras.ops.power(keras.ops.abs(x), cfg.power)
    x = keras.layers.Normalization(mean=w["mean"], variance=np.square(w["std"]), name="standardize")(x)
    return _linear(x, cfg, w, n_classes)


# Each head kind's Keras layers, from its (standardised) input tensor to class probabilities.
KERAS_HEADS: dict[str, Callable[[Any, HeadConfig, dict[str, np.ndarray], int], Any]] = {
    "logreg": _logreg,
    "linear": _linear,
    "mlp": _mlp,
    "map": _map,
}


def head_model(
    cfg: HeadConfig,
    w: dict[str, np.ndarray],
    in_shape: tuple[int, ...],
    n_classes: int,
    standardize: tuple[np.ndarray, np.ndarray] | None = None,
) -> keras.Model:
    """The head as a Keras model from its input (pooled ``(C,)`` or maps ``(h, w, C)``) to class
    probabilities ``(n_classes,)``; ``w`` are the head's weights as :meth:`HeadGroup.head_weights` gives.
    ``standardize`` (the sweep's) applies to SGD pooled heads; closed-form heads carry their own."""
    inp = keras.Input(in_shape, name="maps" if cfg.reads_maps else "pooled")
    x = inp
    if standardize is not None and not cfg.reads_maps and not closed_form(cfg.kind):
        mean, std = standardize
        x = keras.layers.Normalization(mean=mean, variance=np.square(std), name="standardize")(x)
    return keras.Model(inp, KERAS_HEADS[cfg.kind](x, cfg, w, n_classes), name=f"head_{cfg.kind}")


# What an exported model's dict output holds (see full_model).
PROBABILITIES, CLASS = "probabilities", "class"


def full_model(
    spec: BackboneSpec,
    weights: ResolvedWeights,
    cfg: HeadConfig,
    head: keras.Model,
    flip_tta: bool = False,
    resize: str | None = None,
    classes: list[str] | None = None,
    taps: list[str] | None = None,
) -> keras.Model:
    """An RGB image in [0, 255] -> class probabilities: resize, preprocessing, backbone, (pooling,) head.

    Without ``resize`` the model takes ``(B, H, W, 3)`` images of the backbone's input size. With
    ``resize`` (a policy of :data:`featcache.shared.backbones.RESIZE_POLICIES`: what the cache was made
    with) it takes images **as decoded**, ``(B, h, w, 3)`` of any height and width, uint8 or float, and
    resizes them inside as the extractor did (bilinear with antialiasing; ``pad`` fills with mid-grey),
    built-in Keras layers only. With ``classes`` the output is a dict: ``probabilities`` ``(B, K)`` and
    ``class`` ``(B,)``, the most probable class's name (a ``StringLookup`` whose vocabulary, the class
    names, is in the saved config: ``model.get_layer("class_names").get_vocabulary()``).
    ``flip_tta``: the mean of the head's probabilities on the image and on its horizontal mirror (the
    test-time augmentation of a cache extracted with 2 views), backbone and head shared. ``taps``
    (a head of features ``taps``): the layers whose pooled outputs follow the pooled maps in the
    head's input, in the cache's order, taken from the same backbone call."""
    if spec.rescale is None:
        raise FeatcacheError(
            f"backbone {spec.name!r} states no affine preprocessing: cannot build a self-contained model"
        )
    image, x = _image_input(spec, resize)
    backbone = build_backbone(spec, weights)
    pool = None if cfg.reads_maps or cfg.reads_top_input else keras.layers.GlobalAveragePooling2D(name="pool")
    if cfg.reads_top_input:  # the splice: the backbone up to its last block's input, then the fine-tuned block
        if spec.top_input is None:
            raise FeatcacheError(f"backbone {spec.name!r} names no last block: cannot splice a 'top' head into it")
        backbone = keras.Model(backbone.inputs[0], backbone.get_layer(spec.top_input[0]).output, name=backbone.name)
    if taps:  # one backbone, several outputs: the maps, then each tapped layer's
        outs = [backbone.outputs[0], *[backbone.get_layer(n).output for n in taps]]
        backbone = keras.Model(backbone.inputs[0], outs, name=backbone.name)
        tap_pools = [keras.layers.GlobalAveragePooling2D(name=f"pool_tap{k}") for k in range(len(taps))]
        joined = keras.layers.Concatenate(name="pooled_and_taps")

    def probs(t: Any) -> Any:
        f = backbone(t, training=False)
        if taps:
            assert pool is not None, "taps heads read pooled vectors"
            return head(joined([pool(f[0]), *[p(x) for p, x in zip(tap_pools, f[1:], strict=True)]]))
        return head(f if pool is None else pool(f))

    y = probs(x)
    if flip_tta:
        y = keras.layers.Average(name="tta")([y, probs(keras.ops.flip(x, axis=2))])
    name = f"featcache_{spec.name}_{cfg.kind}"
    if classes is None:
        return keras.Model(image, y, name=name)
    names = keras.layers.StringLookup(vocabulary=list(classes), invert=True, num_oov_indices=0, name="class_names")
    y = keras.layers.Identity(name=PROBABILITIES)(y)
    return keras.Model(image, {PROBABILITIES: y, CLASS: names(keras.ops.argmax(y, axis=-1))}, name=name)


def _image_input(spec: BackboneSpec, resize: str | None) -> tuple[Any, Any]:
    """The exported model's input and the backbone's input made from it: an image as decoded (uint8 or
    float, any height and width) resized with the extractor's ``resize`` policy, or (``resize=None``)
    an image already at the backbone's size; then the backbone's affine preprocessing (``spec.rescale``)."""
    assert spec.rescale is not None, "checked by the caller"
    if resize is None:
        image = keras.Input((*spec.input_size, 3), name="image")
        x = image
    else:
        image = keras.Input((None, None, 3), name="image")
        x = keras.layers.Resizing(
            *spec.input_size,
            interpolation="bilinear",
            antialias=True,
            crop_to_aspect_ratio=resize == "centre-crop",
            pad_to_aspect_ratio=resize == "pad",
            fill_value=PAD_VALUE,
            name="resize",
        )(image)
    return image, keras.layers.Rescaling(*spec.rescale, name="preprocess")(x)


def ensemble_model(
    spec: BackboneSpec,
    weights: ResolvedWeights,
    members: list[tuple[HeadConfig, keras.Model, bool]],
    resize: str,
    classes: list[str],
) -> keras.Model:
    """The mean of several heads' class probabilities on one image, as :func:`full_model` builds one head's
    (an image as decoded, resized with ``resize`` and preprocessed inside; the ``{probabilities, class}``
    output): one backbone, shared by every member, each member a branch (``member<i>``) on the pooled
    vector or the maps. ``members``: ``(config, head model, flip)``; a member with ``flip`` is the mean of
    its probabilities on the image and on its mirror (the backbone then runs once more, on the mirror)."""
    if spec.rescale is None:
        raise FeatcacheError(
            f"backbone {spec.name!r} states no affine preprocessing: cannot build a self-contained model"
        )
    image, x = _image_input(spec, resize)
    backbone = build_backbone(spec, weights)
    maps = backbone(x, training=False)
    mirrored = backbone(keras.ops.flip(x, axis=2), training=False) if any(f for _, _, f in members) else None
    pool = keras.layers.GlobalAveragePooling2D(name="pool")
    pooled = {id(maps): pool(maps)}
    if mirrored is not None:
        pooled[id(mirrored)] = pool(mirrored)
    ys = []
    for i, (cfg, head, flip) in enumerate(members):
        head.name = f"member{i}_{cfg.kind}"  # one model may not hold two sub-models of one name
        views = [maps, mirrored] if flip else [maps]
        out = [head(f if cfg.reads_maps else pooled[id(f)]) for f in views]
        ys.append(out[0] if len(out) == 1 else keras.layers.Average(name=f"member{i}_tta")(out))
    y = (
        keras.layers.Average(name=PROBABILITIES)(ys)
        if len(ys) > 1
        else keras.layers.Identity(name=PROBABILITIES)(ys[0])
    )
    names = keras.layers.StringLookup(vocabulary=list(classes), invert=True, num_oov_indices=0, name="class_names")
    return keras.Model(
        image, {PROBABILITIES: y, CLASS: names(keras.ops.argmax(y, axis=-1))}, name=f"featcache_{spec.name}_ensemble"
    )


def load(path: Any) -> keras.Model:
    """The Keras model saved at ``path`` (a run's ``best_head.keras``, in Keras's safe mode): a FIFO or
    device there is refused without blocking, and a file Keras cannot load is one line naming it (Keras
    raises anything from a ``ValueError`` to a ``TypeError`` deep inside deserialisation)."""
    try:
        check_input(path)
    except OSError as exc:
        raise FeatcacheError(f"{path}: cannot read the head model ({exc.strerror or exc})") from None
    try:
        return keras.models.load_model(path)
    except Exception as exc:  # noqa: BLE001 (a data file: whatever Keras raises, the reason is that file)
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise FeatcacheError(f"{path}: not a loadable Keras model ({type(exc).__name__}: {first})") from None
