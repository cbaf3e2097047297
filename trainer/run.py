"""One sweep, end to end: the cache's rows -> the training loop -> a run directory.

The run directory is staged before training (so an unwritable ``runs`` folder fails first), filled
once every head is trained, and renamed into place last (``rundir``): an error or Ctrl-C at any point
leaves no run behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..shared.cache.fingerprint import describe
from ..shared.cache.reader import FeatureCache
from . import rundir
from .data import Dataset, load_dataset, load_maps, memory_gb
from .identity import cache_identity
from .loop import TrainOutput, train
from .plot import plot
from .report import best_head, confusion, leaderboard
from .settings import Settings
from .sweep import HeadConfig

Log = Callable[[str], None]


STREAMED_NOTE = (
    "inputs streamed from the shards ({why}): the closed-form baselines (L-BFGS logistic regression, k-NN, "
    "ensemble) need every row in memory and were skipped"
)


def load_for(cache: FeatureCache, configs: list[HeadConfig], settings: Settings, log: Log) -> Dataset:
    """The cache's splits, with their inputs in memory (maps too when a head of ``configs`` reads
    them) when they fit in ``settings.max_memory_gb``, else (or with ``settings.stream``) streamed."""
    maps = any(c.reads_maps for c in configs)
    need = memory_gb(cache, maps, settings.views and any(not c.reads_maps for c in configs))
    streamed = settings.stream or need > settings.max_memory_gb
    ds = load_dataset(
        cache,
        val_fraction=settings.val_fraction,
        allow_partial=settings.allow_partial,
        views=settings.views,
        pooled=not streamed,
    )
    if streamed:
        why = "stream=True" if settings.stream else f"{need:.1f} GB above max_memory_gb={settings.max_memory_gb:g}"
        ds.notes.append(STREAMED_NOTE.format(why=why) if settings.baselines else f"inputs streamed ({why})")
    for note in ds.notes:
        log(f"note: {note}")
    if maps and not streamed:
        load_maps(cache, ds)
    log(
        f"{cache.path}: {describe(cache.fingerprint)}; train {len(ds.train)}, val {len(ds.val)}, "
        f"test {len(ds.test)} rows, {len(ds.classes)} classes; {len(configs)} heads"
    )
    return ds


def describe_run(
    cache: FeatureCache, ds: Dataset, settings: Settings, out: TrainOutput, command: list[str]
) -> dict[str, Any]:
    """``results.json`` without its file index, plot entry and wall time (see docs/run-format.md)."""
    best = best_head(out.heads, len(ds.val))
    state, k = out.locate(best["name"])
    confusion_test = None
    if len(ds.test):
        probs = state.tta_probabilities("test")[k] if best.get("use_tta") else state.probabilities("test", k)
        confusion_test = confusion(ds.test.y, probs.argmax(-1), len(ds.classes)).tolist()
    return {
        "format": rundir.FORMAT,
        "version": rundir.VERSION,
        "complete": True,
        "command": command,
        "cache": cache_identity(cache),
        "random_weights": cache.random_weights,
        "classes": ds.classes,
        "splits": ds.sizes(),
        "val_carved_from_train": ds.val_carved,
        "unlabelled_rows_skipped": ds.unlabelled_rows,
        "settings": asdict(settings),
        "notes": ds.notes,
        "best": best["name"],
        "best_head_file": rundir.BEST_HEAD,
        "best_confusion_test": confusion_test,
        "heads": out.heads,
    }


def write_run(staging: Path, results: dict[str, Any], out: TrainOutput, in_dim: int, log: Log) -> None:
    """Fill ``staging`` with the run's files, ``results.json`` last (it completes ``results``)."""
    from .keras_heads import head_model

    state, k = out.locate(results["best"])
    cfg = state.group.configs[k]
    maps_shape = tuple(results["cache"]["fingerprint"]["output_shape"])
    model = head_model(
        cfg,
        state.group.head_weights(k),
        maps_shape if cfg.reads_maps else (in_dim,),
        len(results["classes"]),
        out.mean_std,
    )
    with rundir.writing(staging / rundir.BEST_HEAD):
        model.save(staging / rundir.BEST_HEAD)
    weights = {c.name: s.group.head_weights(i) for s in out.states for i, c in enumerate(s.group.configs)}
    results["heads_file"] = {"file": rundir.HEADS, **rundir.save_heads(staging / rundir.HEADS, weights, out.mean_std)}
    rundir.write_text(staging / rundir.LEADERBOARD, leaderboard(results["heads"], results["splits"]["val"]) + "\n")
    with rundir.writing(staging / rundir.PLOT):
        skipped = plot(results, staging / rundir.PLOT)
    results["plot"] = None if skipped else rundir.PLOT
    if skipped:
        log(f"plot skipped: {skipped}")
    rundir.write_results(staging / rundir.RESULTS, results)


def run_sweep(
    cache_path: Path,
    configs: list[HeadConfig],
    settings: Settings,
    runs_root: Path,
    command: list[str],
    log: Log = print,
    progress: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Train the sweep on the cache and write its run directory; return (run dir, results)."""
    t0 = time.perf_counter()
    cache = FeatureCache(cache_path)
    staging = rundir.stage(Path(runs_root))
    try:
        ds = load_for(cache, configs, settings, log)
        out = train(ds, configs, settings, progress)
        results = describe_run(cache, ds, settings, out, command)
        if settings.baselines and not ds.streamed:
            from .baselines import run_baselines

            results["baselines"] = run_baselines(ds, out)
        results["wall_seconds"] = round(time.perf_counter() - t0, 3)
        write_run(staging, results, out, ds.channels, log)
        return rundir.commit(staging, Path(runs_root)), results
    except BaseException:
        rundir.discard(staging)
        raise
