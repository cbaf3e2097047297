"""``featcache-train report``: one self-contained HTML page about a finished sweep.

It reads what the run directory holds (``results.json``, ``heads.npz``) and, for the test images the
best head gets most confidently wrong, the cache the sweep was trained on. The best head's
predictions are computed here in numpy from its saved weights (no TensorFlow: the page is made in
about a second); when the cache has moved, the page says so and leaves that section out.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..shared.cache.reader import FeatureCache
from ..shared.cache.schema import SPLIT_CODES
from ..shared.errors import FeatcacheError
from ..shared.inspection import html as H
from ..shared.inspection.report import Thumbs
from ..shared.inspection.suspects import softmax
from .run import HEADS, load_results

WRONG_SHOWN = 24  # most confidently wrong test images on the page
CURVE_SIZE = (300, 180)


def head_weights(run_dir: Path, name: str) -> tuple[dict[str, np.ndarray], tuple[np.ndarray, np.ndarray] | None]:
    """Head ``name``'s parameters from ``heads.npz`` (without the head axis), and the standardisation
    ``(mean (C,), std (C,))`` its pooled inputs get (None when the sweep did not standardise)."""
    path = Path(run_dir) / HEADS
    try:
        z = np.load(path)
    except (OSError, ValueError) as exc:
        raise FeatcacheError(f"{path}: cannot read the heads' weights ({exc})") from None
    with z:
        for key in z.files:
            if key.endswith("_names") and name in z[key].tolist():
                g = key[: -len("_names")]
                k = z[key].tolist().index(name)
                w = {f[len(g) + 1 :]: z[f][k] for f in z.files if f.startswith(g + "_") and f != key}
                mean_std = (z["standardize_mean"], z["standardize_std"]) if "standardize_mean" in z.files else None
                return w, mean_std
    raise FeatcacheError(f"{path}: no weights for head {name!r}")


def head_probs(kind: str, w: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Class probabilities ``(B, n)`` of one head in inference mode (no dropout), as the trainer's
    ``HeadGroup.logits`` computes them: ``x`` is the standardised pooled ``(B, C)`` for linear and mlp
    heads, the maps ``(B, h, w, C)`` for map heads."""
    x = np.asarray(x, dtype=np.float32)
    if kind == "linear":
        return softmax(x @ w["W"] + w["b"])
    if kind == "mlp":
        return softmax(np.maximum(x @ w["W1"] + w["b1"], 0) @ w["W2"] + w["b2"])
    f = np.maximum(x.reshape(len(x), -1, x.shape[-1]) @ w["W1"] + w["b1"], 0)  # (B, P, h)
    att = softmax(f @ w["a"], axis=1)  # (B, P)
    return softmax(np.einsum("bp,bph->bh", att, f) @ w["W2"] + w["b2"])


def best_head_test_predictions(run_dir: Path, results: dict[str, Any], cache: FeatureCache) -> dict[str, np.ndarray]:
    """The best head on the cache's labelled test rows: ``id``, ``index``, ``y`` and ``probs (n, k)``."""
    best = next(h for h in results["heads"] if h["name"] == results["best"])
    kind = best["config"]["kind"]
    w, mean_std = head_weights(run_dir, best["name"])
    cache.check_fingerprint(results["fingerprint"])
    rows = cache.load_pooled()
    sel = np.flatnonzero((rows.label >= 0) & (rows.split == SPLIT_CODES["test"]))
    if kind in ("linear", "mlp"):
        x = rows.pooled[sel]
        if mean_std is not None:
            x = (x - mean_std[0]) / mean_std[1]
        probs = head_probs(kind, w, x) if len(sel) else np.zeros((0, len(results["classes"])))
    else:
        probs = np.zeros((len(sel), len(results["classes"])), np.float32)
        pos = {int(i): k for k, i in enumerate(rows.index[sel])}
        for index, maps in cache.iter_maps(indices=rows.index[sel], dtype="float32"):
            probs[[pos[int(i)] for i in index]] = head_probs(kind, w, maps)
    return {"id": rows.id[sel], "index": rows.index[sel], "y": rows.label[sel].astype(np.int64), "probs": probs}


def per_class(confusion: np.ndarray) -> list[tuple[int, float, float, int]]:
    """``(class, precision, recall, support)`` from a confusion matrix (rows true, columns predicted);
    NaN where undefined (a class never predicted, or with no rows)."""
    m = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(m)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / m.sum(axis=0)
        recall = tp / m.sum(axis=1)
    return [(k, float(precision[k]), float(recall[k]), int(m[k].sum())) for k in range(len(m))]


def _fmt(v: float | None, digits: int = 4) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def build(run_dir: str | Path) -> tuple[str, dict[str, Any]]:
    """The page's HTML, and the facts it shows as JSON-ready data (for scripts and tests)."""
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    classes = results["classes"]
    heads = sorted(results["heads"], key=lambda h: (-h["val_acc"], h["val_loss"]))
    best = next(h for h in heads if h["name"] == results["best"])
    sections = []

    # -- leaderboard ----------------------------------------------------------------------------------
    board = [
        (
            r,
            H.raw(f"<b>{H.esc(h['name'])}</b>" if h["name"] == best["name"] else H.esc(h["name"])),
            h["config"]["kind"],
            h["config"]["lr"],
            h["config"]["weight_decay"],
            h["config"].get("hidden") or "-",
            h["config"].get("dropout", 0),
            h["config"].get("label_smoothing", 0),
            h["best_epoch"],
            _fmt(h["val_acc"]),
            _fmt(h["val_loss"]),
            _fmt(h["test_acc"]),
        )
        for r, h in enumerate(heads, 1)
    ]
    header = ["rank", "head", "kind", "lr", "weight decay", "hidden", "dropout", "smoothing", "best epoch"]
    body = [
        H.note(
            f"{len(heads)} heads on {results['cache']} ({results['splits']}), {results['wall_seconds']:.1f} s; "
            f"best on val: {best['name']}. Command: {' '.join(results.get('command', []))}"
        ),
        H.table([*header, "val acc", "val loss", "test acc"], board, 'id="leaderboard"'),
    ]
    body += [H.note(n) for n in results.get("notes", [])]
    sections.append(("leaderboard", "Leaderboard", "\n".join(body)))

    # -- curves ----------------------------------------------------------------------------------------
    charts = []
    for h in heads:
        ep = [e["epoch"] for e in h["epochs"]]
        acc = [
            ("train acc", ep, [e["train_acc"] for e in h["epochs"]], H.colour(0)),
            ("val acc", ep, [e["val_acc"] for e in h["epochs"]], H.colour(1)),
        ]
        loss = [
            ("train loss", ep, [e["train_loss"] for e in h["epochs"]], H.colour(0)),
            ("val loss", ep, [e["val_loss"] for e in h["epochs"]], H.colour(1)),
        ]
        charts.append(
            f'<div style="display:inline-block;margin:4px" data-head="{H.esc(h["name"])}">'
            + H.line_chart_svg(acc, f"{h['name']}: accuracy", "epoch", CURVE_SIZE, h["best_epoch"])
            + H.line_chart_svg(loss, "loss", "epoch", CURVE_SIZE, h["best_epoch"])
            + "</div>"
        )
    sections.append(
        (
            "curves",
            "Every head's curves",
            H.note("Best on val first; the dotted line is the epoch whose weights were kept.") + "\n".join(charts),
        )
    )

    # -- best head: per class, confusion ---------------------------------------------------------------
    cm = results.get("best_confusion_test")
    pcs: list[tuple[int, float, float, int]] = []
    if cm:
        pcs = per_class(np.array(cm))
        body = [
            H.table(
                ["class", "precision", "recall", "test rows"],
                [(classes[k], _fmt(p, 3), _fmt(r, 3), n) for k, p, r, n in pcs],
                'id="per-class"',
            ),
            "<h3>Test confusion matrix (rows: true class, columns: predicted)</h3>",
            H.heat_table(np.array(cm), classes, "true \\ predicted"),
        ]
    else:
        body = [H.note("No test rows: no per-class numbers.")]
    sections.append(("best", f"Best head on test: {best['name']} (test acc {_fmt(best['test_acc'])})", "\n".join(body)))

    # -- most confidently wrong ------------------------------------------------------------------------
    facts: dict[str, Any] = {"best": best["name"], "per_class": pcs, "wrong": [], "numpy_confusion": None}
    try:
        cache = FeatureCache(results["cache"])
        pred = best_head_test_predictions(run_dir, results, cache)
    except FeatcacheError as exc:
        body = [H.note(f"The cache the sweep was trained on cannot be read ({exc}): no test images.")]
    else:
        y, probs = pred["y"], pred["probs"]
        guess = probs.argmax(axis=1) if len(y) else np.zeros(0, np.int64)
        numpy_cm = np.zeros((len(classes), len(classes)), np.int64)
        np.add.at(numpy_cm, (y, guess), 1)
        facts["numpy_confusion"] = numpy_cm.tolist()
        wrong = np.flatnonzero(guess != y)
        wrong = wrong[np.argsort(-probs[wrong, guess[wrong]], kind="stable")][:WRONG_SHOWN]
        thumbs = Thumbs(cache)
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
            H.table(
                ["image", "id", "true class", "predicted", "p(predicted)", "p(true)"],
                [
                    (
                        H.raw(thumbs(d["id"])),
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
        if cm and numpy_cm.tolist() != cm:
            body.append(
                H.warning(
                    "These predictions do not reproduce the confusion matrix the sweep recorded: has the cache changed?"
                )
            )
    sections.append(("wrong", "Test images the best head gets most confidently wrong", "\n".join(body)))

    top = []
    if results.get("random_weights"):
        top.append(H.warning("The cache was made with RANDOM backbone weights: these accuracies are meaningless."))
    top.append(H.note(f"{run_dir} - made by featcache-train report in {time.perf_counter() - t0:.1f} s."))
    return H.page(f"featcache sweep: {run_dir.name}", sections, "\n".join(top)), facts


def write(run_dir: str | Path, out: str | Path) -> dict[str, Any]:
    """Write the page of ``run_dir`` to ``out``; return its facts."""
    text, facts = build(run_dir)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return facts
