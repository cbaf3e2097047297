"""Each head kind's forward pass, computed three ways, agrees: the kind's numpy ``probs``, the Keras head a
run exports (``keras_heads.head_model``, saved and loaded back), and for SGD kinds the engine's stacked
TensorFlow group; and a run's predictions from the cache (``featcache.trainer.predict``) equal the numpy
forward pass of the head's saved weights."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import synthetic_cache

from featcache.trainer.heads import HEAD_KINDS, SGD, Weights
from featcache.trainer.sweep import HeadConfig

C, N_CLASSES, ROWS = 6, 3, 24

# Every exportable configuration: each kind with Keras layers and a numpy forward, each map pooling,
# logistic regression as cached and power-normalised.
CONFIGS = [
    HeadConfig("linear", 1e-2),
    HeadConfig("mlp", 1e-2, hidden=8, dropout=0.3),
    *[HeadConfig("map", 1e-2, hidden=8, dropout=0.2, pool=p) for p in ("attention", "mean", "gem", "multiscale")],
    HeadConfig("logreg", c=0.1),
    HeadConfig("logreg", c=0.1, power=0.5),
]


def _random_weights(cfg: HeadConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Weights of the shapes the kind states, drawn at random (a std is positive, GeM's power 2.5)."""
    shapes = HEAD_KINDS[cfg.kind].shapes
    assert shapes is not None
    w = {k: rng.normal(0, 0.4, s).astype(np.float32) for k, s in shapes(cfg, C, N_CLASSES).items()}
    if "std" in w:
        w["std"] = rng.uniform(0.5, 1.5, C).astype(np.float32)
    if "p" in w:
        w["p"] = np.float32(2.5)
    return w


def test_every_exportable_kind_is_covered():
    exportable = {k for k, kind in HEAD_KINDS.items() if kind.keras_head is not None and kind.probs is not None}
    assert exportable == {c.kind for c in CONFIGS} == {"logreg", "linear", "mlp", "map"}


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
def test_numpy_keras_and_engine_forward_passes_agree(cfg, tmp_path):
    import keras

    from featcache.trainer.keras_heads import head_model

    kind = HEAD_KINDS[cfg.kind]
    assert kind.probs is not None and kind.weights is not None
    rng = np.random.default_rng(0)
    w = _random_weights(cfg, rng)
    typed = kind.weights.of(w)  # the typed weights hold exactly the saved parameters
    assert isinstance(typed, Weights) and {k: v.shape for k, v in typed.arrays().items()} == {
        k: v.shape for k, v in w.items()
    }
    maps = cfg.reads_maps
    x = rng.uniform(0, 3, (ROWS, 7, 7, C) if maps else (ROWS, C)).astype(np.float32)
    standardize = None
    inp = x  # what the numpy forward pass takes: the sweep's standardisation done outside the head
    if not maps and kind.fit == SGD:
        standardize = (rng.uniform(0, 1, C).astype(np.float32), rng.uniform(0.5, 2, C).astype(np.float32))
        inp = (x - standardize[0]) / standardize[1]
    want = kind.probs(cfg, w, inp)
    assert want.shape == (ROWS, N_CLASSES)
    np.testing.assert_allclose(want.sum(axis=1), 1.0, rtol=1e-9)
    head_model(cfg, w, x.shape[1:], N_CLASSES, standardize).save(tmp_path / "head.keras")
    got = keras.models.load_model(tmp_path / "head.keras").predict(x, verbose=0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    if kind.fit == SGD:  # the engine's stacked forward pass, on the same weights
        from featcache.trainer.engine import HeadGroup

        g = HeadGroup([cfg], C, N_CLASSES, seed=0)
        for name, var in g.params.items():
            var.assign(np.asarray(w[name], np.float32)[None])
        np.testing.assert_allclose(g.predict(inp)[0], want, rtol=1e-4, atol=1e-5)


def test_predictions_from_the_cache_equal_each_kinds_numpy_forward_pass(tmp_path):
    """A trained run's heads (one per exportable kind), predicted by ``featcache.trainer.predict`` from the
    cache (its CSV, 6 decimals), equal the kind's numpy forward pass of the weights in heads.npz on the
    cached features."""
    from featcache.shared.cache import FeatureCache
    from featcache.trainer.api import train
    from featcache.trainer.predict import predict
    from featcache.trainer.rundir import head_params, load_results

    cache = synthetic_cache(tmp_path / "cache", n=90, classes=N_CLASSES)
    run = train(
        cache,
        head=["logreg", "linear", "mlp", "map"],
        hidden=8,
        c=0.1,
        lr=1e-2,
        epochs=2,
        batch_size=32,
        patience=5,
        seed=0,
        runs=tmp_path / "runs",
        progress=False,
    ).run_dir
    results = load_results(run)
    assert {h["config"]["kind"] for h in results["heads"]} == {"logreg", "linear", "mlp", "map"}
    rows = FeatureCache(cache).load_pooled()
    for h in results["heads"]:
        cfg = HeadConfig.from_json(h["config"])
        kind = HEAD_KINDS[cfg.kind]
        assert kind.probs is not None
        out = tmp_path / f"{h['name']}.csv"
        pred = predict(run, out, split="all", head=h["name"])
        with open(out, newline="") as fh:
            by_id = {r["id"]: [float(r[f"p_{c}"]) for c in results["classes"]] for r in csv.DictReader(fh)}
        assert pred.rows == len(rows) == len(by_id)
        w, mean_std = head_params(run, results, h["name"])
        x = rows.pooled
        if cfg.reads_maps:  # the synthetic cache's maps repeat the pooled vector at every position
            x = np.broadcast_to(x[:, None, None, :], (len(x), 7, 7, x.shape[1]))
        elif kind.fit == SGD and mean_std is not None:
            x = (x - mean_std[0]) / mean_std[1]
        want = kind.probs(cfg, w, x)
        got = np.array([by_id[i] for i in rows.id.tolist()])
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=h["name"])
