"""How many flipped labels ``featcache-inspect suspects`` finds, against a plain k-NN disagreement score.

Rerun from the repo root on a real-weights cache of natural images (about a minute for 5,000 rows):

    tar -xf ../shared/data/cifar10-dev.tar -C /tmp
    W=../shared/weights/mobilenet_v2_1.0_224_no_top__from_coral_quant_tflite.h5
    .venv/bin/featcache-extract /tmp/cifar10-dev /tmp/cifar-cache --weights $W
    .venv/bin/python bench/label_noise.py /tmp/cifar-cache --rows 1000 --trials 5
    .venv/bin/python bench/label_noise.py /tmp/cifar-cache --rows 5000 --trials 3

Each trial takes ``--rows`` rows at random, flips the labels of 5% of them to another class at random,
ranks the rows with :func:`featcache.shared.inspection.suspects.label_noise` and with the fraction of
each row's 10 nearest neighbours (cosine) whose label differs, and prints the share of flipped rows in
each ranking's top 10% (1.0: all found; 0.1: no better than chance).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from featcache.shared.cache._reader import FeatureCache
from featcache.shared.inspection import similarity, suspects

FLIPPED = 0.05
TOP = 0.10


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache")
    ap.add_argument("--rows", type=int, default=1000, help="rows per trial (at most the cache's)")
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args()
    c = FeatureCache(args.cache)
    rows = c.load_pooled()
    keep = rows.label >= 0
    pooled, labels = rows.pooled[keep], rows.label[keep].astype(np.int64)
    k = len(c.classes)
    found: dict[str, list[float]] = {"suspects": [], "knn": []}
    seconds = []
    for trial in range(args.trials):
        rng = np.random.default_rng(trial + 1)
        n = min(args.rows, len(labels))
        pick = np.sort(rng.choice(len(labels), n, replace=False))
        x, y = pooled[pick], labels[pick]
        flip = rng.choice(n, int(n * FLIPPED), replace=False)
        noisy = y.copy()
        noisy[flip] = (y[flip] + rng.integers(1, k, len(flip))) % k
        t0 = time.perf_counter()
        order = suspects.label_noise(x, noisy, k).order
        seconds.append(time.perf_counter() - t0)
        knn = suspects.knn_disagreement(similarity.normalize(x), noisy, 10)
        for name, ranking in (("suspects", order), ("knn", np.argsort(-knn, kind="stable"))):
            top = set(ranking[: int(n * TOP)].tolist())
            found[name].append(float(np.mean([f in top for f in flip])))
    print(
        f"{n} rows, {args.trials} trials: flipped labels in the top 10%: suspects {np.mean(found['suspects']):.3f} "
        f"(min {np.min(found['suspects']):.3f}), 10-NN disagreement {np.mean(found['knn']):.3f}; "
        f"suspects {np.mean(seconds):.2f} s per run"
    )


if __name__ == "__main__":
    main()
