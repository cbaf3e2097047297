"""Images fed to the backbone as uint8 (the default for a new cache) or float32 (older caches): the
choice is recorded in the fingerprint, a resumed cache keeps its own, and the two differ only by
the rounding of the resized image."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from cachefiles import extract_command, read_shards
from conftest import REPO, extract

from featcache.shared.backbones import build_backbone, get_backbone, import_tensorflow, resolve_weights
from featcache.shared.errors import FingerprintMismatchError

SHARD = 5  # the 15 sample images make 3 shards


def fingerprint(cache) -> dict:
    return json.loads((cache / "manifest.json").read_text())["fingerprint"]


def test_float32_feed_is_the_unrounded_image_and_uint8_is_recorded(sample_dir, tiny_cache, tmp_path):
    """tiny_cache was made with the default feed: uint8, recorded; float32 leaves the key out (as
    older caches do) and its rows are the model called on the unrounded resized image."""
    assert fingerprint(tiny_cache)["feed_dtype"] == "uint8"
    extract(sample_dir, tmp_path / "f32", feed_dtype="float32")
    assert "feed_dtype" not in fingerprint(tmp_path / "f32")
    rows = read_shards(tmp_path / "f32")
    tf = import_tensorflow()
    spec = get_backbone("tiny")
    model = build_backbone(spec, resolve_weights(spec, "random"))
    for k in (0, 7, 14):
        img = tf.io.decode_image((sample_dir / rows["id"][k]).read_bytes(), channels=3, expand_animations=False)
        img = tf.image.resize(img, spec.input_size, method="bilinear", antialias=True)
        want = model(spec.preprocess_fn()(img[None]), training=False).numpy().mean(axis=(1, 2))[0]
        np.testing.assert_allclose(rows["pooled"][k], want, rtol=1e-5, atol=1e-5)
    uint8 = read_shards(tiny_cache)["pooled"]
    assert not np.array_equal(uint8, rows["pooled"])  # the rounding shows ...
    np.testing.assert_allclose(uint8, rows["pooled"], rtol=0.05, atol=0.01)  # ... and is small


def test_resume_keeps_the_recorded_feed_unless_told_otherwise(sample_dir, tmp_path):
    cache = tmp_path / "c"
    extract(sample_dir, cache, shard_size=SHARD, feed_dtype="float32", max_shards=1)  # like an older cache
    report = extract(sample_dir, cache, shard_size=SHARD, max_shards=1)  # no feed given: the cache's own
    assert report.shards_written == 1 and "feed_dtype" not in fingerprint(cache)
    with pytest.raises(FingerprintMismatchError, match=r"feed_dtype: 'float32' -> 'uint8'"):
        extract(sample_dir, cache, shard_size=SHARD, feed_dtype="uint8")
    extract(sample_dir, tmp_path / "whole", shard_size=SHARD, feed_dtype="float32")
    extract(sample_dir, cache, shard_size=SHARD)
    assert read_shards(cache)["pooled"].tobytes() == read_shards(tmp_path / "whole")["pooled"].tobytes()


def test_bad_feed_is_a_one_line_error(sample_dir, tmp_path):
    cmd = extract_command(sample_dir, tmp_path / "c", "--feed-dtype", "float16")
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "error: --feed-dtype float16: choose from uint8, float32" in p.stderr, p.stderr
    assert not (tmp_path / "c").exists()
