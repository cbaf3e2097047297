"""How good featcache's heads are on natural images, and what they cost, against scikit-learn's
logistic regression on the same cache.

Rerun from the repo root (``pip install -e '.[bench]'`` first for scikit-learn), on the CIFAR-10 dev
images beside the repo (``tar -xf ../shared/data/cifar10-dev.tar -C /tmp``)::

    .venv/bin/python bench/quality.py /tmp/cifar10-dev --work /tmp/featcache-quality

The caches are extracted into ``--work`` once (about 3.5 minutes per view on 2 cores) and reused
on later runs. The split is the cache's hash split with fractions ``--split`` (default 0.6,0.2,0.2:
about 3,000 train / 1,000 val / 1,000 test of the 5,000 images). Every model is chosen on val only;
test is looked at once, for the table. Rows:

* scikit-learn ``LogisticRegression`` (lbfgs), ``C`` picked on val from ``--cs``: the baseline;
* featcache's L-BFGS logistic-regression path over the same ``C`` values (warm starts);
* featcache's stacked SGD sweep of linear and MLP heads (``--sweep-heads``) and of map heads;
* the k-NN head (cosine, DINO-weighted votes), ``k`` and temperature picked on val;
* with views: logistic regression trained on every view of the train rows, scored on view 0 and with
  test-time augmentation (mean of the views' probabilities);
* the ensemble of the top-k rows by val (k picked on val), and the one-SE pick over everything;
* what ``featcache-train CACHE`` does with no options (the default grid, baselines and pick, through
  the Python API, writing its run under ``--work``): the head it picks and its whole wall time.
* the ensemble of the top-k rows by val (k picked on val), and the one-SE pick over everything.

``--maps`` runs instead the map-head comparison of docs/quality.md ("Map heads"): the pooled heads
(L-BFGS logreg, the linear and MLP SGD sweeps) against one map head per pooling and augmentation
(``--map-variants``), on view 0 of the cache (``--views 1`` for the plain one).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from _common import DEFAULT_WEIGHTS, standardizer, table  # noqa: E402  (puts the repo on sys.path)

from featcache.shared.cache.reader import FeatureCache  # noqa: E402
from featcache.shared.cache.split import parse_fractions  # noqa: E402
from featcache.shared.errors import FeatcacheError  # noqa: E402
from featcache.trainer import knn, logreg, pooling, selection  # noqa: E402
from featcache.trainer import views as tviews  # noqa: E402
from featcache.trainer.data import Dataset, load_dataset  # noqa: E402

SWEEP_GRIDS = [
    {"head": ["linear"], "lr": [1e-3, 3e-3, 1e-2], "weight_decay": [0.0, 1e-3, 1e-2, 1e-1]},
    {"head": ["mlp"], "hidden": [512], "dropout": [0.0, 0.3, 0.5], "lr": [3e-4, 1e-3, 3e-3], "weight_decay": [0, 1e-2]},
]
MAP_GRID = {"head": ["map"], "hidden": [256], "dropout": [0.0, 0.3], "lr": [3e-4, 1e-3]}
# --maps: one map head (128 channels, dropout 0.3, lr 1e-3, patience 3: half the cost of the h256
# lr 3e-4 head above, which the shared 2-core machine could not afford 8 times) with each pooling,
# then attention with each augmentation of the maps, and multiscale with all three.
MAP_HEAD = {"head": ["map"], "hidden": [128], "dropout": [0.3], "lr": [1e-3]}
MAP_PATIENCE = 3
MAP_VARIANTS = [
    *((pool, "none") for pool in ("attention", "mean", "gem", "multiscale")),
    *(("attention", aug) for aug in ("flip", "crop", "drop")),
    ("multiscale", "flip+crop+drop"),
]


def ensure(folder: Path, cache: Path, weights: str, split: str, log=print, **extra) -> Path:  # noqa: ANN001
    """A finished cache of ``folder`` at ``cache``, extracted now unless one is already there."""
    try:
        FeatureCache(cache).require_complete()
        return cache
    except FeatcacheError:
        pass
    from featcache.extractor.runner import ExtractConfig, run_extract

    log(f"extracting {folder} -> {cache} ({extra or 'plain'}); a few minutes per view")
    t0 = time.perf_counter()
    cfg = ExtractConfig(
        source=folder, cache=cache, weights=weights, split_fractions=parse_fractions(split), progress=False, **extra
    )
    report = run_extract(cfg, log=lambda m: None)
    log(f"  {report.summary().splitlines()[0]} ({time.perf_counter() - t0:.0f} s)")
    return cache


def sklearn_path(x: dict, y: dict, cs: list[float]) -> tuple[selection.Candidate, float] | None:
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        return None
    t0 = time.perf_counter()
    best = None
    for c in cs:
        clf = LogisticRegression(C=c, max_iter=3000).fit(x["train"], y["train"])
        cand = selection.Candidate(
            f"scikit-learn LogisticRegression C={c:g}", clf.predict_proba(x["val"]), clf.predict_proba(x["test"])
        )
        if best is None or cand.val_acc(y["val"]) > best.val_acc(y["val"]):
            best = cand
    return best, time.perf_counter() - t0


def sklearn_views_path(ds: Dataset, cs: list[float]) -> tuple[selection.Candidate, float] | None:
    """scikit-learn fitting what featcache-train's default fits on a cache with views: square-rooted
    features of every train view, standardised, each C from scratch, scored with TTA. The same model
    the obvious way, for the time comparison."""
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        return None
    t0 = time.perf_counter()
    n, v, c = ds.train.views.shape
    flat = logreg.signed_power(ds.train.views.reshape(n * v, c).astype(np.float64), 0.5)
    mean, std = flat.mean(0), np.maximum(flat.std(0), 1e-6)
    views = {
        s: (logreg.signed_power(getattr(ds, s).views.astype(np.float64), 0.5) - mean) / std for s in ("val", "test")
    }
    best = None
    for cv in cs:
        clf = LogisticRegression(C=cv, max_iter=3000).fit((flat - mean) / std, np.repeat(ds.train.y, v))
        tta = {s: tviews.tta_probs(clf.predict_proba, views[s]) for s in ("val", "test")}
        cand = selection.Candidate(f"scikit-learn, sqrt features, {v} views C={cv:g}, TTA", tta["val"], tta["test"])
        if best is None or cand.val_acc(ds.val.y) > best.val_acc(ds.val.y):
            best = cand
    return best, time.perf_counter() - t0


def std_views(ds: Dataset, mean: np.ndarray, std: np.ndarray) -> dict[str, np.ndarray] | None:
    """Standardised ``(n, V, C)`` views of every split, or None without views."""
    if ds.train.views is None:
        return None
    return {s: (getattr(ds, s).views - mean) / std for s in ("train", "val", "test")}


def logreg_candidates(x: dict, y: dict, cs: list[float], n_classes: int, xv: dict | None):  # noqa: ANN001
    """Candidates of the L-BFGS path on view 0; with views ``xv`` also of the path trained on every
    view of the train rows, scored on view 0 and with TTA. Returns (view-0 family, seconds), (views
    family, seconds) or None."""
    t0 = time.perf_counter()
    fits = logreg.fit_path(x["train"], y["train"], n_classes, cs)
    plain = [
        selection.Candidate(f"featcache L-BFGS logreg C={f.c:g}", f.predict_proba(x["val"]), f.predict_proba(x["test"]))
        for f in fits
    ]
    plain_s = time.perf_counter() - t0
    if xv is None:
        return (plain, plain_s), None
    t0 = time.perf_counter()
    n, v, c = xv["train"].shape
    fits = logreg.fit_path(xv["train"].reshape(n * v, c), np.repeat(y["train"], v), n_classes, cs)
    views = []
    for f in fits:
        tta = {s: tviews.tta_probs(f.predict_proba, xv[s]) for s in ("val", "test")}
        name = f"L-BFGS logreg on {v} views C={f.c:g}"
        views.append(selection.Candidate(name + ", view 0", f.predict_proba(x["val"]), f.predict_proba(x["test"])))
        views.append(selection.Candidate(name + ", TTA", tta["val"], tta["test"], cost=v))
    return (plain, plain_s), (views, time.perf_counter() - t0)


KNN_KS, KNN_TS = (10, 20, 50, 100), (0.03, 0.07, 0.2)


def knn_candidates(ds: Dataset, n_classes: int, views: bool):  # noqa: ANN001
    """k-NN on view 0; with ``views``, keys from every train view and TTA over the query views."""
    t0 = time.perf_counter()
    if not views:
        index = knn.fit(ds.train.pooled, ds.train.y, n_classes)
        out = knn.sweep(index, [ds.val.pooled, ds.test.pooled], ks=KNN_KS, temperatures=KNN_TS)
        cands = [selection.Candidate(f"k-NN k={k} T={t:g}", va, te, cost=0.5) for (k, t), (va, te) in out.items()]
        return cands, time.perf_counter() - t0
    n, v, c = ds.train.views.shape
    index = knn.fit(ds.train.views.reshape(n * v, c), np.repeat(ds.train.y, v), n_classes)
    queries = [getattr(ds, s).views[:, i] for s in ("val", "test") for i in range(v)]
    out = knn.sweep(index, queries, ks=KNN_KS, temperatures=KNN_TS)
    cands = [
        selection.Candidate(f"k-NN on {v} views k={k} T={t:g}, TTA", np.mean(p[:v], 0), np.mean(p[v:], 0), cost=0.5 * v)
        for (k, t), p in out.items()
    ]
    return cands, time.perf_counter() - t0


def sweep_candidates(ds: Dataset, grids: list[dict], epochs: int):  # noqa: ANN001
    """The stacked SGD sweep's heads as candidates (probabilities from each trained head; with views,
    each pooled head scored on view 0 and with TTA)."""
    from featcache.trainer.loop import train
    from featcache.trainer.settings import Settings
    from featcache.trainer.sweep import expand

    configs = [c for g in grids for c in expand(g)]
    t0 = time.perf_counter()
    out = train(ds, configs, Settings(epochs=epochs, patience=5, seed=0), progress=False)
    seconds = time.perf_counter() - t0
    cands = []
    for state in out.states:
        probs = {s: state.predictions(s) for s in ("val", "test")}
        tta = {s: state.tta_probabilities(s) for s in ("val", "test")} if state.n_views > 1 else None
        for k, cfg in enumerate(state.group.configs):
            cost = 1.0 if cfg.kind == "linear" else 2.0 if cfg.kind == "mlp" else 4.0
            cands.append(selection.Candidate(f"sweep {cfg.name}", probs["val"][k], probs["test"][k], cost=cost))
            if tta is not None:
                v = state.n_views
                cands.append(selection.Candidate(f"sweep {cfg.name}, TTA", tta["val"][k], tta["test"][k], cost * v))
    return cands, seconds, len(configs)


def default_run(path: Path, work: Path) -> tuple[dict, dict]:
    """``featcache.train(path)`` with every default: (the picked head's row, results.json)."""
    import featcache

    result = featcache.train(path, runs=work / "runs", progress=False)
    r = result.results
    return next(h for h in r["heads"] if h["name"] == r["best"]), r


def maps_mode(
    cache: FeatureCache, ds: Dataset, cs: list[float], epochs: int, variants: list[tuple[str, str]]
) -> list[list[str]]:
    """Table rows: the best pooled heads (L-BFGS logreg path, C on val; the SGD linear and MLP sweeps)
    against one map head per (pooling, augmentation) of ``variants``, all on view 0 of ``ds``."""
    from featcache.trainer.data import load_maps
    from featcache.trainer.loop import train
    from featcache.trainer.settings import Settings
    from featcache.trainer.sweep import expand

    y = {s: getattr(ds, s).y for s in ("train", "val", "test")}
    mean, std = standardizer(ds.train)
    x = {s: (getattr(ds, s).pooled - mean) / std for s in ("train", "val", "test")}
    rows = []

    def row(cand: selection.Candidate, seconds: float, how: str) -> None:
        va, n_val = cand.val_acc(y["val"]), len(y["val"])
        lo, hi = selection.wilson(va * n_val, n_val)
        rows.append(
            [cand.name, f"{va:.4f} [{lo:.3f}, {hi:.3f}]", f"{cand.test_acc(y['test']):.4f}", f"{seconds:.1f}", how]
        )
        print(" | ".join(rows[-1]), flush=True)

    (lr, lr_s), _ = logreg_candidates(x, y, cs, len(ds.classes), None)
    row(max(lr, key=lambda c: c.val_acc(y["val"])), lr_s, f"pooled: {len(cs)} C, one warm-started path")
    sw, sw_s, n = sweep_candidates(ds, SWEEP_GRIDS[:1], epochs)
    row(max(sw, key=lambda c: c.val_acc(y["val"])), sw_s, f"pooled: best of {n} linear SGD heads, stacked")
    sw, sw_s, n = sweep_candidates(ds, SWEEP_GRIDS[1:], epochs)
    row(max(sw, key=lambda c: c.val_acc(y["val"])), sw_s, f"pooled: best of {n} MLP SGD heads, stacked")
    t0 = time.perf_counter()
    load_maps(cache, ds, 8.0)
    print(f"maps loaded in {time.perf_counter() - t0:.0f} s", flush=True)
    configs = [c for pool, aug in variants for c in expand({**MAP_HEAD, "pool": [pool], "map_augment": [aug]})]
    out = train(ds, configs, Settings(epochs=epochs, patience=MAP_PATIENCE, seed=0), progress=False)
    for state in out.states:
        probs = {s: state.predict_all(state.inputs[s])[0] for s in ("val", "test")}
        head = next(h for h in out.heads if h["name"] == state.group.configs[0].name)
        cfg = state.group.configs[0]
        how = f"map: pool {cfg.pool}, augment {cfg.map_augment}, best epoch {head['best_epoch']}"
        if state.group.pool == "gem":
            how += f", p {float(state.group.params['p'][0]):.2f}"
        row(selection.Candidate(head["name"], probs["val"], probs["test"]), state.seconds, how)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="class folders of images (e.g. /tmp/cifar10-dev)")
    ap.add_argument(
        "--work", type=Path, default=Path("/tmp/featcache-quality"), help="where the caches are kept and reused"
    )
    ap.add_argument(
        "--weights", default=str(DEFAULT_WEIGHTS), help="backbone weights (default: the real ones beside the repo)"
    )
    ap.add_argument("--split", default="0.6,0.2,0.2", help="train,val,test fractions of the hash split")
    ap.add_argument(
        "--cs", default=",".join(f"{c:g}" for c in logreg.DEFAULT_CS), help="C values for both logistic regressions"
    )
    ap.add_argument("--epochs", type=int, default=30, help="epochs of the SGD sweeps (early stopping, patience 5)")
    ap.add_argument("--no-sweep", action="store_true", help="skip the stacked SGD sweep of linear/MLP heads")
    ap.add_argument(
        "--no-map", action="store_true", help="skip the map heads (they load the 7x7 maps: ~125 KB per row)"
    )
    ap.add_argument("--no-sklearn", action="store_true", help="skip scikit-learn (slow)")
    ap.add_argument(
        "--maps",
        action="store_true",
        help="only compare map heads (each pooling and augmentation of the maps, one SGD head each) with the "
        "best pooled heads (L-BFGS logreg, linear and MLP SGD sweeps), on view 0",
    )
    ap.add_argument(
        "--map-variants",
        default=",".join(f"{p}:{a}" for p, a in MAP_VARIANTS),
        help="with --maps: the map heads, as POOL:AUGMENT pairs separated by commas",
    )
    ap.add_argument(
        "--views",
        type=int,
        default=2,
        help="views per image in the cache (1: plain only; 2: + mirror; more: + random-resized crops); default 2",
    )
    args = ap.parse_args()
    command = shlex.join([sys.executable, *sys.argv])
    cs = [float(c) for c in args.cs.split(",")]
    extra = {"views": args.views} if args.views > 1 else {}
    path = ensure(args.folder, args.work / ("plain" if args.views == 1 else f"views{args.views}"), args.weights,
                  args.split, **extra)  # fmt: skip
    cache = FeatureCache(path)
    ds = load_dataset(cache, views=True)
    n_classes = len(ds.classes)
    mean, std = standardizer(ds.train)
    x = {s: (getattr(ds, s).pooled - mean) / std for s in ("train", "val", "test")}
    xv = std_views(ds, mean, std)
    if args.maps:
        variants = [tuple(v.split(":")) for v in args.map_variants.split(",")]
        out = maps_mode(cache, ds, cs, args.epochs, variants)
        print(f"\n{path}: train {len(ds.train)}, val {len(ds.val)}, test {len(ds.test)} rows; val interval: Wilson 95%")
        print(table(["model (best of its family on val)", "val acc [95% CI]", "test acc", "seconds", "family"], out))
        print(f"command: {command}")
        return
    y = {s: getattr(ds, s).y for s in ("train", "val", "test")}
    rows: list[tuple[selection.Candidate, float, str]] = []  # (best candidate of a family, family seconds, how)
    everything: list[selection.Candidate] = []

    def add(family: list[selection.Candidate], seconds: float, how: str) -> None:
        everything.extend(family)
        rows.append((max(family, key=lambda c: c.val_acc(y["val"])), seconds, how))

    sk_s = None
    if not args.no_sklearn:
        sk = sklearn_path(x, y, cs)
        if sk is not None:
            rows.append((sk[0], sk[1], f"{len(cs)} C values, each from scratch, view 0"))
            sk_s = sk[1]
        skv = sklearn_views_path(ds, cs) if ds.train.views is not None else None
        if skv is not None:
            rows.append((skv[0], skv[1], f"{len(cs)} C values, each from scratch: the default's model, the usual way"))
    (lr, lr_s), lr_views = logreg_candidates(x, y, cs, n_classes, xv)
    add(lr, lr_s, f"{len(cs)} C values, one warm-started path, view 0")
    if lr_views is not None:
        add(*lr_views, f"{len(cs)} C values x (view 0, TTA), trained on every view")
    best, results = default_run(path, args.work)
    use_tta = best.get("use_tta")
    n_heads = len(results["heads"])
    default_row = (
        f"featcache-train defaults: {best['name']}{', TTA' if use_tta else ''}",
        best["val_acc_tta"] if use_tta else best["val_acc"],
        best["test_acc_tta"] if use_tta else best["test_acc"],
        results["wall_seconds"],
        f"the one-SE pick of {n_heads} heads + k-NN + ensemble, whole command (loading, run directory)",
    )
    kn, kn_s = knn_candidates(ds, n_classes, views=False)
    add(kn, kn_s, f"{len(kn)} (k, T), one neighbour search, view 0")
    if xv is not None:
        kn, kn_s = knn_candidates(ds, n_classes, views=True)
        add(kn, kn_s, f"{len(kn)} (k, T), keys: every train view; TTA")
    if not args.no_sweep:
        sw, sw_s, n = sweep_candidates(ds, SWEEP_GRIDS, args.epochs)
        add(sw, sw_s, f"{n} linear+MLP heads stacked (SGD{', a view per row per epoch' if xv else ''})")
    if not args.no_map:
        from featcache.trainer.data import load_maps

        t0 = time.perf_counter()
        load_maps(cache, ds)
        load_s = time.perf_counter() - t0
        mp, mp_s, n = sweep_candidates(ds, [MAP_GRID], args.epochs)
        add(mp, mp_s + load_s, f"{n} map heads stacked (SGD; {load_s:.0f} s of it loading maps), view 0")
        t0 = time.perf_counter()
        pooled_cands = []
        for name, fn in pooling.POOLINGS.items():
            px = {s: fn(getattr(ds, s).maps) for s in ("train", "val", "test")}
            m, sd = px["train"].mean(0), np.maximum(px["train"].std(0), 1e-6)
            px = {s: (v - m) / sd for s, v in px.items()}
            for f in logreg.fit_path(px["train"], y["train"], n_classes, cs):
                pooled_cands.append(
                    selection.Candidate(f"L-BFGS logreg on {name} maps C={f.c:g}", f.predict_proba(px["val"]),
                                     f.predict_proba(px["test"]), cost=1.5)
                )  # fmt: skip
        add(pooled_cands, time.perf_counter() - t0, f"maps pooled by {', '.join(pooling.POOLINGS)}; L-BFGS path each")
    ens, members = selection.ensemble(everything, y["val"], max_k=10)
    total_s = sum(r[1] for r in rows if not r[0].name.startswith("scikit"))
    rows.append((ens, total_s, "top-k by val of everything above: " + "; ".join(members)))
    picked = selection.pick(everything + [ens], y["val"])

    n_val = len(y["val"])
    out = []
    name, va, te, seconds, how = default_row
    lo, hi = selection.wilson(va * n_val, n_val)
    out.append([name, f"{va:.4f} [{lo:.3f}, {hi:.3f}]", f"{te:.4f}", f"{seconds:.1f}", how])
    for cand, seconds, how in rows:
        va = cand.val_acc(y["val"])
        lo, hi = selection.wilson(va * n_val, n_val)
        out.append(
            [cand.name, f"{va:.4f} [{lo:.3f}, {hi:.3f}]", f"{cand.test_acc(y['test']):.4f}", f"{seconds:.1f}", how]
        )
    print(
        f"\n{path} ({cache.views} views): train {len(ds.train)}, val {len(ds.val)}, test {len(ds.test)} rows "
        f"(hash split {args.split}), "
        f"{n_classes} classes; standardised pooled vectors; val interval: Wilson 95%"
    )
    print(table(["model (best of its family on val)", "val acc [95% CI]", "test acc", "seconds", "family"], out))
    n_all = len(everything) + 1
    pv, pt = picked.val_acc(y["val"]), picked.test_acc(y["test"])
    print(f"one-SE pick over all {n_all} candidates: {picked.name}: val {pv:.4f}, test {pt:.4f}")
    sk_note = f"; scikit-learn's sweep {sk_s:.1f} s" if sk_s is not None else ""
    print(f"featcache, every family above (not counting extraction): {total_s:.1f} s{sk_note}")
    print(f"extraction: {cache.views} views per image = {cache.views}x the backbone work of a plain cache")
    if cache.random_weights:
        print("WARNING: the cache was made with RANDOM weights: the accuracies are meaningless")
    print(f"command: {command}")


if __name__ == "__main__":
    main()
