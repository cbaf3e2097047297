"""``featcache-extract``: the batch precompute job's command line.

TensorFlow is imported only once a run starts, so ``--help`` and argument errors answer at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from shared import schema
from shared.backbones import WEIGHTS_ENV
from shared.cli import run_cli
from shared.split import parse_fractions

app = typer.Typer(add_completion=False, help=__doc__, rich_markup_mode=None)


@app.command()
def extract(
    source: Annotated[Path, typer.Argument(help="Images: a folder of class sub-folders (optionally under train/, val/, test/), a folder of unlabelled images, a CSV 'path[,label[,split]]', or a .txt list of paths.", show_default=False)],
    cache: Annotated[Path, typer.Argument(help="Cache directory to create, or to resume when it already holds a cache from the same source and backbone.", show_default=False)],
    weights: Annotated[str, typer.Option(envvar=WEIGHTS_ENV, help="'imagenet' (Keras' cache, downloading if needed), a path to a weights .h5 file, 'random' (seeded; meaningless features, smoke tests only), or 'auto' ($FEATCACHE_WEIGHTS, else imagenet if available, else random with a warning).")] = "imagenet",
    backbone: Annotated[str, typer.Option(help="Backbone from the registry ('mobilenet_v2'; 'tiny' is a fast random test net) or 'module:attribute' naming a BackboneSpec.")] = "mobilenet_v2",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per backbone call. Larger is faster on a GPU; 32 is near the best on CPU.")] = 32,
    shard_size: Annotated[int, typer.Option(min=1, help="Inputs per shard file: the unit of resume and of parallel work. Fixed for the life of a cache.")] = schema.DEFAULT_SHARD_SIZE,
    maps_dtype: Annotated[str, typer.Option(help="Storage dtype of the (7, 7, 1280) maps: float16 (half the bytes; pooled is always float32 from the float32 maps) or float32.")] = schema.DEFAULT_MAPS_DTYPE,
    compression: Annotated[str, typer.Option(help=f"Lossless filter for the maps: {', '.join(schema.COMPRESSIONS)}. gzip-1 (default) is about 5x smaller than none on real features and readable by any HDF5 library; lzf is faster to write but only h5py reads it without a plugin.")] = schema.DEFAULT_COMPRESSION,
    split: Annotated[str, typer.Option(help="Train,val,test fractions for rows whose source gives no split (assigned by a hash of the id, stable when images are added).")] = "0.8,0.1,0.1",
    mixed_precision: Annotated[bool, typer.Option(help="Run the backbone in mixed float16 (faster on recent GPUs, slower on CPU). Recorded in the fingerprint: a cache is all one or all the other.")] = False,
    xla: Annotated[bool, typer.Option(help="Compile the backbone call with XLA (may help on a GPU; ~8x slower on the CPUs measured).")] = False,
    seed: Annotated[int, typer.Option(help="Seed of random weights (only with --weights random).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Discard an existing cache in CACHE and start over (instead of resuming).")] = False,
    strict: Annotated[bool, typer.Option(help="Stop at the first input that cannot be read or decoded (default: skip it and record the reason in the manifest).")] = False,
    max_shards: Annotated[Optional[int], typer.Option(min=1, help="Write at most this many shards in this run, then stop; re-run the same command to continue.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    debug: Annotated[bool, typer.Option(help="Show the full traceback on errors.")] = False,
) -> None:
    """Compute backbone features for every image in SOURCE once and store them in the HDF5 cache CACHE.

    Re-running the same command resumes: finished shards are kept, the rest are computed. Inputs that
    cannot be decoded are skipped and listed in CACHE/manifest.json with the reason.
    """

    def job() -> None:
        from .runner import ExtractConfig, run_extract

        cfg = ExtractConfig(
            source=source, cache=cache, backbone=backbone, weights=weights, seed=seed, batch_size=batch_size,
            shard_size=shard_size, maps_dtype=maps_dtype, compression=compression,
            mixed_precision=mixed_precision, xla=xla, split_fractions=parse_fractions(split), overwrite=overwrite,
            strict=strict, max_shards=max_shards, progress=progress,
        )
        report = run_extract(cfg, log=lambda msg: typer.echo(msg, err=True))
        for f in report.failures[:10]:
            typer.echo(f"skipped {f.id}: {f.reason}", err=True)
        if len(report.failures) > 10:
            typer.echo(f"... and {len(report.failures) - 10} more (see {cache}/manifest.json)", err=True)
        typer.echo(report.summary())

    run_cli(job, debug=debug)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
