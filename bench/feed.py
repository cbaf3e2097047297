"""How much feeding the backbone uint8 images (rounded after the resize) changes the features,
against the float32 feed (unrounded, preprocessed on the host), with the real weights.

Rerun from the repo root (a few minutes on a 2-core machine):

    tar -xf ../shared/data/cifar10-dev.tar -C /tmp      # if /tmp/cifar10-dev is missing
    .venv/bin/python bench/feed.py --images /tmp/cifar10-dev --per-class 20

The first ``--per-class`` images (by name) of each class folder are copied to a temporary source,
extracted twice with ``mobilenet_v2`` and the real ImageNet weights (``feed_dtype="uint8"``, then
``"float32"``; everything else the defaults), and the pooled vectors ``(N, 1280)`` float32 are
compared row by row: max absolute difference, max relative difference (over the row's largest
value), relative L2 distance and cosine similarity. A logistic-regression head (scikit-learn,
5-fold stratified cross-validation, the same folds for both) is fitted on each: accuracy of each, and
how many held-out predictions differ between them.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import DEFAULT_WEIGHTS, table  # noqa: E402  (puts the repo on sys.path)

from featcache.extractor.runner import ExtractConfig, run_extract  # noqa: E402
from featcache.shared.cache._reader import FeatureCache  # noqa: E402

FEEDS = ("uint8", "float32")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, required=True, metavar="DIR", help="folder of class folders")
    ap.add_argument("--per-class", type=int, default=20, metavar="K", help="images per class (default 20)")
    ap.add_argument("--weights", default=str(DEFAULT_WEIGHTS), help="weights file (default: the real ImageNet file)")
    args = ap.parse_args()
    command = shlex.join([sys.executable, *sys.argv])
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="featcache-feed-") as tmp:
        src = Path(tmp) / "src"
        for folder in sorted(p for p in args.images.iterdir() if p.is_dir()):
            (src / folder.name).mkdir(parents=True)
            for f in sorted(folder.iterdir())[: args.per_class]:
                shutil.copy(f, src / folder.name / f.name)
        pooled, labels, rates = {}, None, {}
        for feed in FEEDS:
            cfg = ExtractConfig(src, Path(tmp) / feed, weights=args.weights, progress=False, feed_dtype=feed)
            report = run_extract(cfg, log=lambda m: None)
            rates[feed] = report.images_per_second
            rows = FeatureCache(cfg.cache).load_pooled()
            order = np.argsort(rows.id)
            pooled[feed], labels = rows.pooled[order].astype(np.float64), rows.label[order]
            print(f"{feed}: {len(order)} rows, {rates[feed]:.1f} img/s", flush=True)
    a, b = pooled["uint8"], pooled["float32"]
    diff = np.abs(a - b)
    rel_max = diff.max(axis=1) / np.abs(b).max(axis=1)
    rel_l2 = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
    cos = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    cells = [
        ["max |uint8 - float32|", f"{diff.max():.3g}", f"{np.median(diff.max(axis=1)):.3g}"],
        ["max abs diff / row's max", f"{rel_max.max():.3g}", f"{np.median(rel_max):.3g}"],
        ["relative L2 distance", f"{rel_l2.max():.3g}", f"{np.median(rel_l2):.3g}"],
        ["1 - cosine similarity", f"{(1 - cos).max():.3g}", f"{np.median(1 - cos):.3g}"],
    ]
    print()
    print(f"pooled vectors, {len(a)} images from {args.images} ({args.per_class} per class), weights {args.weights}")
    print(table(["measure (per row)", "worst row", "median row"], cells))

    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(a, labels))
    preds = {}
    for feed in FEEDS:
        x = pooled[feed]
        p = np.empty(len(x), dtype=labels.dtype)
        for train, test in folds:
            head = LogisticRegression(max_iter=2000, C=1.0).fit(x[train], labels[train])
            p[test] = head.predict(x[test])
        preds[feed] = p
    acc = {feed: float((preds[feed] == labels).mean()) for feed in FEEDS}
    changed = int((preds["uint8"] != preds["float32"]).sum())
    print(
        f"logistic head, 5-fold CV: accuracy uint8 {acc['uint8']:.3f}, float32 {acc['float32']:.3f}; "
        f"{changed} of {len(labels)} held-out predictions differ"
    )
    print(f"extraction (incl. first batch): uint8 {rates['uint8']:.1f} img/s, float32 {rates['float32']:.1f} img/s")
    print(f"total {time.perf_counter() - t_start:.0f} s")
    print(f"command: {command}")


if __name__ == "__main__":
    main()
