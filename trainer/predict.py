"""What to do with a finished run: load one of its heads, predict cached rows to a CSV, or export the
head stacked onto its backbone as one Keras model."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..shared.cache.fsutil import commit_file, temp_path_for
from ..shared.cache.reader import FeatureCache, PooledRows
from ..shared.cache.split import split_names
from ..shared.errors import FeatcacheError
from . import rundir
from .data import load_rows, read_maps
from .identity import check_cache
from .sweep import HeadConfig

SPLIT_CHOICES = ("train", "val", "test", "all")
PREDICT_BATCH = 256


@dataclass
class Prediction:
    """What :func:`predict` wrote: ``rows`` rows to ``out``; ``accuracy`` over the ``labelled`` ones
    (NaN when none is)."""

    out: Path
    head: str
    rows: int
    labelled: int
    accuracy: float


@dataclass
class Export:
    """What :func:`export` wrote: ``out``, a model from images ``input_shape`` to ``classes`` probabilities."""

    out: Path
    backbone: str
    head: str
    input_shape: tuple[int, ...]
    classes: list[str]
    random_weights: bool


def load_head(run_dir: Path, results: dict[str, Any], name: str | None = None) -> tuple[HeadConfig, Any]:
    """(config, Keras head model) of the run's best head, or of head ``name`` (rebuilt from heads.npz)."""
    from .keras_heads import head_model, load

    name = name or results["best"]
    entry = next((h for h in results["heads"] if h["name"] == name), None)
    if entry is None:
        raise FeatcacheError(f"{run_dir}: no head named {name!r} (see leaderboard.txt)")
    cfg = HeadConfig.from_json(entry["config"])
    if name == results["best"]:
        return cfg, load(Path(run_dir) / rundir.BEST_HEAD)
    weights, mean_std = rundir.head_params(run_dir, results, name)
    maps_shape = tuple(rundir.head_cache(results, name)["fingerprint"]["output_shape"])
    in_shape = maps_shape if cfg.reads_maps else maps_shape[-1:]
    return cfg, head_model(cfg, weights, in_shape, len(results["classes"]), mean_std)


def select_rows(rows: PooledRows, names: np.ndarray, split: str, ids: Path | None) -> np.ndarray:
    """Positions in ``rows`` of the ids listed in the file ``ids`` (one per line), else of ``split``."""
    if ids is not None:
        try:
            wanted = [s.strip() for s in Path(ids).read_text().splitlines() if s.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise FeatcacheError(f"{ids}: cannot read the ids file ({exc})") from None
        pos = {v: k for k, v in enumerate(rows.id.tolist())}
        missing = [i for i in wanted if i not in pos]
        if missing:
            raise FeatcacheError(f"{ids}: {len(missing)} ids are not in the cache (first: {missing[0]!r})")
        return np.array([pos[i] for i in wanted], dtype=np.int64)
    if split not in SPLIT_CHOICES:
        raise FeatcacheError(f"split={split!r}: choose {', '.join(SPLIT_CHOICES)}")
    return np.arange(len(rows)) if split == "all" else np.flatnonzero(names == split)


def _write_csv(
    out: Path, rows: PooledRows, names: np.ndarray, sel: np.ndarray, probs: np.ndarray, classes: list[str]
) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(out)  # renamed into place once whole: an interrupted predict leaves no partial CSV
    try:
        _write_rows(tmp, rows, names, sel, probs, classes)
        commit_file(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _write_rows(
    path: Path, rows: PooledRows, names: np.ndarray, sel: np.ndarray, probs: np.ndarray, classes: list[str]
) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "id", "label", "class", "split", "predicted", *[f"p_{c}" for c in classes]])
        for k, p in zip(sel.tolist(), probs, strict=True):
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


def predict(
    run_dir: Path, out: Path, split: str = "test", ids: Path | None = None, head: str | None = None
) -> Prediction:
    """Class probabilities of a run's head (the best unless ``head``) for cached rows, written to the
    CSV ``out``: the rows of ``split`` (train, val, test or all), or those whose ids the file ``ids``
    lists. Refuses a cache that is no longer the one the run was trained on."""
    results = rundir.load_results(run_dir)
    recorded = rundir.head_cache(results, head or results["best"])
    cache = FeatureCache(recorded["path"])
    check_cache(cache, recorded, run_dir)
    rows = load_rows(cache)
    names = split_names(rows.split).astype(str)
    sel = select_rows(rows, names, split, ids)
    cfg, model = load_head(run_dir, results, head)
    return score_rows(cache, rows, sel, cfg, model, results["classes"], Path(out), head or results["best"])


def score_rows(
    cache: FeatureCache,
    rows: PooledRows,
    sel: np.ndarray,
    cfg: HeadConfig,
    model: Any,
    classes: list[str],
    out: Path,
    name: str,
) -> Prediction:
    """Head ``model`` (the run's head ``name``, of config ``cfg``) on the rows ``sel`` of ``rows`` (the
    cache's pooled rows, labels numbered as ``classes``), written to the CSV ``out``; the accuracy over
    the labelled ones. Map heads read the rows' maps from ``cache``."""
    names = split_names(rows.split).astype(str)
    x = read_maps(cache, rows.index[sel], "float32") if cfg.reads_maps else rows.pooled[sel]
    probs = model.predict(x, batch_size=PREDICT_BATCH, verbose=0) if len(sel) else np.zeros((0, len(classes)))
    _write_csv(out, rows, names, sel, probs, classes)
    labelled = rows.label[sel] >= 0
    hits = probs.argmax(-1)[labelled] == rows.label[sel][labelled]
    return Prediction(out, name, len(sel), int(labelled.sum()), float(hits.mean()) if labelled.any() else float("nan"))


def export(run_dir: Path, out: Path, head: str | None = None, weights: str | None = None) -> Export:
    """Stack a run's head (the best unless ``head``) onto the backbone that made its cache and save the
    model to ``out``. ``weights`` ('imagenet' or a path) replaces the recorded weights file when it has
    moved; its sha256 must equal the cache's."""
    from ..shared.backbones import RANDOM_PREFIX, get_backbone, resolve_weights
    from .keras_heads import full_model

    results = rundir.load_results(run_dir)
    name = head or results["best"]
    fp = rundir.head_cache(results, name)["fingerprint"]
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
            "pass weights= the file the cache was made with"
        )
    cfg, model_head = load_head(run_dir, results, head)
    model = full_model(spec, w, cfg, model_head)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    return Export(Path(out), spec.name, name, tuple(model.input_shape[1:]), results["classes"], w.random)
