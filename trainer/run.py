"""One sweep: every head of the grid trained in one pass over the cache, best picked on val.

Heads are grouped by kind and width (:class:`~featcache.trainer.engine.HeadGroup`); each epoch draws one
shuffled batch order, and every batch is read once and fed to every group. After each epoch every
head is evaluated on val; a head that has not improved its val accuracy for ``patience`` epochs is
frozen, and at the end each head gets back the weights of its best epoch. The run directory is new
for every sweep; ``results.json`` is written last, so its presence means the sweep finished.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..shared.cache.fingerprint import describe
from ..shared.cache.fsutil import atomic_write_json
from ..shared.cache.reader import FeatureCache
from .data import Dataset, load_dataset, load_maps, standardizer
from .select import rank, wilson
from .sweep import POOLED_KINDS, HeadConfig
from .views import accuracy as view_accuracy
from .views import epoch_views, pick_views, tta_probs

RESULTS = "results.json"
LEADERBOARD = "leaderboard.txt"
PLOT = "plot.png"
BEST_HEAD = "best_head.keras"
HEADS = "heads.npz"
EVAL_BATCH = {"pooled": 4096, "maps": 256}

Log = Callable[[str], None]


@dataclass
class Settings:
    """Training settings shared by every head of a sweep."""

    epochs: int = 30
    batch_size: int = 256
    patience: int = 5
    seed: int = 0
    standardize: bool = True
    val_fraction: float = 0.1
    max_maps_gb: float = 8.0
    allow_partial: bool = False
    views: bool = True  # train pooled heads on the cache's views (when it has them) and score with TTA too


def new_run_dir(root: Path) -> Path:
    """``root/YYYYmmdd-HHMMSS`` (with ``-2``, ``-3``... when taken): never an earlier run's folder."""
    root.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        path = root / (stem if n == 1 else f"{stem}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"{root}: cannot create a new run directory")


def _inputs(ds: Dataset, kind: str, split: str, mean_std: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    s = getattr(ds, split)
    if kind in POOLED_KINDS:
        return s.pooled if mean_std is None else (s.pooled - mean_std[0]) / mean_std[1]
    return s.maps


def _batches(x: np.ndarray, y: np.ndarray, size: int):
    for i in range(0, len(y), size):
        yield x[i : i + size], y[i : i + size]


def _predict(group: Any, x: np.ndarray, size: int) -> np.ndarray:
    """Every head's class probabilities ``(K, n, n_classes)`` on ``x``, ``size`` rows at a time."""
    return np.concatenate([group.predict(x[i : i + size]) for i in range(0, len(x), size)], axis=1)


def selected_val_acc(head: dict[str, Any]) -> float:
    """The val accuracy of the way of scoring chosen on val: with TTA when it is better there."""
    return head["val_acc_tta"] if head.get("use_tta") else head["val_acc"]


def train(ds: Dataset, configs: list[HeadConfig], settings: Settings, progress: bool = True) -> dict[str, Any]:
    """Train every head of ``configs`` on ``ds``; return per-head histories, groups and stats.

    ``ds`` must have maps loaded when a map head is among ``configs``.
    """
    from .engine import HeadGroup, tf

    tf.config.experimental.enable_op_determinism()
    tf.random.set_seed(settings.seed)
    mean_std = standardizer(ds.train) if settings.standardize else None
    n_views = ds.train.views.shape[1] if settings.views and ds.train.views is not None else 1
    views_in = (
        {
            s: getattr(ds, s).views if mean_std is None else (getattr(ds, s).views - mean_std[0]) / mean_std[1]
            for s in ("train", "val", "test")
        }
        if n_views > 1
        else None
    )
    by_group: dict[tuple[str, int], list[HeadConfig]] = {}
    for c in configs:
        by_group.setdefault(c.group, []).append(c)
    in_dim = ds.train.pooled.shape[1]
    groups = [HeadGroup(cs, in_dim, len(ds.classes), settings.seed + g) for g, cs in enumerate(by_group.values())]
    inputs = {id(g): {s: _inputs(ds, g.kind, s, mean_std) for s in ("train", "val", "test")} for g in groups}
    eval_batch = {id(g): EVAL_BATCH["pooled" if g.kind in POOLED_KINDS else "maps"] for g in groups}
    history = {id(g): [[] for _ in g.configs] for g in groups}
    best = {
        id(g): {
            "acc": np.full(g.k, -1.0),
            "loss": np.full(g.k, np.inf),
            "epoch": np.zeros(g.k, int),
            "stale": np.zeros(g.k, int),
        }
        for g in groups
    }
    seconds = {id(g): 0.0 for g in groups}
    rng = np.random.default_rng(settings.seed)
    y_train = ds.train.y
    n_batches = -(-len(y_train) // settings.batch_size)
    bar = tqdm(total=settings.epochs * n_batches, unit="batch", disable=not progress, leave=False, dynamic_ncols=True)
    step = 0
    for epoch in range(1, settings.epochs + 1):
        active = {id(g): best[id(g)]["stale"] < settings.patience for g in groups}
        if not any(a.any() for a in active.values()):
            break
        order = rng.permutation(len(y_train))
        which = epoch_views(len(y_train), n_views, settings.seed, epoch) if views_in else None
        sums = {id(g): np.zeros((2, g.k)) for g in groups}
        for b in range(n_batches):
            idx = np.sort(order[b * settings.batch_size : (b + 1) * settings.batch_size])
            yb = y_train[idx]
            for g in groups:
                if not active[id(g)].any():
                    continue
                t0 = time.perf_counter()
                if views_in is not None and g.kind in POOLED_KINDS:  # each row through this epoch's view
                    xb = pick_views(views_in["train"], idx, which)
                else:
                    xb = inputs[id(g)]["train"][idx]
                loss, correct = g.train_step(xb, yb, active[id(g)], (settings.seed, step))
                seconds[id(g)] += time.perf_counter() - t0
                sums[id(g)] += [loss * len(idx), correct]
            step += 1
            bar.update(1)
        for g in groups:
            t0 = time.perf_counter()
            vloss, vacc = g.evaluate(_batches(inputs[id(g)]["val"], ds.val.y, eval_batch[id(g)]))
            bst, act = best[id(g)], active[id(g)]
            improved = act & ((vacc > bst["acc"]) | ((vacc == bst["acc"]) & (vloss < bst["loss"])))
            g.keep_best(improved)
            bst["acc"] = np.where(improved, vacc, bst["acc"])
            bst["loss"] = np.where(improved, vloss, bst["loss"])
            bst["epoch"] = np.where(improved, epoch, bst["epoch"])
            bst["stale"] = np.where(improved, 0, bst["stale"] + act)
            seconds[id(g)] += time.perf_counter() - t0
            tl, tc = sums[id(g)] / len(y_train)
            for k in np.flatnonzero(act):
                history[id(g)][k].append(
                    {
                        "epoch": epoch,
                        "train_loss": float(tl[k]),
                        "train_acc": float(tc[k]),
                        "val_loss": float(vloss[k]),
                        "val_acc": float(vacc[k]),
                    }
                )
        bar.set_postfix(epoch=epoch, best_val=f"{max(best[id(g)]['acc'].max() for g in groups):.3f}")
    bar.close()
    heads = []
    for g in groups:
        g.restore_best()
        tloss, tacc = g.evaluate(_batches(inputs[id(g)]["test"], ds.test.y, eval_batch[id(g)]))
        tta: dict[str, np.ndarray] = {}
        if views_in is not None and g.kind in POOLED_KINDS:  # mean probabilities over every view
            for s in ("val", "test") if len(ds.test) else ("val",):
                probs = tta_probs(lambda x: _predict(g, x, eval_batch[id(g)]), views_in[s])  # noqa: B023
                tta[s] = view_accuracy(probs, getattr(ds, s).y)
        for k, cfg in enumerate(g.configs):
            heads.append(
                {
                    "name": cfg.name,
                    "config": cfg.to_json(),
                    "epochs": history[id(g)][k],
                    "best_epoch": int(best[id(g)]["epoch"][k]),
                    "val_acc": float(best[id(g)]["acc"][k]),
                    "val_loss": float(best[id(g)]["loss"][k]),
                    "test_acc": float(tacc[k]) if len(ds.test) else None,
                    "test_loss": float(tloss[k]) if len(ds.test) else None,
                    "group_wall_seconds": round(seconds[id(g)], 3),
                    "group_size": g.k,
                    "views": n_views if tta else 1,
                    "val_acc_tta": float(tta["val"][k]) if tta else None,
                    "test_acc_tta": float(tta["test"][k]) if "test" in tta else None,
                    # chosen on val only: TTA when it is strictly better there
                    "use_tta": bool(tta and tta["val"][k] > best[id(g)]["acc"][k]),
                }
            )
    return {"heads": heads, "groups": groups, "mean_std": mean_std, "inputs": inputs}


def head_cost(config: dict[str, Any], in_dim: int, n_classes: int) -> int:
    """Parameters of a head (its ``config`` as in results.json): the "simpler" of two tied heads."""
    h = config["hidden"]
    if config["kind"] == "linear":
        return (in_dim + 1) * n_classes
    return (in_dim + 1) * h + (h + 1) * n_classes + (h if config["kind"] == "map" else 0)


def ranking(heads: list[dict[str, Any]], n_val: int, in_dim: int, n_classes: int) -> tuple[list[int], int]:
    """The one-standard-error rule (:func:`featcache.trainer.select.rank`) over the heads' val
    accuracies (with TTA where chosen on val), fewer parameters winning ties within noise."""
    return rank([selected_val_acc(h) for h in heads], [head_cost(h["config"], in_dim, n_classes) for h in heads], n_val)


def _best(heads: list[dict[str, Any]], n_val: int, in_dim: int, n_classes: int) -> dict[str, Any]:
    """The pick of :func:`ranking`: the simplest head within one standard error of the best."""
    return heads[ranking(heads, n_val, in_dim, n_classes)[0][0]]


def leaderboard(results: dict[str, Any], top: int = 10) -> str:
    """Heads in selection order: those within noise of the best (marked ``~``), simplest first, then
    the rest by val accuracy; val accuracy with its 95% Wilson interval, and how it was scored."""
    heads = results["heads"]
    n_val = results["splits"]["val"]
    order, tied = ranking(heads, n_val, results.get("in_dim", 0), len(results["classes"]))
    fmt = lambda v: "   -  " if v is None else f"{v:.4f}"  # noqa: E731
    lines = [f"{'rank':>4}  {'val acc':>7}  {'95% CI':>13}  {'test acc':>8}  {'scored':>6}  {'epoch':>5}  head"]
    for r, i in enumerate(order[:top], 1):
        h = heads[i]
        va = selected_val_acc(h)
        lo, hi = wilson(va * n_val, n_val)
        test = h["test_acc_tta"] if h.get("use_tta") else h["test_acc"]
        scored = f"TTA x{h['views']}" if h.get("use_tta") else "view 0"
        mark = "~" if r <= tied else " "
        lines.append(
            f"{r:>3}{mark}  {va:>7.4f}  [{lo:.3f},{hi:.3f}]  {fmt(test):>8}  {scored:>6}  {h['best_epoch']:>5}  "
            f"{h['name']}"
        )
    if len(heads) > top:
        lines.append(f"  ... {len(heads) - top} more in {RESULTS}")
    lines.append(f"~: within one standard error of the best val accuracy ({tied} heads); the first is picked")
    return "\n".join(lines)


def confusion(y: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    m = np.zeros((n, n), np.int64)
    np.add.at(m, (y, pred), 1)
    return m


def plot(results: dict[str, Any], path: Path) -> str | None:
    """Validation accuracy against learning rate per kind/width, the best head's curves and its test
    confusion matrix, as one PNG. Returns why it was skipped, or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'featcache[plot]')"
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    lines: dict[str, list[tuple[float, float]]] = {}
    for h in results["heads"]:
        c = h["config"]
        key = c["kind"] + ("" if c["kind"] == "linear" else f" h{c['hidden']}")
        lines.setdefault(key, []).append((c["lr"], h["val_acc"]))
    for key, pts in sorted(lines.items()):
        by_lr: dict[float, float] = {}
        for lr, acc in pts:
            by_lr[lr] = max(acc, by_lr.get(lr, -1))
        xs = sorted(by_lr)
        axes[0].plot(xs, [by_lr[x] for x in xs], marker="o", label=f"{key} (best over other settings)")
        axes[0].scatter([p[0] for p in pts], [p[1] for p in pts], s=8, alpha=0.4)
    axes[0].set(xscale="log", xlabel="learning rate", ylabel="val accuracy", title="every head")
    axes[0].legend(fontsize=8)
    best = next(h for h in results["heads"] if h["name"] == results["best"])
    ep = [e["epoch"] for e in best["epochs"]]
    for key in ("train_acc", "val_acc"):
        axes[1].plot(ep, [e[key] for e in best["epochs"]], label=key.replace("_", " "))
    axes[1].axvline(best["best_epoch"], color="grey", ls=":", label="best epoch")
    axes[1].set(xlabel="epoch", ylabel="accuracy", title=f"best: {best['name']}")
    axes[1].legend(fontsize=8)
    cm = np.array(results.get("best_confusion_test") or [[0]])
    axes[2].imshow(cm, cmap="Blues")
    classes = results["classes"]
    if len(classes) <= 30 and cm.shape[0] == len(classes):
        axes[2].set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
        axes[2].set_yticks(range(len(classes)), classes, fontsize=7)
        for (i, j), v in np.ndenumerate(cm):
            if v:
                axes[2].text(j, i, str(v), ha="center", va="center", fontsize=6)
    axes[2].set(xlabel="predicted", ylabel="true", title="best head, test confusion")
    if results.get("random_weights"):
        fig.suptitle("RANDOM backbone weights: these accuracies are meaningless", color="red")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


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
    ds = load_dataset(
        cache, val_fraction=settings.val_fraction, allow_partial=settings.allow_partial, views=settings.views
    )
    for note in ds.notes:
        log(f"note: {note}")
    if any(c.kind not in POOLED_KINDS for c in configs):
        load_maps(cache, ds, settings.max_maps_gb)
    log(
        f"{cache_path}: {describe(cache.fingerprint)}; train {len(ds.train)}, val {len(ds.val)}, "
        f"test {len(ds.test)} rows, "
        f"{len(ds.classes)} classes; {len(configs)} heads"
    )
    out = train(ds, configs, settings, progress)
    heads = out["heads"]
    best = _best(heads, len(ds.val), ds.train.pooled.shape[1], len(ds.classes))
    run_dir = new_run_dir(runs_root)
    # the best head as a Keras model, and every head's weights in one file
    from .keras_heads import head_model

    gi, k = next(
        (gi, k) for gi, g in enumerate(out["groups"]) for k, c in enumerate(g.configs) if c.name == best["name"]
    )
    group = out["groups"][gi]
    cfg = group.configs[k]
    in_shape = (ds.train.pooled.shape[1],) if cfg.kind in POOLED_KINDS else tuple(cache.maps_shape)
    model = head_model(cfg, group.head_weights(k), in_shape, len(ds.classes), out["mean_std"])
    model.save(run_dir / BEST_HEAD)
    arrays: dict[str, np.ndarray] = {}
    for gi2, g in enumerate(out["groups"]):
        arrays[f"g{gi2}_names"] = np.array([c.name for c in g.configs])
        for name in g.names:
            arrays[f"g{gi2}_{name}"] = g.params[name].numpy()
    if out["mean_std"] is not None:
        arrays["standardize_mean"], arrays["standardize_std"] = out["mean_std"]
    np.savez(run_dir / HEADS, **arrays)
    confusion_test = None
    if len(ds.test):
        x_test = out["inputs"][id(group)]["test"]
        probs = np.concatenate(
            [
                group.predict(x)[k]
                for x, _ in _batches(x_test, ds.test.y, EVAL_BATCH["pooled" if cfg.kind in POOLED_KINDS else "maps"])
            ]
        )
        confusion_test = confusion(ds.test.y, probs.argmax(-1), len(ds.classes)).tolist()
    results = {
        "format": "featcache-train-results",
        "version": 1,
        "complete": True,
        "command": command,
        "cache": str(Path(cache_path).resolve()),
        "fingerprint": cache.fingerprint,
        "random_weights": cache.random_weights,
        "classes": ds.classes,
        "splits": ds.sizes(),
        "in_dim": int(ds.train.pooled.shape[1]),
        "val_carved_from_train": ds.val_carved,
        "unlabelled_rows_skipped": ds.unlabelled_rows,
        "settings": asdict(settings),
        "notes": ds.notes,
        "best": best["name"],
        "best_head_file": BEST_HEAD,
        "best_confusion_test": confusion_test,
        "wall_seconds": round(time.perf_counter() - t0, 3),
        "heads": heads,
    }
    board = leaderboard(results)
    (run_dir / LEADERBOARD).write_text(board + "\n")
    skipped = plot(results, run_dir / PLOT)
    results["plot"] = None if skipped else PLOT
    if skipped:
        log(f"plot skipped: {skipped}")
    atomic_write_json(run_dir / RESULTS, results)
    return run_dir, results


def load_results(run_dir: Path) -> dict[str, Any]:
    from ..shared.errors import FeatcacheError

    path = Path(run_dir) / RESULTS
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise FeatcacheError(f"{path}: no results: not a finished featcache-train run") from None
    except ValueError as exc:
        raise FeatcacheError(f"{path}: not valid JSON ({exc})") from None
    if results.get("format") != "featcache-train-results" or not results.get("complete"):
        raise FeatcacheError(f"{path}: not a finished featcache-train run")
    return results
