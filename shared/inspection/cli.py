"""``featcache-inspect`` (also ``python -m featcache.shared``): look at a cache without TensorFlow.

They never import TensorFlow: they start in a fraction of a second, read only what they need, and
work on a machine with no TensorFlow installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer
from tqdm import tqdm

from ..cache import (
    DEFAULT_COMPACT_THRESHOLD,
    FeatureCache,
    Manifest,
    ManifestError,
    PooledRows,
    describe,
    file_status,
    schema,
    split_names,
)
from ..cache import compact as compact_cache
from ..cli import VersionOpt, plain, run_cli, shown_default
from ..errors import FeatcacheError
from . import cam as cam_mod
from . import export as export_mod
from . import knn, similarity
from . import outliers as outliers_mod
from . import report as report_mod
from . import verify as verify_mod
from .picture import energy_overlay, load_source, resize_policy, write_png
from .summary import summarize

app = typer.Typer(add_completion=False, help=plain(__doc__), rich_markup_mode=None, no_args_is_help=True)

CacheArg = Annotated[
    Path, typer.Argument(help="A featcache cache directory (the one holding manifest.json).", show_default=False)
]
DebugOpt = Annotated[bool, typer.Option(help="Show the full traceback on errors.")]
CamOpt = Annotated[
    Optional[Path],
    typer.Option(
        help=(
            "A run directory (featcache-train) trained on this cache whose best head is linear or logreg on the "
            "pooled vectors: draw its class activation maps (where it looks for the class it predicts)."
        ),
        show_default=False,
    ),
]


@app.callback()
def _options(version: VersionOpt = False) -> None:
    """Options of ``featcache-inspect`` itself (before a command)."""


def _print_summary(s: dict[str, Any]) -> None:
    fp = s["fingerprint"]
    echo = typer.echo
    if s["random_weights"]:
        echo("WARNING: this cache was made with RANDOM weights: its features are meaningless.")
    state = "complete" if s["complete"] else f"INCOMPLETE ({s['shards']['planned'] - s['shards']['done']} shards to do)"
    echo(
        (
            f"{s['cache']}: {s['rows']} rows from {s['inputs']} inputs, "
            f"{s['shards']['done']}/{s['shards']['planned']} shards of {s['shards']['size']}, {state}"
        )
    )
    if s["generation"] or s["dead_rows"]:
        echo(
            f"updates:   generation {s['generation']}; {s['dead_rows']} dead rows (removed or modified inputs, "
            f"still in shard files: featcache-inspect compact rewrites them), {s['relabelled']} rows relabelled"
        )
        for g in s["generations"]:
            first, stop = g["shards"]
            what = ", ".join(f"{n} {k}" for k, n in g["changes"].items() if n) or "first extraction"
            where = f"shards {first}..{stop - 1}" if stop > first else "no new shards"
            echo(f"  generation {g['generation']} {g['created']}: {g['inputs']} inputs, {where} ({what})")
    echo(f"backbone:  {describe(fp)}")
    on_disk = f"{s['bytes']['total'] / 1e6:.1f} MB on disk" + (
        f", {s['bytes']['per_row'] / 1e3:.1f} KB per row" if s["bytes"]["per_row"] else ""
    )
    if not schema.has_maps(fp):
        echo(f"storage:   pooled vectors only (no maps); {on_disk}")
    else:
        echo(f"input:     {fp['resize']} to {fp['input_size']}, {fp['preprocessing']}")
        echo(
            f"storage:   maps {fp['maps_dtype']} {s['storage']['compression']}, computed in {fp['compute_dtype']}; "
            + on_disk
        )
        echo(f"libraries: tensorflow {fp.get('tensorflow')}, keras {fp.get('keras')}, oneDNN {fp.get('onednn')}")
    echo(f"source:    {s['source']['kind']} {s['source']['root']}; splits from {s['split_source']}")
    echo("splits:    " + ", ".join(f"{k} {v}" for k, v in s["splits"].items()))
    if s["classes"]:
        width = max(len(c) for c in s["classes"])
        echo(
            f"classes ({len(s['classes'])}):  " + " " * max(0, width - 12) + "  ".join(f"{x:>6}" for x in schema.SPLITS)
        )
        for cls, c in s["classes"].items():
            echo(f"  {cls:<{width}}  " + "  ".join(f"{c[x]:>6}" for x in schema.SPLITS))
    f = s["failed"]
    echo(f"failed:    {f['count']} inputs" + (":" if f["count"] else ""))
    for item in f["first"]:
        echo(f"  {item['id']}: {item['reason']}")
    if f["count"] > len(f["first"]):
        echo(f"  ... and {f['count'] - len(f['first'])} more in manifest.json")
    echo(f"created {s['created']}, updated {s['updated']}")
    if s["parts"]:
        running = s["parts"]["recorded_running"]
        echo(
            "parts:     "
            + (
                ", ".join(f"{p} ({h})" for p, h in running.items()) + " recorded as running"
                if running
                else "no worker recorded as running"
            )
            + (
                f"; {len(s['parts']['awaiting_merge'])} committed shards not folded into manifest.json yet "
                "(featcache-extract CACHE --finalize folds them)"
                if s["parts"]["awaiting_merge"]
                else ""
            )
        )


@app.command()
def summary(
    ctx: typer.Context,
    cache: CacheArg,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object (for scripts).")
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Rows, shards, classes per split, failed inputs, fingerprint, bytes on disk."""

    def job() -> None:
        s = summarize(FeatureCache(cache))
        if as_json:
            typer.echo(json.dumps(s, indent=1, ensure_ascii=False))
        else:
            _print_summary(s)

    run_cli(job, ctx=ctx, debug=debug)


def find_row(rows: PooledRows, row: str) -> int:
    """Position in ``rows`` of ROW, given as a listing index (an integer) or an id."""
    if row.lstrip("-").isdigit():
        hit = np.flatnonzero(rows.index == int(row))
        if len(hit):
            return int(hit[0])
    hit = np.flatnonzero(rows.id == row)
    if len(hit):
        return int(hit[0])
    raise FeatcacheError(
        f"row {row!r}: no row has this index or id (indices run 0..{rows.index.max() if len(rows) else -1}; "
        "failed inputs have none)"
    )


def _class_name(classes: list[str], label: int) -> str:
    return classes[label] if 0 <= label < len(classes) else "(unlabelled)"


@app.command()
def verify(
    ctx: typer.Context,
    cache: CacheArg,
    fix: Annotated[
        bool,
        typer.Option(
            "--fix",
            help=(
                "Move bad and unknown shard files into CACHE/quarantine/ (nothing is deleted) and drop bad "
                "shards from the manifest, so that re-running the extractor recomputes exactly those "
                "shards."
            ),
        ),
    ] = False,
    sample_rows: Annotated[
        int,
        typer.Option(
            min=1,
            help="Rows per shard, chosen at random, whose pooled vector is checked against the mean of their maps.",
        ),
    ] = verify_mod.DEFAULT_SAMPLE_ROWS,
    seed: Annotated[int, typer.Option(help="Seed for choosing those rows.")] = 0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar over shards.")] = True,
    debug: DebugOpt = False,
) -> None:
    """Check every shard against the manifest: size, sha256, HDF5 structure, shapes and dtypes,
    fingerprint, index coverage, NaN/Inf, pooled = mean of maps; and find shard files the manifest
    does not know. Exit 0 when all holds, 1 when a problem was found (even if --fix moved it aside)."""

    def job() -> None:
        try:
            shards = len(Manifest.load(cache).shards)
        except ManifestError:
            shards = 0  # verify reports it as a problem
        with tqdm(total=shards, unit="shard", disable=not progress, leave=False) as bar:
            report = verify_mod.verify(cache, sample_rows=sample_rows, seed=seed, progress=lambda rec: bar.update(1))
        for note in report.notes:
            typer.echo(f"note: {note}")
        for problem in report.problems:
            typer.echo(f"{cache / problem.file}: {problem.reason}")
        n = len(report.problems)
        verdict = "OK" if report.ok else f"{n} problem{'s' if n > 1 else ''}"
        typer.echo(f"{cache}: {verdict}: {report.shards_checked} shards, {report.rows_checked} rows checked")
        if fix and not report.ok:
            for action in verify_mod.fix(cache, report):
                typer.echo(f"fixed: {action}")
        if not report.ok:
            raise typer.Exit(1)

    run_cli(job, ctx=ctx, debug=debug)


@app.command()
def show(
    ctx: typer.Context,
    cache: CacheArg,
    row: Annotated[
        str, typer.Argument(help="The row: its index (position in the source listing) or its id.", show_default=False)
    ],
    top: Annotated[int, typer.Option(min=1, help="How many of the strongest pooled channels to list.")] = 10,
    png: Annotated[
        Optional[Path],
        typer.Option(
            help=(
                "Also draw the maps' activation energy (mean over channels, per position) over the source "
                "image into this PNG file (with --cam: the class activation map instead)."
            )
        ),
    ] = None,
    cam: CamOpt = None,
    debug: DebugOpt = False,
) -> None:
    """One row: id, label, split, shard, pooled-vector statistics, strongest channels, and where its maps are active."""

    def job() -> None:
        c = FeatureCache(cache)
        head = None if cam is None else cam_mod.read_head(cam)  # refused before anything is printed
        if head is not None:
            cam_mod.check_cache(head, c.fingerprint, c.classes, str(cache))
        rows = c.load_pooled()
        k = find_row(rows, row)
        index = int(rows.index[k])
        shard = next(s for s in c.shards if s.first_index <= index < s.first_index + s.num_inputs)
        if png is not None:
            c.require_maps("--png draws the maps' activations: leave it out")
        maps = None
        if c.has_maps:
            ((_, maps),) = c.iter_maps(indices=[index], dtype="float32")
            maps = maps[0]
        _echo_row(c, rows, k, shard.file, top)
        if maps is None:
            typer.echo(f"maps: none (the cache holds imported vectors: {describe(c.fingerprint)})")
            return
        energy = _echo_maps(maps)
        grid = None if head is None else _echo_cam(head, maps)
        if png is not None:
            _draw_row(png, c, str(rows.id[k]), energy, head, grid)

    run_cli(job, ctx=ctx, debug=debug)


def _echo_row(c: FeatureCache, rows: PooledRows, k: int, shard_file: str, top: int) -> None:
    """Row ``k`` of ``rows``: where it is stored (in ``shard_file``), its label and split, its pooled vector's
    statistics and its ``top`` strongest channels."""
    echo = typer.echo
    v = rows.pooled[k]
    echo(f"row index {int(rows.index[k])} in {shard_file}: {rows.id[k]}")
    echo(
        (
            f"label {rows.label[k]} {_class_name(c.classes, int(rows.label[k]))}, split "
            f"{split_names(rows.split[k : k + 1])[0]}"
        )
    )
    echo(
        f"pooled ({len(v)},): L2 {np.linalg.norm(v):.3f}, mean {v.mean():.4f}, std {v.std():.4f}, "
        f"max {v.max():.4f}, zeros {100 * (v == 0).mean():.1f}%"
    )
    strongest = np.argsort(-v, kind="stable")[:top]
    echo("strongest channels: " + ", ".join(f"{ch} ({v[ch]:.3f})" for ch in strongest))


def _echo_maps(maps: np.ndarray) -> np.ndarray:
    """Print a row's ``maps`` ``(h, w, C)`` float32: their share of zeros and the mean activation per
    position (the energy ``(h, w)``, returned)."""
    energy = maps.mean(axis=-1)
    typer.echo(f"maps {maps.shape}: zeros {100 * (maps == 0).mean():.1f}%; mean activation per position:")
    for line in energy:
        typer.echo("  " + " ".join(f"{x:6.3f}" for x in line))
    return energy


def _echo_cam(head: cam_mod.CamHead, maps: np.ndarray) -> tuple[np.ndarray, int]:
    """Print the class activation map ``(h, w)`` of ``head`` on a row's ``maps`` ``(h, w, C)`` for the class
    it predicts (the largest mean logit); return the map and that class."""
    grids = head.cam(maps[None])[0]
    logits = grids.mean(axis=(0, 1))
    best = int(logits.argmax())
    grid = grids[..., best]
    typer.echo(
        f"class activation map of {head.name} ({head.kind}, "
        f"{'exact' if head.exact else 'linearised at the pooled vector'}) for the class it predicts, "
        f"{head.classes[best]} (logit {logits[best]:.3f}, the map's mean):"
    )
    for line in grid:
        typer.echo("  " + " ".join(f"{x:7.3f}" for x in line))
    return grid, best


def _draw_row(
    png: Path,
    c: FeatureCache,
    row_id: str,
    energy: np.ndarray,
    head: cam_mod.CamHead | None,
    grid: tuple[np.ndarray, int] | None,
) -> None:
    """Write ``png``: the source image of row ``row_id`` under its activation ``energy`` ``(h, w)``, or, with
    a ``head``, under its class activation map (``grid``: the map and its class, from :func:`_echo_cam`)."""
    seen = tuple(c.fingerprint["input_size"])
    if grid is None:
        base, where = load_source(c.manifest.source, row_id, seen)
        write_png(png, energy_overlay(base, energy))
        typer.echo(f"wrote {png}: activation energy over {where}")
    else:
        policy = resize_policy(c.fingerprint)
        base, where = load_source(c.manifest.source, row_id, seen, policy)
        write_png(png, cam_mod.overlay(base, grid[0]))
        assert head is not None, "a grid is drawn for a head"
        typer.echo(f"wrote {png}: class activation map of {head.classes[grid[1]]} over {where} ({policy})")


@app.command()
def neighbours(
    ctx: typer.Context,
    cache: CacheArg,
    row: Annotated[
        Optional[str],
        typer.Argument(
            help="The row to find neighbours of: its index or its id (not needed with --duplicates).",
            show_default=False,
        ),
    ] = None,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="How many nearest rows to list.")] = 10,
    duplicates: Annotated[
        bool,
        typer.Option(
            "--duplicates",
            help=(
                "Instead, list every pair of rows whose pooled vectors are near-identical (cosine >= "
                "--threshold) across the whole cache, marking pairs that straddle two splits (leaks). Files "
                "whose bytes are identical are listed first when the extractor recorded their sha256 "
                "(featcache-extract --checksum)."
            ),
        ),
    ] = False,
    threshold: Annotated[
        float, typer.Option(help="Cosine similarity from which two rows count as duplicates.")
    ] = similarity.DEFAULT_DUPLICATE_THRESHOLD,
    block: Annotated[
        int, typer.Option(min=16, help="Rows per block in the --duplicates search; memory is block x block floats.")
    ] = similarity.DEFAULT_BLOCK,
    debug: DebugOpt = False,
) -> None:
    """Nearest rows by cosine similarity of pooled vectors, with their labels and splits."""

    def job() -> None:
        c = FeatureCache(cache)
        rows = c.load_pooled()
        unit = similarity.normalize(rows.pooled)
        names = split_names(rows.split)

        def describe_row(i: int) -> str:
            return f"{rows.index[i]:>7}  {names[i]:<5}  {_class_name(c.classes, int(rows.label[i])):<14}  {rows.id[i]}"

        if duplicates:
            hashes, why = similarity.recorded_content_hashes(c, rows.index)
            if hashes is not None:
                groups = similarity.content_groups(hashes)
                leaks = sum(len(set(names[g])) > 1 for g in groups)
                typer.echo(
                    f"{len(groups)} groups of byte-identical files (sha256 of the bytes, recorded by --checksum) "
                    f"({leaks} across splits)"
                )
                for g in groups:
                    flag = "  LEAK" if len(set(names[g])) > 1 else ""
                    typer.echo(f"sha256 {hashes[g[0]][:16]}{flag}\n" + "\n".join(f"  {describe_row(i)}" for i in g))
            elif c.manifest.source.get("kind") != "external":
                typer.echo(f"note: {why}", err=True)
            keep = knn.Keep.of(c)
            pairs = list(similarity.duplicate_pairs(unit, threshold, block, keep))
            if keep.describe():
                typer.echo(f"note: {keep.describe()}", err=True)
            leaks = sum(names[p.a] != names[p.b] for p in pairs)
            typer.echo(f"{len(pairs)} pairs with cosine >= {threshold} among {len(rows)} rows ({leaks} across splits)")
            for p in pairs:
                flag = "  LEAK" if names[p.a] != names[p.b] else ""
                typer.echo(f"{p.cosine:.5f}{flag}\n  {describe_row(p.a)}\n  {describe_row(p.b)}")
            return
        if row is None:
            raise FeatcacheError("neighbours: give a ROW (index or id), or --duplicates")
        q = find_row(rows, row)
        typer.echo(f"query   {describe_row(q)}")
        top, sims = similarity.nearest(unit, q, k)
        typer.echo(f"{'cosine':>7}  {'index':>7}  {'split':<5}  {'class':<14}  id")
        for i, s in zip(top.tolist(), sims.tolist(), strict=False):
            typer.echo(f"{s:7.4f}  {describe_row(i)}")

    run_cli(job, ctx=ctx, debug=debug)


@app.command("export")
def export_cmd(
    ctx: typer.Context,
    cache: CacheArg,
    out: Annotated[
        Optional[Path],
        typer.Argument(
            help="Output path: writes OUT.npz (arrays) and OUT.csv (index, id, label, class, split).",
            show_default=False,
        ),
    ] = None,
    maps: Annotated[
        Optional[str],
        typer.Option(
            "--maps",
            help=(
                "Also put the maps of rows with START <= index < STOP into the npz, as START:STOP (they "
                "are large: ~125 KB per row in float16)."
            ),
        ),
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help=(
                "npz: OUT.npz and OUT.csv; parquet: OUT.parquet (id, index, label, class, split and the pooled "
                "vector as a fixed-size list of float32, in row groups: bounded memory; readable by pandas, "
                "polars and DuckDB; needs pip install 'featcache[parquet]')."
            ),
        ),
    ] = "npz",
    projector: Annotated[
        Optional[Path],
        typer.Option(
            "--projector",
            help=(
                "Also (or instead of OUT) write a folder for TensorBoard's embedding projector: tensors.tsv, "
                "metadata.tsv (id, class, split, index), sprite.png (thumbnails, with Pillow) and "
                f"projector_config.pbtxt; at most {export_mod.PROJECTOR_MAX_ROWS:,} rows (a random sample beyond). "
                "View with: tensorboard --logdir DIR."
            ),
            show_default=False,
        ),
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Pooled vectors, labels, ids and splits as .npz and .csv (or Parquet), for scikit-learn and other
    tools; or a folder for TensorBoard's embedding projector."""

    def job() -> None:
        if out is None and projector is None:
            raise FeatcacheError("export: give OUT (the .npz and .csv to write), --projector DIR, or both")
        if fmt not in export_mod.FORMATS:
            raise FeatcacheError(f"--format {fmt!r}: choose one of {', '.join(export_mod.FORMATS)}")
        if fmt == "parquet" and maps:
            raise FeatcacheError("--maps: Parquet holds the pooled vectors only; export maps with --format npz")
        c = FeatureCache(cache)
        if maps:
            c.require_maps("--maps: there are no maps to export")
        if out is None:
            written = []
        elif fmt == "parquet":
            written = export_mod.export_parquet(c, out)
        else:
            written = export_mod.export(c, out, export_mod.parse_range(maps) if maps else None)
        if projector is not None:
            files, skipped = export_mod.projector(c, projector)
            written += files
            if skipped:
                typer.echo(f"note: {skipped}", err=True)
        for p in written:
            typer.echo(f"wrote {p} ({p.stat().st_size / 1e6:.1f} MB)")

    run_cli(job, ctx=ctx, debug=debug)


@app.command("import")
def import_cmd(
    ctx: typer.Context,
    source: Annotated[
        Path,
        typer.Argument(
            help=(
                "A .npz (arrays pooled (N, C), id, optionally label, split, classes: what export writes) or "
                ".parquet file (columns id, pooled as a list of floats, optionally label, class, split: what "
                "export --format parquet writes; needs pip install 'featcache[parquet]')."
            ),
            show_default=False,
        ),
    ],
    cache: Annotated[Path, typer.Argument(help="The cache directory to create.", show_default=False)],
    name: Annotated[
        str, typer.Option(help="What the vectors are (e.g. clip-vit-b32): the cache's backbone is external:NAME.")
    ] = "external",
    shard_size: Annotated[int, typer.Option(min=1, help="Rows per shard.")] = 8192,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing cache at CACHE.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar over shards.")] = True,
    debug: DebugOpt = False,
) -> None:
    """Make a cache of pooled vectors computed elsewhere (CLIP, DINOv2, any model): no maps, fingerprinted
    by the sha256 of the vectors; every inspect command and the trainer's pooled heads read it. Bad
    input (lengths that differ, NaN/Inf, duplicate ids, unknown split names, labels outside the classes)
    is refused with one line and nothing is written."""

    def job() -> None:
        from ..cache import import_embeddings, read_embeddings

        given = read_embeddings(source)
        m = import_embeddings(cache, **given, name=name, shard_size=shard_size, overwrite=overwrite, progress=progress)
        typer.echo(
            f"{cache}: {m.rows} rows of {m.fingerprint['output_shape'][-1]}-d vectors from {source} "
            f"({describe(m.fingerprint)}), {len(m.shards)} shards, {len(m.classes)} classes"
        )

    run_cli(job, ctx=ctx, debug=debug)


@app.command()
def compact(
    ctx: typer.Context,
    cache: CacheArg,
    threshold: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.999,
            help=(
                "Rewrite a shard when more than this fraction of its rows are dead (rows of inputs an "
                "update removed or re-extracted); 0 rewrites every shard with a dead row."
            ),
        ),
    ] = DEFAULT_COMPACT_THRESHOLD,
    debug: DebugOpt = False,
) -> None:
    """Give back the space of dead rows after updates: rewrite the shards that are mostly dead
    without them (a new file each, committed by the manifest's atomic rewrite: safe to interrupt,
    even with kill -9). Run it when no extractor and no reader is using the cache."""

    def job() -> None:
        report = compact_cache(cache, threshold, log=lambda line: typer.echo(f"  {line}"))
        typer.echo(report.summary(cache))

    run_cli(job, ctx=ctx, debug=debug)


@app.command("ls")
def list_shards(
    ctx: typer.Context,
    cache: CacheArg,
    checksum: Annotated[
        bool, typer.Option(help="Check each shard's sha256 against the manifest (reads every shard).")
    ] = True,
    debug: DebugOpt = False,
) -> None:
    """The shards the manifest lists: number, rows, inputs, size, and whether the file is there and intact."""

    def job() -> None:
        c = FeatureCache(cache)
        typer.echo(f"{'shard':>6} {'rows':>6} {'inputs':>7} {'MB':>8}  {'status':<9} file")
        for s in c.shards:
            problem = file_status(c.shard_path(s), s, checksum)
            status = problem.upper() if problem else ("ok" if checksum else "present")
            typer.echo(f"{s.shard:>6} {s.rows:>6} {s.num_inputs:>7} {s.bytes / 1e6:>8.2f}  {status:<9} {s.file}")
        count = c.manifest.missing_count
        if count:
            missing = c.manifest.missing_shards(limit=10)
            typer.echo(f"{count} planned shards not written yet: {missing}{' ...' if count > len(missing) else ''}")

    run_cli(job, ctx=ctx, debug=debug)


@app.command("report")
def report_cmd(
    ctx: typer.Context,
    cache: CacheArg,
    out: Annotated[Path, typer.Argument(help="The HTML file to write (one self-contained file).", show_default=False)],
    max_rows: Annotated[
        int,
        typer.Option(
            min=2,
            help=(
                "Rows analysed (map, duplicates, suspects, overlap); a larger cache is sampled at random to "
                "this many rows, read shard by shard, and the page says so. The summary always counts every row."
            ),
        ),
    ] = report_mod.DEFAULT_MAX_ROWS,
    threshold: Annotated[
        float, typer.Option(help="Cosine similarity from which two rows count as near-duplicates.")
    ] = similarity.DEFAULT_DUPLICATE_THRESHOLD,
    embedding: Annotated[
        str,
        typer.Option(
            help=(
                "Second 2-D map besides PCA: auto (UMAP when umap-learn is installed, else none), umap, tsne "
                "(t-SNE with scikit-learn: slow, tens of seconds) or pca (PCA only)."
            )
        ),
    ] = "auto",
    folds: Annotated[
        int, typer.Option(min=2, help="Cross-validation folds of the label-noise classifier.")
    ] = report_mod.suspects.DEFAULT_FOLDS,
    seed: Annotated[int, typer.Option(help="Seed of the sampling, the folds and the maps.")] = 0,
    cam: CamOpt = None,
    debug: DebugOpt = False,
) -> None:
    """One self-contained HTML page (works offline): summary, class balance, a 2-D map of the pooled
    vectors, near-duplicates and leaks, label-noise suspects and overlapping classes, with thumbnails."""

    def job() -> None:
        if embedding not in report_mod.EMBEDDINGS:
            raise FeatcacheError(f"--embedding {embedding!r}: choose one of {', '.join(report_mod.EMBEDDINGS)}")
        facts = report_mod.write(
            cache, out, max_rows=max_rows, threshold=threshold, embedding=embedding, folds=folds, seed=seed, cam=cam
        )
        leaks = sum(d["leak"] for d in facts["duplicates"])
        typer.echo(
            f"wrote {out} ({out.stat().st_size / 1e3:.0f} KB): {facts['analysed_rows']} rows analysed"
            f"{' (sampled)' if facts['sampled'] else ''}, {len(facts['duplicates'])} near-duplicate pairs "
            f"({leaks} leaks), {facts['thumbnails']} thumbnails"
        )

    run_cli(job, ctx=ctx, debug=debug)


def write_ranked_csv(path: Path, ranked: list[dict[str, Any]]) -> None:
    """A ranked listing (suspects, outliers: JSON-ready dicts with the same keys) as CSV, one row per dict."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(ranked[0]) if ranked else ["rank", "id"])
        w.writeheader()
        w.writerows(ranked)


@app.command()
def suspects(
    ctx: typer.Context,
    cache: CacheArg,
    top: Annotated[int, typer.Option(min=1, help="How many rows to list, most suspect first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON (for scripts).")] = False,
    csv_file: Annotated[
        Optional[Path], typer.Option("--csv", help="Also write every labelled row, ranked, to this CSV file.")
    ] = None,
    max_rows: Annotated[
        int,
        typer.Option(
            min=2,
            help=(
                "Rows analysed (memory: ~11 KB per row at 1280-d); a larger cache is sampled at random to this "
                "many, and only those are ranked."
            ),
        ),
    ] = report_mod.SUSPECTS_MAX_ROWS,
    folds: Annotated[
        int, typer.Option(min=2, help="Cross-validation folds of the classifier.")
    ] = report_mod.suspects.DEFAULT_FOLDS,
    seed: Annotated[int, typer.Option(help="Seed of the sampling and the folds.")] = 0,
    neighbours: Annotated[
        bool,
        typer.Option(
            help=(
                "Also give each row the share of its 10 nearest rows (cosine of pooled vectors, through the "
                "neighbour index past 20,000 rows) that carry its label: a second opinion beside p(label)."
            )
        ),
    ] = True,
    debug: DebugOpt = False,
) -> None:
    """Rows whose given label looks wrong, most suspect first: each labelled row's probability of its
    label from a cross-validated logistic regression on the pooled vectors (past 20,000 labelled rows
    fitted on a sample, every other row scored by the folds' models), and the label it suggests."""

    def job() -> None:
        c = FeatureCache(cache)
        loaded = report_mod.load_rows(c, max_rows, seed)
        keep = None if loaded.sampled else knn.Keep.of(c)
        ranked, noise = report_mod.find_suspects(c, loaded.rows, folds, seed, neighbours=neighbours, keep=keep)
        if keep is not None and keep.describe():
            typer.echo(f"note: {keep.describe()}", err=True)
        if noise is None:
            raise FeatcacheError(f"{cache}: fewer than two labelled classes: nothing to check")
        if csv_file is not None:
            write_ranked_csv(csv_file, ranked)
        if as_json:
            typer.echo(json.dumps(ranked[:top], indent=1, ensure_ascii=False))
            return
        sample = f" (a random sample of {len(loaded.rows)} of {loaded.total})" if loaded.sampled else ""
        fit = f", classifier fitted on a sample of {noise.fitted}" if noise.fitted < len(ranked) else ""
        typer.echo(
            f"{len(ranked)} labelled rows{sample}{fit}; out-of-fold accuracy {noise.accuracy:.3f}; most suspect first:"
        )
        agree = f"  {'nbrs':>5}" if neighbours else ""
        typer.echo(
            f"{'rank':>5}  {'p(label)':>8}{agree}  {'index':>7}  {'split':<5}  {'label':<14}  {'suggested':<14}  id"
        )
        for d in ranked[:top]:
            share = d.get("neighbours_agree")
            cell = f"  {'-' if share is None else format(share, '.1f'):>5}" if neighbours else ""
            typer.echo(
                f"{d['rank']:>5}  {d['p_label']:>8.4f}{cell}  {d['index']:>7}  {d['split']:<5}  {d['label']:<14}  "
                f"{d['suggested']:<14}  {d['id']}"
            )
        if csv_file is not None:
            typer.echo(f"wrote {csv_file}: {len(ranked)} rows")

    run_cli(job, ctx=ctx, debug=debug)


@app.command()
def outliers(
    ctx: typer.Context,
    cache: CacheArg,
    top: Annotated[int, typer.Option(min=1, help="How many rows to list, most isolated first.")] = 20,
    split: Annotated[
        Optional[str],
        typer.Option(
            help=shown_default(
                "Rank only the rows of this split (train, val or test); neighbours are still searched among all rows.",
                "every row",
            ),
            show_default=False,
        ),
    ] = None,
    k: Annotated[
        int, typer.Option("-k", "--k", min=1, help="Neighbours a row's isolation is measured against.")
    ] = outliers_mod.DEFAULT_K,
    per_class: Annotated[
        bool,
        typer.Option(
            "--per-class",
            help="Also score each labelled row among the rows of its own class, and rank by that.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON (for scripts).")] = False,
    csv_file: Annotated[
        Optional[Path], typer.Option("--csv", help="Also write every ranked row to this CSV file.")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    debug: DebugOpt = False,
) -> None:
    """Rows unlike any other (placeholders, blank frames, another domain), most isolated first: each row's
    isolation is 1 - the mean cosine similarity of its pooled vector to its k nearest other rows.
    Non-finite or constant vectors are outliers by definition and come first."""

    def job() -> None:
        c = FeatureCache(cache)
        ranked = outliers_mod.find_outliers(
            c,
            k=k,
            split=split,
            per_class=per_class,
            progress=progress,
            log=lambda line: typer.echo(f"note: {line}", err=True),
        )
        if csv_file is not None:
            write_ranked_csv(csv_file, ranked)
        if as_json:
            typer.echo(json.dumps(ranked[:top], indent=1, ensure_ascii=False))
            return
        where = f" of split {split}" if split else ""
        typer.echo(
            f"{len(ranked)} rows{where}; isolation = 1 - mean cosine to the {k} nearest rows; most isolated first:"
        )
        width = max([len(d["id"]) for d in ranked[:top]] + [2])
        extra = f"  {'in class':>8}" if per_class else ""
        typer.echo(f"{'id':<{width}}  {'isolation':>9}{extra}  {'split':<5}  {'label':<14}  nearest")

        def num(v: float | None) -> str:
            return "inf" if v is None else f"{v:.3f}"

        for d in ranked[:top]:
            cls = f"  {num(d['class_isolation']):>8}" if per_class else ""
            near = d["reason"] or d["nearest_id"] or "-"
            typer.echo(
                f"{d['id']:<{width}}  {num(d['isolation']):>9}{cls}  {d['split']:<5}  {str(d['label'] or '-'):<14}  "
                f"{near}"
            )
        if csv_file is not None:
            typer.echo(f"wrote {csv_file}: {len(ranked)} rows")

    run_cli(job, ctx=ctx, debug=debug)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
