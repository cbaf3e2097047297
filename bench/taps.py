"""Layer taps and the kept top input (issue #29): what they cost the extractor, and what they buy a head.

    .venv/bin/python bench/taps.py cost --images DIR [--limit 600] [--repeats 2]
    .venv/bin/python bench/taps.py quality CACHE

``cost``: the same images (the first ``--limit`` of DIR's listing, as a list file) extracted into fresh
caches with ``taps="none"``, ``taps="default"`` and ``taps="default", keep_top_input=True``, run
alternately (none, default, default+top, none, ...), the best of ``--repeats`` kept for each: the
extraction loop's seconds (``ExtractReport.seconds``: reading, decoding, the backbone, writing), the
backbone's share, and the bytes a row of the shard files. The issue's target: default taps cost at most
5% more extraction time than none.

``quality``: on a cache extracted with taps, the top input and (optionally) views, on its own
train/val/test split (the labelled rows), test accuracy of

* scikit-learn ``LogisticRegression`` (lbfgs, standardised features, C picked on val from 0.03, 0.1,
  0.3, 1; every view in training and the probabilities averaged over views at test when the cache has
  views) on the pooled vectors, and on the pooled vectors concatenated with the taps;
* the ``top`` recipe in plain Keras: copies of the backbone's ``Conv_1`` + ``Conv_1_bn`` (inference
  mode, its statistics pinned) + ReLU6 with their weights, fed the cached ``top_input``, then global
  pooling, dropout 0.2 and a dense softmax; the dense layer warmed 5 epochs with the conv frozen
  (Adam 1e-3), then everything AdamW 1e-3 for 12 epochs, the epoch best on val kept (no views).

Weights for ``cost``: ``--weights`` (default: the real ImageNet file beside the repo when present,
else random with a note; speed does not depend on their values). ``quality`` needs the cache's own
weights for the top copy (the fingerprint's weights_path).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import DEFAULT_WEIGHTS, command_line, table  # noqa: E402  (puts the repo on sys.path)

CONFIGS = {
    "no taps": {"taps": "none", "keep_top_input": False},
    "default taps": {"taps": "default", "keep_top_input": False},
    "default taps + top input": {"taps": "default", "keep_top_input": True},
}


def cost(args: argparse.Namespace) -> None:
    from featcache.extractor.runner import ExtractConfig, run_extract
    from featcache.extractor.sources import open_source
    from featcache.shared.cache._manifest import Manifest

    weights = args.weights or (str(DEFAULT_WEIGHTS) if DEFAULT_WEIGHTS.is_file() else "random")
    if weights == "random":
        print("note: real weights not found; random weights (speed does not depend on them)", flush=True)
    source = open_source(Path(args.images))
    paths = [p.decode() for p in source.paths[: args.limit]]
    tmp = Path(tempfile.mkdtemp(prefix="featcache-taps-"))
    listing = tmp / "images.txt"
    listing.write_text("".join(f"{p}\n" for p in paths))
    best: dict[str, tuple[float, float, float]] = {}
    for r in range(args.repeats):
        for name, options in CONFIGS.items():
            cache = tmp / f"{name.replace(' ', '_').replace('+', 'plus')}-{r}"
            report = run_extract(
                ExtractConfig(
                    source=listing,
                    cache=cache,
                    weights=weights,
                    batch_size=args.batch_size,
                    progress=False,
                    **options,
                ),
                log=lambda m: None,
            )
            m = Manifest.load(cache)
            per_row = sum(s.bytes for s in m.shards) / max(m.rows, 1)
            print(
                f"repeat {r} {name}: {report.seconds:.1f} s (backbone {report.backbone_seconds:.1f} s), "
                f"{per_row / 1024:.1f} KB a row",
                flush=True,
            )
            if name not in best or report.seconds < best[name][0]:
                best[name] = (report.seconds, report.backbone_seconds, per_row)
    base = best["no taps"][0]
    rows = [
        [
            name,
            f"{s:.1f}",
            f"{b:.1f}",
            f"{(s / base - 1) * 100:+.1f}%",
            f"{len(paths) / s:.1f}",
            f"{per_row / 1024:.1f}",
        ]
        for name, (s, b, per_row) in best.items()
    ]
    print()
    print(f"{len(paths)} images from {args.images}, batch {args.batch_size}, best of {args.repeats}, weights {weights}")
    print(table(["run", "loop s", "backbone s", "vs no taps", "img/s", "KB a row"], rows))
    print(command_line())


def _split_arrays(cache_path: Path) -> dict[str, object]:
    from featcache.shared.cache import schema
    from featcache.shared.cache._reader import FeatureCache

    c = FeatureCache(cache_path)
    rows = c.load_pooled()
    pooled_views = c.load_pooled_views()
    taps_views = c.load_taps_views()
    top = {
        int(i): t for index, block in c.iter_maps(dataset=schema.TOP_INPUT) for i, t in zip(index, block, strict=True)
    }
    top_input = np.stack([top[int(i)] for i in rows.index])
    return {"cache": c, "rows": rows, "pooled": pooled_views, "taps": taps_views, "top": top_input}


def _logreg(x: np.ndarray, y: np.ndarray, split: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """(val accuracy, test accuracy, C) of scikit-learn's LR, views in training, averaged at test."""
    from sklearn.linear_model import LogisticRegression

    train, val, test = (split == k for k in (0, 1, 2))
    v = x.shape[1]
    xt = x[train].reshape(-1, x.shape[2])
    mean, std = xt.mean(0), xt.std(0) + 1e-6
    best = (-1.0, 0.0, 0.0)
    for c in (0.03, 0.1, 0.3, 1.0):
        lr = LogisticRegression(C=c, max_iter=300, random_state=seed)
        lr.fit((xt - mean) / std, np.repeat(y[train], v))

        def acc(sel: np.ndarray, lr: LogisticRegression = lr) -> float:
            p = np.mean([lr.predict_proba((x[sel, k] - mean) / std) for k in range(v)], axis=0)
            return float((p.argmax(1) == y[sel]).mean())

        got = (acc(val), acc(test), c)
        print(f"  C={c:g}: val {got[0]:.3f} test {got[1]:.3f}", flush=True)
        if got[0] > best[0]:
            best = got
    return best


def _top_head(cache, top: np.ndarray, y: np.ndarray, split: np.ndarray, n_classes: int) -> tuple[float, float, int]:
    """(val accuracy, test accuracy, best epoch) of the top recipe (module docstring)."""
    from featcache.shared.backbones import build_backbone, get_backbone, import_tensorflow, resolve_weights

    import_tensorflow()
    import keras

    keras.utils.set_random_seed(0)
    spec = get_backbone(cache.fingerprint["backbone"])
    backbone = build_backbone(spec, resolve_weights(spec, cache.fingerprint["weights_path"]))
    inp = keras.Input(top.shape[1:])
    x = inp
    copies = []
    for name in spec.top_layers:
        layer = backbone.get_layer(name)
        copy = layer.__class__.from_config(layer.get_config())
        x = copy(x)
        copy.set_weights(layer.get_weights())
        copies.append(copy)
    for copy in copies:
        if isinstance(copy, keras.layers.BatchNormalization):
            copy.trainable = False  # inference mode, the backbone's statistics (../shared/README.md)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    out = keras.layers.Dense(n_classes, activation="softmax")(x)
    model = keras.Model(inp, out)
    train, val, test = (split == k for k in (0, 1, 2))
    xs = {k: top[s].astype(np.float32) for k, s in (("train", train), ("val", val), ("test", test))}
    ys = {"train": y[train], "val": y[val], "test": y[test]}

    def set_conv_trainable(flag: bool) -> None:
        for copy in copies:
            copy.trainable = flag and not isinstance(copy, keras.layers.BatchNormalization)

    set_conv_trainable(False)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(xs["train"], ys["train"], batch_size=64, epochs=5, verbose=0)
    set_conv_trainable(True)
    model.compile(keras.optimizers.AdamW(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    best = (-1.0, 0.0, 0)
    for epoch in range(12):
        t0 = time.perf_counter()
        model.fit(xs["train"], ys["train"], batch_size=64, epochs=1, verbose=0)
        va = float((model.predict(xs["val"], verbose=0).argmax(1) == ys["val"]).mean())
        te = float((model.predict(xs["test"], verbose=0).argmax(1) == ys["test"]).mean())
        print(f"  top epoch {epoch + 1}: val {va:.3f} test {te:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
        if va > best[0]:
            best = (va, te, epoch + 1)
    return best


def quality(args: argparse.Namespace) -> None:
    d = _split_arrays(Path(args.cache))
    rows, c = d["rows"], d["cache"]
    labelled = rows.label >= 0
    y, split = rows.label[labelled], rows.split[labelled]
    pooled, taps = d["pooled"][labelled], d["taps"][labelled]
    sizes = {name: int((split == k).sum()) for k, name in enumerate(("train", "val", "test"))}
    out = []
    t0 = time.perf_counter()
    print("LR on pooled", flush=True)
    va, te, cc = _logreg(pooled, y, split)
    out.append(
        ["LR, pooled", str(pooled.shape[2]), f"C={cc:g}", f"{va:.3f}", f"{te:.3f}", f"{time.perf_counter() - t0:.0f}"]
    )
    t0 = time.perf_counter()
    print("LR on pooled + taps", flush=True)
    va, te, cc = _logreg(np.concatenate([pooled, taps], axis=2), y, split)
    width = str(pooled.shape[2] + taps.shape[2])
    out.append(["LR, pooled + taps", width, f"C={cc:g}", f"{va:.3f}", f"{te:.3f}", f"{time.perf_counter() - t0:.0f}"])
    if not args.skip_top:
        t0 = time.perf_counter()
        print("top head", flush=True)
        va, te, ep = _top_head(c, d["top"][labelled], y, split, len(c.classes))
        out.append(
            [
                "top (Conv_1 fine-tuned)",
                "7x7x320",
                f"epoch {ep}",
                f"{va:.3f}",
                f"{te:.3f}",
                f"{time.perf_counter() - t0:.0f}",
            ]
        )
    print()
    print(
        f"{args.cache}: train {sizes['train']} / val {sizes['val']} / test {sizes['test']} rows, "
        f"{c.views} view(s); taps {', '.join(f'{n} {w}' for n, w in c.taps)}"
    )
    print(table(["head", "input", "picked", "val acc", "test acc", "seconds"], out))
    print(command_line())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("cost")
    a.add_argument("--images", required=True)
    a.add_argument("--limit", type=int, default=600)
    a.add_argument("--repeats", type=int, default=2)
    a.add_argument("--batch-size", type=int, default=32)
    a.add_argument("--weights", default=None)
    b = sub.add_parser("quality")
    b.add_argument("cache")
    b.add_argument("--skip-top", action="store_true")
    args = ap.parse_args()
    cost(args) if args.what == "cost" else quality(args)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
