"""``featcache-train report``: one self-contained HTML page about a finished sweep.

It reads the run directory (format 2, docs/run-format.md) through :mod:`.rundir` and, for the test
images the best head gets most confidently wrong, the cache the sweep was trained on. The best head's
predictions are computed here in numpy from its saved parameters (no TensorFlow: the page is made in
about a second); when that cache has moved or is no longer the one trained on (``identity``), the
page says why and leaves that section out.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..shared.cache import FeatureCache, describe
from ..shared.errors import FeatcacheError
from ..shared.inspection import html as H
from ..shared.inspection.cam import CAM_KINDS, CamHead, head_from_params, row_cams
from ..shared.inspection.cam import describe as describe_cam
from ..shared.inspection.report import Thumbs
from .data import Split, load_dataset, read_maps
from .heads import HEAD_KINDS, TAPS, closed_form, reads_maps
from .identity import check_cache
from .report import (
    CONFUSION,
    FULL_CONFUSION_MAX_CLASSES,
    confusion,
    confusion_entries,
    confusion_summary,
    pick_by,
    pick_rule,
    pick_score,
    ranking,
    recorded_confusion,
    selected_test_acc,
    selected_val_acc,
)
from .rundir import head_params, load_results
from .sweep import HeadConfig

WRONG_SHOWN = 24  # most confidently wrong test images on the page
CURVE_SIZE = (300, 180)
MAPS_BLOCK = 256  # test rows whose maps are read and predicted at once (map heads)


def head_probs(cfg: HeadConfig, w: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Class probabilities ``(B, n)`` of one head in inference mode (no dropout): its kind's numpy forward
    pass (``HeadKind.probs``, checked against the Keras export and the trainer's own by
    tests/test_heads_forward.py). ``w``: the head's parameters as :func:`~featcache.trainer.rundir.head_params`
    returns them; ``x``: the standardised pooled ``(B, C)`` for linear and mlp heads, the pooled vectors as
    cached for logreg heads, the (unstandardised) maps ``(B, h, w, C)`` for map heads."""
    probs = HEAD_KINDS[cfg.kind].probs
    if probs is None:
        known = sorted(k for k, v in HEAD_KINDS.items() if v.probs is not None)
        raise FeatcacheError(f"head kind {cfg.kind!r}: the report cannot compute it in numpy (known: {known})")
    return probs(cfg, w, np.asarray(x, dtype=np.float32))


def test_rows(run_dir: Path, results: dict[str, Any]) -> tuple[FeatureCache, Split]:
    """The cache the run was trained on (refused unless it still is that cache) and its test split,
    selected exactly as the sweep selected it."""
    recorded = results["cache"]
    cache = FeatureCache(recorded["path"])
    check_cache(cache, recorded, run_dir)
    settings = results["settings"]
    best = next(h for h in results["heads"] if h["name"] == results["best"])
    taps = best["config"].get("features") == TAPS  # the layer taps after the pooled maps, as it was trained
    ds = load_dataset(
        cache, val_fraction=settings["val_fraction"], allow_partial=settings["allow_partial"], views=True, taps=taps
    )
    return cache, ds.test


def best_head_test_predictions(
    run_dir: Path, results: dict[str, Any], params: tuple[dict[str, np.ndarray], Any] | None = None
) -> tuple[FeatureCache, dict[str, np.ndarray]]:
    """The trained-on cache, and the best head on its labelled test rows: ``id (n,)``, ``index (n,)``,
    ``y (n,)`` int64 and ``probs (n, k)`` float32 (a pooled head picked with test-time augmentation:
    the mean over the cached views, as the sweep scored it). ``params``: the best head's
    :func:`~featcache.trainer.rundir.head_params`, when already read."""
    best = next(h for h in results["heads"] if h["name"] == results["best"])
    cfg = HeadConfig.of(best["config"])
    w, mean_std = params or head_params(run_dir, results, best["name"])
    cache, test = test_rows(run_dir, results)
    probs = np.zeros((len(test), len(results["classes"])), np.float32)
    if not reads_maps(cfg.kind):
        views = test.views if best.get("use_tta") else None
        assert test.pooled is not None, "load_dataset loads the pooled vectors"
        inputs = [views[:, v] for v in range(views.shape[1])] if views is not None else [test.pooled]

        def one(x: np.ndarray) -> np.ndarray:
            as_cached = closed_form(cfg.kind) or mean_std is None  # a logreg head normalises them itself
            return head_probs(cfg, w, x if as_cached else (x - mean_std[0]) / mean_std[1])

        probs[:] = np.mean([one(x) for x in inputs], axis=0) if len(test) else probs
    else:
        for start in range(0, len(test), MAPS_BLOCK):  # bounded memory: maps are ~250 KB a row in float32
            part = slice(start, start + MAPS_BLOCK)
            # float16, as the sweep held them (data.load_maps), so these reproduce its test predictions
            probs[part] = head_probs(cfg, w, read_maps(cache, test.index[part], "float16"))
    return cache, {"id": test.id, "index": test.index, "y": test.y.astype(np.int64), "probs": probs}


def per_class(summary: dict[str, Any]) -> list[tuple[int, float, float, int]]:
    """``(class, precision, recall, support)`` from a confusion's per-class counts (``report.confusion_summary``:
    ``correct``, ``predicted``, ``true``); NaN where undefined (a class never predicted, or with no rows)."""
    tp, predicted, true = (np.asarray(summary[k], dtype=np.float64) for k in ("correct", "predicted", "true"))
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / predicted
        recall = tp / true
    return [(k, float(precision[k]), float(recall[k]), int(true[k])) for k in range(len(tp))]


# The grid keys shown on the leaderboard, by column title; "-" where the head's kind does not read one.
BOARD_KEYS = {
    "lr": "lr",
    "weight_decay": "weight decay",
    "hidden": "hidden",
    "dropout": "dropout",
    "label_smoothing": "smoothing",
    "c": "C",
    "power": "power",
}


def _setting(config: dict[str, Any], key: str) -> Any:
    kind = HEAD_KINDS.get(config["kind"])
    return config.get(key, "-") if kind is not None and key in kind.keys else "-"


def _fmt(v: float | None, digits: int = 4) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def _num(v: Any) -> str:
    """A grid setting as a person reads it: floats at 3 significant digits (C 0.00316, not 0.0031622776601683794)."""
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def kind_of(h: dict[str, Any]) -> str:
    return h["config"]["kind"]


def _scored(h: dict[str, Any]) -> str:
    """How the head's accuracies were scored, as the command line and leaderboard.txt say it."""
    return f"TTA x{h['views']}" if h.get("use_tta") else "view 0"


Section = tuple[str, str, str]  # one part of the page: its id, its title and its HTML (html.page)


def build(run_dir: str | Path) -> tuple[str, dict[str, Any]]:
    """The page's HTML, and the facts it shows as JSON-ready data (for scripts and tests)."""
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    order, _ = ranking(results["heads"], results["splits"]["val"])  # the leaderboard's own order
    heads = [results["heads"][i] for i in order]
    best = next(h for h in heads if h["name"] == results["best"])
    cm, summary = recorded_confusion(results)
    pcs = per_class(summary) if summary else []
    facts: dict[str, Any] = {"best": best["name"], "per_class": pcs, "wrong": [], "numpy_confusion": None}
    sections = [
        _leaderboard_section(results, heads, best),
        _curves_section(heads, best),
        _best_section(results["classes"], best, cm, summary, pcs),
        _wrong_section(run_dir, results, best, cm, summary, facts),
    ]
    top = []
    if results.get("random_weights"):
        top.append(H.warning("The cache was made with RANDOM backbone weights: these accuracies are meaningless."))
    top.append(H.note(f"{run_dir} - made by featcache-train report in {time.perf_counter() - t0:.1f} s."))
    return H.page(f"featcache sweep: {run_dir.name}", sections, "\n".join(top)), facts


def _leaderboard_section(results: dict[str, Any], heads: list[dict[str, Any]], best: dict[str, Any]) -> Section:
    """Every head of the sweep in the leaderboard's order (``heads``), its settings and scores, with the
    pick rule and the run's notes."""
    cv = any(h.get("cv") for h in heads)
    board = [
        (
            r,
            H.raw(f"<b>{H.esc(h['name'])}</b>" if h["name"] == best["name"] else H.esc(h["name"])),
            h["config"]["kind"],
            *(_num(_setting(h["config"], key)) for key in BOARD_KEYS),
            h["best_epoch"],
            _fmt(selected_val_acc(h)),
            _fmt(h["val_loss"]),
            _fmt(selected_test_acc(h)),
            _scored(h),
            *((_fmt(pick_score(h)[0]), _fmt(pick_score(h)[1]), pick_by(h)) if cv else ()),
        )
        for r, h in enumerate(heads, 1)
    ]
    header = ["rank", "head", "kind", *BOARD_KEYS.values(), "best epoch"]
    # cross-validated heads (trainer.cv): the quantity the pick compared, its standard error and which it was
    pick_columns = ["pick acc", "SE", "by"] if cv else []
    body = [
        H.note(
            f"{len(heads)} heads on {results['cache']['path']} ({describe(results['cache']['fingerprint'])}; "
            f"rows: {', '.join(f'{k} {v:,}' for k, v in results['splits'].items())}), {results['wall_seconds']:.1f} s; "
            f"the pick: {best['name']}. Command: {' '.join(results.get('command', []))}"
        ),
        H.table([*header, "val acc", "val loss", "test acc", "scored", *pick_columns], board, 'id="leaderboard"'),
        H.note(pick_rule(results["heads"], results["splits"]["val"])),
    ]
    body += [H.note(n) for n in results.get("notes", [])]
    return ("leaderboard", "Leaderboard", "\n".join(body))


def _curves_section(heads: list[dict[str, Any]], best: dict[str, Any]) -> Section:
    """Epoch curves for heads trained by epochs; a logistic regression is one L-BFGS fit per C, so its
    picture is the regularisation path: accuracy and loss against C, one chart per path (power, cache)."""
    charts = []
    paths: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for h in heads:
        if h["config"]["kind"] == "logreg" and h["config"].get("c"):
            paths.setdefault((h["config"].get("power", 1), h.get("cache")), []).append(h)
        else:
            charts.append(_epoch_charts(h))
    for (power, cache), group in paths.items():
        charts.append(_path_charts(power, cache, group, best))
    note = H.note(
        "Best on val first; the dotted line is the epoch whose weights were kept. Logistic regressions (one "
        "L-BFGS fit per C) are drawn as their regularisation path: accuracy and loss against log10 C, the "
        "dotted line at the picked head's C."
    )
    return ("curves", "Every head's curves", note + "\n".join(charts))


def _curve_pair(
    x: list[Any], rows: list[dict[str, Any]]
) -> tuple[list[tuple[str, list[Any], list[Any], str]], list[tuple[str, list[Any], list[Any], str]]]:
    """The accuracy lines and the loss lines (train, val) of the epoch records ``rows`` against ``x``."""
    acc = [
        ("train acc", x, [e["train_acc"] for e in rows], H.colour(0)),
        ("val acc", x, [e["val_acc"] for e in rows], H.colour(1)),
    ]
    loss = [
        ("train loss", x, [e["train_loss"] for e in rows], H.colour(0)),
        ("val loss", x, [e["val_loss"] for e in rows], H.colour(1)),
    ]
    return acc, loss


def _epoch_charts(h: dict[str, Any]) -> str:
    """Head ``h``'s accuracy and loss per epoch, the kept epoch dotted."""
    acc, loss = _curve_pair([e["epoch"] for e in h["epochs"]], h["epochs"])
    return (
        f'<div style="display:inline-block;margin:4px" data-head="{H.esc(h["name"])}">'
        + H.line_chart_svg(acc, f"{h['name']}: accuracy", "epoch", CURVE_SIZE, h["best_epoch"])
        + H.line_chart_svg(loss, "loss", "epoch", CURVE_SIZE, h["best_epoch"])
        + "</div>"
    )


def _path_charts(power: Any, cache: Any, group: list[dict[str, Any]], best: dict[str, Any]) -> str:
    """One logreg regularisation path (the heads ``group`` of one power and cache): each fit's last
    accuracy and loss against log10 C, the picked head's C dotted."""
    group = sorted(group, key=lambda h: h["config"]["c"])
    x = [float(np.log10(h["config"]["c"])) for h in group]
    picked = next((xi for xi, h in zip(x, group, strict=True) if h["name"] == best["name"]), None)
    acc, loss = _curve_pair(x, [h["epochs"][-1] for h in group])
    title = f"logreg path{f' ({cache})' if cache else ''}, power {_num(power)}: accuracy"
    return (
        f'<div style="display:inline-block;margin:4px" data-path="{H.esc(title)}" data-heads="{len(group)}">'
        + H.line_chart_svg(acc, title, "log10 C", CURVE_SIZE, picked)
        + H.line_chart_svg(loss, "loss", "log10 C", CURVE_SIZE, picked)
        + "</div>"
    )


def _best_section(
    classes: list[str],
    best: dict[str, Any],
    cm: np.ndarray | None,
    summary: dict[str, Any] | None,
    pcs: list[tuple[int, float, float, int]],
) -> Section:
    """The best head on test as the run recorded it: per-class precision and recall (``pcs``), and the
    confusion matrix ``cm`` (or, when the run kept only its ``summary``, the pairs mixed up most)."""
    if summary:
        body = [
            H.table(
                ["class", "precision", "recall", "test rows"],
                [(classes[k], _fmt(p, 3), _fmt(r, 3), n) for k, p, r, n in pcs],
                'id="per-class"',
            )
        ]
        if cm is not None:
            body += [
                "<h3>Test confusion matrix (rows: true class, columns: predicted)</h3>",
                H.heat_table(cm, classes, "true \\ predicted"),
            ]
        else:
            body += [
                "<h3>Test confusions: the class pairs mixed up most</h3>",
                H.note(
                    f"{len(classes)} classes: more than {FULL_CONFUSION_MAX_CLASSES}, so the run keeps the "
                    f"{len(summary['top'])} largest off-diagonal cells of the test confusion matrix and the per-class "
                    "counts above, not the whole matrix."
                ),
                H.table(
                    ["true class", "predicted", "test rows"],
                    [(classes[t], classes[p], c) for t, p, c in summary["top"]],
                    'id="top-confusions"',
                ),
            ]
    else:
        body = [H.note("No test rows: no per-class numbers.")]
    title = f"Best head on test: {best['name']} (test acc {_fmt(selected_test_acc(best))}, {_scored(best)})"
    return ("best", title, "\n".join(body))


def _wrong_section(
    run_dir: Path,
    results: dict[str, Any],
    best: dict[str, Any],
    cm: np.ndarray | None,
    summary: dict[str, Any] | None,
    facts: dict[str, Any],
) -> Section:
    """The test images the best head gets most confidently wrong, from its predictions computed here
    (:func:`best_head_test_predictions`); fills ``facts``' wrong, numpy_confusion and cam. When the
    trained-on cache cannot be used, a note that says why instead."""
    params = head_params(run_dir, results, best["name"])  # a bad heads.npz is the run's error, not the cache's
    try:
        cache, pred = best_head_test_predictions(run_dir, results, params)
    except FeatcacheError as exc:
        body = [H.note(f"The cache the sweep was trained on cannot be used ({exc}): no test images.")]
    else:
        body, numpy_cm = _wrong_body(run_dir, results, best, params, cache, pred, facts)
        if summary and (
            confusion_summary(numpy_cm) != summary or (cm is not None and not np.array_equal(cm, numpy_cm))
        ):
            partial = results["settings"]["allow_partial"]
            body.append(
                H.warning(
                    "These predictions do not reproduce the confusion matrix the sweep recorded"
                    + (" (the run trained on an unfinished cache: has it grown since?)" if partial else "")
                )
            )
    return ("wrong", "Test images the best head gets most confidently wrong", "\n".join(body))


def _cam_head(
    run_dir: Path, results: dict[str, Any], best: dict[str, Any], params: tuple[dict[str, np.ndarray], Any]
) -> CamHead | None:
    """The best head (its ``params``, :func:`~featcache.trainer.rundir.head_params`) as a
    :class:`~featcache.shared.inspection.cam.CamHead` when it is linear in the pooled vector (``CAM_KINDS``);
    None for the other kinds."""
    if kind_of(best) not in CAM_KINDS:
        return None
    power = best["config"].get("power", 1)
    fp = results["cache"]["fingerprint"]
    return head_from_params(run_dir, best["name"], kind_of(best), *params, power, results["classes"], fp)


def _wrong_body(
    run_dir: Path,
    results: dict[str, Any],
    best: dict[str, Any],
    params: tuple[dict[str, np.ndarray], Any],
    cache: FeatureCache,
    pred: dict[str, np.ndarray],
    facts: dict[str, Any],
) -> tuple[list[str], np.ndarray]:
    """The section's notes and table of the :data:`WRONG_SHOWN` errors the best head is surest of, with
    their thumbnails and (for a head linear in the pooled vector) its class activation map; with the
    confusion matrix ``(k, k)`` int64 of these predictions."""
    classes = results["classes"]
    y, probs = pred["y"], pred["probs"]
    guess = probs.argmax(axis=1) if len(y) else np.zeros(0, np.int64)
    numpy_cm = confusion(y, guess, len(classes))
    facts["numpy_confusion"] = confusion_entries(numpy_cm)[CONFUSION]  # as results.json records it
    wrong = np.flatnonzero(guess != y)
    wrong = wrong[np.argsort(-probs[wrong, guess[wrong]], kind="stable")][:WRONG_SHOWN]
    thumbs = Thumbs(cache)
    head = _cam_head(run_dir, results, best, params)  # where the head looks for the class it wrongly predicts
    cams = {} if head is None else row_cams(cache, head, pred["index"][wrong], guess[wrong])
    facts["cam"] = None if head is None else {"head": head.name, "exact": head.exact}

    def image(i: int) -> str:
        uid = str(pred["id"][i])
        if head is None:
            return thumbs(uid)
        grid, k = cams[int(pred["index"][i])]
        return thumbs(uid) + thumbs.cam(uid, grid, f"{uid}: where {head.name} looks for {classes[k]}")

    facts["wrong"] = [
        {
            "id": str(pred["id"][i]),
            "label": classes[y[i]],
            "predicted": classes[guess[i]],
            "p": float(probs[i, guess[i]]),
        }
        for i in wrong
    ]
    body = [
        H.note(
            f"The best head's predictions, computed from its saved weights on the {len(y)} labelled test rows "
            f"(accuracy {float((guess == y).mean()) if len(y) else float('nan'):.4f}); the "
            f"{len(wrong)} errors it is surest of, surest first."
        ),
        H.note(
            describe_cam(head, "the class it wrongly predicts")
            if head is not None
            else f"No class activation maps: the best head is a {kind_of(best)} head, not linear in the pooled "
            f"vector (they are drawn for {' or '.join(CAM_KINDS)} heads)."
        ),
        H.table(
            ["image", "id", "true class", "predicted", "p(predicted)", "p(true)"],
            [
                (
                    H.raw(image(int(i))),
                    H.raw(f'<span data-wrong="{H.esc(d["id"])}">{H.esc(d["id"])}</span>'),
                    d["label"],
                    d["predicted"],
                    f"{d['p']:.3f}",
                    f"{probs[i, y[i]]:.3f}",
                )
                for d, i in zip(facts["wrong"], wrong, strict=True)
            ],
            'id="wrong"',
        ),
    ]
    why = thumbs.why_none()
    if why:
        body.append(H.note(why))
    return body, numpy_cm


def write(run_dir: str | Path, out: str | Path) -> dict[str, Any]:
    """Write the page of ``run_dir`` to ``out``; return its facts."""
    text, facts = build(run_dir)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return facts
