"""One sweep, end to end: the cache's rows -> the training loop -> a run directory.

A sweep on several caches of the same images (one per backbone) trains the same grid on each, its
rows matched by id (``multi``); the heads of all of them are ranked together and the run directory
records each head's cache (run format version 3, docs/run-format.md).

The run directory is staged before training (so an unwritable ``runs`` folder fails first), filled
once every head is trained, and renamed into place last (``rundir``): an error or Ctrl-C at any point
leaves no run behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..shared.cache import FeatureCache, describe
from ..shared.errors import FeatcacheError
from . import rundir
from .data import Dataset, load_dataset, load_maps, load_top, memory_gb
from .feed import asked
from .heads import HEAD_KINDS, reads_maps
from .identity import cache_identity
from .loop import TrainOutput, train
from .multi import CONCAT, LABEL_SEPARATOR, TrainedCache, align, concat_dataset, label_caches, locate
from .plot import plot
from .report import best_head, class_metrics, confusion, confusion_entries, leaderboard
from .settings import Settings
from .sweep import HeadConfig

Log = Callable[[str], None]


STREAMED_NOTE = (
    "inputs streamed from the shards ({why}): the k-NN baseline and the ensemble need every row in memory "
    "and were skipped"
)


def load_for(
    cache: FeatureCache, configs: list[HeadConfig], settings: Settings, log: Log, like: Dataset | None = None
) -> Dataset:
    """The cache's splits, with their inputs in memory (maps too when a head of ``configs`` reads
    them) when they fit in ``settings.max_memory_gb``, else (or with ``settings.stream``) streamed.
    With ``like`` (the first cache's dataset in a sweep on several), its rows matched to ``like``'s
    by id (``multi.align``); a sweep on several caches is held in memory."""
    maps = any(c.reads_maps for c in configs)
    if maps and not cache.has_maps:
        heads = ", ".join(dict.fromkeys(c.kind for c in configs if c.reads_maps))
        pooled = ", ".join(k for k in HEAD_KINDS if not reads_maps(k))
        cache.require_maps(f"{heads} heads read maps; train pooled heads on it ({pooled}; the k-NN baseline too)")
    taps = any(c.reads_taps for c in configs)
    need = memory_gb(cache, maps, settings.views and any(not c.reads_maps for c in configs), taps)
    streamed = settings.stream or need > settings.max_memory_gb
    if taps and like is not None:
        raise FeatcacheError(f"{cache.path}: features='taps' trains on one cache at a time (not on several)")
    top = any(c.reads_top_input for c in configs)
    if top:
        from .heads.top import require_top_input

        require_top_input(cache)
        if like is not None:
            raise FeatcacheError(f"{cache.path}: head 'top' trains on one cache at a time (not on several)")
    if streamed and like is not None:
        raise FeatcacheError(
            f"{cache.path}: a sweep on several caches holds them in memory, and they need {need:.1f} GB "
            f"(max_memory_gb={settings.max_memory_gb:g}): raise max_memory_gb or train on one cache at a time"
        )
    ds = load_dataset(
        cache,
        val_fraction=settings.val_fraction,
        allow_partial=settings.allow_partial,
        views=settings.views,
        pooled=not streamed,
        taps=taps,
    )
    if like is not None:  # the notes the first cache has not given already, naming this cache
        ds = align(like, ds, cache.path)
    if streamed:
        why = "stream=True" if settings.stream else f"{need:.1f} GB above max_memory_gb={settings.max_memory_gb:g}"
        ds.notes.append(STREAMED_NOTE.format(why=why) if settings.baselines else f"inputs streamed ({why})")
    for note in ds.notes if like is None else [n for n in ds.notes if n not in like.notes]:
        log(f"note: {note}" if like is None else f"note: {cache.path}: {note}")
    if maps and not streamed:
        load_maps(cache, ds)
    if top:
        load_top(cache, ds)
    log(
        f"{cache.path}: {describe(cache.fingerprint)}; train {len(ds.train)}, val {len(ds.val)}, "
        f"test {len(ds.test)} rows, {len(ds.classes)} classes; {len(configs)} heads"
    )
    return ds


def describe_run(parts: list[TrainedCache], settings: Settings, command: list[str]) -> dict[str, Any]:
    """``results.json`` without its file index, plot entry and wall time (see docs/run-format.md).
    One part: version 2, as ever; several: version 3, with ``caches`` and each head's ``cache``."""
    first = parts[0]
    ds = first.ds
    heads = [row for p in parts for row in p.head_rows()]
    best = best_head(heads, len(ds.val))
    part, state, k = locate(parts, best["name"])
    confusion_test = None
    if len(ds.test):
        probs = asked(state.tta_probabilities("test"))[k] if best.get("use_tta") else state.probabilities("test", k)
        confusion_test = confusion(part.ds.test.y, probs.argmax(-1), len(ds.classes))
    multi = len(parts) > 1
    results: dict[str, Any] = {
        "format": rundir.FORMAT,
        "version": rundir.VERSION_MULTI if multi else rundir.VERSION,
        "complete": True,
        "command": command,
        "cache": cache_identity(part.cache),
    }
    if multi:
        results["caches"] = {p.label: {"backbone": p.backbone, **cache_identity(p.cache)} for p in parts}
    results.update(
        {
            "random_weights": any(p.cache.random_weights for p in parts),
            "classes": ds.classes,
            "splits": ds.sizes(),
            "val_carved_from_train": ds.val_carved,
            "unlabelled_rows_skipped": ds.unlabelled_rows,
            "settings": asdict(settings),
            "notes": ds.notes,
            "best": best["name"],
            "best_head_file": rundir.BEST_HEAD,
            **confusion_entries(confusion_test),
            "best_test_metrics": None if confusion_test is None else class_metrics(confusion_test, ds.classes),
            "heads": heads,
        }
    )
    return results


def write_run(staging: Path, results: dict[str, Any], parts: list[TrainedCache], log: Log) -> None:
    """Fill ``staging`` with the run's files, ``results.json`` last (it completes ``results``)."""
    from .events import write_events
    from .keras_heads import head_model

    part, state, k = locate(parts, results["best"])
    cfg = state.group.configs[k]
    maps_shape = tuple(part.cache.fingerprint["output_shape"])
    in_dim = part.ds.width(cfg.features)
    mean_std = part.out.mean_std
    if mean_std is not None and not cfg.reads_maps:  # the head's columns (the taps come after the maps')
        mean_std = (mean_std[0][:in_dim], mean_std[1][:in_dim])
    if cfg.reads_top_input:
        model = state.group.model  # the fine-tuned block and its dense layer, as trained
    else:
        model = head_model(
            cfg,
            state.group.head_weights(k),
            maps_shape if cfg.reads_maps else (in_dim,),
            len(results["classes"]),
            mean_std,
        )
    with rundir.writing(staging / rundir.BEST_HEAD):
        model.save(staging / rundir.BEST_HEAD)
    weights = {
        p.head_name(c): s.group.head_weights(i)
        for p in parts
        for s in p.out.states
        for i, c in enumerate(s.group.configs)
    }
    # with several caches every part is labelled (label_caches)
    by_cache = {p.label: p.out.mean_std for p in parts if p.label is not None} if len(parts) > 1 else None
    index = rundir.save_heads(staging / rundir.HEADS, weights, parts[0].out.mean_std, by_cache)
    results["heads_file"] = {"file": rundir.HEADS, **index}
    rundir.write_text(staging / rundir.LEADERBOARD, leaderboard(results["heads"], results["splits"]["val"]) + "\n")
    with rundir.writing(staging / rundir.PLOT):
        skipped = plot(results, staging / rundir.PLOT)
    results["plot"] = None if skipped else rundir.PLOT
    if skipped:
        log(f"plot skipped: {skipped}")
    results["tensorboard"] = write_events(staging, results).name
    rundir.write_results(staging / rundir.RESULTS, results)


def train_all(ds: Dataset, configs: list[HeadConfig], settings: Settings, progress: bool) -> TrainOutput:
    """Every head of ``configs`` on ``ds``: the loop's kinds in one pass (:func:`~featcache.trainer.loop.train`),
    then the ``top`` heads, each fine-tuning its copy of the backbone's last block
    (:mod:`~featcache.trainer.heads.top`)."""
    top = [c for c in configs if c.reads_top_input]
    rest = [c for c in configs if not c.reads_top_input]
    out = train(ds, rest, settings, progress) if rest else TrainOutput([], [], None)
    if top:
        from .heads.top import train_top

        rows, states = train_top(ds, top, settings)
        out.heads += rows
        out.states += states
    return out


def train_concat(
    parts: list[TrainedCache], configs: list[HeadConfig], settings: Settings, log: Log, progress: bool
) -> dict[str, Any]:
    """The grid's pooled heads trained on every part's pooled vectors side by side: ``results.json``'s
    ``concat`` (``caches``, the labels in column order; ``width``; ``heads``, rows as in ``heads``,
    named ``concat:<head>``; ``skipped``, the map heads, which have no concatenation)."""
    pooled = [c for c in configs if not c.reads_maps and not c.reads_top_input]
    ds = concat_dataset([p.ds for p in parts])
    assert ds.train.pooled is not None, "concat_dataset holds pooled vectors"
    out: dict[str, Any] = {"caches": [p.label for p in parts], "width": int(ds.train.pooled.shape[1])}
    out["skipped"] = [c.name for c in configs if c.reads_maps]
    log(f"training {len(pooled)} pooled heads on {' + '.join(out['caches'])}: {out['width']} channels")
    trained = train(ds, pooled, settings, progress).heads if pooled else []
    out["heads"] = [{**h, "name": f"{CONCAT}{LABEL_SEPARATOR}{h['name']}", "cache": CONCAT} for h in trained]
    return out


def run_sweep(
    cache_path: Path | Sequence[Path],
    configs: list[HeadConfig],
    settings: Settings,
    runs_root: Path,
    command: list[str],
    log: Log = print,
    progress: bool = True,
    concat: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Train the sweep on the cache (or on each of several caches of the same images) and write its run
    directory; return (run dir, results). ``concat`` (several caches): also train the grid's pooled
    heads on the caches' concatenated pooled vectors, reported in ``results["concat"]``."""
    t0 = time.perf_counter()
    paths = [Path(cache_path)] if isinstance(cache_path, str | Path) else [Path(p) for p in cache_path]
    if not paths:
        raise FeatcacheError("cache=[]: name at least one cache to train on")
    caches = [FeatureCache(p) for p in paths]
    labels = label_caches(caches) if len(caches) > 1 else [None]
    if concat and len(caches) < 2:
        raise FeatcacheError("concat=True: needs at least two caches, whose pooled vectors are concatenated")
    staging = rundir.stage(Path(runs_root))
    try:
        datasets: list[Dataset] = []
        for cache in caches:  # every cache read and matched to the first before any training
            datasets.append(load_for(cache, configs, settings, log, datasets[0] if datasets else None))
        parts: list[TrainedCache] = []
        for cache, ds, label in zip(caches, datasets, labels, strict=True):
            if label is not None:
                log(f"training {len(configs)} heads on {label} ({cache.path})")
            parts.append(TrainedCache(cache, ds, train_all(ds, configs, settings, progress), label))
        results = describe_run(parts, settings, command)
        if concat:
            results["concat"] = train_concat(parts, configs, settings, log, progress)
        if settings.baselines and not any(p.ds.streamed for p in parts):
            from .baselines import run_baselines

            results["baselines"] = [row for p in parts for row in p.tag_rows(run_baselines(p.ds, p.out))]
        results["wall_seconds"] = round(time.perf_counter() - t0, 3)
        write_run(staging, results, parts, log)
        return rundir.commit(staging, Path(runs_root)), results
    except BaseException:
        rundir.discard(staging)
        raise
