"""Outliers: each row's isolation (1 - mean cosine to its k nearest other rows), checked against a
brute-force computation, planted outliers found by the reduced search, degenerate vectors first, the
command and the API; and on real photographs, the ants/bees set's placeholder image among the first 3."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
from conftest import REAL_WEIGHTS, REPO, extract
from typer.testing import CliRunner

import featcache
from featcache.shared.inspection import knn
from featcache.shared.inspection.cli import app
from featcache.shared.inspection.outliers import CONSTANT, NON_FINITE, isolation

HYMENOPTERA = REPO.parent / "shared" / "data" / "hymenoptera.tar"


def brute_isolation(x: np.ndarray, k: int) -> np.ndarray:
    """The definition, on the full similarity matrix (float64)."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = u.astype(np.float64) @ u.T.astype(np.float64)
    np.fill_diagonal(sims, -np.inf)
    return 1 - np.sort(sims, axis=1)[:, ::-1][:, :k].mean(axis=1)


def clusters(n: int, c: int, planted: int, seed: int, centres: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """``n`` non-negative vectors around ``centres`` centres (like ReLU features), and ``planted`` rows far
    from every centre; returns the vectors and the planted rows' positions."""
    rng = np.random.default_rng(seed)
    middle = rng.gamma(0.5, 1.0, (centres, c)).astype(np.float32)
    x = middle[rng.integers(0, centres, n)] + rng.gamma(0.5, 0.3, (n, c)).astype(np.float32)
    where = rng.choice(n, planted, replace=False)
    x[where] = rng.gamma(0.5, 1.0, (planted, c)).astype(np.float32) * (rng.random((planted, c)) < 0.05)
    return x, where


@pytest.fixture(scope="module")
def hymenoptera_cache(tmp_path_factory):
    """The ants/bees photographs (398, real weights), extracted once for this file's tests."""
    folder = tmp_path_factory.mktemp("hymenoptera")
    with tarfile.open(HYMENOPTERA) as tar:
        tar.extractall(folder, filter="data")
    cache = folder / "cache"
    extract(folder / "hymenoptera_data", cache, backbone="mobilenet_v2", weights=str(REAL_WEIGHTS), shard_size=512)
    return cache


@pytest.mark.parametrize("exact", [True, False])
def test_isolation_equals_the_definition(exact):
    x, _ = clusters(600, 96, 5, seed=1)
    score, nearest = isolation(x, k=5, exact=exact)
    np.testing.assert_allclose(score, brute_isolation(x, 5), atol=1e-5)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = u @ u.T
    np.fill_diagonal(sims, -np.inf)
    assert (nearest == sims.argmax(axis=1)).mean() > 0.99  # ties aside


def test_the_reduced_search_finds_planted_outliers(monkeypatch):
    """Above EXACT_MAX_ROWS the candidates come from 64 principal components and are re-scored
    exactly; every planted outlier is still among the most isolated rows."""
    monkeypatch.setattr(knn, "EXACT_MAX_ROWS", 100)
    x, planted = clusters(3000, 256, 30, seed=2)
    score, _ = isolation(x, k=5)
    top = np.argsort(-score)[:30]
    assert set(top.tolist()) == set(planted.tolist())
    exact, _ = isolation(x, k=5, exact=True)
    assert np.all(score >= exact - 1e-5)  # a missed neighbour can only make a row look more isolated
    head = np.argsort(-score)[:100]
    np.testing.assert_allclose(score[head], exact[head], atol=1e-5)  # the head is searched again exactly
    assert np.abs(score - exact).max() < 0.05


def test_degenerate_vectors_are_outliers_by_definition():
    x, _ = clusters(50, 16, 0, seed=3)
    x[7] = 0.0
    x[9, 3] = np.nan
    x[11] = 2.5
    score, nearest = isolation(x, k=3)
    assert np.isinf(score[[7, 9, 11]]).all() and np.isfinite(np.delete(score, [7, 9, 11])).all()
    assert not np.isin(nearest, [7, 9, 11]).any()  # never anyone's neighbour
    from featcache.shared.inspection.outliers import degenerate

    reasons = degenerate(x)
    assert (reasons[7], reasons[9], reasons[11]) == (CONSTANT, NON_FINITE, CONSTANT)


def test_command_and_api_rank_the_same_rows(tiny_cache):
    api = featcache.outliers(tiny_cache, k=3)
    assert [d["rank"] for d in api] == list(range(1, 16))
    iso = [d["isolation"] for d in api]
    assert iso == sorted(iso, reverse=True)
    r = CliRunner().invoke(app, ["outliers", str(tiny_cache), "--k", "3", "--top", "4", "--json", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == api[:4]
    r = CliRunner().invoke(app, ["outliers", str(tiny_cache), "-k", "3", "--split", "test", "--no-progress"])
    assert r.exit_code == 0 and r.output.splitlines()[1].split()[:2] == ["id", "isolation"]
    test_ids = {d["id"] for d in api if d["split"] == "test"}
    listed = {line.split()[0] for line in r.output.splitlines()[2:]}
    assert listed == test_ids
    r = CliRunner().invoke(app, ["outliers", str(tiny_cache), "--split", "dev"])
    assert r.exit_code == 2 and r.output.strip().splitlines() == [
        "error: --split dev: expected one of train, val, test (or none for every row)"
    ]


@pytest.mark.skipif(
    not (REAL_WEIGHTS.is_file() and HYMENOPTERA.is_file()), reason="real weights or hymenoptera.tar not beside the repo"
)
def test_the_placeholder_image_of_the_ants_bees_set_is_among_the_first_three(hymenoptera_cache):
    """``train/ants/imageNotFound.gif`` is a "this image is not available" placeholder saved under a class
    name; label-noise scores cannot see it, its isolation can."""
    ranked = featcache.outliers(hymenoptera_cache)
    first = [d["id"] for d in ranked[:3]]
    assert "train/ants/imageNotFound.gif" in first, ranked[:5]


def test_indexed_near_duplicates_equal_the_exact_pairs(monkeypatch):
    """Above EXACT_MAX_ROWS, near-duplicate pairs come from the neighbour index; they equal the all-pairs
    search, including a group of 20 copies (more than the neighbours listed per row)."""
    from featcache.shared.inspection import similarity

    x, _ = clusters(8000, 1280, 0, seed=4)  # 160 rows a cluster: more than a row's candidates
    rng = np.random.default_rng(4)
    a = rng.choice(8000, 60, replace=False)
    x[a[30:]] = x[a[:30]] * (1 + 0.01 * rng.standard_normal((30, 1280)).astype(np.float32))  # 30 planted pairs
    group = rng.choice(np.setdiff1d(np.arange(8000), a), 20, replace=False)
    x[group] = x[group[0]]
    unit = similarity.normalize(x)
    want = {(p.a, p.b) for p in similarity.near_duplicates(unit, 0.99)}
    monkeypatch.setattr(knn, "EXACT_MAX_ROWS", 100)
    monkeypatch.setattr(similarity, "DUPLICATE_NEIGHBOURS", 2)
    got = {(p.a, p.b): p.cosine for p in similarity.duplicate_pairs(unit, 0.99)}
    assert set(got) == want and len(want) >= 30 + 190
    assert all(c >= 0.99 for c in got.values())


@pytest.mark.skipif(
    not (REAL_WEIGHTS.is_file() and HYMENOPTERA.is_file()), reason="real weights or hymenoptera.tar not beside the repo"
)
def test_the_cache_report_shows_the_placeholder_with_its_thumbnail(hymenoptera_cache, tmp_path):
    from featcache.shared.inspection.report import write

    facts = write(hymenoptera_cache, tmp_path / "r.html")
    assert facts["outliers"][0]["id"] == "train/ants/imageNotFound.gif"
    html = (tmp_path / "r.html").read_text()
    section = html[html.index('id="outliers"') :]
    row = section[: section.index("imageNotFound.gif")]
    assert "data:image/jpeg;base64," in row[row.rindex("<tr") :]  # its thumbnail, in its own table row


def test_more_neighbours_than_rows_scores_on_every_other_row(tmp_path):
    """Hostile round d: ``outliers -k 1000000000`` on a 40-row cache allocated (n, k) arrays of -1 for the
    missing neighbours (a 298 GiB MemoryError traceback); now k is capped at the other rows, the same score."""
    from conftest import synthetic_cache

    cache = synthetic_cache(tmp_path / "c", n=40, shard_size=20)
    runner = CliRunner()
    big = runner.invoke(app, ["outliers", str(cache), "-k", "1000000000", "--json", "--no-progress"])
    whole = runner.invoke(app, ["outliers", str(cache), "-k", "39", "--json", "--no-progress"])
    assert big.exit_code == 0 and whole.exit_code == 0, big.output[-500:]
    assert json.loads(big.output) == json.loads(whole.output)
    x = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    np.testing.assert_allclose(isolation(x, 1 << 40)[0], brute_isolation(x, 4), rtol=1e-5)
