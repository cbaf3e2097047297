"""Backbones of the user's own: a saved Keras model file (``.keras``, or a full-model ``.h5``) with the
layer that gives the maps and the preprocessing it expects (:func:`model_file_spec`), or a
:class:`~.spec.BackboneSpec` held at ``module:attribute`` (:func:`imported_spec`).

Both run the user's code or load the user's file. Nothing named in a cache or a run directory is
imported on that file's word: a ``module:attribute`` backbone or a ``module:function`` preprocessing
recorded there is used only when the user names it again (``trainer.identity.importable_backbone``,
``trainer.predict_source``), and a recorded model file only when its sha256 is the recorded one. A
model file's weights are its own. Loading a model imports TensorFlow (through :mod:`._tf`).
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import FeatcacheError, WeightsUnavailableError
from ._tf import import_keras
from .spec import PREPROCESS_SCHEMES, BackboneSpec, ResolvedWeights

if TYPE_CHECKING:  # pragma: no cover
    import keras

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
    keras = import_keras()
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


def imported_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` at ``name`` = ``module:attribute`` (imports ``module``: the user's code,
    named by the user); a one-line :class:`FeatcacheError` when it cannot be imported or is no spec."""
    module, attr = name.split(":", 1)
    try:
        spec = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise FeatcacheError(f"backbone {name!r}: cannot import it ({exc})") from None
    if not isinstance(spec, BackboneSpec):
        raise FeatcacheError(f"backbone {name!r}: {type(spec).__name__} is not a BackboneSpec")
    return spec
