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


def _unit(n: int, c: int = 96, seed: int = 5) -> np.ndarray:
    x, _, _ = labelled_clusters(n, c, 4, seed)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _exact_cos(unit: np.ndarray, k: int) -> np.ndarray:
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    return -np.sort(-sims, axis=1)[:, :k]


def _keep(tmp_path, shards: int, rows_per_shard: int, dead: str = "none") -> knn.Keep:
    from featcache.shared.cache._neighbours import Key

    key = Key([f"{s:064x}" for s in range(shards)], dead)
    return knn.Keep(tmp_path, key, {s: s * rows_per_shard for s in range(shards + 1)})


def test_the_kept_index_is_reused_extended_and_never_trusted_blindly(tmp_path):
    from featcache.shared.cache import _neighbours as neighbours

    unit = _unit(3000)
    first = _keep(tmp_path, 2, 1000)  # the cache's first 2,000 rows, in 2 shards
    rows, cos = knn.nearest_all(unit[:2000], 10, exact=False, keep=first)
    assert first.action == "built" and first.saved and (tmp_path / "neighbours.npz").is_file()
    again = _keep(tmp_path, 2, 1000)
    rows2, cos2 = knn.nearest_all(unit[:2000], 10, exact=False, keep=again)
    assert again.action == "reused"
    np.testing.assert_allclose(cos2, cos, atol=1e-5)  # computed again from the vectors: the same cosines
    assert (rows2 == rows).mean() > 0.99  # and the same rows (but for ties within float round-off)
    # a shard added (an update): extended, not rebuilt; as good as the exact search on every row
    grown = _keep(tmp_path, 3, 1000)
    rows3, cos3 = knn.nearest_all(unit, 10, exact=False, keep=grown)
    assert grown.action == "extended"
    exact = _exact_cos(unit, 10)
    assert np.abs(cos3 - exact).max() < 0.02 and (np.abs(cos3 - exact) < 1e-5).mean() > 0.99
    np.testing.assert_allclose(cos3, np.einsum("qc,qkc->qk", unit, unit[rows3]), atol=1e-5)  # exact cosines
    stored = neighbours.load(tmp_path, 96, grown.rows_of)
    assert stored is not None and len(stored.rows) == 3000 and stored.key == grown.key
    assert _keep(tmp_path, 3, 1000).graph(unit, 10, 0, None) is not None
    # another shard list (a shard replaced), or other dead rows: rebuilt
    replaced = knn.Keep(tmp_path, neighbours.Key(["f" * 64, *grown.key.shards[1:]], "none"), grown.rows_of)
    knn.nearest_all(unit, 10, exact=False, keep=replaced)
    assert replaced.action == "built"
    retired = _keep(tmp_path, 3, 1000, dead="other")
    knn.nearest_all(unit, 10, exact=False, keep=retired)
    assert retired.action == "built"


def test_a_tampered_or_linked_index_file_is_not_trusted(tmp_path):
    from featcache.shared.cache import _neighbours as neighbours

    unit = _unit(2000)
    keep = _keep(tmp_path, 2, 1000)
    knn.nearest_all(unit, 10, exact=False, keep=keep)
    stored = neighbours.load(tmp_path, 96, keep.rows_of)
    path = tmp_path / "neighbours.npz"
    # wrong neighbours with lying cosines: their cosines are computed again, the lists sorted again
    rng = np.random.default_rng(0)
    stored.rows = rng.integers(0, 2000, stored.rows.shape)
    stored.cos = np.ones(stored.cos.shape, np.float32)
    assert neighbours.save(tmp_path, stored)
    liar = _keep(tmp_path, 2, 1000)
    rows, cos = knn.nearest_all(unit, 10, exact=False, keep=liar)
    assert liar.action == "reused"
    finite = np.isfinite(cos)
    true = np.einsum("qc,qkc->qk", unit, unit[np.maximum(rows, 0)])
    np.testing.assert_allclose(cos[finite], true[finite], atol=1e-5)
    assert (np.diff(np.where(finite, cos, -2), axis=1) <= 1e-7).all()
    # out-of-range rows, a wrong shape, a corrupt zip, a symbolic link: ignored, rebuilt
    stored.rows[0, 0] = 2000
    neighbours.save(tmp_path, stored)
    assert neighbours.load(tmp_path, 96, keep.rows_of) is None
    stored.rows = stored.rows[:, :3][:-1]
    stored.cos = stored.cos[:, :3][:-1]
    neighbours.save(tmp_path, stored)
    assert neighbours.load(tmp_path, 96, keep.rows_of) is None
    path.write_bytes(b"PK\x03\x04 not a zip")
    assert neighbours.load(tmp_path, 96, keep.rows_of) is None
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    good = _keep(elsewhere, 2, 1000)
    knn.nearest_all(unit, 10, exact=False, keep=good)
    path.unlink()
    path.symlink_to(elsewhere / "neighbours.npz")
    assert neighbours.load(tmp_path, 96, keep.rows_of) is None
    linked = _keep(tmp_path, 2, 1000)
    knn.nearest_all(unit, 10, exact=False, keep=linked)
    assert linked.action == "built" and not path.is_symlink()  # the link replaced, its target untouched
    assert (elsewhere / "neighbours.npz").is_file()


def test_the_commands_keep_the_index_and_an_update_extends_it(tmp_path, monkeypatch):
    """On a real extracted cache (the tiny backbone): neighbours --duplicates builds and keeps the index,
    outliers and suspects reuse it, and after featcache-extract --update added images it is extended."""
    import shutil

    from conftest import extract, make_sample
    from typer.testing import CliRunner

    from featcache.shared.inspection.cli import app

    monkeypatch.setattr(knn, "EXACT_MAX_ROWS", 20)  # the index past 20 rows, as past 20,000
    source = tmp_path / "src"
    make_sample(source, per_class=24, classes=3, seed=2)  # 72 rows: the index needs 64
    extract(source, tmp_path / "cache", shard_size=8)
    runner = CliRunner()

    def run(*args):
        r = runner.invoke(app, [str(a) for a in args])
        assert r.exit_code == 0, r.output
        return r.stdout, r.stderr

    _, err = run("neighbours", tmp_path / "cache", "--duplicates")
    assert "neighbour index built and kept in" in err
    _, err = run("outliers", tmp_path / "cache", "--no-progress")
    assert "current, reused" in err
    _, err = run("suspects", tmp_path / "cache")
    assert "current, reused" in err
    first, second = sorted(p for p in source.iterdir() if p.is_dir())[:2]
    for k, p in enumerate(sorted(first.iterdir())[:6]):  # an update adds 6 images (copies of others)
        shutil.copyfile(p, second / f"added-{k}{p.suffix}")
    extract(source, tmp_path / "cache", shard_size=8, update=True)
    out, err = run("neighbours", tmp_path / "cache", "--duplicates")
    assert "neighbour index extended and kept in" in err
    rows = featcache_rows(tmp_path / "cache")
    u = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    sims = u @ u.T
    np.fill_diagonal(sims, -np.inf)
    expected = int((np.triu(sims, 1) >= 0.995).sum())
    assert expected == 6 and out.startswith(f"{expected} pairs")  # the copies, found through the extended index


def featcache_rows(cache):
    import featcache

    return featcache.open_cache(cache).load_pooled().pooled
