"""Trained heads as plain Keras models, alone or stacked onto their backbone: the export plumbing
around each kind's own layers (``HeadKind.keras_head`` in its module of :mod:`featcache.trainer.heads`).

Only built-in Keras layers and ``keras.ops`` are used, so a saved ``.keras`` file loads with
``keras.models.load_model`` (safe mode) and no featcache installed. A head's input standardisation
(train-split mean and std) is a fixed ``Normalization`` layer inside the model; a logistic-regression
head's power normalisation is ``keras.ops`` on its input, before its own ``Normalization``. The
ensemble's model is ``heads.ensemble.ensemble_model``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..shared.backbones import PAD_VALUE, BackboneSpec, ResolvedWeights, build_backbone, import_tensorflow
from ..shared.cache.fsutil import check_input
from ..shared.errors import FeatcacheError
from .heads import HEAD_KINDS, Weights, closed_form
from .sweep import HeadConfig

import_tensorflow()
import keras  # noqa: E402


def head_model(
    cfg: HeadConfig,
    w: Mapping[str, np.ndarray] | Weights,
    in_shape: tuple[int, ...],
    n_classes: int,
    standardize: tuple[np.ndarray, np.ndarray] | None = None,
) -> keras.Model:
    """The head as a Keras model from its input (pooled ``(C,)`` or maps ``(h, w, C)``) to class
    probabilities ``(n_classes,)``: its kind's layers (``HeadKind.keras_head``); ``w`` are the head's
    weights (its kind's :class:`~featcache.trainer.heads.Weights`, or the dict a group's ``head_weights``
    or ``rundir.head_params`` gives). ``standardize`` (the sweep's) applies to SGD pooled heads;
    closed-form heads carry their own. Not for ``top`` heads (``heads.top.build_model``)."""
    build = HEAD_KINDS[cfg.kind].keras_head
    if build is None:
        raise FeatcacheError(f"head kind {cfg.kind!r} has no Keras layers of its own to export")
    inp = keras.Input(in_shape, name="maps" if cfg.reads_maps else "pooled")
    x = inp
    if standardize is not None and not cfg.reads_maps and not closed_form(cfg.kind):
        mean, std = standardize
        x = keras.layers.Normalization(mean=mean, variance=np.square(std), name="standardize")(x)
    return keras.Model(inp, build(x, cfg, w, n_classes), name=f"head_{cfg.kind}")


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
    image, x = image_input(spec, resize)
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


def image_input(spec: BackboneSpec, resize: str | None) -> tuple[Any, Any]:
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
