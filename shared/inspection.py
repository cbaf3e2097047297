"""``featcache-inspect`` (also ``python -m shared``): look at a cache without TensorFlow.

These commands read the manifest and the small per-row datasets only, so they start in a fraction of
a second and work on a machine with no TensorFlow installed.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer

from . import schema
from .cli import run_cli
from .fingerprint import describe
from .reader import FeatureCache

app = typer.Typer(add_completion=False, help=__doc__, rich_markup_mode=None, no_args_is_help=True)

CacheArg = Annotated[Path, typer.Argument(help="A featcache cache directory (the one holding manifest.json).", show_default=False)]
DebugOpt = Annotated[bool, typer.Option(help="Show the full traceback on errors.")]
FIRST_FAILURES = 5


def summarize(cache: FeatureCache) -> dict[str, Any]:
    """The facts ``summary`` prints, as JSON-ready data."""
    m = cache.manifest
    cols = cache.read_columns((schema.LABEL, schema.ID, schema.SPLIT))
    split = cache.splits(cols[schema.ID], cols[schema.SPLIT])
    pairs = Counter(zip(cols[schema.LABEL].tolist(), split.tolist()))
    names = list(cache.classes)
    per_class: dict[str, dict[str, int]] = {}
    for (label, code), n in sorted(pairs.items()):
        cls = names[label] if 0 <= label < len(names) else "(unlabelled)"
        per_class.setdefault(cls, {s: 0 for s in schema.SPLITS})[schema.SPLITS[code]] += n
    disk = sum(s.bytes for s in m.shards)
    return {
        "cache": str(cache.path),
        "rows": m.rows,
        "inputs": m.num_inputs,
        "shards": {"done": len(m.shards), "planned": m.num_shards, "size": m.shard_size},
        "complete": m.complete,
        "classes": per_class,
        "splits": {s: int((split == c).sum()) for c, s in enumerate(schema.SPLITS)},
        "split_source": m.split.get("source") or f"hash of id, fractions {m.split.get('fractions')}",
        "failed": {"count": len(m.failed), "first": [vars(f) for f in m.failed[:FIRST_FAILURES]]},
        "fingerprint": m.fingerprint,
        "random_weights": cache.random_weights,
        "storage": m.storage,
        "bytes": {"total": disk, "per_row": disk / m.rows if m.rows else None},
        "source": m.source,
        "created": m.created,
        "updated": m.updated,
    }


def _print_summary(s: dict[str, Any]) -> None:
    fp = s["fingerprint"]
    echo = typer.echo
    if s["random_weights"]:
        echo("WARNING: this cache was made with RANDOM weights: its features are meaningless.")
    state = "complete" if s["complete"] else f"INCOMPLETE ({s['shards']['planned'] - s['shards']['done']} shards to do)"
    echo(f"{s['cache']}: {s['rows']} rows from {s['inputs']} inputs, {s['shards']['done']}/{s['shards']['planned']} shards of {s['shards']['size']}, {state}")
    echo(f"backbone:  {describe(fp)}")
    echo(f"input:     {fp['resize']} to {fp['input_size']}, {fp['preprocessing']}")
    echo(f"storage:   maps {fp['maps_dtype']} {s['storage']['compression']}, computed in {fp['compute_dtype']}; "
         f"{s['bytes']['total'] / 1e6:.1f} MB on disk" + (f", {s['bytes']['per_row'] / 1e3:.1f} KB per row" if s["bytes"]["per_row"] else ""))
    echo(f"libraries: tensorflow {fp.get('tensorflow')}, keras {fp.get('keras')}, oneDNN {fp.get('onednn')}")
    echo(f"source:    {s['source']['kind']} {s['source']['root']}; splits from {s['split_source']}")
    echo("splits:    " + ", ".join(f"{k} {v}" for k, v in s["splits"].items()))
    if s["classes"]:
        width = max(len(c) for c in s["classes"])
        echo(f"classes ({len(s['classes'])}):  " + " " * max(0, width - 12) + "  ".join(f"{x:>6}" for x in schema.SPLITS))
        for cls, c in s["classes"].items():
            echo(f"  {cls:<{width}}  " + "  ".join(f"{c[x]:>6}" for x in schema.SPLITS))
    f = s["failed"]
    echo(f"failed:    {f['count']} inputs" + (":" if f["count"] else ""))
    for item in f["first"]:
        echo(f"  {item['id']}: {item['reason']}")
    if f["count"] > len(f["first"]):
        echo(f"  ... and {f['count'] - len(f['first'])} more in manifest.json")
    echo(f"created {s['created']}, updated {s['updated']}")


@app.command()
def summary(
    cache: CacheArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object (for scripts).")] = False,
    debug: DebugOpt = False,
) -> None:
    """Rows, shards, classes per split, failed inputs, fingerprint, bytes on disk."""

    def job() -> None:
        s = summarize(FeatureCache(cache))
        if as_json:
            typer.echo(json.dumps(s, indent=1, ensure_ascii=False))
        else:
            _print_summary(s)

    run_cli(job, debug=debug)


@app.command("ls")
def list_shards(cache: CacheArg, debug: DebugOpt = False) -> None:
    """The shards the manifest lists: number, rows, inputs, size, and whether the file is there."""

    def job() -> None:
        c = FeatureCache(cache)
        typer.echo(f"{'shard':>6} {'rows':>6} {'inputs':>7} {'MB':>8}  file")
        for s in c.shards:
            path = c.shard_path(s)
            state = "" if path.is_file() and path.stat().st_size == s.bytes else "  MISSING OR RESIZED"
            typer.echo(f"{s.shard:>6} {s.rows:>6} {s.num_inputs:>7} {s.bytes / 1e6:>8.2f}  {s.file}{state}")
        missing = c.manifest.missing_shards()
        if missing:
            typer.echo(f"{len(missing)} planned shards not written yet: {missing[:10]}{' ...' if len(missing) > 10 else ''}")

    run_cli(job, debug=debug)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
