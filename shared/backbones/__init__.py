"""The backbone registry: each backbone's facts stated once, next to its builder.

The extractor builds a backbone from here to compute features; the trainer rebuilds the same one to
export a head stacked on it. Importing this package imports no TensorFlow: :mod:`._tf` is the one
module that imports it (and Keras), when a model is built, so ``import featcache.shared`` stays fast
for the inspection commands (tests/test_architecture.py checks both).

- :mod:`.spec`: :class:`BackboneSpec` (input size, output maps, preprocessing, taps, last block),
  :class:`ResolvedWeights`, the preprocessing schemes, :func:`build_backbone`;
- :mod:`.zoo`: the built-in backbones, :func:`register`, :func:`get_backbone` (a registered name,
  ``module:attribute`` or a model file) and :func:`listing` (``featcache-extract --backbone list``);
- :mod:`.model_files`: the user's own model (a ``.keras`` file, or a spec at ``module:attribute``);
- :mod:`.weights`: ``imagenet``, a file, ``random`` or ``auto``: the only reader of :data:`WEIGHTS_ENV`;
- :mod:`.inputs`, :mod:`.taps`, :mod:`.fingerprint`: how images become inputs (resize, views), the layer
  taps, and the fingerprint of the features all of these make.

See docs/backbones.md.
"""

from ..cache import RANDOM_PREFIX
from ._tf import TF_DEFAULT_ENV, import_tensorflow
from .fingerprint import make_fingerprint
from .inputs import (
    DEFAULT_CROP_RATIO,
    DEFAULT_CROP_SCALE,
    DEFAULT_FEED_DTYPE,
    DEFAULT_RESIZE,
    PAD_VALUE,
    RESIZE_POLICIES,
    Augment,
    check_feed_dtype,
)
from .model_files import is_model_file, model_file_spec
from .spec import PREPROCESS_SCHEMES, BackboneSpec, ResolvedWeights, build_backbone
from .taps import TAPS_DEFAULT, resolve_taps, top_input_entry
from .weights import (
    IMAGENET_CACHED,
    IMAGENET_NONE,
    IMAGENET_NOT_CACHED,
    WEIGHTS_ENV,
    keras_cache_candidates,
    resolve_weights,
)
from .zoo import (
    KERAS_WEIGHTS_URL,
    MOBILENET_V2_WEIGHTS_FILE,
    PREPROCESSING_INSIDE,
    get_backbone,
    keras_application,
    keras_file,
    listing,
    names,
    register,
)

__all__ = [
    "DEFAULT_CROP_RATIO",
    "DEFAULT_CROP_SCALE",
    "DEFAULT_FEED_DTYPE",
    "DEFAULT_RESIZE",
    "IMAGENET_CACHED",
    "IMAGENET_NONE",
    "IMAGENET_NOT_CACHED",
    "KERAS_WEIGHTS_URL",
    "MOBILENET_V2_WEIGHTS_FILE",
    "PAD_VALUE",
    "PREPROCESSING_INSIDE",
    "PREPROCESS_SCHEMES",
    "RANDOM_PREFIX",
    "RESIZE_POLICIES",
    "TAPS_DEFAULT",
    "TF_DEFAULT_ENV",
    "WEIGHTS_ENV",
    "Augment",
    "BackboneSpec",
    "ResolvedWeights",
    "build_backbone",
    "check_feed_dtype",
    "get_backbone",
    "import_tensorflow",
    "is_model_file",
    "keras_application",
    "keras_cache_candidates",
    "keras_file",
    "listing",
    "make_fingerprint",
    "model_file_spec",
    "names",
    "register",
    "resolve_taps",
    "resolve_weights",
    "top_input_entry",
]
