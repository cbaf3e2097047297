"""``featcache-extract``: the batch precompute job's command line, a thin layer over
:func:`featcache.extractor.api.extract` (whose error messages name arguments, spelled here as flags).

TensorFlow is imported only once a run starts, so ``--help`` and argument errors answer at once.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any, Optional, get_type_hints

import typer

from ..shared.cli import VerboseOpt, VersionOpt, plain, run_cli
from .options import OPTIONS, SAME, ExtractOptions

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

        run_cli(lambda: typer.echo(listing()))
        raise typer.Exit()
    return value


def option_parameters() -> list[inspect.Parameter]:
    """``featcache-extract``'s options, one per field of :class:`ExtractOptions` (its help, type and
    default, as the command line parses and shows them), keyword-only, in the class's order."""
    params, hints = [], get_type_hints(ExtractOptions)
    for f in OPTIONS:
        if f.metadata.get("api_only"):
            continue
        meta = f.metadata
        kind = hints[f.name] if meta["cli_type"] is SAME else meta["cli_type"]
        default = f.default if meta["cli_default"] is SAME else meta["cli_default"]
        typer_options = {**meta["typer"], **CLI_ONLY.get(f.name, {})}
        # a type read at run time from ExtractOptions' hints: typer reads it, mypy cannot
        annotation = Annotated[kind, typer.Option(*meta["flags"], help=meta["help"], **typer_options)]  # type: ignore[valid-type]
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation))
    return params


SourceArg = Annotated[
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
]
CacheArg = Annotated[
    Optional[Path],
    typer.Argument(
        help=(
            "Cache directory to create, or to resume when it already holds a cache from the same "
            "source and backbone. With --finalize, the only argument is the cache."
        ),
        show_default=False,
    ),
]
DebugOpt = Annotated[bool, typer.Option(help="Show the full traceback on errors.")]
# What the command line adds to an option: --backbone list prints the registry (before SOURCE is required).
CLI_ONLY: dict[str, dict[str, Any]] = {"backbone": {"callback": _list_backbones, "is_eager": True}}


def extract(
    ctx: typer.Context,
    source: SourceArg,
    cache: CacheArg = None,
    *,
    verbose: VerboseOpt = False,
    debug: DebugOpt = False,
    version: VersionOpt = False,
    **options: Any,
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

        result = run(source, cache, **options, log=_err)
        if result.report is not None:  # one process: name the first skipped inputs
            for f in result.failed[:SHOWN_FAILURES]:
                _err(f"skipped {f.id}: {f.reason}")
            if len(result.failed) > SHOWN_FAILURES:
                _err(f"... and {len(result.failed) - SHOWN_FAILURES} more (see {result.cache}/manifest.json)")
        for line in result.worker_failures:
            _err(f"worker failed: {line}")
        typer.echo(result.summary())
        if (options["finalize"] or result.report is None) and not result.ok:
            raise typer.Exit(EXIT_INCOMPLETE)

    run_cli(job, ctx=ctx, debug=debug)


# typer reads a command's parameters from its signature: the fixed ones, then every ExtractOptions field.
_fixed = list(inspect.signature(extract, eval_str=True).parameters.values())
extract.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [*_fixed[:3], *option_parameters(), *_fixed[3:6]], return_annotation=None
)
app.command()(extract)


def _err(msg: str) -> None:
    typer.echo(msg, err=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
