"""Every option of an extraction, stated once: its name, type, default and help.

:class:`ExtractOptions` is what ``featcache.extract(source, cache, **options)`` takes (its keyword
arguments are this class's fields) and what ``featcache-extract``'s options are made from
(:func:`featcache.extractor.cli.option_parameters`): a new option is one field here, read where it is
used (``api._config`` hands it to the runner). Where the command line parses another type or shows
another default than the API (``split``: a string there, a sequence or a dict here), the field says so
(``cli_type``, ``cli_default``). Values are checked when the object is made, each error one line naming
the argument as Python spells it (``batch_size=0``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..shared.arguments import bool_arg, callable_arg, choice_arg, int_arg, path_arg, str_arg
from ..shared.backbones import DEFAULT_CROP_RATIO, DEFAULT_CROP_SCALE, DEFAULT_RESIZE, PREPROCESS_SCHEMES
from ..shared.cache import SPLITS, Part, schema
from ..shared.errors import FeatcacheError
from .inputs import DEFAULT_MAX_INPUT_BYTES, DEFAULT_MAX_PIXELS
from .ray_runner import DEFAULT_MAX_RETRIES, ITEMS_PER_WORKER

Log = Callable[[str], None]
RUNNERS = ("local", "ray")
DEFAULT_SPLIT = ",".join(str(schema.DEFAULT_SPLIT_FRACTIONS[s]) for s in SPLITS)  # "0.8,0.1,0.1"
SAME = object()  # cli_default/cli_type: as the API's


def option(
    default: Any,
    help: str,
    *,
    cli_type: Any = SAME,
    cli_default: Any = SAME,
    flags: tuple[str, ...] = (),
    **typer_options: Any,
) -> Any:
    """A field of :class:`ExtractOptions`: its API ``default`` and its ``help`` (the command line's), with
    what the command line does otherwise (``cli_type``, ``cli_default``, option ``flags`` such as
    ``("--update",)`` for a flag without its ``--no-`` form, and typer's own options: ``min``,
    ``show_default``)."""
    meta = {"help": help, "cli_type": cli_type, "cli_default": cli_default, "flags": flags, "typer": typer_options}
    return field(default=default, metadata=meta)


@dataclass(frozen=True, kw_only=True)
class ExtractOptions:
    """The options of one extraction (see :func:`featcache.extractor.api.extract` for what they do
    together). Made from keyword arguments, each checked for its type and range."""

    weights: str = option(
        "imagenet",
        "'imagenet' (Keras' cache, downloading if needed), a path to a weights .h5 file, 'random' "
        "(seeded; meaningless features, smoke tests only), or 'auto' ($FEATCACHE_WEIGHTS, else "
        "imagenet if available, else random with a warning).",
    )
    backbone: str = option(
        "mobilenet_v2",
        "Backbone from the registry ('mobilenet_v2', 'efficientnet_v2_b0', 'resnet50', ...; 'tiny' is "
        "a fast random test net; 'list' prints them all with sizes, preprocessing and whether their "
        "ImageNet weights are cached), 'module:attribute' naming a BackboneSpec, or a saved Keras "
        "model file (.keras or .h5; see --layer and --preprocess).",
    )
    layer: str | None = option(
        None,
        "With a model file as --backbone: the layer whose output (batch, h, w, C) becomes the maps "
        "(default: the model's output).",
        show_default=False,
    )
    preprocess: str | None = option(
        None,
        "With a model file as --backbone (required there): what it expects from RGB in [0, 255]: "
        f"{', '.join(PREPROCESS_SCHEMES)} ('raw': as is, the model preprocesses inside; 'tf': "
        "x / 127.5 - 1; 'unit': x / 255; 'caffe', 'torch': Keras' imagenet_utils modes) or "
        "module:function.",
        show_default=False,
    )
    batch_size: int = option(
        32,
        "Images per backbone call. Larger is faster on a GPU; 32 is near the best on CPU.",
        min=1,
    )
    shard_size: int = option(
        schema.DEFAULT_SHARD_SIZE,
        "Inputs per shard file: the unit of resume and of parallel work. Fixed for the life of a cache.",
        min=1,
    )
    maps_dtype: str = option(
        schema.DEFAULT_MAPS_DTYPE,
        "Storage dtype of the (7, 7, 1280) maps: float16 (half the bytes; pooled is always float32 "
        "from the float32 maps) or float32.",
    )
    compression: str = option(
        schema.DEFAULT_COMPRESSION,
        f"Lossless filter for the maps: {', '.join(schema.COMPRESSIONS)}. gzip-1 (default) is about "
        f"5x smaller than none on real features and readable by any HDF5 library; lzf is faster to "
        f"write but only h5py reads it without a plugin.",
    )
    split: str | Sequence[float] | Mapping[str, float] = option(
        DEFAULT_SPLIT,
        "Train,val,test fractions for rows whose source gives no split (assigned by a hash of the "
        "id, stable when images are added).",
        cli_type=str,
    )
    mixed_precision: bool = option(
        False,
        "Run the backbone in mixed float16 (faster on recent GPUs, slower on CPU). Recorded in the "
        "fingerprint: a cache is all one or all the other.",
    )
    xla: bool = option(
        False,
        "Compile the backbone call with XLA (may help on a GPU; ~8x slower on the CPUs measured).",
    )
    seed: int = option(
        0,
        "Seed of random weights (only with --weights random).",
    )
    overwrite: bool = option(
        False,
        "Discard an existing cache in CACHE and start over (instead of resuming).",
    )
    update: bool = option(
        False,
        "CACHE was made from SOURCE as it was earlier: extract only the inputs added or modified "
        "since (into new shards after the existing ones), hide removed ones from readers, and "
        "apply new labels without running the backbone. Existing shard files are not rewritten. "
        "Without it, a changed SOURCE is refused. See docs/updates.md.",
        flags=("--update",),
    )
    checksum: bool = option(
        False,
        "Read every input in full and record its sha256 in the listing; with --update, an input "
        "whose content changed is found even when its size and modification time were kept "
        "(touch -r). See docs/updates.md.",
        flags=("--checksum",),
    )
    strict: bool = option(
        False,
        "Stop at the first input that cannot be read, decoded or is refused (not a regular file, "
        "past --max-input-bytes or --max-pixels; default: skip it and record the reason in the manifest).",
    )
    max_input_bytes: int = option(
        DEFAULT_MAX_INPUT_BYTES,
        "Refuse (skip, recording the reason) any input file larger than this many bytes, before "
        "reading it (default 64 MiB).",
        min=1,
    )
    max_pixels: int = option(
        DEFAULT_MAX_PIXELS,
        "Refuse (skip, recording the reason) any image whose header declares more pixels than this "
        "(width x height x frames; default as Pillow's decompression-bomb limit, about 89.5 Mpx).",
        min=1,
    )
    max_shards: int | None = option(
        None,
        "Write at most this many shards in this run, then stop; re-run the same command to continue.",
        min=1,
    )
    part: str | Part | None = option(
        None,
        "I/N: be worker I (from 0) of N filling the same CACHE, e.g. a job array's task: write "
        "only the shards k with k % N == I. Workers run at the same time on a shared filesystem; "
        "each one merges what is done when it stops, and the last one completes the manifest.",
        show_default=False,
        cli_type=str | None,
    )
    finalize: bool = option(
        False,
        "Merge what the workers of a partitioned run have finished into CACHE's manifest and say "
        "which shards are missing and which parts are still running (exit 1 while incomplete). "
        "Safe to repeat and to run while workers are going.",
        flags=("--finalize",),
    )
    workers: int = option(
        1,
        "Run this many workers side by side: local processes (one part each), or Ray actors pulling "
        "work items with --runner ray. On CPU each local process gets an equal share of the cores.",
        min=1,
    )
    gpus: str | int | None = option(
        None,
        "'all' or a count: one local worker process per GPU, each pinned with CUDA_VISIBLE_DEVICES "
        "(GPUs found from CUDA_VISIBLE_DEVICES or nvidia-smi).",
        show_default=False,
        cli_type=str | None,
    )
    runner: str = option(
        "local",
        "Where --workers run: 'local' (processes on this machine) or 'ray' (actors on the Ray "
        "cluster at --address, or a local Ray instance; needs featcache[ray]).",
    )
    address: str | None = option(
        None,
        "Ray cluster to run on with --runner ray ('auto', 'ray://head:10001', ...); default: start "
        "a local Ray instance.",
        show_default=False,
    )
    max_retries: int = option(
        DEFAULT_MAX_RETRIES,
        "With --runner ray: how often Ray restarts an actor that died, and puts back a work item "
        "lost with its actor (the next run of the item keeps its finished shards).",
        min=0,
    )
    ray_items: int | None = option(
        None,
        "With --runner ray: cut the shard plan into this many work items (item i = shards k with "
        "k % ITEMS == i) that the actors pull from a queue, so a slow or lost node delays only its "
        "item in flight. More items balance finer but each costs a start (listing the source) and a "
        f"manifest merge. Default: {ITEMS_PER_WORKER} per worker.",
        min=1,
        show_default=False,
    )
    views: int = option(
        1,
        "Views per image: 1 is the plain image only; with N > 1, view 1 is its horizontal mirror and "
        "views 2..N-1 random-resized crops (see --crop-scale, --crop-ratio) mirrored half the time, each "
        "drawn from a seed of (image id, view): the same every run. Pooled vectors of every view are "
        "stored (dataset pooled_views); maps of view 0 only. Costs N times the backbone work.",
        min=1,
    )
    crop_scale: str | Sequence[float] = option(
        DEFAULT_CROP_SCALE,
        "Area fraction range 'low,high' of the random-resized-crop views (views >= 3).",
        cli_type=str,
        cli_default="{:g},{:g}".format(*DEFAULT_CROP_SCALE),
    )
    crop_ratio: str | Sequence[float] = option(
        DEFAULT_CROP_RATIO,
        "Aspect ratio (width/height) range 'low,high' of the random-resized-crop views.",
        cli_type=str,
        cli_default="{:g},{:g}".format(*DEFAULT_CROP_RATIO),
    )
    resize: str = option(
        DEFAULT_RESIZE,
        "How an image becomes the backbone's square input: squash (stretch the whole image), "
        "centre-crop (short side to fit, cut the centre) or pad (long side to fit, mid-grey borders). "
        "Recorded in the fingerprint.",
    )
    source_format: str | None = option(
        None,
        "What SOURCE is when its name does not say: folder, csv, list, tfrecord or tar (default: told "
        "by the names: .csv, .txt/.lst, .tfrecord/.tfrecords/.tfrec[.gz], .tar/.tar.gz/.tgz).",
        show_default=False,
    )
    tfrecord_keys: str | None = option(
        None,
        "tf.train.Example feature names, as 'image=KEY,label=KEY,text=KEY,id=KEY' (any subset). Defaults: "
        "image=image/encoded, label=image/class/label (class number), text=image/class/text (class "
        "name), id=image/filename, else image/source_id.",
        show_default=False,
    )
    feed_dtype: str | None = option(
        None,
        "How resized images go to the backbone's device: 'uint8' (rounded to whole RGB values, then cast "
        "and preprocessed on the device: 4x fewer bytes to copy, for fast GPUs) or 'float32' "
        "(preprocessed on the host, unrounded: how caches were made before this option). The features "
        "differ slightly (docs/performance.md), so it is recorded in the fingerprint. Default: what an "
        "existing CACHE records (float32 for older caches), uint8 for a new one.",
        show_default=False,
    )
    taps: str | Sequence[str] | None = option(
        None,
        "Layer taps: in the same forward pass, also store the spatial means of these layers' outputs "
        "per row (dataset taps, float32, concatenated), for the trainer's --features taps. 'default' "
        "(the backbone's: for mobilenet_v2 block_13_expand_relu and block_16_project_BN, 3.5 KB a row), "
        "'none', or layer names joined by commas. Default: what an existing CACHE records (none for "
        "older caches), 'default' for a new one.",
        cli_type=str | None,
        show_default=False,
    )
    keep_top_input: bool | None = option(
        None,
        "Also store the input of the backbone's last block (mobilenet_v2: the 7x7x320 output of "
        "block_16_project_BN that Conv_1 takes, float16, ~31 KB a row), which the trainer's 'top' "
        "head fine-tunes from. Default: what an existing CACHE records, off for a new one.",
        flags=("--keep-top-input/--no-keep-top-input",),
        show_default=False,
    )
    progress: bool | None = option(
        None,
        "Show a progress bar.",
        cli_type=bool,
        cli_default=True,
    )
    log: Log | None = field(default=None, metadata={"api_only": True})

    def __post_init__(self) -> None:
        """Every option of the wrong type or out of range, as one line naming it, before anything is
        listed or written (the checks of their values against each other are the API's)."""
        for name in ("weights", "backbone"):
            path_arg(name, getattr(self, name))
        for name in ("layer", "preprocess", "address", "tfrecord_keys"):
            str_arg(name, getattr(self, name), optional=True)
        for name in ("batch_size", "shard_size", "workers", "views", "max_input_bytes", "max_pixels"):
            int_arg(name, getattr(self, name), minimum=1)
        for name in ("max_shards", "ray_items"):
            int_arg(name, getattr(self, name), minimum=1, optional=True)
        for name in ("seed", "max_retries"):
            int_arg(name, getattr(self, name), minimum=0)
        for name in ("mixed_precision", "xla", "overwrite", "update", "checksum", "strict", "finalize"):
            bool_arg(name, getattr(self, name))
        bool_arg("progress", self.progress, optional=True)
        bool_arg("keep_top_input", self.keep_top_input, optional=True)
        choice_arg("maps_dtype", self.maps_dtype, schema.MAPS_DTYPES)
        choice_arg("compression", self.compression, tuple(schema.COMPRESSIONS))
        choice_arg("runner", self.runner, RUNNERS)
        if not (self.part is None or isinstance(self.part, str | Part)):
            raise FeatcacheError(f"part={self.part!r}: expected 'I/N', e.g. '0/4' for the first of 4 workers")
        if not isinstance(self.gpus, str | None):  # a string is checked by choose_gpus
            int_arg("gpus", self.gpus, minimum=1)
        callable_arg("log", self.log)


OPTIONS: tuple[dataclasses.Field, ...] = dataclasses.fields(ExtractOptions)
NAMES = tuple(f.name for f in OPTIONS)
