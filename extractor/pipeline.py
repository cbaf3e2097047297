"""The reader: files to batches of images ready for the device, with tf.data.

Decoding and resizing run in tf.data's parallel map on all cores while the backbone works on the
previous batches. Images leave as uint8 (rounded after the resize; the mapper casts and
preprocesses them on the device: 4x fewer bytes to copy) or, with ``feed_dtype="float32"``, as
float32 already preprocessed on the host (how caches were made before the choice existed).
Batches never straddle two shards: each shard is batched on its own, so a shard's rows are
computed in the same batches whether the run was resumed or not.

Inputs are read by the source (``Source.read``: :func:`featcache.extractor.inputs.read_input` for
files, :mod:`featcache.extractor.records` for records in TFRecord or tar containers and for URLs;
not ``tf.io.read_file``): what is not a regular file, or is larger than ``max_input_bytes``, or
declares more than ``max_pixels`` pixels, is refused before it is read whole or decoded. An input
that is refused or fails to decode is dropped in the pipeline (``ignore_errors``); the writer sees
its index missing when the shard ends and asks :func:`diagnose` for the reason.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..shared.backbones import DEFAULT_RESIZE, PAD_VALUE, Augment, import_tensorflow
from ..shared.cores import usable_cores
from .inputs import InputLimits, RefusedInput, read_input
from .records import is_url

tf = import_tensorflow()

Preprocess = Callable[[Any], Any]
PREFETCH_BATCHES = 2
JPEG_RATIOS = (1, 2, 4, 8)  # the DCT scalings libjpeg offers
VIEW_HASH_KEY = [0x6665617463616368, 0x7669657773000001]  # SipHash key of view seeds: never change it


def decode_threads() -> int:
    """Images decoded at once: one per CPU this process may use."""
    return usable_cores()


def decode(data: Any, size: tuple[int, int]) -> Any:
    """Encoded bytes to a ``(h, w, 3)`` uint8 image, a large JPEG already scaled down in the DCT domain.

    JPEG, PNG (8/16-bit, gray, palette, alpha), BMP and GIF (first frame) are decoded to 3-channel
    uint8. A large JPEG is decoded scaled down by 2, 4 or 8, as far as its short side stays at least
    twice the largest side of ``size``: an 8000x8000 photo then costs 12 MB instead of 192 MB (and
    768 MB as floats), and decodes ~10x faster.
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
    return img


def resize(img: Any, size: tuple[int, int], policy: str = DEFAULT_RESIZE) -> Any:
    """A ``(h, w, 3)`` image to ``(H, W, 3)`` float32 in [0, 255] of ``size`` by ``policy``
    (:data:`featcache.shared.backbones.RESIZE_POLICIES`): ``squash`` stretches the whole image (the
    aspect ratio is not kept); ``centre-crop`` scales the short side to fit and cuts the centre;
    ``pad`` scales the long side to fit and pads the rest with mid-grey (127.5: zero after
    MobileNet's preprocessing). Bilinear with antialiasing, so that large images are averaged, not
    aliased."""
    if policy == "centre-crop":
        shape = tf.shape(img)
        h, w = shape[0], shape[1]
        # the largest centred box with the target's aspect ratio
        ch = tf.minimum(h, tf.cast(tf.round(tf.cast(w, tf.float64) * size[0] / size[1]), tf.int32))
        cw = tf.minimum(w, tf.cast(tf.round(tf.cast(h, tf.float64) * size[1] / size[0]), tf.int32))
        img = tf.image.crop_to_bounding_box(img, (h - ch) // 2, (w - cw) // 2, tf.maximum(ch, 1), tf.maximum(cw, 1))
    elif policy == "pad":
        out = tf.image.resize(img, size, method="bilinear", antialias=True, preserve_aspect_ratio=True)
        shape = tf.shape(out)
        top, left = (size[0] - shape[0]) // 2, (size[1] - shape[1]) // 2
        padded = tf.pad(out - PAD_VALUE, [[top, size[0] - shape[0] - top], [left, size[1] - shape[1] - left], [0, 0]])
        return tf.ensure_shape(padded + PAD_VALUE, [size[0], size[1], 3])
    elif policy != "squash":
        raise ValueError(f"unknown resize policy {policy!r}")
    return tf.image.resize(img, size, method="bilinear", antialias=True)


def decode_resize(data: Any, size: tuple[int, int], policy: str = DEFAULT_RESIZE) -> Any:
    """Encoded bytes to a ``(H, W, 3)`` float32 image in [0, 255] of ``size``: :func:`decode` then
    :func:`resize`."""
    return resize(decode(data, size), size, policy)


def view_seed(image_id: Any, view: int) -> Any:
    """The stateless seed ``(2,)`` int64 of view ``view`` of the image ``image_id`` (a string
    tensor): SipHash of ``"id:view"`` with a fixed key, the same on every machine and run."""
    key = tf.strings.join([image_id, tf.strings.as_string(view)], separator=":")
    return tf.stack([tf.strings.to_hash_bucket_strong(key, 2**62, VIEW_HASH_KEY), tf.constant(view, tf.int64)])


def make_view(img: Any, image_id: Any, view: int, size: tuple[int, int], augment: Augment) -> Any:
    """View ``view`` of a decoded image as ``(H, W, 3)`` float32 in [0, 255]: 0 is the plain image
    (``augment.resize`` policy), 1 its horizontal mirror, 2 and above a random-resized crop (area
    fraction in ``augment.crop_scale``, aspect ratio in ``augment.crop_ratio``, squashed to ``size``)
    mirrored with probability 1/2, drawn from :func:`view_seed` (``image_id``, ``view``)."""
    plain = resize(img, size, augment.resize)
    if view == 0:
        return plain
    if view == 1:
        return tf.image.flip_left_right(plain)
    seed = view_seed(image_id, view)
    begin, box, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(img),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=augment.crop_ratio,
        area_range=augment.crop_scale,
        max_attempts=20,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.image.resize(tf.slice(img, begin, box), size, method="bilinear", antialias=True)
    return tf.image.stateless_random_flip_left_right(crop, seed + 1)


def to_uint8(img: Any) -> Any:
    """A float32 image in [0, 255] rounded to the nearest uint8 (what is shipped to the device)."""
    return tf.cast(tf.clip_by_value(tf.round(img), 0.0, 255.0), tf.uint8)


def make_dataset(
    read: Callable[[int], bytes],
    shard_ranges: Sequence[range],
    *,
    batch_size: int,
    size: tuple[int, int],
    preprocess: Preprocess,
    ids: Sequence[str] | None = None,
    augment: Augment | None = None,
    sequential_reads: bool = False,
    feed_dtype: str = "float32",
    halt: Any = None,
) -> Any:
    """A dataset of ``(index (b,) int64, images (b, H, W, 3))`` over the given shards, in order;
    ``images`` are uint8 RGB with ``feed_dtype="uint8"`` (``preprocess`` is then left to the mapper),
    else float32 ``preprocess``-ed;
    with ``augment.views`` ``V > 1``, ``images`` is ``(b, V, H, W, 3)`` (:func:`make_view`, seeded by
    the ``ids``) and ``b`` is ``batch_size // V`` (at least 1), so a backbone call stays about
    ``batch_size`` images.

    ``read(i)`` gives the encoded bytes of listing position ``i`` (``Source.read`` under the run's
    limits: a whole file, or a record in a container) or raises (the input is then dropped);
    ``shard_ranges`` are the listing positions of each shard to compute. With ``sequential_reads``
    the reads run one at a time in listing order (records of gzip'd containers, read as a stream);
    decoding stays parallel either way. ``ids`` (the whole listing's) seed the views. ``halt``: a
    boolean ``tf.Variable``; once it is True no further input enters the pipeline, so that draining
    the iterator after an error ends within the few batches already in flight (see
    :func:`featcache.extractor.runner.drain`).
    """
    augment = augment or Augment()
    views = augment.views
    assert views == 1 or ids is not None, "views are seeded by the ids"
    todo_ids = tf.constant(
        [ids[i] for r in shard_ranges for i in r] if views > 1 and ids is not None else [""], dtype=tf.string
    )
    starts = tf.constant([r.start for r in shard_ranges], dtype=tf.int64)
    stops = tf.constant([r.stop for r in shard_ranges], dtype=tf.int64)
    offsets = tf.constant(np.cumsum([0] + [len(r) for r in shard_ranges[:-1]]), dtype=tf.int64)
    if views > 1:
        batch_size = max(1, batch_size // views)

    feed = to_uint8 if feed_dtype == "uint8" else preprocess

    def fetch(i: Any, at: Any) -> tuple[Any, Any, Any]:
        data = tf.py_function(lambda k: read(int(k.numpy())), [i], tf.string)
        data.set_shape([])
        return i, at, data

    def load(i: Any, at: Any, data: Any) -> tuple[Any, Any]:
        img = decode(data, size)
        if views == 1:
            return i, feed(resize(img, size, augment.resize))
        image_id = tf.gather(todo_ids, at)
        return i, tf.stack([feed(make_view(img, image_id, v, size, augment)) for v in range(views)])

    def going(*_: Any) -> Any:
        return tf.constant(True) if halt is None else tf.logical_not(halt)

    def shard(start: Any, stop: Any, offset: Any) -> Any:
        return (
            tf.data.Dataset.range(start, stop)
            .take_while(going)
            .map(lambda i: (i, i - start + offset))
            .map(fetch, **({} if sequential_reads else {"num_parallel_calls": decode_threads(), "deterministic": True}))
            .map(load, num_parallel_calls=decode_threads(), deterministic=True)
            .ignore_errors()
            .batch(batch_size)
        )

    ds = tf.data.Dataset.from_tensor_slices((starts, stops, offsets)).take_while(going).flat_map(shard)
    # Fixed parallelism instead of tf.data's autotuner: measured here, the same throughput, but with
    # autotuning on, destroying the iterator at the end of a run took ~1.5 s on every run.
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(PREFETCH_BATCHES).with_options(options)


def op_error_text(exc: Exception) -> str:
    """A TensorFlow op error's message without the graph-node prefix and op suffix, on one line."""
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", getattr(exc, "message", str(exc)))
    text = re.sub(r"\s*\[Op:[^\]]*\].*$", "", text.strip().splitlines()[0] if text.strip() else "unknown error")
    return text[:200]


def diagnose(
    path: bytes,
    size: tuple[int, int],
    limits: InputLimits = InputLimits(),
    policy: str = DEFAULT_RESIZE,
    read: Callable[[], bytes] | None = None,
) -> str:
    """Why an input could not be used, in a few words (called only for inputs the pipeline dropped):
    ``path`` is its file (or its container, or a URL), ``read()`` reads it again (default: the whole
    local file under ``limits``)."""
    name = os.fsdecode(path)
    if not is_url(name):
        if os.path.islink(name) and not os.path.exists(name):
            return "broken symlink"
        if not os.path.exists(name):
            return "file not found"
    try:
        data = read() if read is not None else read_input(path, limits)
    except RefusedInput as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    try:
        decode_resize(tf.constant(data), size, policy)
    except tf.errors.OpError as exc:
        return "cannot decode: " + op_error_text(exc)
    return "failed in the input pipeline but decodes on retry (transient read error?)"
