"""featcache-train: stacked training equals separate Keras training, heads learn what is learnable
and only that, runs are reproducible, and the exported model equals the head on cached features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REAL_WEIGHTS, extract, synthetic_cache

from featcache.shared.cache._reader import FeatureCache
from featcache.shared.errors import FeatcacheError
from featcache.trainer.run import run_sweep
from featcache.trainer.settings import Settings
from featcache.trainer.sweep import HeadConfig, expand, load_sweep_file

FAST = Settings(epochs=15, batch_size=64, patience=5, seed=0)


def sweep(cache: Path, runs: Path, configs: list[HeadConfig], settings: Settings = FAST):
    return run_sweep(cache, configs, settings, runs, ["test"], log=lambda m: None, progress=False)


def test_stacked_heads_equal_the_same_heads_trained_one_by_one_in_keras():
    import keras

    from featcache.trainer.engine import HeadGroup

    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 32, 1280)).astype(np.float32)  # 5 batches of 32
    y = rng.integers(0, 4, size=(5, 32)).astype(np.int32)
    for configs in (
        [
            HeadConfig("linear", 1e-2, 0.0),
            HeadConfig("linear", 3e-3, 1e-2),
            HeadConfig("linear", 1e-3, 0.0, label_smoothing=0.1),
        ],
        [HeadConfig("mlp", 1e-2, 1e-3, hidden=16), HeadConfig("mlp", 3e-3, 0.0, hidden=16, label_smoothing=0.2)],
    ):
        group = HeadGroup(configs, 1280, 4, seed=3)
        init = [group.head_weights(k) for k in range(group.k)]
        for b in range(5):
            group.train_step(x[b], y[b], np.ones(group.k, bool), (0, b))
        for k, cfg in enumerate(configs):
            layers = (
                [keras.layers.Dense(4)]
                if cfg.kind == "linear"
                else [keras.layers.Dense(16, activation="relu"), keras.layers.Dense(4)]
            )
            model = keras.Sequential([keras.Input((1280,)), *layers])
            names = ["W", "b"] if cfg.kind == "linear" else ["W1", "b1", "W2", "b2"]
            model.set_weights([init[k][n] for n in names])
            opt = keras.optimizers.AdamW(learning_rate=cfg.lr, weight_decay=cfg.weight_decay, epsilon=1e-7)
            opt.exclude_from_weight_decay(var_names=["bias"])
            loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.label_smoothing)
            model.compile(optimizer=opt, loss=loss)
            for b in range(5):
                model.train_on_batch(x[b], keras.utils.to_categorical(y[b], 4))
            got = group.head_weights(k)
            for n, want in zip(names, model.get_weights(), strict=False):
                np.testing.assert_allclose(got[n], want, rtol=1e-4, atol=1e-5, err_msg=f"{cfg.name} {n}")
            assert not np.allclose(got[names[0]], init[k][names[0]])  # it did train


def test_separable_classes_are_learned_and_shuffled_labels_are_not(tmp_path):
    configs = expand({"head": ["linear", "mlp"], "lr": [3e-3], "hidden": [32]})
    _, good = sweep(synthetic_cache(tmp_path / "good"), tmp_path / "runs", configs)
    best = next(h for h in good["heads"] if h["name"] == good["best"])
    assert best["test_acc"] >= 0.95
    _, bad = sweep(synthetic_cache(tmp_path / "bad", shuffle_labels=True), tmp_path / "runs", configs)
    assert max(h["test_acc"] for h in bad["heads"]) <= 0.5  # 4 classes: chance is 0.25


def test_map_heads_learn_from_maps(tmp_path):
    _, r = sweep(
        synthetic_cache(tmp_path / "c"), tmp_path / "runs", expand({"head": ["map"], "lr": [3e-3], "hidden": [16]})
    )
    assert r["heads"][0]["test_acc"] >= 0.9


def test_results_are_complete_and_reproducible(tmp_path):
    cache = synthetic_cache(tmp_path / "c")
    configs = expand({"head": ["linear", "mlp"], "lr": [1e-3, 1e-2], "hidden": [16], "dropout": [0.0, 0.3]})
    run1, r1 = sweep(cache, tmp_path / "runs", configs)
    run2, r2 = sweep(cache, tmp_path / "runs", configs)
    assert run1 != run2  # never overwrites an earlier run
    on_disk = json.loads((run1 / "results.json").read_text())
    assert (
        on_disk["complete"]
        and on_disk["best"] == r1["best"]
        and on_disk["splits"] == {"train": 144, "val": 48, "test": 48}
    )
    assert len(on_disk["heads"]) == 6 and {h["name"] for h in on_disk["heads"]} == {c.name for c in configs}
    for h in on_disk["heads"]:
        assert {"config", "epochs", "best_epoch", "val_acc", "test_acc", "group_wall_seconds"} <= set(h)
        assert h["epochs"][0]["epoch"] == 1 and 0 <= h["val_acc"] <= 1
    strip = lambda r: [{k: v for k, v in h.items() if k != "group_wall_seconds"} for h in r["heads"]]  # noqa: E731
    assert strip(r1) == strip(r2)
    assert (run1 / "leaderboard.txt").read_text().splitlines()[1].endswith(r1["best"])
    assert (run1 / "best_head.keras").is_file() and (run1 / "heads.npz").is_file() and (run1 / "plot.png").is_file()


def test_no_val_split_is_carved_no_labels_is_refused(tmp_path):
    _, r = sweep(synthetic_cache(tmp_path / "c", splits="no-val"), tmp_path / "runs", expand({}))
    assert r["val_carved_from_train"] and r["splits"]["test"] == 48
    assert r["splits"]["train"] + r["splits"]["val"] == 192 and 5 <= r["splits"]["val"] <= 40
    _, h = sweep(synthetic_cache(tmp_path / "h", splits="hash"), tmp_path / "runs", expand({}))
    assert not h["val_carved_from_train"] and sum(h["splits"].values()) == 240
    with pytest.raises(FeatcacheError, match="has no labelled rows"):
        sweep(synthetic_cache(tmp_path / "u", labelled=False), tmp_path / "runs", expand({}))


def test_training_never_builds_the_backbone(tmp_path, monkeypatch):
    import sys

    import featcache.shared.backbones as backbones
    import featcache.trainer.heads.top  # noqa: F401  patch below is undone for the tests that follow)
    import featcache.trainer.keras_heads  # noqa: F401  (they bind the real builder now, so that the

    def forbidden(*a, **k):
        raise AssertionError("the trainer built a backbone")

    builder = backbones.build_backbone
    for name, module in list(sys.modules.items()):  # wherever a module imported the builder by name
        if name.startswith("featcache.") and getattr(module, "build_backbone", None) is builder:
            monkeypatch.setattr(module, "build_backbone", forbidden)
    for module in (backbones.zoo, backbones.model_files):  # every builder of the registry
        for name in [n for n in vars(module) if n.startswith("_build")]:
            monkeypatch.setattr(module, name, forbidden)
    import keras

    for app in ("MobileNetV2", "MobileNetV3Large", "EfficientNetV2B0", "EfficientNetV2S", "ResNet50", "ConvNeXtTiny"):
        monkeypatch.setattr(keras.applications, app, forbidden)  # what the registry's builders call
    _, r = sweep(synthetic_cache(tmp_path / "c"), tmp_path / "runs", expand({"head": ["linear", "map"], "hidden": [8]}))
    assert len(r["heads"]) == 2


def test_sweep_file_and_grid(tmp_path):
    (tmp_path / "s.toml").write_text(
        'epochs = 3\nlr = [0.01]\n[[grid]]\nhead = ["linear"]\nweight_decay = [0, 1e-4]\n'
        '[[grid]]\nhead = ["mlp"]\nhidden = [8, 16]\ndropout = [0.1]\n'
    )
    grids, settings = load_sweep_file(tmp_path / "s.toml")
    configs = [c for g in grids for c in expand(g)]
    assert settings == {"epochs": 3}
    assert [c.name for c in configs] == [
        "linear-lr0.01-wd0-ls0",
        "linear-lr0.01-wd0.0001-ls0",
        "mlp-h8-do0.1-lr0.01-wd0-ls0",
        "mlp-h16-do0.1-lr0.01-wd0-ls0",
    ]
    assert len(expand({"head": ["linear"], "hidden": [8, 16], "dropout": [0, 0.5]})) == 1  # unused keys collapse
    with pytest.raises(FeatcacheError, match="head='cnn': unknown head kind"):
        expand({"head": ["cnn"]})


def _export_and_compare(tmp_path: Path, cache: Path, sample_dir: Path, kind: str, tol: float) -> None:
    import keras
    from typer.testing import CliRunner

    from featcache.extractor.pipeline import decode_resize
    from featcache.trainer.cli import app

    run_dir, results = sweep(
        cache,
        tmp_path / "runs",
        expand({"head": [kind], "lr": [3e-3], "hidden": [16]}),
        Settings(epochs=3, batch_size=8, seed=0),
    )
    out = tmp_path / f"{kind}.keras"
    r = CliRunner().invoke(app, ["export", str(run_dir), str(out)])
    assert r.exit_code == 0, r.output
    full = keras.models.load_model(out)
    head = keras.models.load_model(run_dir / "best_head.keras")
    c = FeatureCache(cache)
    rows = c.load_pooled()
    images = np.stack([decode_resize(Path(sample_dir / i).read_bytes(), (224, 224)).numpy() for i in rows.id[:4]])
    images = np.round(images)  # whole RGB values, as the cache's uint8 feed gave the backbone
    out_dict = full.predict(images, verbose=0)
    got = out_dict["probabilities"]
    assert [c.decode() if isinstance(c, bytes) else c for c in out_dict["class"]] == [
        results["classes"][k] for k in got.argmax(-1)
    ]
    if kind == "map":
        ((_, maps),) = c.iter_maps(indices=rows.index[:4], dtype="float32")
        want = head.predict(maps, verbose=0)
    else:
        want = head.predict(rows.pooled[:4], verbose=0)
    assert got.shape == (4, len(results["classes"]))
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(got, want, atol=tol)


@pytest.mark.parametrize(("kind", "tol"), [("linear", 1e-4), ("mlp", 1e-4), ("map", 2e-3)])
def test_exported_model_equals_head_on_cached_features(tmp_path, tiny_cache, sample_dir, kind, tol):
    _export_and_compare(tmp_path, tiny_cache, sample_dir, kind, tol)


@pytest.mark.skipif(not REAL_WEIGHTS.is_file(), reason=f"real weights not found at {REAL_WEIGHTS}")
def test_exported_mobilenet_model_equals_head_on_cached_features(tmp_path, sample_dir):
    cache = tmp_path / "real"
    extract(sample_dir, cache, backbone="mobilenet_v2", weights=str(REAL_WEIGHTS), shard_size=16, batch_size=8)
    _export_and_compare(tmp_path, cache, sample_dir, "linear", 1e-4)


def test_exported_model_takes_decoded_images_of_any_size_and_agrees_with_predict_source(tmp_path, sample_dir):
    """A user with a JPEG loads it with keras.utils.load_img (any size, uint8) and calls the exported model:
    the model resizes and preprocesses inside as the extractor did, so its class is predict --source's, and
    its class names are in the saved model (readable with keras alone)."""
    import csv

    import keras
    from PIL import Image
    from typer.testing import CliRunner

    from featcache.trainer.cli import app

    src = tmp_path / "src"
    for k, path in enumerate(sorted(sample_dir.rglob("*.*"))):  # the sample at other sizes and aspect ratios
        (src / path.parent.name).mkdir(parents=True, exist_ok=True)
        with Image.open(path) as im:
            im.convert("RGB").resize((96 + 17 * (k % 5), 64 + 23 * (k % 3))).save(src / path.parent.name / f"{k}.png")
    cache = tmp_path / "c"
    extract(src, cache)
    run_dir, results = sweep(
        cache, tmp_path / "runs", expand({"head": ["linear"], "lr": [1e-2]}), Settings(epochs=3, batch_size=8, seed=0)
    )
    runner = CliRunner()
    assert runner.invoke(app, ["export", str(run_dir), str(tmp_path / "m.keras")]).exit_code == 0
    r = runner.invoke(app, ["predict", str(run_dir), str(tmp_path / "p.csv"), "--source", str(src), "--no-progress"])
    assert r.exit_code == 0, r.output
    with open(tmp_path / "p.csv", newline="") as fh:
        source_class = {row["id"]: row["predicted"] for row in csv.DictReader(fh)}
    model = keras.models.load_model(tmp_path / "m.keras")
    assert model.get_layer("class_names").get_vocabulary() == results["classes"]
    agree = []
    for ident, want in source_class.items():
        img = keras.utils.img_to_array(keras.utils.load_img(src / ident), dtype="uint8")  # (h, w, 3), any size
        got = model.predict(img[None], verbose=0)
        name = got["class"][0]
        agree.append((name.decode() if isinstance(name, bytes) else name) == want)
    assert len(agree) == 15 and np.mean(agree) >= 0.9, agree


def test_export_refuses_other_weights(tmp_path, tiny_cache):
    from typer.testing import CliRunner

    from featcache.trainer.cli import app

    run_dir, _ = sweep(tiny_cache, tmp_path / "runs", expand({}), Settings(epochs=1, seed=0))
    other = tmp_path / "other.h5"
    other.write_bytes(b"not these weights")
    r = CliRunner().invoke(app, ["export", str(run_dir), str(tmp_path / "x.keras"), "--weights", str(other)])
    assert r.exit_code == 2 and "is not the cache's random:0" in r.output


def test_cli_train_predict_and_export_another_head(tmp_path, tiny_cache):
    import csv

    from typer.testing import CliRunner

    from featcache.trainer.cli import app

    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "train",
            str(tiny_cache),
            "--head",
            "linear,mlp",
            "--lr",
            "1e-2,1e-3",
            "--hidden",
            "8",
            "--epochs",
            "3",
            "--runs",
            str(tmp_path / "runs"),
            "--no-progress",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "rank  val acc         95% CI  val loss  test acc  scored  epoch  head" in r.output
    assert "RANDOM weights" in r.output
    run_dir = next((tmp_path / "runs").iterdir())
    results = json.loads((run_dir / "results.json").read_text())
    other = next(h["name"] for h in results["heads"] if h["name"] != results["best"] and h["config"]["kind"] == "mlp")
    p = runner.invoke(app, ["predict", str(run_dir), str(tmp_path / "p.csv"), "--split", "all", "--head", other])
    assert p.exit_code == 0, p.output
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 15 and set(rows[0]) >= {"index", "id", "label", "predicted", "p_checker", "p_circle", "p_cross"}
    assert all(abs(sum(float(r[f"p_{c}"]) for c in ("checker", "circle", "cross")) - 1) < 1e-4 for r in rows)
    e = runner.invoke(app, ["export", str(run_dir), str(tmp_path / "m.keras"), "--head", other])
    assert e.exit_code == 0 and f"tiny + {other}" in e.output
    bad = runner.invoke(app, ["predict", str(run_dir), str(tmp_path / "q.csv"), "--head", "nope"])
    assert bad.exit_code == 2 and "no head named 'nope'" in bad.output


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda c: (c / "shards" / "shard-00001.h5").write_bytes(b"\0" * 64),
            "shard-00001.h5: shard is not a readable HDF5 file",
        ),
        (
            lambda c: (c / "shards" / "shard-00002.h5").unlink(),
            "shard-00002.h5: shard listed in the manifest is missing",
        ),
        (
            lambda c: _mix_fingerprint(c / "shards" / "shard-00003.h5"),
            "shard-00003.h5: shard was made with different weights_sha256",
        ),
    ],
    ids=["corrupt", "missing", "fingerprint-mix"],
)
def test_trainer_on_a_damaged_cache_names_the_shard_and_writes_no_results(tmp_path, tiny_cache, damage, message):
    import shutil
    import subprocess
    import sys

    cache = Path(shutil.copytree(tiny_cache, tmp_path / "c"))
    damage(cache)
    p = subprocess.run(
        [sys.executable, "-m", "featcache.trainer", str(cache), "--runs", str(tmp_path / "runs"), "--no-progress"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert [p.name for p in (tmp_path / "runs").iterdir()] == []  # no run, not even a staging folder


def _mix_fingerprint(path: Path) -> None:
    import h5py

    with h5py.File(path, "r+") as f:
        fp = json.loads(f.attrs["fingerprint"])
        fp["weights_sha256"] = "random:7"
        f.attrs["fingerprint"] = json.dumps(fp)


def _conjunction_maps(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 7, 7, 4)`` maps, near zero but at two random positions: class 0 lights channels (0, 1) at one
    and (2, 3) at the other, class 1 (0, 2) and (1, 3). Every channel sums to 1 in every map, so the
    mean over positions is the same for both classes: only a head that looks at positions separately
    can tell them apart."""
    y = (np.arange(n) % 2).astype(np.int32)
    maps = rng.normal(0, 0.05, (n, 49, 4)).astype(np.float32)
    for i in range(n):
        p, q = rng.choice(49, 2, replace=False)
        a, b = ((0, 1), (2, 3)) if y[i] == 0 else ((0, 2), (1, 3))
        maps[i, p, a] += 1
        maps[i, q, b] += 1
    return maps.reshape(n, 7, 7, 4), y


def _fit(group, x: np.ndarray, y: np.ndarray, epochs: int, batch: int = 50) -> None:
    active = np.ones(group.k, bool)
    for e in range(epochs):
        for b in range(0, len(y), batch):
            group.train_step(x[b : b + batch], y[b : b + batch], active, (0, e * 1000 + b))


def test_map_head_reads_positions_where_a_mean_pool_sees_nothing():
    from featcache.trainer.engine import HeadGroup

    rng = np.random.default_rng(0)
    x, y = _conjunction_maps(600, rng)
    train, test = slice(0, 400), slice(400, 600)
    pooled = x.mean(axis=(1, 2))
    linear = HeadGroup([HeadConfig("linear", 1e-2)], 4, 2, seed=0)
    _fit(linear, pooled[train], y[train], 30)
    mapped = HeadGroup([HeadConfig("map", 1e-2, hidden=16)], 4, 2, seed=0)
    _fit(mapped, x[train], y[train], 30)
    acc = lambda g, inputs: float((g.predict(inputs)[0].argmax(-1) == y[test]).mean())  # noqa: E731
    assert acc(linear, pooled[test]) <= 0.65  # chance is 0.5: the mean pool holds no class information
    assert acc(mapped, x[test]) >= 0.9
    # the forward pass against a hand computation: 1x1 conv + ReLU, softmax attention over the 49 positions
    w = mapped.head_weights(0)
    f = np.maximum(x[test].reshape(200, 49, 4) @ w["W1"] + w["b1"], 0)  # (n, P, h)
    s = f @ w["a"]
    att = np.exp(s - s.max(1, keepdims=True))
    att /= att.sum(1, keepdims=True)
    logits = np.einsum("np,nph->nh", att, f) @ w["W2"] + w["b2"]
    want = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(mapped.predict(x[test])[0], want / want.sum(1, keepdims=True), atol=1e-5)
    assert att.max() > 0.2  # attention concentrates on the lit positions (uniform would be 1/49)


def test_dropout_is_active_in_training_only():
    from featcache.trainer.engine import HeadGroup

    g = HeadGroup([HeadConfig("mlp", 1e-3, hidden=8), HeadConfig("mlp", 1e-3, hidden=8, dropout=0.5)], 6, 8, seed=0)
    g.params["W2"].assign(np.broadcast_to(np.eye(8, dtype=np.float32), (2, 8, 8)))  # logits = hidden units
    x = np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32)
    w = g.head_weights(1)
    hidden = np.maximum(x @ w["W1"] + w["b1"], 0)
    evaluated = g.logits(x).numpy()
    np.testing.assert_allclose(evaluated[1], hidden, rtol=1e-5, atol=1e-6)  # no dropout outside training
    trained = g.logits(x, training=True, seed=(0, 1)).numpy()
    np.testing.assert_allclose(trained[0], evaluated[0], rtol=1e-6)  # dropout 0: unchanged
    dropped = trained[1] == 0
    live = hidden > 0
    assert 0.3 < dropped[live].mean() < 0.7  # about half the live units dropped...
    np.testing.assert_allclose(trained[1][~dropped], 2 * hidden[~dropped], rtol=1e-5)  # ...the rest scaled by 1/keep
    np.testing.assert_array_equal(g.logits(x, training=True, seed=(0, 1)).numpy(), trained)  # seeded
    assert not np.array_equal(g.logits(x, training=True, seed=(0, 2)).numpy()[1], trained[1])


def _random_label_dataset(n: int = 240, dim: int = 16):
    from featcache.trainer.data import Dataset, Split

    rng = np.random.default_rng(1)

    def split(rows: int) -> Split:
        ids = np.array([f"r{i}" for i in range(rows)], object)
        return Split(
            np.arange(rows),
            ids,
            rng.integers(0, 3, rows).astype(np.int32),
            rng.normal(size=(rows, dim)).astype(np.float32),
        )

    return Dataset(["a", "b", "c"], split(n), split(n // 2), split(n // 2), False, 0)


def test_early_stopping_stops_patience_epochs_after_the_best_and_restores_it(monkeypatch):
    from featcache.trainer.engine import HeadGroup
    from featcache.trainer.loop import train

    ds = _random_label_dataset()  # nothing to learn: val accuracy wanders and heads stop early
    configs = [HeadConfig("linear", 3e-2), HeadConfig("linear", 3e-3)]
    settings = Settings(epochs=40, batch_size=32, patience=3, seed=0, standardize=False)
    out = train(ds, configs, settings, progress=False)
    group = out.states[0].group
    for k, h in enumerate(out.heads):
        best, best_acc, best_loss = 0, -1.0, np.inf  # the rule: a better val accuracy, or as good with lower loss
        for e in h["epochs"]:
            if e["val_acc"] > best_acc or (e["val_acc"] == best_acc and e["val_loss"] < best_loss):
                best, best_acc, best_loss = e["epoch"], e["val_acc"], e["val_loss"]
        assert h["best_epoch"] == best and h["val_acc"] == best_acc
        assert len(h["epochs"]) == min(settings.epochs, best + settings.patience)  # stopped right on time
        restored_loss, restored_acc = group.evaluate([(ds.val.pooled, ds.val.y)])
        assert restored_acc[k] == best_acc and abs(restored_loss[k] - best_loss) < 1e-5
    assert any(len(h["epochs"]) < settings.epochs for h in out.heads)
    # restored weights equal those at the end of the best epoch: train again for exactly that many epochs
    for k, h in enumerate(out.heads):
        again = train(ds, configs, Settings(**{**settings.__dict__, "epochs": h["best_epoch"], "patience": 99}), False)
        np.testing.assert_array_equal(again.states[0].group.head_weights(k)["W"], group.head_weights(k)["W"])
    # ...and differ from the last epoch's: without the restore, the weights are not the best epoch's
    monkeypatch.setattr(HeadGroup, "restore_best", lambda self: None)
    last = train(ds, configs, settings, progress=False).states[0].group
    stopped_late = [k for k, h in enumerate(out.heads) if len(h["epochs"]) > h["best_epoch"]]
    assert stopped_late and all(
        not np.array_equal(last.head_weights(k)["W"], group.head_weights(k)["W"]) for k in stopped_late
    )
