"""What to do with a finished run: load one of its heads, predict cached rows to a CSV, or export the
head stacked onto its backbone as one Keras model."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..shared.cache import FeatureCache, PooledRows, schema, split_names
from ..shared.cache.fsutil import commit_file, temp_path_for
from ..shared.errors import FeatcacheError
from . import rundir
from .data import load_rows, read_maps, require_taps
from .identity import check_cache, importable_backbone
from .multi import LABEL_SEPARATOR
from .sweep import HeadConfig

SPLIT_CHOICES = ("train", "val", "test", "all")
PREDICT_BATCH = 256
PREDICT_BLOCK = 1024  # rows whose inputs are read at once


@dataclass
class Prediction:
    """What :func:`predict` wrote: ``rows`` rows to ``out``; ``accuracy`` over the ``labelled`` ones
    (NaN when none is); ``views``: 1, or the cached views averaged (the head was picked with TTA)."""

    out: Path
    head: str
    rows: int
    labelled: int
    accuracy: float
    views: int = 1


@dataclass
class Export:
    """What :func:`export` wrote: ``out``, a model from images ``input_shape`` (``(None, None, 3)``: any
    size, resized inside) to ``{"probabilities", "class"}`` over ``classes``; ``tta``: how it scores an
    image when the head was picked with test-time augmentation (else None)."""

    out: Path
    backbone: str
    head: str
    input_shape: tuple[int, ...]
    classes: list[str]
    random_weights: bool
    tta: str | None = None
    members: list[str] = field(default_factory=list)


def head_entry(run_dir: Path, results: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """results.json's row of head ``name`` (default: the best), or a one-line error."""
    name = name or results["best"]
    entry = next((h for h in results["heads"] if h["name"] == name), None)
    if entry is None:
        raise FeatcacheError(f"{run_dir}: no head named {name!r} (see leaderboard.txt)")
    return entry


def load_head(run_dir: Path, results: dict[str, Any], name: str | None = None) -> tuple[HeadConfig, Any]:
    """(config, Keras head model) of the run's best head, or of head ``name`` (rebuilt from heads.npz)."""
    from .keras_heads import head_model, load

    entry = head_entry(run_dir, results, name)
    name = entry["name"]
    cfg = HeadConfig.from_json(entry["config"])
    if name == results["best"]:
        return cfg, load(Path(run_dir) / rundir.BEST_HEAD)
    weights, mean_std = rundir.head_params(run_dir, results, name)
    fp = rundir.head_cache(results, name)["fingerprint"]
    if cfg.reads_top_input:  # rebuilt from the registry's layers of the backbone's last block
        from .heads.top import block_spec, build_model

        spec = block_spec(fp, importable_backbone(fp, str(Path(run_dir) / rundir.RESULTS)))
        shape = tuple((schema.top_input_of(fp) or {"shape": ()})["shape"])
        return cfg, build_model(spec, shape, len(results["classes"]), cfg.dropout, params=weights)
    maps_shape = tuple(fp["output_shape"])
    in_shape = maps_shape if cfg.reads_maps else (rundir.input_width(entry["config"], fp),)
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
    lists. A pooled head picked with test-time augmentation is scored as it was picked: the mean of
    its probabilities over the cached views. Refuses a cache that is no longer the one the run was
    trained on."""
    results = rundir.load_results(run_dir)
    recorded = rundir.head_cache(results, head or results["best"])
    cache = FeatureCache(recorded["path"])
    check_cache(cache, recorded, run_dir)
    rows = load_rows(cache)
    names = split_names(rows.split).astype(str)
    sel = select_rows(rows, names, split, ids)
    cfg, model = load_head(run_dir, results, head)
    use_tta = bool(head_entry(run_dir, results, head).get("use_tta"))
    return score_rows(cache, rows, sel, cfg, model, results["classes"], Path(out), head or results["best"], use_tta)


def score_rows(
    cache: FeatureCache,
    rows: PooledRows,
    sel: np.ndarray,
    cfg: HeadConfig,
    model: Any,
    classes: list[str],
    out: Path,
    name: str,
    use_tta: bool = False,
) -> Prediction:
    """Head ``model`` (the run's head ``name``, of config ``cfg``) on the rows ``sel`` of ``rows`` (the
    cache's pooled rows, labels numbered as ``classes``), written to the CSV ``out``; the accuracy over
    the labelled ones. Map heads read the rows' maps from ``cache``. A pooled head picked with
    test-time augmentation (``use_tta``) is scored as it was picked: the mean of its probabilities
    over the cache's views. Inputs are read and predicted in blocks of :data:`PREDICT_BLOCK` rows."""
    names = split_names(rows.split).astype(str)
    if cfg.reads_top_input:
        from .heads.top import require_top_input

        require_top_input(cache)
    tta = use_tta and not cfg.reads_maps and not cfg.reads_top_input and cache.views > 1
    views = cache.load_pooled_views() if tta else None  # (N, V, C), rows' order
    pooled = rows.pooled
    if cfg.reads_taps:  # the layer taps after the pooled maps, as the head was trained
        require_taps(cache)
        if views is not None:
            views = np.concatenate([views, cache.load_taps_views()], axis=2)
        else:
            pooled = np.concatenate([pooled, cache.read_columns((schema.TAPS,))[schema.TAPS]], axis=1)
    probs = np.zeros((len(sel), len(classes)))
    for start in range(0, len(sel), PREDICT_BLOCK):  # bounded memory: maps are ~250 KB a row in float32
        part = sel[start : start + PREDICT_BLOCK]
        if cfg.reads_top_input:
            inputs = [read_maps(cache, rows.index[part], "float32", schema.TOP_INPUT)]
        elif cfg.reads_maps:
            inputs = [read_maps(cache, rows.index[part], "float32")]
        else:
            inputs = [pooled[part]] if views is None else [views[part, v] for v in range(views.shape[1])]
        batch = [model.predict(x, batch_size=PREDICT_BATCH, verbose=0) for x in inputs]
        probs[start : start + len(part)] = np.mean(batch, axis=0)
    _write_csv(out, rows, names, sel, probs, classes)
    labelled = rows.label[sel] >= 0
    hits = probs.argmax(-1)[labelled] == rows.label[sel][labelled]
    accuracy = float(hits.mean()) if labelled.any() else float("nan")
    return Prediction(out, name, len(sel), int(labelled.sum()), accuracy, 1 if views is None else views.shape[1])


ENSEMBLE = "ensemble"
KNN_WHY = "a k-NN head votes with the training rows' vectors, which a run does not keep"


def baseline_row(results: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The row of results.json's ``baselines`` that ``name`` designates: its name (``ensemble of top 3``)
    or its kind (``ensemble``, ``knn``; ``<label>:ensemble`` in a run on several caches), else None."""
    for r in results.get("baselines") or []:
        label = r.get("cache")
        kind = r.get("kind") if label is None else f"{label}{LABEL_SEPARATOR}{r.get('kind')}"
        if name in (r.get("name"), kind):
            return r
    return None


def ensemble_members(results: dict[str, Any], name: str) -> list[str] | None:
    """The heads of the run's ensemble designated by ``name`` (:func:`baseline_row`), or None when ``name``
    is no baseline; one line saying why when it cannot be exported (a k-NN, or an ensemble with a k-NN
    among its members: only heads of the grid are kept in heads.npz)."""
    row = baseline_row(results, name)
    if row is None:
        return None
    if row.get("kind") != ENSEMBLE:
        raise FeatcacheError(
            f"head={name!r}: {KNN_WHY}, so it cannot be exported as a Keras model; export a head of the grid "
            f"or the ensemble (head={ENSEMBLE!r}) when none of its members is a k-NN head"
        )
    members = row.get("members")
    if not (isinstance(members, list) and members and all(isinstance(m, str) for m in members)):
        raise FeatcacheError(f"{rundir.RESULTS}: baselines: the ensemble {row.get('name')!r} lists no members")
    heads = {h["name"] for h in results["heads"]}
    label = row.get("cache")
    names = [m if label is None or m in heads else f"{label}{LABEL_SEPARATOR}{m}" for m in members]
    for m in names:
        if m not in heads:
            why = KNN_WHY if m.split(LABEL_SEPARATOR)[-1].startswith("knn") else "not a head of the run's grid"
            raise FeatcacheError(
                f"head={name!r}: the ensemble's member {m!r} is a k-NN head ({why}), so the ensemble cannot be "
                "exported as one Keras model; export one of its other members (head=NAME)"
                if why == KNN_WHY
                else f"head={name!r}: the ensemble's member {m!r} is {why}: cannot export it"
            )
    return names


def export(
    run_dir: Path, out: Path, head: str | None = None, weights: str | None = None, backbone: str | None = None
) -> Export:
    """Stack a run's head (the best unless ``head``) onto the backbone that made its cache and save the
    model to ``out``. ``head="ensemble"`` (or the ensemble's name on the leaderboard) exports the sweep's
    ensemble: one backbone, its member heads as branches, their probabilities averaged (refused in one
    line when a member is the k-NN head, whose training rows the run does not keep). ``weights``
    ('imagenet' or a path) replaces the recorded weights file when it has moved; its sha256 must equal
    the cache's. ``backbone``: the run's ``module:attribute`` backbone, named again (a backbone that is
    not registered is never imported on the run directory's word)."""
    from ..shared.backbones import RANDOM_PREFIX, get_backbone, resolve_weights
    from .heads.ensemble import ensemble_model
    from .keras_heads import full_model

    results = rundir.load_results(run_dir)
    name = head or results["best"]
    members = ensemble_members(results, name) if head is not None else None
    fp = rundir.head_cache(results, name if members is None else members[0])["fingerprint"]
    spec = get_backbone(importable_backbone(fp, str(Path(run_dir) / rundir.RESULTS), backbone))
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
    views = (fp.get("augment") or {}).get("views", 1)
    policy = str(fp["resize"]).rsplit(",", 1)[-1]  # the extractor's resize policy, done inside the model
    built, tta = [], None
    for member in [head] if members is None else members:
        cfg, model_head = load_head(run_dir, results, member)
        flip = False
        if head_entry(run_dir, results, member).get("use_tta") and not cfg.reads_maps:
            # view 1 is the mirror: with 2 views the model can average the image and its mirror as the pick
            # did; further views are random crops seeded by the image's id, which an exported model cannot know
            tta = "image and its mirror" if views == 2 else f"the image only (picked with TTA over {views} views)"
            flip = views == 2
        built.append((cfg, model_head, flip))
    if members is None:
        cfg, model_head, flip = built[0]
        taps = [n for n, _ in schema.taps_of(fp)] if cfg.reads_taps else []
        model = full_model(
            spec, w, cfg, model_head, flip_tta=flip, resize=policy, classes=results["classes"], taps=taps
        )
    else:
        if any(c.reads_taps or c.reads_top_input for c, _, _ in built):
            raise FeatcacheError(
                f"head={name!r}: an ensemble with taps or top heads cannot be exported yet; export its best member"
            )
        model = ensemble_model(spec, w, built, policy, results["classes"])
        row = baseline_row(results, name)
        assert row is not None, "the members are this row's"
        name = row["name"]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    shape = tuple(model.input_shape[1:])
    return Export(Path(out), spec.name, name, shape, results["classes"], w.random, tta, members or [])
