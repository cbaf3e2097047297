"""The one place the backbone package imports TensorFlow and Keras, lazily: when a function here is called.

``import featcache.shared.backbones`` stays fast (the inspection commands and the trainer's numpy heads
never pay TensorFlow's start-up), and TensorFlow starts with featcache's defaults whoever asks first.
tests/test_architecture.py checks that no other module of the package imports either.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import FeatcacheError
from ..quiet import verbose

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


def import_keras() -> Any:
    """The ``keras`` module, imported after :func:`import_tensorflow` (so TensorFlow's defaults hold)."""
    import_tensorflow()
    import keras

    return keras
