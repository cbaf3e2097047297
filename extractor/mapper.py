"""The mapper: batches of images to feature maps and pooled vectors.

The backbone call is one ``tf.function`` traced once for any batch size, so the per-batch cost is
the forward pass itself. With a uint8 feed the cast to float32 and the backbone's preprocessing run
inside that function (on the GPU when there is one); with a float32 feed the images come
preprocessed. The pooled mean is taken in float32 on the device, before maps are cast to
the storage dtype, and both leave the device already in their final dtypes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..shared.backbones import BackboneSpec, ResolvedWeights, build_backbone, import_tensorflow
from ..shared.cache import schema
from ..shared.errors import FeatcacheError

tf = import_tensorflow()


def devices() -> str:
    """What TensorFlow will run on, for the log (``GPU x2`` or ``CPU``)."""
    gpus = tf.config.list_physical_devices("GPU")
    return f"GPU x{len(gpus)}" if gpus else "CPU"


class BackboneMapper:
    """``mapper(images) -> (maps (b, h, w, c), pooled (b, c) float32, extra)`` as numpy arrays; maps are
    in the storage dtype on a GPU and float32 on a CPU (the writer casts). ``images`` are
    ``(b, H, W, 3)`` uint8 RGB with ``feed_dtype="uint8"``, else float32 already preprocessed.

    ``extra`` holds what the same forward pass gives beyond the maps: ``taps`` ``(b, T)`` float32, the
    spatial means of the layers ``taps`` names (float32, concatenated in their order), when there are
    any; ``top_input`` ``(b, h', w', c')`` float16, the output of the layer ``top_input`` names."""

    def __init__(
        self,
        spec: BackboneSpec,
        weights: ResolvedWeights,
        *,
        maps_dtype: str,
        mixed_precision: bool = False,
        xla: bool = False,
        feed_dtype: str = "float32",
        taps: tuple[tuple[str, int], ...] = (),
        top_input: str | None = None,
    ):
        import keras

        if mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_float16")
        try:
            self.model = build_backbone(spec, weights)
        finally:
            if mixed_precision:
                keras.mixed_precision.set_global_policy("float32")
        self.taps = tuple(n for n, _ in taps)
        self.top_input = top_input
        if taps or top_input:  # one model, several outputs: the same forward pass
            outputs = [self.model.outputs[0]]
            for name, width in taps:
                out = self.model.get_layer(name).output
                if out.shape[-1] != width:
                    raise FeatcacheError(f"taps: layer {name!r} is {out.shape[-1]} wide, the cache records {width}")
                outputs.append(out)
            if top_input:
                outputs.append(self.model.get_layer(top_input).output)
            self.model = keras.Model(self.model.inputs[0], outputs, name=self.model.name)
        # Casting on a GPU halves the copy to the host; on a CPU numpy's cast in the writer thread is
        # as fast and keeps the backbone's cores free (and oneDNN has no float16 there).
        self.device_dtype = tf.as_dtype(maps_dtype) if tf.config.list_physical_devices("GPU") else tf.float32
        self.top_dtype = tf.float16 if tf.config.list_physical_devices("GPU") else tf.float32  # the writer casts
        self.preprocess = spec.preprocess_fn() if feed_dtype == "uint8" else None
        h, w = spec.input_size
        self._forward = tf.function(
            self._call,
            input_signature=[tf.TensorSpec([None, h, w, 3], tf.as_dtype(feed_dtype))],
            reduce_retracing=True,
            jit_compile=xla,
        )

    def _call(self, images: Any) -> tuple[Any, Any, dict[str, Any]]:
        if self.preprocess is not None:
            images = self.preprocess(tf.cast(images, tf.float32))
        out = self.model(images, training=False)
        extra: dict[str, Any] = {}
        if self.taps or self.top_input:
            out, *rest = out
            if self.taps:
                means = [tf.reduce_mean(tf.cast(t, tf.float32), axis=[1, 2]) for t in rest[: len(self.taps)]]
                extra[schema.TAPS] = tf.concat(means, axis=-1)
            if self.top_input:
                extra[schema.TOP_INPUT] = tf.cast(rest[-1], self.top_dtype)
        maps = tf.cast(out, tf.float32)
        pooled = tf.reduce_mean(maps, axis=[1, 2])
        return tf.cast(maps, self.device_dtype), pooled, extra

    def __call__(self, images: Any) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        maps, pooled, extra = self._forward(images)
        return maps.numpy(), pooled.numpy(), {k: v.numpy() for k, v in extra.items()}
