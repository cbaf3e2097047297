"""The reader: files to batches of preprocessed images, with tf.data.

Decoding, resizing and preprocessing run in tf.data's parallel map on all cores while the backbone
works on the previous batches. Batches never straddle two shards: each shard is batched on its own,
so a shard's rows are computed in the same batches whether the run was resumed or not.

Inputs are read by :func:`featcache.extractor.inputs.read_input` (not ``tf.io.read_file``): what is
not a regular file, or is larger than ``max_input_bytes``, or declares more than ``max_pixels``
pixels, is refused before it is read whole or decoded. An input that is refused or fails to decode
is dropped in the pipeline (``ignore_errors``); the writer sees its index missing when the shard
ends and asks :func:`diagnose` for the reason.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..shared.backbones import import_tensorflow
from ..shared.cores import usable_cores
from .inputs import InputLimits, RefusedInput, read_input

tf = import_tensorflow()

Preprocess = Callable[[Any], Any]
PREFETCH_BATCHES = 2
JPEG_RATIOS = (1, 2, 4, 8)  # the DCT scalings libjpeg offers


def decode_threads() -> int:
    """Images decoded at once: one per CPU this process may use."""
    return usable_cores()


def decode_resize(data: Any, size: tuple[int, int]) -> Any:
    """Encoded bytes to a ``(H, W, 3)`` float32 image in [0, 255] of ``size``.

    JPEG, PNG (8/16-bit, gray, palette, alpha), BMP and GIF (first frame) are decoded to 3-channel
    uint8; the resize is bilinear with antialiasing and does not keep the aspect ratio (see
    :data:`featcache.shared.backbones.RESIZE`). A large JPEG is decoded already scaled down by 2, 4 or 8 in
    the DCT domain, as far as its short side stays at least twice the target: an 8000x8000 photo
    then costs 12 MB instead of 192 MB (and 768 MB as floats), and decodes ~10x faster.
    """

    def jpeg() -> Any:
        shape = tf.io.extract_jpeg_shape(data)
        short = tf.minimum(shape[0], shape[1])
        target = 2 * min(size)
        index = tf.reduce_sum(tf.cast(short >= target * tf.constant(JPEG_RATIOS[1:], tf.int32), tf.int32))
        return tf.switch_case(index, [lambda r=r: tf.io.decode_jpeg(data, channels=3, ratio=r) for r in JPEG_RATIOS])

    def other() -> Any:
        return tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)

    img = tf.cond(tf.io.is_jpeg(data), jpeg, other)
    img.set_shape([None, None, 3])
    return tf.image.resize(img, size, method="bilinear", antialias=True)


def make_dataset(
    paths: Sequence[bytes],
    shard_ranges: Sequence[range],
    *,
    batch_size: int,
    size: tuple[int, int],
    preprocess: Preprocess,
    limits: InputLimits = InputLimits(),
) -> Any:
    """A dataset of ``(index (b,) int64, images (b, H, W, 3) float32)`` over the given shards, in order.

    ``paths`` is the whole listing; ``shard_ranges`` the listing positions of each shard to compute.
    Only those shards' paths become a tensor (a worker of one part of ten million images holds its
    part's paths, not all of them). ``limits`` bound what one input may cost (see
    :func:`read_checked`).
    """
    todo_paths = tf.constant([paths[i] for r in shard_ranges for i in r], dtype=tf.string)
    starts = tf.constant([r.start for r in shard_ranges], dtype=tf.int64)
    stops = tf.constant([r.stop for r in shard_ranges], dtype=tf.int64)
    offsets = tf.constant(np.cumsum([0] + [len(r) for r in shard_ranges[:-1]]), dtype=tf.int64)

    def load(i: Any, at: Any) -> tuple[Any, Any]:
        image = decode_resize(read_checked(tf.gather(todo_paths, at), limits), size)
        return i, preprocess(image)

    def shard(start: Any, stop: Any, offset: Any) -> Any:
        return (
            tf.data.Dataset.range(start, stop)
            .map(lambda i: (i, i - start + offset))
            .map(load, num_parallel_calls=decode_threads(), deterministic=True)
            .ignore_errors()
            .batch(batch_size)
        )

    ds = tf.data.Dataset.from_tensor_slices((starts, stops, offsets)).flat_map(shard)
    # Fixed parallelism instead of tf.data's autotuner: measured here, the same throughput, but with
    # autotuning on, destroying the iterator at the end of a run took ~1.5 s on every run.
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(PREFETCH_BATCHES).with_options(options)


def read_checked(path: Any, limits: InputLimits) -> Any:
    """The bytes of the file at ``path`` (a scalar string tensor) as a scalar string tensor, read by
    :func:`~featcache.extractor.inputs.read_input` under ``limits``; a refused or unreadable input
    makes the op fail (the pipeline then drops it)."""
    data = tf.py_function(lambda p: read_input(p.numpy(), limits), [path], tf.string)
    data.set_shape([])
    return data


def op_error_text(exc: Exception) -> str:
    """A TensorFlow op error's message without the graph-node prefix and op suffix, on one line."""
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", getattr(exc, "message", str(exc)))
    text = re.sub(r"\s*\[Op:[^\]]*\].*$", "", text.strip().splitlines()[0] if text.strip() else "unknown error")
    return text[:200]


def diagnose(path: bytes, size: tuple[int, int], limits: InputLimits = InputLimits()) -> str:
    """Why ``path`` could not be used, in a few words (called only for inputs the pipeline dropped)."""
    name = os.fsdecode(path)
    if os.path.islink(name) and not os.path.exists(name):
        return "broken symlink"
    if not os.path.exists(name):
        return "file not found"
    try:
        data = read_input(path, limits)
    except RefusedInput as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    try:
        decode_resize(tf.constant(data), size)
    except tf.errors.OpError as exc:
        return "cannot decode: " + op_error_text(exc)
    return "failed in the input pipeline but decodes on retry (transient read error?)"
