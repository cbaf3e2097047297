"""Map heads' poolings and train-time augmentations of the maps: each against numpy or
``trainer/pooling``, off at evaluation, and exported to Keras with the trained head's outputs."""

from __future__ import annotations

import numpy as np
import pytest

from featcache.shared.errors import FeatcacheError
from featcache.trainer import pooling
from featcache.trainer.heads.map import map_features
from featcache.trainer.sweep import HeadConfig, expand

POOLS = ("attention", "mean", "gem", "multiscale")


def _identity_group(pool: str, c: int, augment: str = "none"):
    """A map head whose 1x1 conv is the identity (``hidden = C``, zero bias): on non-negative maps its
    pooled features are the pooling of the maps themselves."""
    from featcache.trainer.engine import HeadGroup

    g = HeadGroup([HeadConfig("map", 1e-2, hidden=c, pool=pool, map_augment=augment)], c, 3, seed=0)
    g.params["W1"].assign(np.eye(c, dtype=np.float32)[None])
    return g


def test_poolings_equal_numpy_and_trainer_pooling():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 3, (5, 7, 7, 6)).astype(np.float32)
    gem = _identity_group("gem", 6)
    gem.params["p"].assign([2.5])
    np.testing.assert_allclose(map_features(gem, x).numpy()[0], pooling.gem(x, 2.5), rtol=1e-5)
    mean = _identity_group("mean", 6)
    np.testing.assert_allclose(map_features(mean, x).numpy()[0], x.mean(axis=(1, 2)), rtol=1e-5)
    multi = map_features(_identity_group("multiscale", 6), x).numpy()[0].reshape(5, 14, 6)
    np.testing.assert_allclose(multi, pooling.multiscale(x).reshape(5, 14, 6), rtol=1e-5)
    # regions: the whole grid, 2x2 adaptive bins [0, 4) and [3, 7), then 3x3 bins [0, 3), [2, 5), [4, 7)
    np.testing.assert_allclose(multi[:, 0], x.mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(multi[:, 2], x[:, 0:4, 3:7].mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(multi[:, 5 + 4], x[:, 2:5, 2:5].mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(multi[:, 5 + 8], x[:, 4:7, 4:7].mean(axis=(1, 2)), rtol=1e-5)


def test_flip_and_crop_are_windows_and_mirrors_of_each_map():
    from featcache.trainer.engine import tf
    from featcache.trainer.heads.map import crop_maps, flip_maps

    x = np.arange(32 * 4 * 5 * 2, dtype=np.float32).reshape(32, 4, 5, 2)
    seed = tf.constant([0, 7], tf.int64)
    flipped = flip_maps(x, seed).numpy()
    mirrored = np.array([np.array_equal(f, m[:, ::-1]) for f, m in zip(flipped, x, strict=True)])
    same = np.array([np.array_equal(f, m) for f, m in zip(flipped, x, strict=True)])
    assert (mirrored ^ same).all() and 8 <= mirrored.sum() <= 24  # every map one or the other, about half mirrored
    cropped = crop_maps(x, seed).numpy()
    assert cropped.shape == (32, 3, 4, 2)
    offsets = [
        next((oy, ox) for oy in (0, 1) for ox in (0, 1) if np.array_equal(c, m[oy : oy + 3, ox : ox + 4]))
        for c, m in zip(cropped, x, strict=True)
    ]  # StopIteration if a crop is not a window of its map
    assert set(offsets) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    np.testing.assert_array_equal(crop_maps(x, seed).numpy(), cropped)  # seeded
    assert not np.array_equal(crop_maps(x, tf.constant([0, 8], tf.int64)).numpy(), cropped)


def test_dropped_positions_are_whole_positions_and_the_rest_is_rescaled():
    x = np.ones((64, 7, 7, 3), np.float32)
    g = _identity_group("mean", 3, "drop")
    kept = map_features(g, x, training=True, seed=(0, 1)).numpy()[0] * 49 * 0.75  # positions kept, per row
    np.testing.assert_allclose(kept, np.round(kept), atol=1e-4)  # whole positions (every channel alike)
    np.testing.assert_allclose(kept, kept[:, :1].repeat(3, 1), atol=1e-4)
    assert 0.7 < kept.mean() / 49 < 0.8


def test_augmentations_are_seeded_in_training_and_off_at_evaluation():
    from featcache.trainer.engine import HeadGroup

    x = np.random.default_rng(1).uniform(0, 2, (16, 7, 7, 6)).astype(np.float32)
    plain = HeadGroup([HeadConfig("map", 1e-2, hidden=8, pool="multiscale")], 6, 3, seed=0)
    aug = HeadGroup([HeadConfig("map", 1e-2, hidden=8, pool="multiscale", map_augment="flip+crop+drop")], 6, 3, 0)
    np.testing.assert_array_equal(aug.predict(x), plain.predict(x))  # same weights, no augmentation at eval
    np.testing.assert_array_equal(aug.predict(x), aug.predict(x))
    trained = aug.logits(x, training=True, seed=(0, 1)).numpy()
    np.testing.assert_array_equal(aug.logits(x, training=True, seed=(0, 1)).numpy(), trained)
    assert not np.allclose(trained, aug.logits(x, training=True, seed=(0, 2)).numpy())
    assert not np.allclose(trained, aug.logits(x).numpy())


def test_exported_map_heads_equal_the_heads(tmp_path):
    """Each pooling's head, its weights moved off their initial values, as Keras (saved and loaded
    back) and as the HTML report's numpy forward pass: the same probabilities as the group's."""
    import keras

    from featcache.trainer.engine import HeadGroup
    from featcache.trainer.html_report import head_probs
    from featcache.trainer.keras_heads import head_model

    rng = np.random.default_rng(2)
    x = rng.uniform(0, 3, (40, 7, 7, 6)).astype(np.float32)
    for pool in POOLS:
        cfg = HeadConfig("map", 3e-2, hidden=8, dropout=0.2, pool=pool, map_augment="flip+crop+drop")
        g = HeadGroup([cfg], 6, 3, seed=0)
        for var in g.params.values():
            var.assign(var.numpy() + rng.normal(0, 0.3, var.shape).astype(np.float32))
        w = g.head_weights(0)
        want = g.predict(x)[0]
        head_model(cfg, w, (7, 7, 6), 3).save(tmp_path / f"{pool}.keras")
        got = keras.models.load_model(tmp_path / f"{pool}.keras").predict(x, verbose=0)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=pool)
        np.testing.assert_allclose(head_probs(cfg, w, x), want, rtol=1e-4, atol=1e-5, err_msg=pool)


def test_gem_power_is_learned_at_its_own_pace():
    """AdamW steps (with every augmentation) move GeM's power by about 10x the head's lr per step."""
    from featcache.trainer.engine import HeadGroup
    from featcache.trainer.heads.map import GEM_P0

    rng = np.random.default_rng(3)
    x = rng.uniform(0, 3, (40, 7, 7, 6)).astype(np.float32)
    y = rng.integers(0, 3, 40).astype(np.int32)
    g = HeadGroup([HeadConfig("map", 1e-2, hidden=8, pool="gem", map_augment="flip+crop+drop")], 6, 3, seed=0)
    for step in range(4):
        g.train_step(x[step * 10 : step * 10 + 10], y[step * 10 : step * 10 + 10], np.ones(1, bool), (0, step))
    assert 0.05 < abs(float(g.head_weights(0)["p"]) - GEM_P0) <= 4 * 10 * 1e-2 + 1e-6


def test_pool_and_augment_grid_keys():
    names = [
        c.name
        for c in expand({"head": ["map", "linear"], "pool": ["attention", "gem"], "map_augment": ["none", "drop+flip"]})
    ]
    assert names == [
        "map-h256-do0-lr0.001-wd0-ls0",
        "map-h256-do0-augflip+drop-lr0.001-wd0-ls0",  # normalised order
        "map-h256-do0-gem-lr0.001-wd0-ls0",
        "map-h256-do0-gem-augflip+drop-lr0.001-wd0-ls0",
        "linear-lr0.001-wd0-ls0",  # pool and augmentation collapse for pooled heads
    ]
    with pytest.raises(FeatcacheError, match="pool='max': unknown map pooling; choose from attention, mean, gem"):
        expand({"head": ["map"], "pool": ["max"]})
    with pytest.raises(FeatcacheError, match="map_augment='flip\\+flip': must be none or names joined by \\+"):
        expand({"head": ["map"], "map_augment": ["flip+flip"]})
