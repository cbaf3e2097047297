"""``featcache-train``: sweeps of heads on a cache, and what to do with the winner.

\b
    featcache-train CACHE [options]            train a sweep (also: featcache-train train CACHE ...)
    featcache-train export RUN_DIR OUT.keras   best head + backbone as one Keras model
    featcache-train predict RUN_DIR OUT.csv    class probabilities for cache rows
    featcache-train report RUN_DIR OUT.html    one self-contained HTML page about a sweep
    featcache-train runs [RUNS_DIR]            every sweep run, newest first

TensorFlow is imported only once a command runs, so ``--help`` answers at once.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer

from ..shared.cli import run_cli
from ..shared.errors import FeatcacheError

app = typer.Typer(add_completion=False, help=__doc__, rich_markup_mode=None, no_args_is_help=True)
SUBCOMMANDS = ("train", "export", "predict", "report", "runs")

ListOpt = lambda help: typer.Option(help=help + " Comma-separated list: one head per combination.")  # noqa: E731
DebugOpt = Annotated[bool, typer.Option(help="Show the full traceback on errors.")]


@app.command()
def train(
    cache: Annotated[
        Path, typer.Argument(help="The cache to train on (made by featcache-extract).", show_default=False)
    ],
    head: Annotated[
        Optional[str],
        ListOpt(
            (
                "Head kinds: linear (softmax on pooled vectors), mlp (one hidden layer on pooled vectors), "
                "map (1x1 conv + attention pooling on the 7x7 maps). Default linear."
            )
        ),
    ] = None,
    lr: Annotated[Optional[str], ListOpt("AdamW learning rates. Default 1e-3.")] = None,
    weight_decay: Annotated[Optional[str], ListOpt("Decoupled weight decay on kernels. Default 0.")] = None,
    hidden: Annotated[Optional[str], ListOpt("Hidden width of mlp heads / channels of map heads. Default 256.")] = None,
    dropout: Annotated[Optional[str], ListOpt("Dropout before the last layer of mlp and map heads. Default 0.")] = None,
    label_smoothing: Annotated[Optional[str], ListOpt("Label smoothing of the cross-entropy. Default 0.")] = None,
    sweep: Annotated[
        Optional[Path],
        typer.Option(
            help=(
                "A TOML or JSON sweep file (grids and settings; see README). List options given here "
                "override its grids' keys; settings given here override its settings."
            )
        ),
    ] = None,
    epochs: Annotated[
        Optional[int], typer.Option(min=1, help="Maximum epochs per head. [default: 30]", show_default=False)
    ] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option(min=1, help="Rows per step, the same batch fed to every head. [default: 256]", show_default=False),
    ] = None,
    patience: Annotated[
        Optional[int],
        typer.Option(
            min=1,
            help=(
                "Epochs without a better val accuracy before a head stops (its best epoch's weights are "
                "kept). [default: 5]"
            ),
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        Optional[int],
        typer.Option(
            help=(
                "Seed of initialisation, batch order and dropout: the same seed and cache give the same "
                "results. [default: 0]"
            ),
            show_default=False,
        ),
    ] = None,
    standardize: Annotated[
        Optional[bool],
        typer.Option(
            "--standardize/--no-standardize",
            help=(
                "Standardise pooled inputs with the train split's mean and std (kept inside the saved "
                "head). [default: standardize]"
            ),
            show_default=False,
        ),
    ] = None,
    val_fraction: Annotated[
        Optional[float],
        typer.Option(
            help=(
                "When the cache has no val rows, the fraction of train rows carved off as val (by a hash "
                "of the id). [default: 0.1]"
            ),
            show_default=False,
        ),
    ] = None,
    max_maps_gb: Annotated[
        float, typer.Option(help="Memory allowed for the maps of map heads (float16, ~125 KB per row).")
    ] = 8.0,
    allow_partial: Annotated[bool, typer.Option(help="Train on an unfinished cache (default: refuse).")] = False,
    runs: Annotated[Path, typer.Option(help="Folder in which each sweep gets a new run directory.")] = Path("runs"),
    top: Annotated[int, typer.Option(min=1, help="Heads shown in the leaderboard.")] = 10,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    debug: DebugOpt = False,
) -> None:
    """Train every head of the grid in one pass over CACHE, pick the best on val, report it on test.

    Writes runs/<time>/: results.json, leaderboard.txt, plot.png (with matplotlib), best_head.keras
    and heads.npz (every head's weights).
    """

    def job() -> None:
        from .run import Settings, leaderboard, run_sweep
        from .sweep import DEFAULT_GRID, expand, load_sweep_file, parse_list

        lists = {
            "head": head,
            "lr": lr,
            "weight_decay": weight_decay,
            "hidden": hidden,
            "dropout": dropout,
            "label_smoothing": label_smoothing,
        }
        given = {k: parse_list(v, k) for k, v in lists.items() if v is not None}
        grids, file_settings = load_sweep_file(sweep) if sweep else ([dict(DEFAULT_GRID)], {})
        configs = list(dict.fromkeys(c for g in grids for c in expand({**g, **given})))
        cli_settings = {
            "epochs": epochs,
            "batch_size": batch_size,
            "patience": patience,
            "seed": seed,
            "standardize": standardize,
            "val_fraction": val_fraction,
        }
        settings = Settings(
            **{**file_settings, **{k: v for k, v in cli_settings.items() if v is not None}},
            max_maps_gb=max_maps_gb,
            allow_partial=allow_partial,
        )
        run_dir, results = run_sweep(
            cache,
            configs,
            settings,
            runs,
            ["featcache-train", *sys.argv[1:]],
            log=lambda m: typer.echo(m, err=True),
            progress=progress,
        )
        typer.echo(leaderboard(results, top))
        if results["random_weights"]:
            typer.echo("WARNING: the cache was made with RANDOM weights: these accuracies are meaningless")
        best = next(h for h in results["heads"] if h["name"] == results["best"])
        test = "n/a" if best["test_acc"] is None else f"{best['test_acc']:.4f}"
        typer.echo(
            f"best: {best['name']}: val {best['val_acc']:.4f}, test {test}; {len(results['heads'])} heads "
            f"in {results['wall_seconds']:.1f} s -> {run_dir}"
        )

    run_cli(job, debug=debug)


def _head(run_dir: Path, results: dict[str, Any], name: Optional[str]):
    """(config, Keras head model) of the run's best head, or of head ``name`` from heads.npz."""
    from .keras_heads import head_model, load
    from .run import BEST_HEAD, HEADS
    from .sweep import POOLED_KINDS, HeadConfig

    name = name or results["best"]
    entry = next((h for h in results["heads"] if h["name"] == name), None)
    if entry is None:
        raise FeatcacheError(f"{run_dir}: no head named {name!r} (see leaderboard.txt)")
    cfg = HeadConfig(**{k: v for k, v in entry["config"].items() if k != "name"})
    if name == results["best"]:
        return cfg, load(run_dir / BEST_HEAD)
    z = np.load(run_dir / HEADS)
    g = next(key[:-6] for key in z.files if key.endswith("_names") and name in z[key].tolist())
    k = z[f"{g}_names"].tolist().index(name)
    weights = {
        key[len(g) + 1 :]: z[key][k] for key in z.files if key.startswith(g + "_") and not key.endswith("_names")
    }
    mean_std = (z["standardize_mean"], z["standardize_std"]) if "standardize_mean" in z.files else None
    maps_shape = tuple(results["fingerprint"]["output_shape"])
    in_shape = maps_shape[-1:] if cfg.kind in POOLED_KINDS else maps_shape
    return cfg, head_model(cfg, weights, in_shape, len(results["classes"]), mean_std)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by featcache-train.", show_default=False)],
    out: Annotated[Path, typer.Argument(help="The .keras file to write.", show_default=False)],
    head_name: Annotated[
        Optional[str],
        typer.Option(
            "--head", help="Export this head (a name from leaderboard.txt / results.json) instead of the best."
        ),
    ] = None,
    weights: Annotated[
        Optional[str],
        typer.Option(
            help=(
                "Backbone weights to use when the recorded file has moved: 'imagenet' or a path. Their "
                "sha256 must equal the cache's."
            )
        ),
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Stack the best head onto the backbone that made the cache: one Keras model from a 224x224 RGB
    image (values 0-255) to class probabilities, preprocessing inside, loadable without featcache."""

    def job() -> None:
        from ..shared.backbones import RANDOM_PREFIX, get_backbone, resolve_weights
        from .keras_heads import full_model
        from .run import load_results

        results = load_results(run_dir)
        fp = results["fingerprint"]
        spec = get_backbone(fp["backbone"])
        recorded = fp["weights_sha256"]
        if weights is not None:
            w = resolve_weights(spec, weights)
        elif recorded.startswith(RANDOM_PREFIX):
            w = resolve_weights(spec, "random", int(recorded[len(RANDOM_PREFIX) :]))
        else:
            w = resolve_weights(spec, fp["weights_path"] if fp["weights_source"] == "file" else "imagenet")
        if w.sha256 != recorded:
            raise FeatcacheError(
                f"{w.path}: weights sha256 {w.sha256[:12]} is not the cache's {recorded[:12]}: "
                "pass --weights with the file the cache was made with"
            )
        cfg, head = _head(run_dir, results, head_name)
        model = full_model(spec, w, cfg, head)
        out.parent.mkdir(parents=True, exist_ok=True)
        model.save(out)
        typer.echo(
            f"wrote {out}: {spec.name} + {cfg.name}, image {model.input_shape[1:]} -> "
            f"{model.output_shape[-1]} class probabilities ({', '.join(results['classes'][:5])}"
            f"{', ...' if len(results['classes']) > 5 else ''})"
        )
        if w.random:
            typer.echo("WARNING: RANDOM backbone weights: this model's predictions are meaningless")

    run_cli(job, debug=debug)


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by featcache-train.", show_default=False)],
    out: Annotated[
        Path,
        typer.Argument(
            help="CSV to write: index, id, label, class, split, predicted class and one probability column per class.",
            show_default=False,
        ),
    ],
    split: Annotated[str, typer.Option(help="Rows to predict: train, val, test or all.")] = "test",
    ids: Annotated[Optional[Path], typer.Option(help="Instead, a text file of ids (one per line) to predict.")] = None,
    head_name: Annotated[Optional[str], typer.Option("--head", help="Use this head instead of the best.")] = None,
    debug: DebugOpt = False,
) -> None:
    """Class probabilities of the run's best head for cached rows, from their cached features."""

    def job() -> None:
        from ..shared.cache.reader import FeatureCache
        from ..shared.cache.split import split_names
        from .run import load_results
        from .sweep import POOLED_KINDS

        results = load_results(run_dir)
        cache = FeatureCache(results["cache"])
        cache.check_fingerprint(results["fingerprint"])
        rows = cache.load_pooled()
        names = split_names(rows.split).astype(str)
        if ids is not None:
            wanted = [s.strip() for s in ids.read_text().splitlines() if s.strip()]
            pos = {v: k for k, v in enumerate(rows.id.tolist())}
            missing = [i for i in wanted if i not in pos]
            if missing:
                raise FeatcacheError(f"{ids}: {len(missing)} ids are not in the cache (first: {missing[0]!r})")
            sel = np.array([pos[i] for i in wanted], dtype=np.int64)
        elif split == "all":
            sel = np.arange(len(rows))
        elif split in ("train", "val", "test"):
            sel = np.flatnonzero(names == split)
        else:
            raise FeatcacheError(f"--split {split!r}: choose train, val, test or all")
        cfg, model = _head(run_dir, results, head_name)
        if cfg.kind in POOLED_KINDS:
            x = rows.pooled[sel]
        else:
            order = {int(i): k for k, i in enumerate(rows.index[sel])}
            x = np.empty((len(sel), *cache.maps_shape), np.float32)
            for index, block in cache.iter_maps(indices=rows.index[sel], dtype="float32"):
                x[[order[int(i)] for i in index]] = block
        probs = model.predict(x, batch_size=256, verbose=0) if len(sel) else np.zeros((0, len(results["classes"])))
        classes = results["classes"]
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["index", "id", "label", "class", "split", "predicted", *[f"p_{c}" for c in classes]])
            for k, p in zip(sel.tolist(), probs, strict=False):
                lab = int(rows.label[k])
                w.writerow(
                    [
                        int(rows.index[k]),
                        rows.id[k],
                        lab,
                        classes[lab] if lab >= 0 else "",
                        names[k],
                        classes[int(np.argmax(p))],
                        *[f"{v:.6f}" for v in p],
                    ]
                )
        labelled = rows.label[sel] >= 0
        acc = (
            float((probs.argmax(-1)[labelled] == rows.label[sel][labelled]).mean()) if labelled.any() else float("nan")
        )
        typer.echo(f"wrote {out}: {len(sel)} rows, accuracy {acc:.4f} on the {int(labelled.sum())} labelled ones")

    run_cli(job, debug=debug)


@app.command("report")
def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by featcache-train.", show_default=False)],
    out: Annotated[Path, typer.Argument(help="The HTML file to write (one self-contained file).", show_default=False)],
    debug: DebugOpt = False,
) -> None:
    """One self-contained HTML page (works offline): the leaderboard, every head's curves, the best
    head's per-class precision and recall, its test confusion matrix, and the test images it gets most
    confidently wrong, with thumbnails. Needs no TensorFlow: predictions are computed in numpy."""

    def job() -> None:
        from .report import write

        facts = write(run_dir, out)
        typer.echo(
            f"wrote {out} ({out.stat().st_size / 1e3:.0f} KB): best head {facts['best']}, "
            f"{len(facts['wrong'])} confidently wrong test images shown"
        )

    run_cli(job, debug=debug)


@app.command()
def runs(
    runs_dir: Annotated[Path, typer.Argument(help="The folder that featcache-train --runs wrote sweeps into.")] = Path(
        "runs"
    ),
    cache: Annotated[
        Optional[Path], typer.Option(help="Only the sweeps trained on this cache.", show_default=False)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON (for scripts).")] = False,
    debug: DebugOpt = False,
) -> None:
    """Every sweep ever run, newest first: date, cache and its weights, heads, best head, its val and
    test accuracy, wall time; unfinished runs (no results.json) too."""

    def job() -> None:
        import json

        from .history import format_runs, list_runs

        found = list_runs(runs_dir, cache)
        typer.echo(json.dumps(found, indent=1) if as_json else format_runs(found))

    run_cli(job, debug=debug)


def main() -> None:
    """``featcache-train CACHE ...`` trains; ``featcache-train export|predict ...`` as named."""
    args = sys.argv[1:]
    if args and args[0] not in SUBCOMMANDS and not args[0].startswith("-"):
        sys.argv.insert(1, "train")
    app()


if __name__ == "__main__":
    main()
