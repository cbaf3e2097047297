"""Augmented views in the cache: deterministic per (id, view), stored additively, resumable, verified;
and the resize policies."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import extract

from featcache.shared.cache import schema
from featcache.shared.cache._reader import FeatureCache
from featcache.shared.errors import FeatcacheError


@pytest.fixture(scope="module")
def views_cache(sample_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("views") / "v3"
    extract(sample_dir, cache, views=3)
    return cache


def test_views_stored_additively(views_cache, tiny_cache):
    """Old datasets unchanged in shape; ``pooled_views (n, 2, C)``; view 0 is the plain image (the
    one-view cache's pooled vectors) and the mirrored view differs from it."""
    c, plain = FeatureCache(views_cache), FeatureCache(tiny_cache)
    assert c.views == 3 and plain.views == 1
    assert c.fingerprint["augment"]["views"] == 3 and "augment" not in plain.fingerprint
    with h5py.File(views_cache / c.shards[0].file) as f:
        n = len(f[schema.INDEX])
        assert f[schema.POOLED_VIEWS].shape == (n, 2, 1280)
        assert f[schema.MAPS].shape == (n, 7, 7, 1280)
    pv = c.load_pooled_views()
    np.testing.assert_allclose(pv[:, 0], plain.load_pooled().pooled, rtol=1e-4, atol=1e-5)
    assert np.abs(pv[:, 1] - pv[:, 0]).max() > 1e-3 and np.abs(pv[:, 2] - pv[:, 0]).max() > 1e-3
    assert plain.load_pooled_views().shape == (len(pv), 1, 1280)


def test_views_deterministic_and_resume_equals_one_run(views_cache, sample_dir, tmp_path):
    """A second cache, made in two runs (one shard, then the rest), holds the same features: views
    depend on (id, view) only, not on the run, the batch or what was computed before."""
    cache = tmp_path / "resumed"
    extract(sample_dir, cache, views=3, max_shards=1, batch_size=5)
    assert FeatureCache(cache).manifest.missing_shards()
    extract(sample_dir, cache, views=3, batch_size=5)
    np.testing.assert_allclose(
        FeatureCache(cache).load_pooled_views(), FeatureCache(views_cache).load_pooled_views(), rtol=1e-4, atol=1e-5
    )


def test_views_pixels_deterministic_and_flipped():
    from featcache.extractor.pipeline import make_view, tf
    from featcache.shared.backbones import Augment

    img = tf.constant(np.random.default_rng(0).integers(0, 255, (40, 60, 3)), tf.uint8)
    aug = Augment(views=4)
    v = lambda i, view: make_view(img, tf.constant(i), view, (32, 32), aug).numpy()  # noqa: E731
    np.testing.assert_array_equal(v("a/1.jpg", 1), v("a/1.jpg", 0)[:, ::-1])
    np.testing.assert_array_equal(v("a/1.jpg", 2), v("a/1.jpg", 2))
    assert not np.array_equal(v("a/1.jpg", 2), v("a/1.jpg", 3))
    assert not np.array_equal(v("a/1.jpg", 2), v("b/2.jpg", 2))


def test_resume_with_other_views_refused(views_cache, sample_dir):
    with pytest.raises(FeatcacheError, match="augment"):
        extract(sample_dir, views_cache, views=2)


def test_bad_view_options_one_line_error(sample_dir, tmp_path):
    with pytest.raises(FeatcacheError, match="crop_scale"):
        extract(sample_dir, tmp_path / "c", views=3, crop_scale=(0.5, 2.0))
    with pytest.raises(FeatcacheError, match="resize='fit'"):
        extract(sample_dir, tmp_path / "c", resize="fit")
    assert not (tmp_path / "c").exists()


def test_resize_policies():
    """centre-crop equals squashing the centre square; pad keeps the aspect ratio inside mid-grey bars;
    on a square image all three agree."""
    from featcache.extractor.pipeline import PAD_VALUE, resize, tf

    wide = tf.constant(np.random.default_rng(1).integers(0, 255, (20, 40, 3)), tf.uint8)
    np.testing.assert_allclose(
        resize(wide, (10, 10), "centre-crop").numpy(), resize(wide[:, 10:30], (10, 10), "squash").numpy()
    )
    padded = resize(wide, (10, 10), "pad").numpy()
    np.testing.assert_allclose(padded[:2], PAD_VALUE)
    np.testing.assert_allclose(padded[-3:], PAD_VALUE)
    np.testing.assert_allclose(padded[2:7], resize(wide, (5, 10), "squash").numpy(), atol=1e-4)
    square = wide[:, :20]
    for policy in ("centre-crop", "pad"):
        np.testing.assert_allclose(
            resize(square, (10, 10), policy).numpy(), resize(square, (10, 10), "squash").numpy(), atol=1e-4
        )


def test_verify_checks_pooled_views(views_cache, tmp_path):
    """verify passes the views cache and names a shard whose pooled_views is gone (with its manifest
    record updated, so that only the dataset check can catch it)."""
    import json
    import shutil

    from featcache.shared.cache.fsutil import sha256_file
    from featcache.shared.inspection.verify import verify

    copy = tmp_path / "copy"
    shutil.copytree(views_cache, copy)
    assert verify(copy).ok
    shard = copy / FeatureCache(copy).shards[0].file
    with h5py.File(shard, "a") as f:
        del f[schema.POOLED_VIEWS]
    manifest = json.loads((copy / schema.MANIFEST_NAME).read_text())
    manifest["shards"][0].update(sha256=sha256_file(shard), bytes=shard.stat().st_size)
    (copy / schema.MANIFEST_NAME).write_text(json.dumps(manifest))
    report = verify(copy)
    assert not report.ok and "pooled_views" in str(report.problems)


def test_compaction_keeps_every_views_dataset(views_cache, sample_dir, tmp_path):
    """compact copied a hand-written list of datasets and dropped pooled_views, so verify failed on the
    compacted cache. Every per-row dataset of the layout is carried: the live rows' views are the same
    bytes after compaction, and verify passes."""
    import shutil

    from featcache.shared.cache._compact import compact
    from featcache.shared.inspection.verify import verify

    src, cache = tmp_path / "src", tmp_path / "c"
    shutil.copytree(sample_dir, src)
    shutil.copytree(views_cache, cache)
    (src / "cross" / "cross_0003.jpg").unlink()
    extract(src, cache, views=3, update=True)
    before = FeatureCache(cache)
    want = dict(zip(before.load_pooled().id.tolist(), before.load_pooled_views(), strict=True))
    assert compact(cache, threshold=0.0).rewritten
    after = FeatureCache(cache)
    got = dict(zip(after.load_pooled().id.tolist(), after.load_pooled_views(), strict=True))
    assert sorted(got) == sorted(want) and "cross/cross_0003.jpg" not in got
    assert all(got[i].tobytes() == want[i].tobytes() for i in want)
    report = verify(cache)
    assert report.ok, report.problems
    for rec in after.shards:
        with h5py.File(cache / rec.file) as f:
            assert f[schema.POOLED_VIEWS].shape == (rec.rows, 2, f[schema.POOLED].shape[1])
