"""Layer taps and the kept top input (issue #29): written in the backbone's one pass, checked against
the Keras model called directly; carried by views, update, verify and compact; absent from older caches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import extract
from typer.testing import CliRunner

from featcache.shared.backbones import build_backbone, get_backbone, import_tensorflow, resolve_weights
from featcache.shared.cache import schema
from featcache.shared.cache._compact import compact
from featcache.shared.cache._reader import FeatureCache
from featcache.shared.cache.fsutil import sha256_file
from featcache.shared.errors import FeatcacheError
from featcache.shared.inspection.verify import verify
from featcache.trainer.heads.top import WARM_EPOCHS


def direct_layers(paths: list[Path], names: list[str]) -> list[np.ndarray]:
    """The float32 outputs of the tiny backbone's layers ``names`` for each image, by Keras directly
    (the resized image rounded to uint8, as a new cache feeds it)."""
    tf = import_tensorflow()
    import keras

    spec = get_backbone("tiny")
    model = build_backbone(spec, resolve_weights(spec, "random"))
    probe = keras.Model(model.inputs[0], [model.get_layer(n).output for n in names])
    out: list[list[np.ndarray]] = [[] for _ in names]
    for p in paths:
        img = tf.io.decode_image(Path(p).read_bytes(), channels=3, expand_animations=False)
        img = tf.image.resize(img, spec.input_size, method="bilinear", antialias=True).numpy()
        img = np.clip(np.round(img), 0, 255).astype(np.uint8).astype(np.float32)
        got = probe(spec.preprocess_fn()(img[None]), training=False)
        for k, t in enumerate(got if isinstance(got, list | tuple) else [got]):
            out[k].append(np.asarray(t)[0])
    return [np.stack(o) for o in out]


def shard_rows(cache: Path, name: str) -> np.ndarray:
    """Dataset ``name`` of every shard the manifest lists, by plain h5py."""
    m = json.loads((cache / schema.MANIFEST_NAME).read_text())
    parts = []
    for s in m["shards"]:
        with h5py.File(cache / s["file"], "r") as f:
            parts.append(f[name][()])
    return np.concatenate(parts)


@pytest.fixture(scope="module")
def tapped(sample_dir, tmp_path_factory) -> Path:
    """The sample with the default taps, 2 views and the top input kept."""
    cache = tmp_path_factory.mktemp("taps") / "c"
    extract(sample_dir, cache, views=2, keep_top_input=True)
    return cache


def test_taps_and_top_input_are_the_layers_outputs(tapped, sample_dir):
    c = FeatureCache(tapped)
    fp = c.fingerprint
    assert fp["taps"]["layers"] == ["patches"] and fp["taps"]["widths"] == [24]
    assert fp["top_input"]["layer"] == "pool" and fp["top_input"]["top"] == ["top_conv", "top_relu"]
    ids = c.read_columns((schema.ID,))[schema.ID].tolist()
    patches, pool = direct_layers([sample_dir / i for i in ids], ["patches", "pool"])
    taps = shard_rows(tapped, schema.TAPS)
    assert taps.shape == (15, 24) and taps.dtype == np.float32
    np.testing.assert_allclose(taps, patches.mean(axis=(1, 2)), rtol=1e-4, atol=1e-5)
    top = shard_rows(tapped, schema.TOP_INPUT)
    assert top.shape == (15, 7, 7, 24) and top.dtype == np.float16
    np.testing.assert_allclose(top.astype(np.float32), pool, rtol=2e-3, atol=2e-3)
    # the reader gives the same, in index order; views: the mirror's taps differ from view 0's
    np.testing.assert_array_equal(c.read_columns((schema.TAPS,))[schema.TAPS], taps)
    views = c.load_taps_views()
    assert views.shape == (15, 2, 24) and not np.allclose(views[:, 0], views[:, 1])
    np.testing.assert_array_equal(views[:, 0], taps)
    np.testing.assert_array_equal(np.concatenate([b for _, b in c.iter_maps(dataset=schema.TOP_INPUT)]), top)
    assert verify(tapped).ok


def test_a_cache_without_taps_reads_as_before_and_says_how_to_get_them(tmp_path, sample_dir):
    extract(sample_dir, tmp_path / "c", taps="none")
    c = FeatureCache(tmp_path / "c")
    assert "taps" not in c.fingerprint and "top_input" not in c.fingerprint
    with h5py.File(tmp_path / "c" / c.shards[0].file) as f:
        assert sorted(f) == sorted(schema.DATASETS)
    assert len(c.load_pooled()) == 15
    with pytest.raises(FeatcacheError, match=r"no taps dataset \(extract it with taps="):
        c.read_columns((schema.TAPS,))
    with pytest.raises(FeatcacheError, match=r"no top_input dataset \(extract it with keep_top_input=True\)"):
        next(c.iter_maps(dataset=schema.TOP_INPUT))
    # resuming it without naming taps keeps what it records (no refusal, no new dataset)
    report = extract(sample_dir, tmp_path / "c")
    assert report.shards_written == 0 and "taps" not in FeatureCache(tmp_path / "c").fingerprint
    # asking for other taps than it records is refused, naming what differs
    with pytest.raises(FeatcacheError, match=r"different taps"):
        extract(sample_dir, tmp_path / "c", taps="default")


def test_a_tap_the_backbone_does_not_have_is_one_line_and_writes_nothing(tmp_path, sample_dir):
    with pytest.raises(FeatcacheError, match=r"^taps='patches,nope': backbone 'tiny' has no layer 'nope'"):
        extract(sample_dir, tmp_path / "c", taps="patches,nope")
    assert not (tmp_path / "c").exists()
    from featcache.extractor.cli import app

    r = CliRunner().invoke(
        app, [str(sample_dir), str(tmp_path / "c"), "--backbone", "tiny", "--weights", "random", "--taps", "nope"]
    )
    assert r.exit_code == 2 and "--taps nope: backbone 'tiny' has no layer 'nope'" in r.output, r.output
    assert not (tmp_path / "c").exists()


def test_named_taps_take_their_widths_from_the_model(tmp_path, sample_dir):
    extract(sample_dir, tmp_path / "c", taps="pool,patches", shard_size=8)
    c = FeatureCache(tmp_path / "c")
    assert c.taps == [("pool", 24), ("patches", 24)]
    ids = c.read_columns((schema.ID,))[schema.ID].tolist()
    pool, patches = direct_layers([sample_dir / i for i in ids], ["pool", "patches"])
    expected = np.concatenate([pool.mean(axis=(1, 2)), patches.mean(axis=(1, 2))], axis=1)
    np.testing.assert_allclose(c.read_columns((schema.TAPS,))[schema.TAPS], expected, rtol=1e-4, atol=1e-5)


def test_update_verify_and_compact_carry_taps_and_top_input(tmp_path, sample_dir):
    """An updated, then compacted cache holds, per listing id, the taps and top input of a cache made
    from scratch; verify checks the new datasets (a NaN in one is found)."""
    shutil.copytree(sample_dir, tmp_path / "img")
    imgs = sorted(p.relative_to(sample_dir).as_posix() for p in sample_dir.rglob("*.*"))
    rows = "".join(f"img/{p},{p.split('/')[0]}\n" for p in imgs)
    (tmp_path / "a.csv").write_text("path,label\n" + "".join(rows.splitlines(True)[:10]))
    extract(tmp_path / "a.csv", tmp_path / "cache", keep_top_input=True)
    lines = rows.splitlines(True)
    (tmp_path / "a.csv").write_text("path,label\n" + "".join(lines[:3] + lines[5:]))  # 2 removed, 5 added
    extract(tmp_path / "a.csv", tmp_path / "cache", update=True)  # taps and top input: as recorded
    extract(tmp_path / "a.csv", tmp_path / "scratch", keep_top_input=True)
    assert compact(tmp_path / "cache", threshold=0.0).rewritten
    assert verify(tmp_path / "cache").ok

    def by_id(cache: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        c = FeatureCache(cache)
        col = c.read_columns((schema.ID, schema.INDEX, schema.TAPS))
        top = {
            int(i): t
            for index, block in c.iter_maps(dataset=schema.TOP_INPUT)
            for i, t in zip(index, block, strict=True)
        }
        return {
            str(i): (t, top[int(x)])
            for i, x, t in zip(col[schema.ID], col[schema.INDEX], col[schema.TAPS], strict=True)
        }

    a, b = by_id(tmp_path / "cache"), by_id(tmp_path / "scratch")
    assert sorted(a) == sorted(b) and len(a) == 13
    for k in a:
        np.testing.assert_array_equal(a[k][0], b[k][0])
        np.testing.assert_array_equal(a[k][1], b[k][1])
    # a NaN in the top input is found by verify (checksums aside: the file is edited in place)
    m = FeatureCache(tmp_path / "cache").manifest
    path = tmp_path / "cache" / m.shards[0].file
    with h5py.File(path, "r+") as f:
        f[schema.TOP_INPUT][0, 0, 0, 0] = np.nan
    from featcache.shared.inspection.verify import check_shard

    rec = m.shards[0]
    rec.bytes, rec.sha256 = path.stat().st_size, sha256_file(path)
    assert check_shard(tmp_path / "cache", m, rec, 4, np.random.default_rng(0)) == "top_input has NaN/Inf values"


# --- heads that read the taps (features="taps") ------------------------------------------------


def _sweep(cache: Path, runs: Path, grid: dict, epochs: int = 3):
    from featcache.trainer.run import run_sweep
    from featcache.trainer.settings import Settings
    from featcache.trainer.sweep import expand

    settings = Settings(epochs=epochs, batch_size=8, seed=0, baselines=False)
    return run_sweep(cache, expand(grid), settings, runs, ["test"], log=lambda m: None, progress=False)


def test_features_taps_heads_read_pooled_and_taps_and_predict_agrees_with_numpy(tmp_path, tiny_cache):
    """A sweep over both feature sets: the pooled logreg head is the one of a pooled-only sweep (the
    taps do not leak into it; SGD heads start from a seed of their group's place, so they differ), and
    the taps logreg head's predictions (featcache-train predict) are its parameters applied, in numpy,
    to the pooled vectors and taps read with plain h5py."""
    import csv

    from featcache.trainer.predict import predict
    from featcache.trainer.rundir import head_params

    grid = {"head": ["logreg", "linear"], "c": [0.1], "power": [0.5], "lr": [1e-2], "features": ["pooled", "taps"]}
    run_dir, results = _sweep(tiny_cache, tmp_path / "runs", grid)
    names = sorted(h["name"] for h in results["heads"])
    assert names == sorted(
        ["logreg-pow0.5-C0.1", "logreg-taps-pow0.5-C0.1", "linear-lr0.01-wd0-ls0", "linear-taps-lr0.01-wd0-ls0"]
    )
    alone_dir, alone = _sweep(tiny_cache, tmp_path / "alone", {**grid, "features": ["pooled"]})
    w_both, _ = head_params(run_dir, results, "logreg-pow0.5-C0.1")
    w_alone, _ = head_params(alone_dir, alone, "logreg-pow0.5-C0.1")
    for key in w_alone:
        np.testing.assert_allclose(w_both[key], w_alone[key], rtol=1e-5, atol=1e-6)
    assert head_params(run_dir, results, "linear-lr0.01-wd0-ls0")[0]["W"].shape == (1280, 3)
    assert head_params(run_dir, results, "linear-taps-lr0.01-wd0-ls0")[0]["W"].shape == (1280 + 24, 3)
    name = "logreg-taps-pow0.5-C0.1"
    w, _ = head_params(run_dir, results, name)
    assert w["W"].shape == (1280 + 24, 3)
    predict(run_dir, tmp_path / "p.csv", split="all", head=name)
    x = np.concatenate([shard_rows(tiny_cache, schema.POOLED), shard_rows(tiny_cache, schema.TAPS)], axis=1)
    x = (np.sign(x) * np.abs(x) ** 0.5 - w["mean"]) / w["std"]
    logits = x @ w["W"] + w["b"]
    want = np.exp(logits - logits.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    with open(tmp_path / "p.csv", newline="") as fh:
        got = {int(r["index"]): [float(r[f"p_{c}"]) for c in results["classes"]] for r in csv.DictReader(fh)}
    index = shard_rows(tiny_cache, schema.INDEX)
    np.testing.assert_allclose(np.array([got[int(i)] for i in index]), want, atol=1e-4)


def test_exported_taps_head_takes_an_image_and_equals_the_head_on_cached_features(tmp_path, tiny_cache, sample_dir):
    import keras

    from featcache.extractor.pipeline import decode_resize
    from featcache.trainer.predict import export

    run_dir, results = _sweep(tiny_cache, tmp_path / "runs", {"head": ["linear"], "lr": [1e-2], "features": ["taps"]})
    export(run_dir, tmp_path / "m.keras")
    full = keras.models.load_model(tmp_path / "m.keras")
    head = keras.models.load_model(run_dir / "best_head.keras")
    c = FeatureCache(tiny_cache)
    rows = c.load_pooled()
    taps = c.read_columns((schema.TAPS,))[schema.TAPS]
    images = np.stack([decode_resize((sample_dir / i).read_bytes(), (224, 224)).numpy() for i in rows.id[:4]])
    got = full.predict(np.round(images), verbose=0)["probabilities"]
    want = head.predict(np.concatenate([rows.pooled[:4], taps[:4]], axis=1), verbose=0)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_features_taps_on_a_cache_without_taps_is_one_line_naming_the_option(tmp_path, sample_dir):
    from typer.testing import CliRunner

    from featcache.trainer.cli import app

    extract(sample_dir, tmp_path / "c", taps="none")
    with pytest.raises(
        FeatcacheError, match=r"extract it again with taps='default' \(featcache-extract --taps default\)"
    ):
        _sweep(tmp_path / "c", tmp_path / "runs", {"head": ["linear"], "features": ["taps"]})
    r = CliRunner().invoke(app, ["train", str(tmp_path / "c"), "--features", "taps", "--runs", str(tmp_path / "r2")])
    assert r.exit_code == 2 and "featcache-extract --taps default" in r.output, r.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert not (tmp_path / "r2").exists() or not any(
        p for p in (tmp_path / "r2").iterdir() if not p.name.startswith(".")
    )


# --- the top head (a copy of the backbone's last block fine-tuned from the cached top input) --------


def test_top_head_trains_predicts_from_the_cache_and_its_export_agrees_with_predict_source(
    tmp_path, tapped, sample_dir
):
    """The top head learns from the cached top input; predict from the cache is its saved model on the
    top input read with plain h5py; the exported model (backbone up to the block's input, then the
    fine-tuned block spliced in) takes a decoded image and agrees with predict --source."""
    import csv

    import keras
    from typer.testing import CliRunner

    from featcache.trainer.cli import app
    from featcache.trainer.predict import predict

    grid = {"head": ["top"], "lr": [1e-2], "dropout": [0.2]}
    run_dir, results = _sweep(tapped, tmp_path / "runs", grid, epochs=7)
    (row,) = results["heads"]
    assert row["name"] == "top-do0.2-lr0.01-wd0-ls0" and results["best"] == row["name"]
    assert len(row["epochs"]) >= 6 and row["epochs"][-1]["train_acc"] > 0.5
    # predict from the cache: the saved head on the cached top input
    predict(run_dir, tmp_path / "p.csv", split="all")
    head = keras.models.load_model(run_dir / "best_head.keras")
    want = head.predict(shard_rows(tapped, schema.TOP_INPUT).astype(np.float32), verbose=0)
    with open(tmp_path / "p.csv", newline="") as fh:
        got = {int(r["index"]): [float(r[f"p_{c}"]) for c in results["classes"]] for r in csv.DictReader(fh)}
    index = shard_rows(tapped, schema.INDEX)
    np.testing.assert_allclose(np.array([got[int(i)] for i in index]), want, atol=1e-5)
    # the dense layer starts as the block's linear probe and the block trains from the first epoch on
    spec = get_backbone("tiny")
    backbone = build_backbone(spec, resolve_weights(spec, "random"))
    assert not np.allclose(head.get_layer("top_conv").get_weights()[0], backbone.get_layer("top_conv").get_weights()[0])
    # export: an image in, the class of predict --source out
    runner = CliRunner()
    assert runner.invoke(app, ["export", str(run_dir), str(tmp_path / "m.keras")]).exit_code == 0
    r = runner.invoke(
        app, ["predict", str(run_dir), str(tmp_path / "s.csv"), "--source", str(sample_dir), "--no-progress"]
    )
    assert r.exit_code == 0, r.output
    with open(tmp_path / "s.csv", newline="") as fh:
        source_class = {row["id"]: row["predicted"] for row in csv.DictReader(fh)}
    model = keras.models.load_model(tmp_path / "m.keras")
    agree = []
    for ident, expected in source_class.items():
        img = keras.utils.img_to_array(keras.utils.load_img(sample_dir / ident), dtype="uint8")
        name = model.predict(img[None], verbose=0)["class"][0]
        agree.append((name.decode() if isinstance(name, bytes) else name) == expected)
    assert len(agree) == 15 and np.mean(agree) >= 0.9, agree


def test_top_head_without_its_probe_fine_tunes_the_block_after_warming_the_dense_layer(tapped):
    """``probe=False``: with val = train (so that the kept epoch is the last that fit train better),
    training goes on past the warm-up and moves the block's kernel."""
    from featcache.trainer.data import load_dataset, load_top
    from featcache.trainer.heads.top import train_top
    from featcache.trainer.settings import Settings
    from featcache.trainer.sweep import expand

    c = FeatureCache(tapped)
    ds = load_dataset(c)
    load_top(c, ds)
    ds.val = ds.train
    (cfg,) = expand({"head": ["top"], "lr": [1e-2], "dropout": [0.0]})
    rows, states = train_top(ds, [cfg], Settings(epochs=14, patience=14, batch_size=8, seed=0), probe=False)
    assert [e["epoch"] for e in rows[0]["epochs"]] == list(range(1, 15))
    assert rows[0]["best_epoch"] > WARM_EPOCHS and rows[0]["val_acc"] > rows[0]["epochs"][WARM_EPOCHS - 1]["val_acc"]
    spec = get_backbone("tiny")
    backbone = build_backbone(spec, resolve_weights(spec, "random"))
    kernel = states[0].group.model.get_layer("top_conv").get_weights()[0]
    assert not np.allclose(kernel, backbone.get_layer("top_conv").get_weights()[0])
    # the kept model is the one that scored val (= train) as reported
    probs = states[0].group.model.predict(ds.train.top.astype(np.float32), verbose=0)
    assert np.isclose((probs.argmax(1) == ds.train.y).mean(), rows[0]["val_acc"])


def test_the_top_heads_dense_layer_starts_as_scikit_learns_logistic_regression_on_the_blocks_pooled_output(tapped):
    """``probe_dense``: the model (block as the backbone's, dense set) gives the probabilities of
    scikit-learn's LogisticRegression, at the C picked, on the standardised pooled block outputs; the C
    is the one best on val among ``logreg.DEFAULT_CS`` by scikit-learn's own fits too."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    import keras

    from featcache.trainer.data import load_dataset, load_top
    from featcache.trainer.heads.logreg import DEFAULT_CS
    from featcache.trainer.heads.top import build_model, probe_dense

    c = FeatureCache(tapped)
    ds = load_dataset(c)
    load_top(c, ds)
    n = len(ds.classes)
    x = {s: getattr(ds, s).top.astype(np.float32) for s in ("train", "val", "test")}
    y = {s: getattr(ds, s).y for s in ("train", "val", "test")}
    spec = get_backbone("tiny")
    model = build_model(
        spec, x["train"].shape[1:], n, 0.5, source=build_backbone(spec, resolve_weights(spec, "random"))
    )
    picked = probe_dense(model, x, y, n)
    pool = keras.Model(model.inputs[0], model.get_layer("pool").output)
    f = {s: pool.predict(x[s], verbose=0).astype(np.float64) for s in x}
    mean, std = f["train"].mean(0), np.maximum(f["train"].std(0), 1e-6)
    z = {s: (f[s] - mean) / std for s in f}
    fits = {
        cc: sklearn.LogisticRegression(C=cc, tol=1e-8, max_iter=10000).fit(z["train"], y["train"]) for cc in DEFAULT_CS
    }
    val_acc = {cc: fit.score(z["val"], y["val"]) for cc, fit in fits.items()}
    assert val_acc[picked] == max(val_acc.values()) and picked == min(
        cc for cc in DEFAULT_CS if val_acc[cc] == val_acc[picked]
    )
    everything = np.concatenate([x["train"], x["val"], x["test"]])
    want = fits[picked].predict_proba(np.concatenate([z["train"], z["val"], z["test"]]))
    got = model.predict(everything, verbose=0)  # float32 L-BFGS stopped at tol 1e-4, against tol 1e-8
    np.testing.assert_allclose(got, want, atol=1e-2)


def test_mirrored_flips_the_chosen_rows_left_right_and_leaves_the_rest_and_its_input_alone():
    from featcache.trainer.heads.top import mirrored

    x = np.random.default_rng(0).normal(size=(6, 3, 4, 2)).astype(np.float32)
    before = x.copy()
    rows = np.array([True, False, True, False, False, True])
    out = mirrored(x, rows)
    for i in range(6):  # by hand: column j of a flipped row is column w-1-j of the original
        want = np.stack([x[i, :, 3 - j] for j in range(4)], axis=1) if rows[i] else x[i]
        np.testing.assert_array_equal(out[i], want)
    np.testing.assert_array_equal(x, before)


def test_top_head_on_a_cache_without_its_input_is_one_line_naming_the_option(tmp_path, tiny_cache):
    from typer.testing import CliRunner

    from featcache.trainer.cli import app

    with pytest.raises(
        FeatcacheError, match=r"extract it again with keep_top_input=True \(featcache-extract --keep-top-input\)"
    ):
        _sweep(tiny_cache, tmp_path / "runs", {"head": ["top"]})
    r = CliRunner().invoke(app, ["train", str(tiny_cache), "--head", "top", "--runs", str(tmp_path / "r2")])
    assert r.exit_code == 2 and "featcache-extract --keep-top-input" in r.output, r.output
    for runs in (tmp_path / "runs", tmp_path / "r2"):
        assert not runs.exists() or not [p for p in runs.iterdir() if not p.name.startswith(".")]


def test_the_registry_states_mobilenet_v2s_taps_and_last_block_as_the_model_has_them():
    """The widths the registry gives without building the model (a new cache's fingerprint) are the
    model's, and the top layers take the top input to the maps."""
    import keras

    spec = get_backbone("mobilenet_v2")
    model = build_backbone(spec, resolve_weights(spec, "random"))
    for name, width in spec.taps:
        assert model.get_layer(name).output.shape[1:] in ((14, 14, width), (7, 7, width))
    layer, shape = spec.top_input
    assert tuple(model.get_layer(layer).output.shape[1:]) == shape
    x = keras.Input(shape)
    for name in spec.top_layers:
        x = model.get_layer(name)(x)
    assert tuple(x.shape[1:]) == spec.output_shape and spec.top_layers[-1] == model.layers[-1].name
