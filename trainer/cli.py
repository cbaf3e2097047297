"""``featcache-train``: sweeps of heads on a cache, and what to do with the winner.

\b
    featcache-train [options] CACHE [options]  train a sweep (also: featcache-train train CACHE ...)
    featcache-train CACHE_A CACHE_B ...        the same sweep on each backbone's cache, compared
    featcache-train export RUN_DIR OUT.keras   best head + backbone as one Keras model
    featcache-train predict RUN_DIR OUT.csv    class probabilities for cache rows (--source: new images)
    featcache-train report RUN_DIR OUT.html    one self-contained HTML page about a sweep
    featcache-train runs [RUNS_DIR]            every sweep run, newest first

TensorFlow is imported only once a command runs, so ``--help`` answers at once.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from ..shared.cli import VerboseOpt, VersionOpt, plain, run_cli, shown_default
from .builtin_sweeps import builtin_help
from .cv import CV_MAX_VAL, DEFAULT_FOLDS
from .heads import FEATURE_SETS, HEAD_KINDS, MAP_AUGMENTS, MAP_POOLS, NO_AUGMENT
from .settings import DEFAULT_GRID, DEFAULT_RUNS, DEFAULT_TOP, DEFAULTS
from .sweep import expand

if TYPE_CHECKING:
    from .api import SweepResult

INTERRUPTED = "interrupted: nothing of this sweep was kept (runs are written whole or not at all)"


class TrainByDefault(TyperGroup):
    """``featcache-train ARGS`` is ``featcache-train train ARGS`` unless ARGS start with another
    command (or ask for the overview), so options work before or after CACHE."""

    # ctx: click's Context, which typer imports from click or (0.2x) from its own private copy of click
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["train", *args]
        return super().parse_args(ctx, args)

    def format_options(self, ctx: Any, formatter: Any) -> None:
        """``featcache-train --help`` shows what ``featcache-train CACHE`` takes first (the training
        options), then its own options and the other commands."""
        train = self.commands.get("train")
        if train is not None:
            records = [r for p in train.get_params(ctx) if p.name != "help" and (r := p.get_help_record(ctx))]
            with formatter.section("Training options (featcache-train CACHE... [OPTIONS])"):
                formatter.write_dl(records)
        super().format_options(ctx, formatter)


app = typer.Typer(
    add_completion=False, help=plain(__doc__), rich_markup_mode=None, no_args_is_help=True, cls=TrainByDefault
)


@app.callback()
def _options(version: VersionOpt = False) -> None:
    """Options of ``featcache-train`` itself (before a command)."""


KINDS_HELP = "; ".join(f"{k.name} ({k.help})" for k in HEAD_KINDS.values())
LIST_HELP = {
    "head": f"Head kinds: {KINDS_HELP}.",
    "lr": "AdamW learning rates.",
    "weight_decay": "Decoupled weight decay on kernels.",
    "hidden": "Hidden width of mlp heads / channels of map heads.",
    "dropout": "Dropout before the last layer of mlp and map heads.",
    "label_smoothing": "Label smoothing of the cross-entropy.",
    "c": "Inverse regularisation of logreg heads (scikit-learn's C); the whole list is one warm-started L-BFGS path.",
    "power": "Power normalisation of logreg heads' features, sign(x)|x|^power (1: as cached, 0.5: square root).",
    "pool": "How map heads pool their grid: " + "; ".join(f"{k} ({v})" for k, v in MAP_POOLS.items()) + ".",
    "map_augment": (
        f"Train-time augmentation of the maps of map heads (off at evaluation): {NO_AUGMENT}, or names joined "
        "by + (e.g. flip+crop): " + "; ".join(f"{k} ({v})" for k, v in MAP_AUGMENTS.items()) + "."
    ),
    "features": (
        "What logreg, linear and mlp heads read: " + "; ".join(f"{k} ({v})" for k, v in FEATURE_SETS.items()) + "."
    ),
}
SETTING_HELP = {
    "epochs": "Maximum epochs per head.",
    "batch_size": "Rows per step, the same batch fed to every head.",
    "patience": "Epochs without a better val accuracy before a head stops (its best epoch's weights are kept).",
    "seed": "Seed of initialisation, batch order and dropout: the same seed and cache give the same results.",
    "standardize": "Standardise pooled inputs with the train split's mean and std (kept inside the saved head).",
    "val_fraction": "When the cache has no val rows, the fraction of train rows carved off as val (by id hash).",
    "max_memory_gb": (
        "Memory allowed for the inputs held during the sweep: pooled vectors (5 KB per row, times the views "
        "with --views), plus maps when map heads are trained (float16, ~125 KB per row). A cache whose "
        "inputs need more is streamed from the shards epoch by epoch (same results; closed-form baselines "
        "skipped)."
    ),
    "stream": (
        "Stream the inputs from the shards epoch by epoch, whatever their size (bounded memory; the same "
        "results as in memory for the same seed; logreg heads, k-NN and the ensemble, which need every row "
        "in memory, are left out)."
    ),
    "allow_partial": "Train on an unfinished cache (by default one is refused).",
    "views": (
        "On a cache extracted with --views: train pooled heads on every view (one per row per epoch) and "
        "score them on view 0 and with test-time augmentation (mean over the views), the better on val "
        "counting. No effect on a cache without views."
    ),
    "folds": (
        "How logreg heads are picked: by k-fold cross-validation over train+val (folds by a hash of the id, "
        f"every view of an image in one fold), then refitted on all of it; auto: {DEFAULT_FOLDS} folds when val "
        f"has fewer than {CV_MAX_VAL} rows, else on val; 0: always on val; N: N folds. SGD heads are picked on val."
    ),
    "baselines": (
        "Also fit, beside the sweep, a k-NN head (k and temperature picked on val) and the ensemble of the "
        "top heads by val (mean probabilities); printed under the leaderboard and kept in results.json. "
        "Seconds on 10,000 rows."
    ),
}


def _list(key: str) -> typer.models.OptionInfo:
    """A grid option: comma-separated values, its default shown from :data:`DEFAULT_GRID`."""
    default = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in DEFAULT_GRID[key])
    help = f"{LIST_HELP[key]} Comma-separated list: one head per combination."
    return typer.Option(help=shown_default(help, default), show_default=False)


def _setting(key: str, *decls: str) -> typer.models.OptionInfo:
    """A setting option, its default shown from :data:`DEFAULTS` (the only place it is stated)."""
    default = getattr(DEFAULTS, key)
    shown = ("--" if default else "--no-") + key.replace("_", "-") if isinstance(default, bool) else str(default)
    return typer.Option(*decls, help=shown_default(SETTING_HELP[key], shown), show_default=False)


DebugOpt = Annotated[bool, typer.Option(help="Show the full traceback on errors.")]
CacheArg = Annotated[
    list[Path],
    typer.Argument(
        help=(
            "The cache to train on (made by featcache-extract). Several caches of the same images made by "
            "different backbones: the same grid is trained on each (rows matched by id) and the leaderboard "
            "compares them."
        ),
        show_default=False,
    ),
]
SweepOpt = Annotated[
    Optional[Path],
    typer.Option(
        metavar="NAME|FILE",
        help=(
            f"A built-in sweep by name: {builtin_help(expand)}. Or a TOML or JSON sweep file (grids and settings; see "
            "docs/run-format.md). List options given here override its grids' keys; settings given here "
            "override its settings."
        ),
    ),
]


@app.command()
def train(
    ctx: typer.Context,
    cache: CacheArg,
    head: Annotated[Optional[str], _list("head")] = None,
    lr: Annotated[Optional[str], _list("lr")] = None,
    weight_decay: Annotated[Optional[str], _list("weight_decay")] = None,
    hidden: Annotated[Optional[str], _list("hidden")] = None,
    dropout: Annotated[Optional[str], _list("dropout")] = None,
    label_smoothing: Annotated[Optional[str], _list("label_smoothing")] = None,
    c: Annotated[Optional[str], _list("c")] = None,
    power: Annotated[Optional[str], _list("power")] = None,
    pool: Annotated[Optional[str], _list("pool")] = None,
    map_augment: Annotated[Optional[str], _list("map_augment")] = None,
    features: Annotated[Optional[str], _list("features")] = None,
    sweep: SweepOpt = None,
    epochs: Annotated[Optional[int], _setting("epochs")] = None,
    batch_size: Annotated[Optional[int], _setting("batch_size")] = None,
    patience: Annotated[Optional[int], _setting("patience")] = None,
    seed: Annotated[Optional[int], _setting("seed")] = None,
    standardize: Annotated[Optional[bool], _setting("standardize", "--standardize/--no-standardize")] = None,
    val_fraction: Annotated[Optional[float], _setting("val_fraction")] = None,
    max_memory_gb: Annotated[Optional[float], _setting("max_memory_gb")] = None,
    stream: Annotated[Optional[bool], _setting("stream", "--stream")] = None,
    allow_partial: Annotated[Optional[bool], _setting("allow_partial", "--allow-partial")] = None,
    views: Annotated[Optional[bool], _setting("views", "--views/--no-views")] = None,
    baselines: Annotated[Optional[bool], _setting("baselines", "--baselines/--no-baselines")] = None,
    folds: Annotated[Optional[str], _setting("folds")] = None,
    concat: Annotated[
        bool,
        typer.Option(
            "--concat",
            help=(
                "With several caches: also train the grid's pooled heads on their pooled vectors side by "
                "side (concatenated), printed under the leaderboard: do the backbones together beat each "
                "alone? Never picked as the best (no one backbone makes that input)."
            ),
        ),
    ] = False,
    runs: Annotated[Path, typer.Option(help="Folder in which each sweep gets a new run directory.")] = DEFAULT_RUNS,
    top: Annotated[int, typer.Option(min=1, help="Heads shown in the leaderboard.")] = DEFAULT_TOP,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    verbose: VerboseOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Train every head of the grid in one pass over CACHE, pick the best on val, report it on test.
    With several caches (CACHE_A CACHE_B ...), the grid is trained on each and all heads ranked together.

    Writes runs/<time>/: results.json, leaderboard.txt, plot.png (with matplotlib), best_head.keras
    and heads.npz (every head's weights); see docs/run-format.md.
    """
    from .sweep import parse_list, parse_text

    def job() -> None:
        from . import api

        lists = dict(head=head, lr=lr, weight_decay=weight_decay, hidden=hidden, dropout=dropout)
        lists.update(label_smoothing=label_smoothing, c=c, power=power, pool=pool, map_augment=map_augment)
        lists.update(features=features)
        grid = {k: parse_list(v) for k, v in lists.items() if v is not None}
        caches = cache if len(cache) > 1 else cache[0]
        result = api.train(
            caches, sweep=sweep, **grid, epochs=epochs, batch_size=batch_size, patience=patience, seed=seed,
            standardize=standardize, val_fraction=val_fraction, max_memory_gb=max_memory_gb,
            stream=stream,
            allow_partial=allow_partial, views=views, baselines=baselines, runs=runs,
            folds=None if folds is None else parse_text(folds),
            progress=progress, concat=concat,
            log=lambda m: typer.echo(m, err=True), command=["featcache-train", *sys.argv[1:]],
        )  # fmt: skip
        _print_sweep(result, top)

    run_cli(job, ctx=ctx, debug=debug, interrupted=INTERRUPTED)


def _print_sweep(result: SweepResult, top: int) -> None:
    """What ``featcache-train CACHE`` prints when the sweep is done: the leaderboard's ``top`` heads, the
    baselines and the concatenated heads when there are, a warning for random weights, and one line
    for the pick (the score it was picked on, its test accuracy, where the run was written)."""
    from .report import leaderboard, pick_by, pick_score

    typer.echo(result.leaderboard(top))
    if result.baselines:
        from .baselines import describe

        typer.echo(describe(result.baselines))
    if result.concat:
        typer.echo(f"concatenated pooled vectors of {' + '.join(result.results['concat']['caches'])}:")
        typer.echo(leaderboard(result.concat, result.results["splits"]["val"], top))
    if result.random_weights:
        typer.echo("WARNING: the cache was made with RANDOM weights: these accuracies are meaningless")
    best = result.best
    test_acc = best.test_acc_tta if best.use_tta else best.test_acc
    test = "n/a" if test_acc is None else f"{test_acc:.4f}"
    scored = f" (TTA over {best.views} views)" if best.use_tta else ""
    row = next(h for h in result.results["heads"] if h["name"] == best.name)
    acc, se = pick_score(row)
    val = f"val {best.val_acc_tta if best.use_tta else best.val_acc:.4f}"
    picked = val if se is None else f"{pick_by(row)} {acc:.4f} +- {se:.4f} (out-of-fold {val})"
    typer.echo(
        f"best: {best.name}{scored}: {picked}, test {test}; "
        f"{len(result.heads)} heads "
        f"in {result.wall_seconds:.1f} s -> {result.run_dir}"
    )


@app.command()
def export(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by featcache-train.", show_default=False)],
    out: Annotated[Path, typer.Argument(help="The .keras file to write.", show_default=False)],
    head: Annotated[
        Optional[str],
        typer.Option(
            help=(
                "Export this head (a name from leaderboard.txt / results.json) instead of the best; 'ensemble': the "
                "sweep's ensemble (its member heads as branches on one backbone, their probabilities averaged), "
                "unless the k-NN head is among its members."
            ),
            show_default=False,
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
    backbone: Annotated[
        Optional[str],
        typer.Option(
            help=(
                "The run's backbone when it is your own MODULE:ATTRIBUTE spec. featcache never imports a module "
                "named only in a run directory."
            ),
            show_default=False,
        ),
    ] = None,
    verbose: VerboseOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Stack the best head (or --head NAME, or --head ensemble) onto the backbone that made the cache: one Keras
    model from a decoded RGB image of any size (uint8, as keras.utils.load_img gives it) to class probabilities
    and the class name, the extractor's resize and preprocessing inside, loadable without featcache."""

    def job() -> None:
        from . import api

        e = api.export(run_dir, out, head=head, weights=weights, backbone=backbone)
        typer.echo(
            f"wrote {e.out}: {e.backbone} + {e.head}, a decoded RGB image of any size (uint8) -> "
            f"{{'probabilities': {len(e.classes)} classes, 'class': its name}} "
            f"({', '.join(e.classes[:5])}{', ...' if len(e.classes) > 5 else ''})"
        )
        if e.members:
            typer.echo(f"the mean of {len(e.members)} heads' probabilities: {', '.join(e.members)}")
        if e.tta:
            typer.echo(f"test-time augmentation: the model scores {e.tta}")
        if e.random_weights:
            typer.echo("WARNING: RANDOM backbone weights: this model's predictions are meaningless")

    run_cli(job, ctx=ctx, debug=debug, interrupted=f"interrupted: {out} was not written")


# The options of featcache-train predict --source (new images, whose features the extractor makes)
SourceOpt = Annotated[
    Optional[Path],
    typer.Option(
        help=(
            "Instead, new images: any source featcache-extract takes (class folders, a CSV, a .txt list, a "
            "folder of unlabelled images). The extractor makes their features as the cached ones were made "
            "(same backbone, weights, resize, views; it runs as a subprocess) into RUN_DIR/predict/<hash of "
            "the path>/, reused by the next predict of the same source. With labels, the accuracy is "
            "printed (classes matched by name)."
        ),
        show_default=False,
    ),
]
SourceWeightsOpt = Annotated[
    Optional[str],
    typer.Option(
        help="With --source: backbone weights to use when the recorded file has moved (its sha256 must match).",
        show_default=False,
    ),
]
SourceBackboneOpt = Annotated[
    Optional[str],
    typer.Option(
        help=(
            "With --source: the run's backbone when it is your own MODULE:ATTRIBUTE spec, or its model file when "
            "it has moved (its sha256 must match). featcache never imports a module named only in a run directory."
        ),
        show_default=False,
    ),
]
SourcePreprocessOpt = Annotated[
    Optional[str],
    typer.Option(
        help=(
            "With --source, for a model-file backbone preprocessed by your own MODULE:FUNCTION: name it again "
            "(it must be the recorded one) so that featcache may import it."
        ),
        show_default=False,
    ),
]


@app.command()
def predict(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by featcache-train.", show_default=False)],
    out: Annotated[
        Path,
        typer.Argument(
            help="CSV to write: index, id, label, class, split, predicted class and one probability column per class.",
            show_default=False,
        ),
    ],
    split: Annotated[
        Optional[str],
        typer.Option(
            help=shown_default("Cached rows to predict: train, val, test or all.", "test"), show_default=False
        ),
    ] = None,
    ids: Annotated[Optional[Path], typer.Option(help="Instead, a text file of ids (one per line) to predict.")] = None,
    head_name: Annotated[Optional[str], typer.Option("--head", help="Use this head instead of the best.")] = None,
    source: SourceOpt = None,
    weights: SourceWeightsOpt = None,
    backbone: SourceBackboneOpt = None,
    preprocess: SourcePreprocessOpt = None,
    overwrite: Annotated[
        bool, typer.Option(help="With --source: make the scratch features again instead of reusing them.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="With --source: show the extractor's progress bar.")] = True,
    verbose: VerboseOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Class probabilities of the run's best head for cached rows, from their cached features, or for
    new images (--source), whose features the extractor makes exactly as the cache's were made."""

    def job() -> None:
        from . import api

        p = api.predict(
            run_dir,
            out,
            split=split,
            ids=ids,
            head=head_name,
            source=source,
            weights=weights,
            overwrite=overwrite,
            progress=progress,
            backbone=backbone,
            preprocess=preprocess,
        )
        scored = f"accuracy {p.accuracy:.4f} on the {p.labelled} labelled ones" if p.labelled else "none labelled"
        tta = f", the mean over {p.views} cached views (TTA)" if p.views > 1 else ""
        typer.echo(f"wrote {p.out}: {p.rows} rows, {scored}{tta}")

    run_cli(job, ctx=ctx, debug=debug, interrupted=f"interrupted: {out} was not written")


@app.command("report")
def report_cmd(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by featcache-train.", show_default=False)],
    out: Annotated[Path, typer.Argument(help="The HTML file to write (one self-contained file).", show_default=False)],
    debug: DebugOpt = False,
) -> None:
    """One self-contained HTML page (works offline): the leaderboard, every head's curves, the best
    head's per-class precision and recall, its test confusion matrix, and the test images it gets most
    confidently wrong, with thumbnails. Needs no TensorFlow: predictions are computed in numpy."""

    def job() -> None:
        from .html_report import write

        facts = write(run_dir, out)
        typer.echo(
            f"wrote {out} ({out.stat().st_size / 1e3:.0f} KB): best head {facts['best']}, "
            f"{len(facts['wrong'])} confidently wrong test images shown"
        )

    run_cli(job, ctx=ctx, debug=debug)


@app.command()
def runs(
    ctx: typer.Context,
    runs_dir: Annotated[
        Path, typer.Argument(help="The folder that featcache-train --runs wrote sweeps into.")
    ] = DEFAULT_RUNS,
    cache: Annotated[
        Optional[Path], typer.Option(help="Only the sweeps trained on this cache.", show_default=False)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON (for scripts).")] = False,
    debug: DebugOpt = False,
) -> None:
    """Every sweep ever run, newest first: date, cache and its weights, heads, best head, its val and
    test accuracy, wall time; sweeps in progress or killed, and folders that are not readable runs,
    are listed too, with the reason."""

    def job() -> None:
        import json

        from .history import format_runs, list_runs

        found = list_runs(runs_dir, cache)
        typer.echo(json.dumps(found, indent=1) if as_json else format_runs(found))

    run_cli(job, ctx=ctx, debug=debug)


def main() -> None:
    """``featcache-train [train] CACHE ...`` trains; ``featcache-train export|predict ...`` as named."""
    app()


if __name__ == "__main__":
    main()
