"""``featcache-extract``: the batch precompute job's command line, a thin layer over
:func:`featcache.extractor.api.extract` (whose error messages name arguments, spelled here as flags).

TensorFlow is imported only once a run starts, so ``--help`` and argument errors answer at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..shared.backbones import DEFAULT_CROP_RATIO, DEFAULT_CROP_SCALE, DEFAULT_RESIZE, PREPROCESS_SCHEMES
from ..shared.cache import schema
from ..shared.cli import VerboseOpt, VersionOpt, plain, run_cli
from .api import DEFAULT_MAX_RETRIES, DEFAULT_SPLIT
from .inputs import DEFAULT_MAX_INPUT_BYTES, DEFAULT_MAX_PIXELS
from .ray_runner import ITEMS_PER_WORKER

# --finalize and the multi-worker runs exit with this when the cache is not complete yet.
EXIT_INCOMPLETE = 1
# Skipped inputs named on stderr after a run (the manifest lists them all).
SHOWN_FAILURES = 10

app = typer.Typer(add_completion=False, help=plain(__doc__), rich_markup_mode=None)

LIST_BACKBONES = "list"


def _list_backbones(value: str) -> str:
    """``--backbone list``: print the registry and stop (before SOURCE is required)."""
    if value == LIST_BACKBONES:
        from ..shared.backbones import listing

        typer.echo(listing())
        raise typer.Exit()
    return value


@app.command()
def extract(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Argument(
            help=(
                "Images: a folder of class sub-folders (optionally under train/, val/, test/), a folder of "
                "unlabelled images, a CSV 'path[,label[,split]]', a .txt list of paths, or TFRecord files "
                "(.tfrecord/.tfrec, .gz for GZIP) or WebDataset tar shards: one file, a folder of them, a quoted "
                "glob pattern ('data/*.tfrecord') or a .txt list of them; TFRecord and tar files may be "
                "tf.io.gfile URLs (gs://...)."
            ),
            show_default=False,
        ),
    ],
    cache: Annotated[
        Optional[Path],
        typer.Argument(
            help=(
                "Cache directory to create, or to resume when it already holds a cache from the same "
                "source and backbone. With --finalize, the only argument is the cache."
            ),
            show_default=False,
        ),
    ] = None,
    weights: Annotated[
        str,
        typer.Option(
            help=(
                "'imagenet' (Keras' cache, downloading if needed), a path to a weights .h5 file, 'random' "
                "(seeded; meaningless features, smoke tests only), or 'auto' ($FEATCACHE_WEIGHTS, else "
                "imagenet if available, else random with a warning)."
            ),
        ),
    ] = "imagenet",
    backbone: Annotated[
        str,
        typer.Option(
            help=(
                "Backbone from the registry ('mobilenet_v2', 'efficientnet_v2_b0', 'resnet50', ...; 'tiny' is "
                "a fast random test net; 'list' prints them all with sizes, preprocessing and whether their "
                "ImageNet weights are cached), 'module:attribute' naming a BackboneSpec, or a saved Keras "
                "model file (.keras or .h5; see --layer and --preprocess)."
            ),
            callback=_list_backbones,
            is_eager=True,
        ),
    ] = "mobilenet_v2",
    layer: Annotated[
        Optional[str],
        typer.Option(
            help=(
                "With a model file as --backbone: the layer whose output (batch, h, w, C) becomes the maps "
                "(default: the model's output)."
            ),
            show_default=False,
        ),
    ] = None,
    preprocess: Annotated[
        Optional[str],
        typer.Option(
            help=(
                "With a model file as --backbone (required there): what it expects from RGB in [0, 255]: "
                f"{', '.join(PREPROCESS_SCHEMES)} ('raw': as is, the model preprocesses inside; 'tf': "
                "x / 127.5 - 1; 'unit': x / 255; 'caffe', 'torch': Keras' imagenet_utils modes) or "
                "module:function."
            ),
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(min=1, help="Images per backbone call. Larger is faster on a GPU; 32 is near the best on CPU."),
    ] = 32,
    shard_size: Annotated[
        int,
        typer.Option(
            min=1, help="Inputs per shard file: the unit of resume and of parallel work. Fixed for the life of a cache."
        ),
    ] = schema.DEFAULT_SHARD_SIZE,
    maps_dtype: Annotated[
        str,
        typer.Option(
            help=(
                "Storage dtype of the (7, 7, 1280) maps: float16 (half the bytes; pooled is always float32 "
                "from the float32 maps) or float32."
            )
        ),
    ] = schema.DEFAULT_MAPS_DTYPE,
    compression: Annotated[
        str,
        typer.Option(
            help=(
                f"Lossless filter for the maps: {', '.join(schema.COMPRESSIONS)}. gzip-1 (default) is about "
                f"5x smaller than none on real features and readable by any HDF5 library; lzf is faster to "
                f"write but only h5py reads it without a plugin."
            )
        ),
    ] = schema.DEFAULT_COMPRESSION,
    split: Annotated[
        str,
        typer.Option(
            help=(
                "Train,val,test fractions for rows whose source gives no split (assigned by a hash of the "
                "id, stable when images are added)."
            )
        ),
    ] = DEFAULT_SPLIT,
    mixed_precision: Annotated[
        bool,
        typer.Option(
            help=(
                "Run the backbone in mixed float16 (faster on recent GPUs, slower on CPU). Recorded in the "
                "fingerprint: a cache is all one or all the other."
            )
        ),
    ] = False,
    xla: Annotated[
        bool,
        typer.Option(help="Compile the backbone call with XLA (may help on a GPU; ~8x slower on the CPUs measured)."),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of random weights (only with --weights random).")] = 0,
    overwrite: Annotated[
        bool, typer.Option(help="Discard an existing cache in CACHE and start over (instead of resuming).")
    ] = False,
    update: Annotated[
        bool,
        typer.Option(
            "--update",
            help=(
                "CACHE was made from SOURCE as it was earlier: extract only the inputs added or modified "
                "since (into new shards after the existing ones), hide removed ones from readers, and "
                "apply new labels without running the backbone. Existing shard files are not rewritten. "
                "Without it, a changed SOURCE is refused. See docs/updates.md."
            ),
        ),
    ] = False,
    checksum: Annotated[
        bool,
        typer.Option(
            "--checksum",
            help=(
                "Read every input in full and record its sha256 in the listing; with --update, an input "
                "whose content changed is found even when its size and modification time were kept "
                "(touch -r). See docs/updates.md."
            ),
        ),
    ] = False,
    strict: Annotated[
        bool,
        typer.Option(
            help=(
                "Stop at the first input that cannot be read, decoded or is refused (not a regular file, "
                "past --max-input-bytes or --max-pixels; default: skip it and record the reason in the manifest)."
            )
        ),
    ] = False,
    max_input_bytes: Annotated[
        int,
        typer.Option(
            min=1,
            help=(
                "Refuse (skip, recording the reason) any input file larger than this many bytes, before "
                "reading it (default 64 MiB)."
            ),
        ),
    ] = DEFAULT_MAX_INPUT_BYTES,
    max_pixels: Annotated[
        int,
        typer.Option(
            min=1,
            help=(
                "Refuse (skip, recording the reason) any image whose header declares more pixels than this "
                "(width x height x frames; default as Pillow's decompression-bomb limit, about 89.5 Mpx)."
            ),
        ),
    ] = DEFAULT_MAX_PIXELS,
    max_shards: Annotated[
        Optional[int],
        typer.Option(
            min=1, help="Write at most this many shards in this run, then stop; re-run the same command to continue."
        ),
    ] = None,
    part: Annotated[
        Optional[str],
        typer.Option(
            help=(
                "I/N: be worker I (from 0) of N filling the same CACHE, e.g. a job array's task: write "
                "only the shards k with k % N == I. Workers run at the same time on a shared filesystem; "
                "each one merges what is done when it stops, and the last one completes the manifest."
            ),
            show_default=False,
        ),
    ] = None,
    finalize: Annotated[
        bool,
        typer.Option(
            "--finalize",
            help=(
                "Merge what the workers of a partitioned run have finished into CACHE's manifest and say "
                "which shards are missing and which parts are still running (exit 1 while incomplete). "
                "Safe to repeat and to run while workers are going."
            ),
        ),
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help=(
                "Run this many workers side by side: local processes (one part each), or Ray actors pulling "
                "work items with --runner ray. On CPU each local process gets an equal share of the cores."
            ),
        ),
    ] = 1,
    gpus: Annotated[
        Optional[str],
        typer.Option(
            help=(
                "'all' or a count: one local worker process per GPU, each pinned with CUDA_VISIBLE_DEVICES "
                "(GPUs found from CUDA_VISIBLE_DEVICES or nvidia-smi)."
            ),
            show_default=False,
        ),
    ] = None,
    runner: Annotated[
        str,
        typer.Option(
            help=(
                "Where --workers run: 'local' (processes on this machine) or 'ray' (actors on the Ray "
                "cluster at --address, or a local Ray instance; needs featcache[ray])."
            )
        ),
    ] = "local",
    address: Annotated[
        Optional[str],
        typer.Option(
            help=(
                "Ray cluster to run on with --runner ray ('auto', 'ray://head:10001', ...); default: start "
                "a local Ray instance."
            ),
            show_default=False,
        ),
    ] = None,
    max_retries: Annotated[
        int,
        typer.Option(
            min=0,
            help=(
                "With --runner ray: how often Ray restarts an actor that died, and puts back a work item "
                "lost with its actor (the next run of the item keeps its finished shards)."
            ),
        ),
    ] = DEFAULT_MAX_RETRIES,
    ray_items: Annotated[
        Optional[int],
        typer.Option(
            min=1,
            help=(
                "With --runner ray: cut the shard plan into this many work items (item i = shards k with "
                "k % ITEMS == i) that the actors pull from a queue, so a slow or lost node delays only its "
                "item in flight. More items balance finer but each costs a start (listing the source) and a "
                f"manifest merge. Default: {ITEMS_PER_WORKER} per worker."
            ),
            show_default=False,
        ),
    ] = None,
    views: Annotated[
        int,
        typer.Option(
            min=1,
            help=(
                "Views per image: 1 is the plain image only; with N > 1, view 1 is its horizontal mirror and "
                "views 2..N-1 random-resized crops (see --crop-scale, --crop-ratio) mirrored half the time, each "
                "drawn from a seed of (image id, view): the same every run. Pooled vectors of every view are "
                "stored (dataset pooled_views); maps of view 0 only. Costs N times the backbone work."
            ),
        ),
    ] = 1,
    crop_scale: Annotated[
        str, typer.Option(help="Area fraction range 'low,high' of the random-resized-crop views (views >= 3).")
    ] = "{:g},{:g}".format(*DEFAULT_CROP_SCALE),
    crop_ratio: Annotated[
        str, typer.Option(help="Aspect ratio (width/height) range 'low,high' of the random-resized-crop views.")
    ] = "{:g},{:g}".format(*DEFAULT_CROP_RATIO),
    resize: Annotated[
        str,
        typer.Option(
            help=(
                "How an image becomes the backbone's square input: squash (stretch the whole image), "
                "centre-crop (short side to fit, cut the centre) or pad (long side to fit, mid-grey borders). "
                "Recorded in the fingerprint."
            )
        ),
    ] = DEFAULT_RESIZE,
    source_format: Annotated[
        Optional[str],
        typer.Option(
            help=(
                "What SOURCE is when its name does not say: folder, csv, list, tfrecord or tar (default: told "
                "by the names: .csv, .txt/.lst, .tfrecord/.tfrecords/.tfrec[.gz], .tar/.tar.gz/.tgz)."
            ),
            show_default=False,
        ),
    ] = None,
    tfrecord_keys: Annotated[
        Optional[str],
        typer.Option(
            help=(
                "tf.train.Example feature names, as 'image=KEY,label=KEY,text=KEY,id=KEY' (any subset). Defaults: "
                "image=image/encoded, label=image/class/label (class number), text=image/class/text (class "
                "name), id=image/filename, else image/source_id."
            ),
            show_default=False,
        ),
    ] = None,
    feed_dtype: Annotated[
        Optional[str],
        typer.Option(
            help=(
                "How resized images go to the backbone's device: 'uint8' (rounded to whole RGB values, then cast "
                "and preprocessed on the device: 4x fewer bytes to copy, for fast GPUs) or 'float32' "
                "(preprocessed on the host, unrounded: how caches were made before this option). The features "
                "differ slightly (docs/performance.md), so it is recorded in the fingerprint. Default: what an "
                "existing CACHE records (float32 for older caches), uint8 for a new one."
            ),
            show_default=False,
        ),
    ] = None,
    taps: Annotated[
        Optional[str],
        typer.Option(
            help=(
                "Layer taps: in the same forward pass, also store the spatial means of these layers' outputs "
                "per row (dataset taps, float32, concatenated), for the trainer's --features taps. 'default' "
                "(the backbone's: for mobilenet_v2 block_13_expand_relu and block_16_project_BN, 3.5 KB a row), "
                "'none', or layer names joined by commas. Default: what an existing CACHE records (none for "
                "older caches), 'default' for a new one."
            ),
            show_default=False,
        ),
    ] = None,
    keep_top_input: Annotated[
        Optional[bool],
        typer.Option(
            "--keep-top-input/--no-keep-top-input",
            help=(
                "Also store the input of the backbone's last block (mobilenet_v2: the 7x7x320 output of "
                "block_16_project_BN that Conv_1 takes, float16, ~31 KB a row), which the trainer's 'top' "
                "head fine-tunes from. Default: what an existing CACHE records, off for a new one."
            ),
            show_default=False,
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    verbose: VerboseOpt = False,
    debug: Annotated[bool, typer.Option(help="Show the full traceback on errors.")] = False,
    version: VersionOpt = False,
) -> None:
    """Compute backbone features for every image in SOURCE once and store them in the HDF5 cache CACHE.

    Re-running the same command resumes: finished shards are kept, the rest are computed. Inputs that
    cannot be decoded are skipped and listed in CACHE/manifest.json with the reason.

    Many workers: --workers N (local processes), --gpus all (one per GPU), --runner ray (a Ray
    cluster), or start 'featcache-extract SOURCE CACHE --part I/N' yourself for I = 0..N-1 (a job
    array), then 'featcache-extract CACHE --finalize'.
    """

    def job() -> None:
        from .api import extract as run

        result = run(
            source,
            cache,
            weights=weights,
            backbone=backbone,
            layer=layer,
            preprocess=preprocess,
            batch_size=batch_size,
            shard_size=shard_size,
            maps_dtype=maps_dtype,
            compression=compression,
            split=split,
            mixed_precision=mixed_precision,
            xla=xla,
            seed=seed,
            overwrite=overwrite,
            update=update,
            checksum=checksum,
            strict=strict,
            max_input_bytes=max_input_bytes,
            max_pixels=max_pixels,
            max_shards=max_shards,
            part=part,
            finalize=finalize,
            workers=workers,
            gpus=gpus,
            runner=runner,
            address=address,
            max_retries=max_retries,
            ray_items=ray_items,
            views=views,
            crop_scale=crop_scale,
            crop_ratio=crop_ratio,
            resize=resize,
            source_format=source_format,
            tfrecord_keys=tfrecord_keys,
            feed_dtype=feed_dtype,
            taps=taps,
            keep_top_input=keep_top_input,
            progress=progress,
            log=_err,
        )
        if result.report is not None:  # one process: name the first skipped inputs
            for f in result.failed[:SHOWN_FAILURES]:
                _err(f"skipped {f.id}: {f.reason}")
            if len(result.failed) > SHOWN_FAILURES:
                _err(f"... and {len(result.failed) - SHOWN_FAILURES} more (see {result.cache}/manifest.json)")
        for line in result.worker_failures:
            _err(f"worker failed: {line}")
        typer.echo(result.summary())
        if (finalize or result.report is None) and not result.ok:
            raise typer.Exit(EXIT_INCOMPLETE)

    run_cli(job, ctx=ctx, debug=debug)


def _err(msg: str) -> None:
    typer.echo(msg, err=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
