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
    from extractor.runner import ExtractConfig, run_extract

    kw.setdefault("backbone", "tiny")
    kw.setdefault("weights", "random")
    kw.setdefault("shard_size", 4)
    kw.setdefault("batch_size", 3)
    kw.setdefault("progress", False)
    return run_extract(ExtractConfig(source=Path(source), cache=Path(cache), **kw), log=lambda m: None)


@pytest.fixture(scope="session")
def tiny_cache(sample_dir, tmp_path_factory) -> Path:
    """The sample extracted once, uninterrupted, with shards of 4 (4 shards, the last of 3 rows)."""
    cache = tmp_path_factory.mktemp("cache") / "tiny"
    extract(sample_dir, cache)
    return cache
