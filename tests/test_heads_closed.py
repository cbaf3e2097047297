"""The training-free and closed-loop heads (k-NN, L-BFGS logistic regression) and head selection,
each against an independent computation: brute-force numpy, scikit-learn, the textbook formula."""

from __future__ import annotations

import numpy as np
import pytest

from featcache.trainer import selection
from featcache.trainer.heads import ensemble, knn, logreg


def _blobs(n: int, d: int, k: int, seed: int, spread: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    y = rng.integers(0, k, n)
    return (centres[y] + rng.normal(scale=spread, size=(n, d))).astype(np.float32), y


def test_knn_equals_brute_force():
    x, y = _blobs(300, 16, 4, seed=0)
    q, _ = _blobs(2 * knn.QUERY_BLOCK + 5, 16, 4, seed=1)  # several blocks, a ragged last one
    index = knn.fit(x, y, 4)
    k, t = 7, 0.1
    got = knn.sweep(index, [q], ks=(3, k), temperatures=(t,))[(k, t)][0]
    # brute force: every cosine, full sort, weighted votes
    xc, qc = x - x.mean(0), q - x.mean(0)
    cos = (qc / np.linalg.norm(qc, axis=1, keepdims=True)) @ (xc / np.linalg.norm(xc, axis=1, keepdims=True)).T
    want = np.zeros((len(q), 4))
    for i in range(len(q)):
        nn = np.argsort(-cos[i])[:k]
        for j in nn:
            want[i, y[j]] += np.exp(cos[i, j] / t)
    want /= want.sum(1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert knn.predict(index, q, k, t).argmax(1).tolist() == want.argmax(1).tolist()


def test_knn_k_larger_than_train_set():
    x, y = _blobs(5, 4, 2, seed=2)
    probs = knn.predict(knn.fit(x, y, 2), x, k=50)
    assert probs.shape == (5, 2)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)


def test_logreg_path_matches_scikit_learn():
    """Each C's solution equals scikit-learn's (both solved tightly): the same objective, warm starts
    only change where the solver starts."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y = _blobs(200, 10, 4, seed=3)
    cs = [1e-2, 1.0]
    fits = logreg.fit_path(x, y, 4, cs, tol=1e-8)
    for fit in fits:
        ref = sklearn.LogisticRegression(C=fit.c, tol=1e-8, max_iter=5000).fit(x, y)
        # both stop on a relative change of f near machine precision: probabilities agree to ~1e-5
        np.testing.assert_allclose(fit.predict_proba(x), ref.predict_proba(x), atol=2e-4)
        np.testing.assert_array_equal(fit.predict_proba(x).argmax(1), ref.predict(x))
        np.testing.assert_allclose(fit.W, ref.coef_.T, atol=2e-3)
        assert fit.converged


def test_wilson_interval_textbook_value():
    # Wilson (1927) for 81/263 at 95%: (0.2553, 0.3662), as tabulated by Newcombe (1998)
    low, high = selection.wilson(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)


def _cand(name: str, correct: np.ndarray, cost: float) -> selection.Candidate:
    probs = np.where(correct[:, None], np.eye(2)[0], np.eye(2)[1])  # class 0 when correct
    return selection.Candidate(name, probs, probs, cost)


def test_pick_prefers_cheaper_head_within_noise():
    y = np.zeros(1000, int)
    best = _cand("big", np.arange(1000) < 800, cost=10)  # 0.800
    close = _cand("small", np.arange(1000) < 795, cost=1)  # 0.795: within one SE (~1.3 points)
    far = _cand("tiny", np.arange(1000) < 700, cost=0)  # 0.700: not
    assert selection.pick([best, close, far], y).name == "small"
    assert selection.pick([best, far], y).name == "big"


def test_ensemble_mean_of_top_k():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 200)
    cands = [
        selection.Candidate(f"h{i}", rng.dirichlet(np.ones(3), 200), rng.dirichlet(np.ones(3), 50)) for i in range(5)
    ]
    out, members = ensemble.ensemble(cands, y, max_k=5)
    ranked = sorted(cands, key=lambda c: -c.val_acc(y))
    k = out.info["k"]
    assert members == [c.name for c in ranked[:k]]
    np.testing.assert_allclose(out.test, np.mean([c.test for c in ranked[:k]], axis=0))
    accs = [np.mean(np.mean([c.val for c in ranked[:j]], 0).argmax(1) == y) for j in range(1, 6)]
    assert out.val_acc(y) == max(accs) and k == int(np.argmax(accs)) + 1


def test_poolings_against_numpy():
    from featcache.trainer import pooling

    maps = np.random.default_rng(5).uniform(0, 6, (pooling.BLOCK_ROWS + 3, 3, 3, 8)).astype(np.float16)
    m = maps.astype(np.float64)
    np.testing.assert_allclose(pooling.gem(maps, 1.0), m.mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(pooling.gem(maps, 3.0), np.cbrt((m**3).mean(axis=(1, 2))), rtol=1e-5)
    np.testing.assert_allclose(pooling.max_pool(maps), m.max(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(pooling.mean_max(maps)[:, 8:], m.max(axis=(1, 2)), rtol=1e-6)
    assert pooling.gem(maps, 50.0).max() <= m.max() and np.allclose(pooling.gem(maps, 50.0), m.max((1, 2)), rtol=0.05)


def test_report_picks_the_simplest_head_within_noise_and_says_so():
    from featcache.trainer.report import best_head, leaderboard

    def row(name: str, kind: str, hidden: int, acc: float, tta: float | None = None) -> dict:
        return {"name": name, "config": {"kind": kind, "hidden": hidden}, "val_acc": acc, "val_loss": 1.0,
                "test_acc": acc, "best_epoch": 1, "val_acc_tta": tta, "test_acc_tta": tta, "use_tta": tta is not None
                and tta > acc, "views": 2}  # fmt: skip

    mlp, linear = row("mlp", "mlp", 512, 0.800), row("linear", "linear", 0, 0.795)
    assert best_head([mlp, linear], 1000)["name"] == "linear"  # 0.5 points apart on 1,000 rows: a tie
    assert best_head([mlp, row("linear", "linear", 0, 0.70)], 1000)["name"] == "mlp"
    assert best_head([mlp, row("linear", "linear", 0, 0.70, tta=0.80)], 1000)["name"] == "linear"  # TTA counts
    board = leaderboard([mlp, linear], 1000).splitlines()
    assert board[1].startswith("  1~") and board[1].endswith("linear") and "[0.774,0.824]" in board[2]
    assert "TTA x2" in leaderboard([row("l", "linear", 0, 0.7, tta=0.8)], 1000)
    # the pick's threshold is printed: the lower end of the best's one-SE Wilson interval, checkable by hand
    low = selection.wilson(800, 1000, 1.0)[0]
    assert f"val acc >= {low:.4f}, the lower end of the best val acc 0.8000's one-standard-error" in board[-2]
    a, b = row("a", "logreg", 0, 0.748), row("b", "logreg", 0, 0.739)
    a["val_loss"], b["val_loss"] = 0.9, 0.8  # equally simple: the lower val loss is picked, and shown
    board = leaderboard([a, b], 1000).splitlines()
    assert board[1].startswith("  1~") and board[1].endswith(" b") and "  0.8000  " in board[1]


def test_signed_power():
    np.testing.assert_array_equal(logreg.signed_power(np.array([-4.0, 0.0, 9.0]), 0.5), [-2.0, 0.0, 3.0])


def test_logreg_heads_of_a_sweep_are_scikit_learns_on_views():
    """The sweep's ``logreg`` heads (fitted by the loop on every train view, power-normalised, own
    standardisation) give scikit-learn's probabilities for the same features, and TTA is the mean of
    the views' probabilities computed by hand."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    from featcache.trainer.data import Dataset, Split
    from featcache.trainer.loop import train
    from featcache.trainer.settings import Settings
    from featcache.trainer.sweep import expand

    rng = np.random.default_rng(6)
    k, d, v = 3, 12, 2
    centres = rng.uniform(0, 2, (k, d))

    def split(n: int) -> Split:
        y = rng.integers(0, k, n)
        views = np.abs(centres[y][:, None] + rng.normal(scale=1.0, size=(n, v, d))).astype(np.float32)
        ids = np.array([f"r{i}" for i in range(n)])
        return Split(np.arange(n), ids, y.astype(np.int32), views[:, 0], views=views)

    ds = Dataset(["a", "b", "c"], split(240), split(80), split(80), False, 0)
    configs = expand({"head": ["logreg"], "c": [0.01, 1.0], "power": [1.0, 0.5]})
    out = train(ds, configs, Settings(epochs=1, folds=0), progress=False)
    flat = ds.train.views.reshape(-1, d).astype(np.float64)
    for row in out.heads:
        cfg = configs[[c.name for c in configs].index(row["name"])]
        flat_p = logreg.signed_power(flat, cfg.power)
        mean, std = flat_p.mean(0), flat_p.std(0)
        ref = sklearn.LogisticRegression(C=cfg.c, max_iter=5000).fit((flat_p - mean) / std, np.repeat(ds.train.y, v))
        test = [logreg.signed_power(ds.test.views[:, j].astype(np.float64), cfg.power) for j in range(v)]
        probs = [ref.predict_proba((t - mean) / std) for t in test]
        state, i = out.locate(row["name"])
        np.testing.assert_allclose(state.probabilities("test", i), probs[0], atol=2e-3)
        np.testing.assert_allclose(state.tta_probabilities("test")[i], np.mean(probs, axis=0), atol=2e-3)
        assert row["test_acc_tta"] == np.mean(np.mean(probs, axis=0).argmax(1) == ds.test.y)
        assert row["best_epoch"] == 1 and len(row["epochs"]) == 1
