"""How fast ``cache.dataset(...)`` feeds ``model.fit``, against loading the split into numpy first.

Rerun from the repo root:

    .venv/bin/python bench/dataset.py                 # cache/bench-sample (made from data/sample if missing)
    .venv/bin/python bench/dataset.py --cache CACHE --epochs 3

For pooled vectors and for maps, the same small Keras model (pooled: one softmax layer; maps: global
average pooling then a softmax layer, so that the input path, not the model, is what is measured)
is trained on the train split for ``--epochs`` epochs, batch ``--batch-size``:

* ``cache.dataset``: ``model.fit(cache.dataset("train", features, ...))``, streaming blocks from the
  shards (shuffled by blocks and a bounded buffer) with the maps inflated on all cores;
* numpy in memory: ``load_pooled()`` / ``iter_maps()`` into one array first (timed), then
  ``model.fit(x, y, shuffle=True)``, what one does when the split fits in memory.

Contenders alternate, each the best of ``--repeats``, from the page cache; rows/s count training
rows times epochs. A fresh model per run, compiled before the clock starts.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from _common import DEFAULT_CACHE, REPO, ensure_cache, table  # noqa: E402  (puts the repo on sys.path)

import featcache  # noqa: E402
from featcache.shared.cache import schema  # noqa: E402


def make_model(features: str, cache: featcache.FeatureCache):
    import keras

    shape = cache.maps_shape if features == schema.MAPS else cache.maps_shape[-1:]
    layers = [keras.Input(shape)] + ([keras.layers.GlobalAveragePooling2D()] if features == schema.MAPS else [])
    model = keras.Sequential([*layers, keras.layers.Dense(len(cache.classes), activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def in_memory(cache: featcache.FeatureCache, features: str) -> tuple[np.ndarray, np.ndarray]:
    """The train split's labelled rows as numpy arrays (float32 features, int32 labels)."""
    rows = cache.load_pooled()
    keep = (rows.split == schema.SPLIT_CODES["train"]) & (rows.label >= 0)
    if features == schema.POOLED:
        return rows.pooled[keep], rows.label[keep]
    blocks = list(cache.iter_maps(indices=rows.index[keep], dtype="float32"))
    x = np.concatenate([m for _, m in blocks])
    index = np.concatenate([i for i, _ in blocks])
    return x, rows.label[np.searchsorted(rows.index, index)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--cache",
        type=Path,
        default=None,
        help=f"cache to read (default: {DEFAULT_CACHE.relative_to(REPO)}, made from data/sample when missing)",
    )
    ap.add_argument("--epochs", type=int, default=3, help="epochs per fit (default 3)")
    ap.add_argument("--batch-size", type=int, default=32, help="rows per step (default 32)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each contender, best kept (default 2)")
    args = ap.parse_args()
    command = shlex.join([sys.executable, *sys.argv])
    cache = featcache.open_cache(ensure_cache(args.cache or DEFAULT_CACHE))
    import keras

    keras.utils.set_random_seed(0)
    results = []
    for features in (schema.POOLED, schema.MAPS):

        def streamed(features: str = features) -> float:
            ds = cache.dataset("train", features, batch_size=args.batch_size, seed=0)
            model = make_model(features, cache)
            t0 = time.perf_counter()
            model.fit(ds, epochs=args.epochs, verbose=0)
            return time.perf_counter() - t0

        def numpy_first(features: str = features) -> float:
            model = make_model(features, cache)
            t0 = time.perf_counter()
            x, y = in_memory(cache, features)
            model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, shuffle=True, verbose=0)
            return time.perf_counter() - t0

        rows = len(in_memory(cache, schema.POOLED)[1])
        best = {"cache.dataset (streamed)": [], "numpy in memory, then fit": []}
        for _ in range(args.repeats):  # alternated, so both see the same machine state
            best["cache.dataset (streamed)"].append(streamed())
            best["numpy in memory, then fit"].append(numpy_first())
        base = min(best["numpy in memory, then fit"])
        for name, times in best.items():
            s = min(times)
            results.append([features, name, f"{s:.2f}", f"{rows * args.epochs / s:,.0f}", f"{base / s:.2f}"])
    fp = cache.fingerprint
    print(
        f"\n{cache.path}: {cache.num_rows} rows, train split {rows}; maps {fp['maps_dtype']} "
        f"{cache.manifest.storage['compression']}; {args.epochs} epochs, batch {args.batch_size}, "
        f"best of {args.repeats}"
    )
    print(table(["features", "contender", "seconds", "rows/s", "speed vs numpy"], results, left={0, 1}))
    print(f"command: {command}")


if __name__ == "__main__":
    main()
