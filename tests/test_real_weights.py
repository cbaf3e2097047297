"""The real backbone: MobileNetV2 with ImageNet weights from ../shared/weights (skipped when absent)."""

from __future__ import annotations

import pytest
from cachefiles import read_shards
from conftest import REAL_WEIGHTS, extract
from test_extract import direct_features

pytestmark = pytest.mark.skipif(not REAL_WEIGHTS.is_file(), reason=f"real weights not found at {REAL_WEIGHTS}")


def test_mobilenet_v2_rows_equal_the_keras_model_on_each_image(tmp_path, sample_dir):
    import numpy as np

    from featcache.shared.cache.fsutil import sha256_file

    cache = tmp_path / "c"
    report = extract(sample_dir, cache, backbone="mobilenet_v2", weights=str(REAL_WEIGHTS), shard_size=8, batch_size=4)
    assert report.rows == 15 and not report.random_weights
    rows = read_shards(cache)
    direct = direct_features([sample_dir / i for i in rows["id"].tolist()], "mobilenet_v2", str(REAL_WEIGHTS))
    assert rows["maps"].shape == (15, 7, 7, 1280)
    # real features: sparse (ReLU6) and different for every image
    assert 0.5 < (direct == 0).mean() < 0.99
    assert direct.mean(axis=(1, 2)).std(axis=0).mean() > 1e-2
    np.testing.assert_allclose(rows["maps"].astype(np.float32), direct, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(rows["pooled"], direct.mean(axis=(1, 2)), rtol=1e-4, atol=1e-4)
    dist = np.abs(rows["pooled"][:, None] - direct.mean(axis=(1, 2))[None]).sum(-1)
    assert (dist.argmin(axis=1) == np.arange(15)).all()
    from featcache.shared.cache._reader import FeatureCache

    fp = FeatureCache(cache).fingerprint
    assert fp["weights_sha256"] == sha256_file(REAL_WEIGHTS) and fp["random_weights"] is False
