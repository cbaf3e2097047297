"""What a sweep of many heads costs against one head, against Keras ``fit`` head by head, and how
good the best head is against scikit-learn's logistic regression on the same features.

Rerun from the repo root (about a minute on a 2-core machine; ``pip install -e '.[bench]'`` first
for scikit-learn):

    .venv/bin/python bench/train.py                  # the sample data's cache (made if missing)
    .venv/bin/python bench/train.py --cache CACHE --heads 100 --epochs 30 --keras-heads 5

In one run, on the same cache, train split, val split and epochs (no early stopping, so every
contender does the same work):

1. one linear head with featcache's stacked trainer;
2. ``--heads`` linear heads (a grid of learning rates x weight decays) in one stacked sweep;
3. the same heads trained one after another with Keras ``model.fit`` (a Dense softmax layer, AdamW,
   validation every epoch): ``--keras-heads`` of them are timed and the time is scaled to
   ``--heads`` (the table says so);
4. the best head's test accuracy next to scikit-learn's ``LogisticRegression`` on the same
   standardised pooled vectors, its ``C`` picked on val from a log grid.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from _common import DEFAULT_CACHE, REPO, ensure_cache, standardizer, table  # noqa: E402  (puts the repo on sys.path)

from featcache.shared.cache._reader import FeatureCache  # noqa: E402
from featcache.trainer.data import load_dataset  # noqa: E402
from featcache.trainer.loop import train  # noqa: E402
from featcache.trainer.report import best_head  # noqa: E402
from featcache.trainer.settings import Settings  # noqa: E402
from featcache.trainer.sweep import HeadConfig  # noqa: E402


def grid(n: int) -> list[HeadConfig]:
    """``n`` linear heads: learning rates x weight decays on log grids."""
    n_lr = max(1, int(np.sqrt(n)))
    n_wd = -(-n // n_lr)
    lrs = np.geomspace(3e-4, 3e-2, n_lr)
    wds = np.concatenate([[0.0], np.geomspace(1e-5, 1e-1, n_wd - 1)]) if n_wd > 1 else [0.0]
    return [HeadConfig("linear", float(lr), float(wd)) for lr in lrs for wd in wds][:n]


def keras_fit_seconds(ds, configs: list[HeadConfig], mean_std, epochs: int, batch: int) -> tuple[float, list[float]]:
    """Wall time of Keras ``fit`` for each config, one after another; returns (seconds, val accs)."""
    import keras

    x = (ds.train.pooled - mean_std[0]) / mean_std[1]
    xv = (ds.val.pooled - mean_std[0]) / mean_std[1]
    n = len(ds.classes)
    t0 = time.perf_counter()
    accs = []
    for cfg in configs:
        model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(n, activation="softmax")])
        opt = keras.optimizers.AdamW(learning_rate=cfg.lr, weight_decay=cfg.weight_decay)
        model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        h = model.fit(x, ds.train.y, batch_size=batch, epochs=epochs, validation_data=(xv, ds.val.y), verbose=0)
        accs.append(max(h.history["val_accuracy"]))
    return time.perf_counter() - t0, accs


def sklearn_baseline(ds, mean_std) -> tuple[float, float, float] | None:
    """(best C, val acc, test acc) of LogisticRegression over a C grid, or None without scikit-learn."""
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        return None
    f = lambda s: (s.pooled - mean_std[0]) / mean_std[1]  # noqa: E731
    best = None
    for c in np.geomspace(1e-3, 1e2, 6):
        clf = LogisticRegression(C=c, max_iter=3000).fit(f(ds.train), ds.train.y)
        val = clf.score(f(ds.val), ds.val.y)
        if best is None or val > best[1]:
            best = (float(c), float(val), float(clf.score(f(ds.test), ds.test.y)) if len(ds.test) else float("nan"))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--cache",
        type=Path,
        default=None,
        help=f"cache to train on (default: {DEFAULT_CACHE.relative_to(REPO)}, extracted from data/sample when missing)",
    )
    ap.add_argument("--heads", type=int, default=100, help="linear heads in the sweep (default 100)")
    ap.add_argument("--epochs", type=int, default=30, help="epochs for every contender, no early stopping (default 30)")
    ap.add_argument("--batch-size", type=int, default=64, help="rows per step for every contender (default 64)")
    ap.add_argument(
        "--keras-heads",
        type=int,
        default=5,
        help="heads actually trained with Keras fit; scaled to --heads (default 5)",
    )
    ap.add_argument("--repeats", type=int, default=2, help="runs of the featcache contenders, best kept (default 2)")
    args = ap.parse_args()
    command = shlex.join([sys.executable, *sys.argv])
    cache = ensure_cache(args.cache or DEFAULT_CACHE)
    ds = load_dataset(FeatureCache(cache))
    settings = Settings(epochs=args.epochs, batch_size=args.batch_size, patience=args.epochs + 1, seed=0)
    mean_std = standardizer(ds.train)
    configs = grid(args.heads)

    def timed(cs: list[HeadConfig]) -> tuple[float, dict]:
        t0 = time.perf_counter()
        out = train(ds, cs, settings, progress=False)
        return time.perf_counter() - t0, out

    train(ds, configs[:1], settings, progress=False)  # warm-up: TensorFlow start-up, tracing
    one = min(timed(configs[:1])[0] for _ in range(args.repeats))
    runs = [timed(configs) for _ in range(args.repeats)]
    many, out = min(runs, key=lambda r: r[0])
    k = min(args.keras_heads, len(configs))
    keras_s, _ = keras_fit_seconds(ds, configs[:k], mean_std, args.epochs, args.batch_size)
    keras_scaled = keras_s * len(configs) / k
    best = best_head(out.heads, len(ds.val))
    rows = [
        ["featcache, 1 linear head", "1", f"{one:.2f}", "1.00", "measured"],
        [
            f"featcache, {len(configs)} linear heads stacked",
            str(len(configs)),
            f"{many:.2f}",
            f"{many / one:.2f}",
            "measured",
        ],
        [
            f"Keras fit, {len(configs)} heads one by one",
            str(len(configs)),
            f"{keras_scaled:.2f}",
            f"{keras_scaled / one:.2f}",
            f"{k} measured ({keras_s:.2f} s), scaled x{len(configs) / k:g}",
        ],
    ]
    fp = FeatureCache(cache).fingerprint
    print(
        f"\nhead sweep cost, {cache}: train {len(ds.train)}, val {len(ds.val)}, test {len(ds.test)} rows, "(
            f"{len(ds.classes)} classes; {args.epochs} epochs, batch {args.batch_size}, no early "
            f"stopping; best of {args.repeats}"
        )
    )
    print(table(["contender", "heads", "seconds", "vs 1 head", "how"], rows))
    print(f"Keras fit per head vs featcache per head in the stacked sweep: {keras_scaled / many:.0f}x")
    sk = sklearn_baseline(ds, mean_std)
    acc_rows = [
        [
            f"featcache best of {len(configs)}: {best['name']}",
            f"{best['val_acc']:.4f}",
            "-" if best["test_acc"] is None else f"{best['test_acc']:.4f}",
        ]
    ]
    if sk is None:
        acc_rows.append(["scikit-learn LogisticRegression", "not installed", "(pip install -e '.[bench]')"])
    else:
        acc_rows.append(
            [f"scikit-learn LogisticRegression, C={sk[0]:g} (best on val of 6)", f"{sk[1]:.4f}", f"{sk[2]:.4f}"]
        )
    print(table(["model", "val acc", "test acc"], acc_rows))
    if fp.get("random_weights"):
        print("WARNING: the cache was made with RANDOM weights: the accuracies are meaningless")
    print(f"command: {command}")


if __name__ == "__main__":
    main()
