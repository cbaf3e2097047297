"""Inspection at scale (#27): label-noise scores past the classifier's fit size (a sample cross-validated,
every other row scored by the folds' models) and the neighbours' label agreement through the neighbour
index, each checked against an independent computation (numpy brute force, the classifier refitted)."""

from __future__ import annotations

import numpy as np

from featcache.shared.inspection import knn, suspects


def labelled_clusters(n: int, c: int, classes: int, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.gamma(0.5, 1.0, (classes * 4, c)).astype(np.float32)
    cluster = rng.integers(0, classes * 4, n)
    x = centres[cluster] + rng.gamma(0.5, 0.3, (n, c)).astype(np.float32)
    y = cluster % classes
    flipped = rng.choice(n, n // 50, replace=False)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + 1 + rng.integers(0, classes - 1, len(flipped))) % classes
    return x, noisy, flipped


def test_past_the_fit_size_the_sample_is_cross_validated_and_the_rest_scored_by_the_folds(monkeypatch):
    monkeypatch.setattr(suspects, "FIT_MAX_ROWS", 600)
    monkeypatch.setattr(suspects, "PCA_DIMS", 16)
    x, y, flipped = labelled_clusters(2000, 40, 4, seed=2)
    noise = suspects.label_noise(x, y, 4, folds=3, seed=0)
    sample = suspects.fit_sample(y, 600, 0)
    assert noise.fitted == len(sample) and len(sample) >= 600
    # independently: standardise and project with numpy (float64), refit each fold, average for the rest
    mean, std = x.mean(axis=0, dtype=np.float64), np.maximum(x.std(axis=0, dtype=np.float64), suspects.STD_FLOOR)
    rng = np.random.default_rng(0)
    pca_rows = np.sort(rng.choice(len(x), min(suspects.PCA_FIT_ROWS, len(x)), replace=False))
    centre, axes = suspects.pca_basis(((x[pca_rows] - mean) / std).astype(np.float32), 16, 0)
    z = (((x - mean) / std).astype(np.float32) - centre) @ axes
    fold = suspects.stratified_folds(y[sample], 3, 0)
    expected = np.empty((len(x), 4), np.float32)
    models = []
    for f in range(3):
        held = fold == f
        w, b = suspects.fit_softmax(z[sample][~held], y[sample][~held], 4)
        expected[sample[held]] = suspects.softmax(z[sample][held] @ w + b)
        models.append((w, b))
    rest = np.setdiff1d(np.arange(len(x)), sample)
    expected[rest] = np.mean([suspects.softmax(z[rest] @ w + b) for w, b in models], axis=0)
    np.testing.assert_allclose(noise.probs, expected, atol=2e-3)
    # and it finds the flipped labels: most of them among the most suspect 4%
    top = noise.order[: len(x) // 25]
    assert np.isin(flipped, top).mean() > 0.7


def test_neighbour_agreement_equals_the_brute_force_share(monkeypatch):
    x, y, _ = labelled_clusters(900, 80, 3, seed=4)
    x[5] = np.nan  # never a neighbour, and NaN itself
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    ok = np.flatnonzero(np.isfinite(x).all(axis=1))
    sims = u[ok] @ u[ok].T
    np.fill_diagonal(sims, -np.inf)
    near = np.argsort(-sims, axis=1)[:, :10]
    expected = np.full(len(x), np.nan)
    expected[ok] = (y[ok][near] == y[ok][:, None]).mean(axis=1)
    np.testing.assert_allclose(suspects.neighbour_agreement(x, y), expected)
    monkeypatch.setattr(knn, "EXACT_MAX_ROWS", 100)  # through the neighbour index: the same on clustered rows
    through_index = suspects.neighbour_agreement(x, y)
    assert np.isnan(through_index[5]) and np.nanmax(np.abs(through_index - expected)) <= 0.1
