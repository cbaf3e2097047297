"""How good featcache's heads are on natural images, what they cost, and what users do instead, on the
same rows: the tables of docs/quality.md ("Defaults chosen on two domains").

Rerun from the repo root (``pip install -e '.[bench]'`` first for scikit-learn), on both dev sets beside
the repo, as shipped::

    tar -xf ../shared/data/cifar10-dev.tar -C /tmp
    .venv/bin/python bench/quality.py /tmp/cifar10-dev --work /tmp/fq-cifar --views 2 --keep-top-input
    .venv/bin/python bench/quality.py ../shared/data/hymenoptera.tar --work /tmp/fq-hym --recipe

The source is class folders (split by a hash of the id, ``--split``), train/val[/test] split folders, or
a ``.tar`` of either (unpacked into ``--work`` once). Split folders without a test folder (the ants/bees
set: train/ and val/) are extracted through a CSV that makes the shipped val the test split; val is
then carved from train as ``featcache-train`` carves it. The cache is extracted into ``--work`` once
(its extraction time kept beside it) and reused. Rows, each with the quantity its pick used (a CV mean
and its standard error, or val accuracy), test accuracy and seconds:

* ``featcache-train CACHE`` (the default sweep, its pick) and ``--sweep thorough`` (its pick, then the
  pick within each family of heads: logreg by power, linear, mlp; and its k-NN and ensemble);
* with ``--map``, a sweep of map heads;
* scikit-learn's ``LogisticRegression`` (lbfgs) on the standardised pooled vectors, ``C`` picked on val
  from ``--cs``, refitted on train+val;
* one Keras Dense head (dropout 0.2, 10 epochs, Adam), the tutorials' head, on the pooled vectors;
* with ``--recipe``, TensorFlow's "Transfer learning and fine-tuning" recipe on the images, every
  BatchNormalization layer pinned (expensive: the backbone runs every epoch).

Then the extraction's cost (seconds, bytes a row on disk) and whether the default's pick is within one
standard error of scikit-learn's on test. ``--maps`` runs instead the map-head comparison of
docs/quality.md ("Map heads"): the pooled heads against one map head per pooling and augmentation
(``--map-variants``), on view 0 of the cache.
"""

from __future__ import annotations

import argparse
import json
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import DEFAULT_WEIGHTS, command_line, standardizer, table  # noqa: E402  (puts the repo on sys.path)

from featcache.shared.cache._reader import FeatureCache  # noqa: E402
from featcache.shared.cache._split import parse_fractions  # noqa: E402
from featcache.shared.errors import FeatcacheError  # noqa: E402
from featcache.trainer import selection  # noqa: E402
from featcache.trainer import views as tviews  # noqa: E402
from featcache.trainer.data import Dataset, load_dataset  # noqa: E402
from featcache.trainer.heads import logreg  # noqa: E402

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
    seconds = time.perf_counter() - t0
    log(f"  {report.summary().splitlines()[0]} ({seconds:.0f} s)")
    cache.with_name(cache.name + ".extract.json").write_text(json.dumps({"seconds": seconds, **extra}))
    return cache


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


def prepare_source(arg: Path, work: Path) -> tuple[Path, Path | None, str]:
    """What to extract from ``arg`` (class folders, train/val[/test] split folders, or a ``.tar`` of
    either, unpacked into ``work/src`` once): (the source to extract, the folder ids are relative to or
    None when they are absolute paths, how its splits are made). Split folders without a test folder
    (the ants/bees set as shipped: train/ and val/) become a CSV of ``path,label,split`` in ``work``
    with val as test, so that test is the shipped val and val is carved from train, as
    ``featcache-train`` carves it (or cross-validation uses train+val)."""
    if arg.is_file() and arg.name.endswith(".tar"):
        dest = work / "src"
        if not (dest / ".unpacked").exists():
            dest.mkdir(parents=True, exist_ok=True)
            with tarfile.open(arg) as tar:
                tar.extractall(dest, filter="data")
            (dest / ".unpacked").touch()
        arg = dest
        while True:  # down through wrapper folders (hymenoptera.tar holds hymenoptera_data/)
            subs = [d for d in arg.iterdir() if not d.name.startswith(".")]
            if len(subs) != 1 or not subs[0].is_dir():
                break
            arg = subs[0]
    top = {d.name.lower(): d for d in arg.iterdir() if d.is_dir() and not d.name.startswith(".")}
    splits = {n: top[n] for n in ("train", "val", "valid", "validation", "test") if n in top}
    if not splits:
        return arg, arg, "hash split"
    if "test" in splits:
        return arg, arg, "split folders"
    csv = work / "splits-val-as-test.csv"
    if not csv.exists():
        lines = ["path,label,split"]
        for name, folder in splits.items():
            split = "train" if name == "train" else "test"
            for cls in sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")):
                lines += [f"{f},{cls.name},{split}" for f in sorted(cls.rglob("*")) if f.is_file()]
        work.mkdir(parents=True, exist_ok=True)
        csv.write_text("\n".join(lines) + "\n")
    return csv, None, f"split folders {'/'.join(splits)}: {'/'.join(n for n in splits if n != 'train')} used as test"


def extraction_cost(cache: Path) -> tuple[float | None, float]:
    """(extraction seconds as recorded when this script made the cache, or None; bytes a row on disk)."""
    rows = FeatureCache(cache).num_rows
    size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    record = cache.with_name(cache.name + ".extract.json")
    seconds = json.loads(record.read_text())["seconds"] if record.exists() else None
    return seconds, size / max(rows, 1)


def test_se(acc: float, n: int) -> float:
    """Binomial standard error of an accuracy on ``n`` test rows."""
    return float(np.sqrt(acc * (1 - acc) / max(n, 1)))


def family_rows(results: dict, label: str, seconds: float) -> list[list]:  # noqa: ANN001
    """Per head family of a featcache run (kind and feature set; logreg also by power), its pick (the
    one-SE rule within the family) as a table row: [model, picked by, pick acc, SE, test acc, seconds, note]."""
    from featcache.trainer.report import pick_by, pick_score, ranking, selected_test_acc

    families: dict[str, list[dict]] = {}
    for h in results["heads"]:
        c = h["config"]
        key = c["kind"] + (" on pooled + taps" if c.get("features") == "taps" else "")
        key += f" power {c['power']:g}" if c["kind"] == "logreg" else ""
        families.setdefault(key, []).append(h)
    out = []
    for key, heads in families.items():
        order, _ = ranking(heads, results["splits"]["val"])
        h = heads[order[0]]
        acc, se = pick_score(h)
        se = se if se is not None else test_se(acc, results["splits"]["val"])
        tta = ", TTA" if h.get("use_tta") else ""
        out.append([f"{label}: {key} ({len(heads)} heads) -> {h['name']}{tta}", pick_by(h), acc, se,
                    selected_test_acc(h), seconds, f"group {h['group_wall_seconds']:.1f} s"])  # fmt: skip
    return out


def sklearn_lr(ds: Dataset, cs: list[float]) -> tuple[float, float, str]:
    """scikit-learn's ``LogisticRegression`` on standardised view-0 pooled vectors: C picked on val,
    refitted on train+val with it; (test accuracy, val accuracy of that C, the C)."""
    from sklearn.linear_model import LogisticRegression

    mean, std = standardizer(ds.train)
    x = {s: (getattr(ds, s).pooled - mean) / std for s in ("train", "val", "test")}
    best = max(cs, key=lambda c: (LogisticRegression(C=c, max_iter=3000).fit(x["train"], ds.train.y)
                                  .score(x["val"], ds.val.y), -c))  # fmt: skip
    val = LogisticRegression(C=best, max_iter=3000).fit(x["train"], ds.train.y).score(x["val"], ds.val.y)
    clf = LogisticRegression(C=best, max_iter=3000).fit(np.concatenate([x["train"], x["val"]]),
                                                          np.concatenate([ds.train.y, ds.val.y]))  # fmt: skip
    return float(clf.score(x["test"], ds.test.y)), float(val), f"C={best:g}"


def keras_dense(ds: Dataset, epochs: int = 10) -> float:
    """The tutorials' head on the cached pooled vectors: dropout 0.2, one Dense softmax layer, Adam
    (1e-3), ``epochs`` epochs of batch 32 on train+val, no selection; its test accuracy."""
    import keras

    keras.utils.set_random_seed(0)
    x = np.concatenate([ds.train.pooled, ds.val.pooled])
    y = np.concatenate([ds.train.y, ds.val.y])
    model = keras.Sequential(
        [keras.Input((x.shape[1],)), keras.layers.Dropout(0.2), keras.layers.Dense(len(ds.classes), "softmax")]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return float(model.evaluate(ds.test.pooled, ds.test.y, verbose=0)[1])


def load_images(paths: list[Path]) -> np.ndarray:
    """``(n, 224, 224, 3)`` uint8: each image as RGB, squashed to 224x224 (bilinear), as the cache's."""
    from PIL import Image

    out = np.empty((len(paths), 224, 224, 3), np.uint8)
    for k, p in enumerate(paths):
        with Image.open(p) as im:
            out[k] = np.asarray(im.convert("RGB").resize((224, 224), Image.BILINEAR))
    return out


def tf_recipe(
    ds: Dataset, root: Path | None, weights: str, epochs: int = 10, log: Any = None
) -> tuple[float, float, float]:
    """TensorFlow's "Transfer learning and fine-tuning" recipe on the images of the same rows (train+val
    to train, test to score), with every BatchNormalization layer pinned (``trainable = False``; see
    ../shared/README.md): frozen MobileNetV2 with random flip and rotation (0.2), pooling, dropout 0.2,
    Dense, Adam 1e-4, ``epochs`` epochs; then layers 100 and up unfrozen, RMSprop 1e-5, ``epochs`` more.
    No validation during training (the tutorial's is only watched). ``log``: called with a line per
    epoch (its seconds and the load average at its end), so that a run on a shared machine says which
    epochs were slowed. Returns (frozen test accuracy, fine-tuned test accuracy, wall seconds including
    reading the images)."""
    import keras

    class EpochLog(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
            if log is not None:
                log(f"recipe epoch {epoch + 1}: {time.perf_counter() - self.t0:.1f} s, load {load}")

    t0 = time.perf_counter()
    where = (lambda i: Path(i)) if root is None else (lambda i: root / i)  # noqa: E731
    ids = np.concatenate([ds.train.id, ds.val.id])
    x = load_images([where(i) for i in ids])
    y = np.concatenate([ds.train.y, ds.val.y])
    xt = load_images([where(i) for i in ds.test.id])
    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(input_shape=(224, 224, 3), include_top=False, weights=weights)
    base.trainable = False
    inputs = keras.Input((224, 224, 3))
    h = keras.layers.RandomFlip("horizontal")(inputs)
    h = keras.layers.RandomRotation(0.2)(h)
    h = keras.layers.Rescaling(1 / 127.5, offset=-1)(h)  # mobilenet_v2.preprocess_input
    h = base(h, training=False)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dropout(0.2)(h)
    model = keras.Model(inputs, keras.layers.Dense(len(ds.classes))(h))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss, metrics=["accuracy"])
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=[EpochLog()])
    frozen = float(model.evaluate(xt, ds.test.y, batch_size=32, verbose=0)[1])
    base.trainable = True
    for layer in base.layers[:100]:
        layer.trainable = False
    for layer in base.layers:  # pinned: Keras 3 runs them on batch statistics under fit otherwise
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    model.compile(optimizer=keras.optimizers.RMSprop(1e-5), loss=loss, metrics=["accuracy"])
    model.fit(x, y, batch_size=32, epochs=2 * epochs, initial_epoch=epochs, verbose=0, callbacks=[EpochLog()])
    tuned = float(model.evaluate(xt, ds.test.y, batch_size=32, verbose=0)[1])
    return frozen, tuned, time.perf_counter() - t0


def two_domains(args: argparse.Namespace, path: Path, root: Path | None, how: str, command: str) -> None:
    """The table of docs/quality.md's "Defaults chosen on two domains" for one data set."""
    import featcache
    from featcache.trainer.report import pick_by, pick_score, selected_test_acc

    cache = FeatureCache(path)
    ds = load_dataset(cache, views=True)  # val carved from train as featcache-train carves it
    n_test = len(ds.test)
    rows: list[list] = []

    def run(label: str, **kw: Any) -> dict:  # noqa: ANN401
        t0 = time.perf_counter()
        r = featcache.train(path, runs=args.work / "runs", progress=False, folds=args.folds, **kw).results
        seconds = time.perf_counter() - t0
        best = next(h for h in r["heads"] if h["name"] == r["best"])
        acc, se = pick_score(best)
        se = se if se is not None else test_se(acc, r["splits"]["val"])
        tta = ", TTA" if best.get("use_tta") else ""
        rows.append([f"{label}: its pick {best['name']}{tta}", pick_by(best), acc, se, selected_test_acc(best),
                     seconds, f"{len(r['heads'])} heads, whole sweep"])  # fmt: skip
        print(" | ".join(map(str, rows[-1])), flush=True)
        return r

    run("featcache-train CACHE (default sweep)")
    default_test = rows[-1][4]
    if not args.no_thorough:
        t0 = time.perf_counter()
        thorough = run("featcache-train CACHE --sweep thorough", sweep="thorough")
        rows += family_rows(thorough, "  thorough", time.perf_counter() - t0)
        for b in thorough.get("baselines", []):
            va = b["val_acc"]
            rows.append([f"  thorough: {b['kind']} {b['name']}", "val", va, test_se(va, len(ds.val)), b["test_acc"],
                         b["seconds"], "beside the sweep, never picked"])  # fmt: skip
    if args.map:
        run("featcache-train CACHE --head map", **MAP_GRID, pool="mean")
        rows[-1][-1] += " (loads the maps)"
    t0 = time.perf_counter()
    sk_test, sk_val, sk_c = sklearn_lr(ds, [float(c) for c in args.cs.split(",")])
    rows.append([f"scikit-learn LogisticRegression, {sk_c} (on val), refitted on train+val", "val", sk_val,
                 test_se(sk_val, len(ds.val)), sk_test, time.perf_counter() - t0, "view 0, standardised"])  # fmt: skip
    t0 = time.perf_counter()
    dense = keras_dense(ds)
    rows.append(["Keras Dense head, dropout 0.2, 10 epochs (the tutorials' head)", "-", None, None, dense,
                 time.perf_counter() - t0, "train+val, view 0, no selection"])  # fmt: skip
    if args.recipe:
        frozen, tuned, wall = tf_recipe(ds, root, args.weights, log=lambda m: print(m, flush=True))
        rows.append(["TF transfer-learning recipe, frozen (10 epochs, flip+rotation)", "-", None, None, frozen,
                     None, "BatchNorm pinned; the backbone runs every epoch"])  # fmt: skip
        rows.append(["TF transfer-learning recipe, + fine-tuned layers 100+ (10 epochs, RMSprop 1e-5)", "-", None,
                     None, tuned, wall, "wall time of both phases, images read included"])  # fmt: skip
    ex_s, bytes_row = extraction_cost(path)
    fmt = lambda v, d=4: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    out = [[m, by, fmt(a), fmt(se), fmt(t), fmt(s, 1), note] for m, by, a, se, t, s, note in rows]
    print(
        f"\n{path} ({cache.views} views; {how}): train {len(ds.train)}, val {len(ds.val)}, test {n_test} rows, "
        f"{len(ds.classes)} classes; {time.strftime('%Y-%m-%d', time.gmtime())}"
    )
    print(table(["model", "picked by", "pick acc", "SE", "test acc", "seconds", "note"], out))
    print(
        f"extraction: {'not measured here (cache reused)' if ex_s is None else f'{ex_s:.0f} s'}, "
        f"{bytes_row / 1e3:.1f} KB a row on disk ({cache.views} views, maps float16); test SE of an accuracy "
        f"near the default's: {test_se(default_test, n_test):.4f}"
    )
    gap = default_test - sk_test
    se = test_se(sk_test, n_test)
    verdict = "within" if gap >= -se else "BELOW by more than"
    print(f"default pick vs scikit-learn: {gap:+.4f} on test ({verdict} one standard error, {se:.4f})")
    if cache.random_weights:
        print("WARNING: the cache was made with RANDOM weights: the accuracies are meaningless")
    print(command)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "folder",
        type=Path,
        help="class folders, train/val[/test] split folders, or a .tar of either (e.g. /tmp/cifar10-dev)",
    )
    ap.add_argument(
        "--work", type=Path, default=Path("/tmp/featcache-quality"), help="where the caches are kept and reused"
    )
    ap.add_argument(
        "--weights", default=str(DEFAULT_WEIGHTS), help="backbone weights (default: the real ones beside the repo)"
    )
    ap.add_argument("--split", default="0.6,0.2,0.2", help="train,val,test fractions of the hash split")
    ap.add_argument(
        "--cs", default=",".join(f"{c:g}" for c in logreg.DEFAULT_CS), help="C values for scikit-learn's C search"
    )
    ap.add_argument("--epochs", type=int, default=30, help="epochs of the SGD heads (--maps mode)")
    ap.add_argument("--folds", default="auto", help="featcache-train's --folds (auto, 0 or a count)")
    ap.add_argument("--no-thorough", action="store_true", help="skip --sweep thorough")
    ap.add_argument("--map", action="store_true", help="also a featcache sweep of map heads (loads the 7x7 maps)")
    ap.add_argument(
        "--recipe",
        action="store_true",
        help="also TensorFlow's transfer-learning and fine-tuning recipe on the images (BatchNorm pinned): "
        "expensive, the backbone runs every epoch (762 s on 3,000 photographs here)",
    )
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
        default=1,
        help="views per image in the cache (1: plain only; 2: + mirror; more: + random-resized crops); default 1",
    )
    ap.add_argument(
        "--keep-top-input",
        action="store_true",
        help="extract with the backbone's last block's input (featcache-extract --keep-top-input), which the "
        "top head of --sweep thorough reads; the cache's folder name says so (views2-top)",
    )
    args = ap.parse_args()
    args.folds = args.folds if args.folds == "auto" else int(args.folds)
    command = command_line()
    source, root, how = prepare_source(args.folder, args.work)
    extra: dict[str, Any] = {"views": args.views} if args.views > 1 else {}
    name = "plain" if args.views == 1 else f"views{args.views}"
    if args.keep_top_input:
        extra["keep_top_input"] = True
        name += "-top"
    path = ensure(source, args.work / name, args.weights, args.split, **extra)
    if not args.maps:
        two_domains(args, path, root, how, command)
        return
    cache = FeatureCache(path)
    ds = load_dataset(cache, views=True)
    cs = [float(c) for c in args.cs.split(",")]
    variants = [tuple(v.split(":")) for v in args.map_variants.split(",")]
    out = maps_mode(cache, ds, cs, args.epochs, variants)
    print(f"\n{path}: train {len(ds.train)}, val {len(ds.val)}, test {len(ds.test)} rows; val interval: Wilson 95%")
    print(table(["model (best of its family on val)", "val acc [95% CI]", "test acc", "seconds", "family"], out))
    print(command)


if __name__ == "__main__":
    main()
