"""Fixtures: tiny synthetic image sets, and caches made from them with the ``tiny`` test backbone.

The ``tiny`` backbone (see shared/backbones.py) gives a different feature vector for every image,
unlike a random MobileNetV2, so row alignment can be checked with it. Tests that need real features
use the ImageNet weights beside the repo (``../shared/weights``) and skip when they are absent.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

REPO = Path(__file__).resolve().parents[1]
REAL_WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_v2_1.0_224_no_top__from_coral_quant_tflite.h5"


def _load_sample_module():
    spec = importlib.util.spec_from_file_location("make_sample", REPO / "data" / "make_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_sample = _load_sample_module().make_sample


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """3 classes x 5 images (12 JPEG, 3 PNG), in class folders."""
    out = tmp_path_factory.mktemp("sample")
    make_sample(out, per_class=5, classes=3, seed=1)
    return out


def extract(source: Path, cache: Path, **kw):
    """Run the extractor in-process with the tiny backbone and small shards unless told otherwise."""
    from featcache.extractor.runner import ExtractConfig, run_extract

    kw.setdefault("backbone", "tiny")
    kw.setdefault("weights", "random")
    kw.setdefault("shard_size", 4)
    kw.setdefault("batch_size", 3)
    kw.setdefault("progress", False)
    source = source if isinstance(source, str) else Path(source)  # a str keeps a URL's "//"
    return run_extract(ExtractConfig(source=source, cache=Path(cache), **kw), log=lambda m: None)


@pytest.fixture(scope="session")
def tiny_cache(sample_dir, tmp_path_factory) -> Path:
    """The sample extracted once, uninterrupted, with shards of 4 (4 shards, the last of 3 rows)."""
    cache = tmp_path_factory.mktemp("cache") / "tiny"
    extract(sample_dir, cache)
    return cache


def synthetic_cache(
    path: Path,
    n: int = 240,
    classes: int = 4,
    seed: int = 0,
    shuffle_labels: bool = False,
    splits: str = "given",
    labelled: bool = True,
    maps_dtype: str = "float32",
    shard_size: int = 100,
) -> Path:
    """A cache written directly with shared's writer (no backbone): class k's pooled vectors are a fixed
    random centre plus noise, so the classes are separable by construction; maps repeat the pooled
    vector at every position (so pooled is the mean of the maps), stored uncompressed as ``maps_dtype``.
    ``splits``: "given" (60/20/20 train/val/test, as from split folders), "no-val" (80/20 train/test)
    or "hash" (none given)."""
    import numpy as np

    from featcache.shared.backbones import ResolvedWeights, get_backbone, make_fingerprint
    from featcache.shared.cache._manifest import Manifest
    from featcache.shared.cache._writer import CacheWriter, storage_options

    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 1, (classes, 1280)).astype(np.float32) * (rng.uniform(0, 1, (classes, 1280)) < 0.2)
    y = np.arange(n) % classes
    pooled = np.clip(centres[y] + rng.normal(0, 0.35, (n, 1280)), 0, 6).astype(np.float32)
    labels = rng.permutation(y) if shuffle_labels else y
    if not labelled:
        labels = np.full(n, -1)
    ids = [f"c{y[i]}/{i:05d}.jpg" for i in range(n)]
    tenth = np.arange(n) % 10
    split = {
        "given": np.where(tenth < 6, 0, np.where(tenth < 8, 1, 2)),
        "no-val": np.where(tenth < 8, 0, 2),
        "hash": np.full(n, -1),
    }[splits]
    given = splits != "hash"
    spec = get_backbone("tiny")
    fp = make_fingerprint(spec, ResolvedWeights("random", None, f"random:{seed}", seed), maps_dtype=maps_dtype)
    m = Manifest(
        fingerprint=fp,
        classes=[f"class{k}" for k in range(classes)],
        source={
            "kind": "synthetic",
            "root": str(path),
            "num_inputs": n,
            "listing_sha256": "x" * 64,
            "split_source": "folders" if given else None,
        },
        split={"source": "folders" if given else None, "fractions": {"train": 0.8, "val": 0.1, "test": 0.1}},
        storage=storage_options("none", maps_dtype),
        shard_size=shard_size,
    )
    with CacheWriter(path, m) as cw:
        for shard in cw.pending_shards():
            w = cw.start_shard(shard)
            r = np.arange(w.inputs.start, w.inputs.stop)
            maps = np.broadcast_to(pooled[r][:, None, None, :], (len(r), 7, 7, 1280))
            w.append(maps, pooled[r], labels[r], [ids[i] for i in r], r, split[r])
            cw.commit_shard(w, [])
    return path
