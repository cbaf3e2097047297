"""What a backbone is: :class:`BackboneSpec` (its input size, output maps, preprocessing, layer taps and
last block, stated once next to its builder), the weights it is built with (:class:`ResolvedWeights`),
the preprocessing schemes a spec can name (:data:`PREPROCESS_SCHEMES`) and :func:`build_backbone`, which
builds a spec and checks the shape it promises. No TensorFlow until a model is built or a
preprocessing function is fetched (through :mod:`._tf`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..errors import FeatcacheError, WeightsUnavailableError
from ._tf import import_keras, import_tensorflow

if TYPE_CHECKING:  # pragma: no cover
    import keras


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
    return import_keras().applications.imagenet_utils.preprocess_input(x, mode="caffe")


def preprocess_torch(x: Any) -> Any:
    """Keras' ``torch`` mode: RGB / 255, minus the ImageNet mean, divided by its std per channel."""
    return import_keras().applications.imagenet_utils.preprocess_input(x, mode="torch")


# Preprocessing schemes, each stated once: (function, words for the fingerprint, affine form or None).
# A model file names one with preprocess=...; the built-in backbones (zoo.py) use them too.
PREPROCESS_SCHEMES: dict[str, tuple[str, str, tuple[float, float] | None]] = {
    "raw": (f"{__name__}:rgb_as_is", "RGB in [0, 255] as is (the model preprocesses inside)", (1.0, 0.0)),
    "tf": (
        "keras.applications.mobilenet_v2:preprocess_input",
        "RGB in [0, 255] -> x / 127.5 - 1 (mobilenet_v2.preprocess_input)",
        (1 / 127.5, -1.0),
    ),
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
