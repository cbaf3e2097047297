"""The trainer as a Python API: what ``featcache-train`` does, with the same defaults and checks.

    from featcache.trainer.api import train, predict
    result = train("cache/", head=["linear", "mlp"], lr=[1e-3, 1e-2], epochs=20)
    print(result.leaderboard()); print(result.best.name, result.test_acc, result.run_dir)
    predict(result.run_dir, "pred.csv", split="test")

Grid arguments (``head``, ``lr``, ``weight_decay``, ``hidden``, ``dropout``, ``label_smoothing``,
``c``, ``power``, ``pool``, ``map_augment``, ``features``) take one value or a list (one head per combination);
settings left ``None`` take the sweep file's value, else the default of
:class:`~featcache.trainer.settings.Settings`. Every value is checked before any training, and errors
name the argument (``epochs=0``) or the sweep file. TensorFlow is imported when a function runs, not
when this module is imported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..shared.arguments import bool_arg, callable_arg, choice_arg, path_arg, progress_arg, str_arg
from ..shared.cache import FeatureCache
from ..shared.errors import FeatcacheError
from .predict import SPLIT_CHOICES, Export, Prediction
from .report import leaderboard as _leaderboard
from .report import ranking
from .settings import DEFAULT_RUNS, DEFAULT_TOP, Settings
from .sweep import HeadConfig, resolve_sweep

__all__ = ["Export", "HeadResult", "Prediction", "SweepResult", "export", "predict", "train"]


@dataclass(frozen=True)
class HeadResult:
    """One trained head: its configuration, best-epoch val metrics and test metrics (None without test rows);
    on a cache with ``views``, its val and test accuracy with test-time augmentation and whether val
    prefers it (``use_tta``)."""

    name: str
    config: HeadConfig
    best_epoch: int
    val_acc: float
    val_loss: float
    test_acc: float | None
    test_loss: float | None
    views: int = 1
    val_acc_tta: float | None = None
    test_acc_tta: float | None = None
    use_tta: bool = False

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> HeadResult:
        return cls(
            row["name"],
            HeadConfig.from_json(row["config"]),
            row["best_epoch"],
            row["val_acc"],
            row["val_loss"],
            row["test_acc"],
            row["test_loss"],
            row.get("views", 1),
            row.get("val_acc_tta"),
            row.get("test_acc_tta"),
            bool(row.get("use_tta")),
        )


@dataclass
class SweepResult:
    """A finished sweep: ``heads`` in leaderboard order (best first), the ``best`` one, its test
    metrics, the ``run_dir`` written and ``results`` (``results.json`` as written)."""

    run_dir: Path
    heads: list[HeadResult]
    best: HeadResult
    classes: list[str]
    settings: Settings
    random_weights: bool
    wall_seconds: float
    results: dict[str, Any]

    @property
    def test_acc(self) -> float | None:
        return self.best.test_acc

    @property
    def test_loss(self) -> float | None:
        return self.best.test_loss

    @property
    def baselines(self) -> list[dict[str, Any]]:
        """The L-BFGS logistic regression, k-NN and ensemble rows (empty with ``baselines=False``)."""
        return self.results.get("baselines", [])

    @property
    def concat(self) -> list[dict[str, Any]]:
        """The heads trained on the caches' concatenated pooled vectors (empty unless ``concat=True``)."""
        return self.results.get("concat", {}).get("heads", [])

    def leaderboard(self, top: int = DEFAULT_TOP) -> str:
        return _leaderboard(self.results["heads"], self.results["splits"]["val"], top)


def train(
    cache: str | Path | Sequence[str | Path],
    *,
    sweep: str | Path | None = None,
    head: Any = None,
    lr: Any = None,
    weight_decay: Any = None,
    hidden: Any = None,
    dropout: Any = None,
    label_smoothing: Any = None,
    c: Any = None,
    power: Any = None,
    pool: Any = None,
    map_augment: Any = None,
    features: Any = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    patience: int | None = None,
    seed: int | None = None,
    standardize: bool | None = None,
    val_fraction: float | None = None,
    max_memory_gb: float | None = None,
    stream: bool | None = None,
    allow_partial: bool | None = None,
    views: bool | None = None,
    baselines: bool | None = None,
    folds: int | str | None = None,
    runs: str | Path = DEFAULT_RUNS,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    command: list[str] | None = None,
    concat: bool = False,
) -> SweepResult:
    """Train every head of the grid in one pass over ``cache``, pick the best on val, report it on test,
    and write a new run directory under ``runs`` (docs/run-format.md). ``log`` receives notes (default:
    dropped); ``command`` is recorded in results.json.

    ``cache`` may be a list of caches of the same images made by different backbones: the same grid is
    trained on each (rows matched by id; caches whose ids, splits or labels differ are refused), heads
    are named ``"<backbone>:<head>"`` and ranked together (trainer.multi). With ``concat=True``, the
    grid's pooled heads are also trained on the caches' pooled vectors side by side, and reported
    (``SweepResult.concat``), never picked.

    ``sweep``: a sweep file or the name of a built-in sweep (``"thorough"``; see
    :mod:`~featcache.trainer.builtin_sweeps`). ``folds``: how the closed-form (``logreg``) heads are picked:
    ``"auto"`` (k-fold cross-validation over train+val when val is small, :mod:`~featcache.trainer.cv`),
    0 (on val) or a fold count."""
    from .run import run_sweep

    caches = _caches(cache)
    runs = path_arg("runs", runs)
    sweep = path_arg("sweep", sweep, optional=True)
    progress, concat = progress_arg(progress), bool_arg("concat", concat)
    log = callable_arg("log", log)
    if command is not None and not (isinstance(command, list) and all(isinstance(a, str) for a in command)):
        raise FeatcacheError(f"command={command!r}: expected a list of strings")
    grid = dict(head=head, lr=lr, weight_decay=weight_decay, hidden=hidden, dropout=dropout)
    grid.update(label_smoothing=label_smoothing, c=c, power=power, pool=pool, map_augment=map_augment)
    settings: dict[str, Any]  # of ints, floats and bools
    grid.update(features=features)
    settings = dict(epochs=epochs, batch_size=batch_size, patience=patience, seed=seed, standardize=standardize)
    settings.update(val_fraction=val_fraction, max_memory_gb=max_memory_gb, allow_partial=allow_partial, views=views)
    settings.update(baselines=baselines, stream=stream, folds=folds)
    # what the cache's shards hold: a built-in sweep adds the grids that read it (one cache only)
    datasets = set(FeatureCache(caches).layout) if sweep is not None and not isinstance(caches, list) else set()
    configs, checked = resolve_sweep(sweep, grid, settings, datasets)
    run_dir, results = run_sweep(
        caches,
        configs,
        checked,
        runs,
        command or ["featcache.trainer.api.train"],
        log or (lambda m: None),
        progress,
        concat,
    )
    order, _ = ranking(results["heads"], results["splits"]["val"])
    heads = [HeadResult.from_json(results["heads"][i]) for i in order]
    best = next(h for h in heads if h.name == results["best"])
    return SweepResult(
        run_dir, heads, best, results["classes"], checked, results["random_weights"], results["wall_seconds"], results
    )


def _caches(cache: Any) -> Path | list[Path]:
    """``cache``: one cache's path, or a non-empty list of them (one per backbone)."""
    if isinstance(cache, list | tuple):
        if not cache:
            raise FeatcacheError("cache=[]: expected a cache directory, or a list of them")
        return [path_arg(f"cache[{k}]", c) for k, c in enumerate(cache)]
    return path_arg("cache", cache)


def predict(
    run_dir: str | Path,
    out: str | Path,
    *,
    split: str | None = None,
    ids: str | Path | None = None,
    head: str | None = None,
    source: str | Path | None = None,
    weights: str | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    backbone: str | None = None,
    preprocess: str | None = None,
) -> Prediction:
    """Class probabilities of the run's best head (or ``head``) written as CSV to ``out``: for the cached
    rows of ``split`` (train, val, test or all; default test) or of the ids listed one per line in the
    file ``ids``; or, with ``source``, for new images (any source the extractor takes), whose features
    the extractor makes as the cached ones were made, in a subprocess, into a scratch cache in the run
    directory that the next predict of ``source`` reuses (``overwrite=True``: made again). ``weights``
    replaces a weights file that has moved; ``progress`` shows the extractor's progress bar.
    ``backbone`` and ``preprocess`` (with ``source``) name again a ``module:attribute`` backbone or
    preprocessing function of your own, or a moved model file: nothing named in a run directory is
    imported on its word."""
    run_dir, out = path_arg("run_dir", run_dir), path_arg("out", out)
    choice_arg("split", split, SPLIT_CHOICES, optional=True)
    path_arg("ids", ids, optional=True)
    path_arg("source", source, optional=True)
    for name, value in (("head", head), ("weights", weights), ("backbone", backbone), ("preprocess", preprocess)):
        str_arg(name, value, optional=True)
    bool_arg("overwrite", overwrite)
    progress = progress_arg(progress)
    if source is None:
        from .predict import predict as _predict

        extraction = {"weights": weights, "backbone": backbone, "preprocess": preprocess}
        named = [f"{k}={v!r}" for k, v in extraction.items() if v is not None] + (
            ["overwrite=True"] if overwrite else []
        )
        if named:
            given = named[0]
            raise FeatcacheError(
                f"{given}: applies to new images only (source=PATH); cached rows use their cached features"
            )

        return _predict(Path(run_dir), Path(out), split or "test", Path(ids) if ids is not None else None, head)
    if ids is not None or split is not None:
        given = f"split={split!r}" if split is not None else f"ids={str(ids)!r}"
        raise FeatcacheError(
            f"{given}: with source={str(source)!r} every image of the source is predicted; give one or the other"
        )
    from .predict_source import predict_source

    return predict_source(
        Path(run_dir),
        Path(out),
        str(source),
        head,
        weights,
        overwrite,
        progress,
        backbone=backbone,
        preprocess=preprocess,
    )


def export(
    run_dir: str | Path,
    out: str | Path,
    *,
    head: str | None = None,
    weights: str | None = None,
    backbone: str | None = None,
) -> Export:
    """The run's best head (or ``head``) stacked onto the cache's backbone, saved as one Keras model.
    ``backbone``: a ``module:attribute`` backbone of your own, named again (never imported on the run
    directory's word)."""
    run_dir, out = path_arg("run_dir", run_dir), path_arg("out", out)
    for name, value in (("head", head), ("weights", weights), ("backbone", backbone)):
        str_arg(name, value, optional=True)
    from .predict import export as _export

    return _export(Path(run_dir), Path(out), head, weights, backbone)
