"""The trainer on a cache with views: train rows fed through their views, val/test scored on view 0 and
with test-time augmentation (TTA), which to trust chosen on val."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from featcache.shared.backbones import Augment, ResolvedWeights, get_backbone, make_fingerprint
from featcache.shared.cache._manifest import Manifest
from featcache.shared.cache._reader import FeatureCache
from featcache.shared.cache._writer import CacheWriter, storage_options
from featcache.trainer import views as tviews
from featcache.trainer.data import load_dataset
from featcache.trainer.loop import train
from featcache.trainer.settings import Settings
from featcache.trainer.sweep import expand

VIEWS = 3


def views_cache(path: Path, n: int = 200, classes: int = 4, seed: int = 0) -> Path:
    """A cache written with shared's writer: class centres plus noise, each view with its own noise
    (so TTA averages it away); 60/20/20 train/val/test given by the source."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (classes, 1280)).astype(np.float32)
    y = np.arange(n) % classes
    pooled = (centres[y][:, None] + rng.normal(0, 6.0, (n, VIEWS, 1280))).astype(np.float32)
    ids = [f"c{y[i]}/{i:05d}.jpg" for i in range(n)]
    split = np.where(np.arange(n) % 10 < 6, 0, np.where(np.arange(n) % 10 < 8, 1, 2))
    fp = make_fingerprint(
        get_backbone("tiny"), ResolvedWeights("random", None, "random:0", 0), maps_dtype="float32",
        augment=Augment(views=VIEWS),
    )  # fmt: skip
    m = Manifest(
        fingerprint=fp,
        classes=[f"class{k}" for k in range(classes)],
        source={"kind": "synthetic", "root": str(path), "num_inputs": n, "listing_sha256": "x" * 64,
                "split_source": "folders"},
        split={"source": "folders", "fractions": {"train": 0.8, "val": 0.1, "test": 0.1}},
        storage=storage_options("none", "float32"),
        shard_size=100,
    )  # fmt: skip
    with CacheWriter(path, m) as cw:
        for shard in cw.pending_shards():
            w = cw.start_shard(shard)
            r = np.arange(w.inputs.start, w.inputs.stop)
            maps = np.broadcast_to(pooled[r, 0][:, None, None, :], (len(r), 7, 7, 1280))
            w.append(maps, pooled[r, 0], y[r], [ids[i] for i in r], r, split[r], pooled[r, 1:])
            cw.commit_shard(w, [])
    return path


def test_tta_equals_mean_of_per_view_probabilities(tmp_path):
    cache = FeatureCache(views_cache(tmp_path / "c"))
    ds = load_dataset(cache, views=True)
    assert ds.train.views.shape == (120, VIEWS, 1280)
    np.testing.assert_array_equal(ds.val.views[:, 0], ds.val.pooled)
    out = train(ds, expand({"head": ["linear"], "lr": [1e-3, 1e-2]}), Settings(epochs=3, seed=0), progress=False)
    mean, std = out.mean_std
    for k, head in enumerate(out.heads):
        w = out.states[0].group.head_weights(k)
        by_hand = []
        for split in (ds.val, ds.test):
            per_view = []
            for v in range(VIEWS):
                z = ((split.views[:, v] - mean) / std) @ w["W"] + w["b"]
                e = np.exp(z - z.max(1, keepdims=True))
                per_view.append(e / e.sum(1, keepdims=True))
            by_hand.append(np.mean(np.mean(per_view, axis=0).argmax(1) == split.y))
        assert head["views"] == VIEWS
        assert (head["val_acc_tta"], head["test_acc_tta"]) == (by_hand[0], by_hand[1])
        assert head["use_tta"] == (head["val_acc_tta"] > head["val_acc"])
    # the noise is per view, so averaging three views beats one on this data
    assert any(h["use_tta"] for h in out.heads)


def test_training_feeds_each_row_through_its_epochs_view(tmp_path, monkeypatch):
    """The batches a head sees are view ``epoch_views(...)[row]`` of each row, not always view 0."""
    cache = FeatureCache(views_cache(tmp_path / "c", n=60))
    ds = load_dataset(cache, views=True)
    seen = []
    from featcache.trainer.engine import HeadGroup

    real = HeadGroup.train_step
    monkeypatch.setattr(HeadGroup, "train_step", lambda self, x, *a: seen.append(np.array(x)) or real(self, x, *a))
    out = train(ds, expand({}), Settings(epochs=2, batch_size=1000, seed=3), progress=False)
    mean, std = out.mean_std
    for epoch, x in enumerate(seen, 1):
        which = tviews.epoch_views(len(ds.train), VIEWS, 3, epoch)
        assert len(set(which.tolist())) == VIEWS
        np.testing.assert_allclose(x, (ds.train.views[np.arange(len(which)), which] - mean) / std, rtol=1e-6)


def test_views_off_or_absent_scores_view_0_only(tmp_path):
    cache = FeatureCache(views_cache(tmp_path / "c", n=60))
    out = train(load_dataset(cache), expand({}), Settings(epochs=1), progress=False)
    assert out.heads[0]["val_acc_tta"] is None and not out.heads[0]["use_tta"]
    out = train(load_dataset(cache, views=True), expand({}), Settings(epochs=1, views=False), progress=False)
    assert out.heads[0]["val_acc_tta"] is None


def test_baselines_beside_the_sweep_and_a_logreg_head_exported(tmp_path):
    """run_sweep adds the k-NN and ensemble rows (the ensemble may take k = 1, so on val it is never
    below the best of what it averages); a power-normalised logreg head, once picked, is exported as
    a Keras model whose outputs are the fitted head's, and any other logreg head is rebuilt from
    heads.npz the same way."""
    from featcache.trainer import rundir
    from featcache.trainer.keras_heads import load
    from featcache.trainer.predict import load_head, predict
    from featcache.trainer.run import run_sweep

    cache = views_cache(tmp_path / "c")
    configs = expand({"head": ["logreg"], "c": [0.01, 1.0], "power": [0.5]}) + expand({"head": ["linear"]})
    run, results = run_sweep(cache, configs, Settings(epochs=2), tmp_path / "runs", ["t"], lambda m: None, False)
    rows = {r["kind"]: r for r in results["baselines"]}
    assert list(rows) == ["knn", "ensemble"]
    best_single = max([rows["knn"]["val_acc"]] + [h["val_acc"] for h in results["heads"]])
    assert rows["ensemble"]["val_acc"] >= best_single and rows["ensemble"]["members"]
    assert results["best"].startswith("logreg-pow0.5-C")  # tied on this easy data: the simplest kind
    ds = load_dataset(FeatureCache(cache), views=True)
    out = train(ds, configs, Settings(epochs=2), progress=False)
    for name in ("logreg-pow0.5-C0.01", "logreg-pow0.5-C1"):
        state, k = out.locate(name)
        model = load(run / rundir.BEST_HEAD) if name == results["best"] else load_head(run, results, name)[1]
        got = model.predict(ds.test.pooled, verbose=0)  # test: val is scored out of fold when cross-validated
        np.testing.assert_allclose(got, state.probabilities("test", k), atol=1e-4)
    # predict scores a head as it was picked: with TTA (use_tta, chosen on val), the mean over the
    # cached views; these rows are easy enough that view 0 ties TTA on val, so TTA is switched on by hand
    name = "logreg-pow0.5-C1"
    rows_ = json.loads((run / rundir.RESULTS).read_text())
    for use_tta in (False, True):
        next(h for h in rows_["heads"] if h["name"] == name)["use_tta"] = use_tta
        (run / rundir.RESULTS).write_text(json.dumps(rows_))
        p = predict(run, tmp_path / "p.csv", split="test", head=name)
        got = np.loadtxt(tmp_path / "p.csv", delimiter=",", skiprows=1, usecols=range(6, 6 + 4))
        state, k = out.locate(name)
        want = state.tta_probabilities("test")[k] if use_tta else state.probabilities("test", k)
        assert p.views == (VIEWS if use_tta else 1)
        np.testing.assert_allclose(got, want, atol=1e-5)
    # the HTML report's numpy predictions of the best head follow the same rule
    from featcache.trainer.html_report import best_head_test_predictions

    rows_["best"] = name
    for use_tta in (False, True):
        next(h for h in rows_["heads"] if h["name"] == name)["use_tta"] = use_tta
        (run / rundir.RESULTS).write_text(json.dumps(rows_))
        _, pred = best_head_test_predictions(run, rows_)
        state, k = out.locate(name)
        want = state.tta_probabilities("test")[k] if use_tta else state.probabilities("test", k)
        np.testing.assert_allclose(pred["probs"], want, atol=1e-5)
    _, off = run_sweep(cache, configs, Settings(epochs=1, baselines=False), tmp_path / "runs", ["t"], print, False)
    assert "baselines" not in off


def test_exported_model_with_mirror_tta_is_the_mean_of_image_and_mirror(tmp_path):
    """``full_model(..., flip_tta=True)`` (what ``export`` builds for a head picked with TTA on a 2-view
    cache) equals the mean of the plain model's probabilities on the image and on its mirror, and
    survives a save/load round trip in Keras' safe mode."""
    from featcache.shared.backbones import resolve_weights
    from featcache.trainer.keras_heads import full_model, head_model, load

    spec = get_backbone("tiny")
    cfg = expand({"head": ["logreg"], "c": [0.1], "power": [0.5]})[0]
    rng = np.random.default_rng(7)
    c = spec.output_shape[-1]
    w = {"W": rng.normal(size=(c, 3)) * 0.01, "b": np.zeros(3), "mean": rng.uniform(0, 1, c), "std": np.ones(c)}
    head = head_model(cfg, {k: v.astype(np.float32) for k, v in w.items()}, (c,), 3)
    weights = resolve_weights(spec, "random")
    plain, tta = full_model(spec, weights, cfg, head), full_model(spec, weights, cfg, head, flip_tta=True)
    tta.save(tmp_path / "m.keras")
    images = rng.uniform(0, 255, (2, *spec.input_size, 3)).astype(np.float32)
    want = (plain.predict(images, verbose=0) + plain.predict(images[:, :, ::-1], verbose=0)) / 2
    assert not np.allclose(want, plain.predict(images, verbose=0), atol=1e-4)  # the mirror does change the output
    np.testing.assert_allclose(load(tmp_path / "m.keras").predict(images, verbose=0), want, atol=1e-5)
