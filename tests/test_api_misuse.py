"""The Python API misused (hostile round 4, #12): wrong types, unknown names, out-of-range rows,
negative sizes, integer dtypes. Each is one :class:`FeatcacheError` line naming the argument, raised
before any work: never a raw TypeError/ValueError/KeyError, a silent cast, or a silently empty result."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_cache

import featcache
from featcache.trainer import api as trainer_api


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("misuse")
    synthetic_cache(root / "cache", n=60, shard_size=20)
    (root / "src").mkdir()
    return root


def cache_of(root: Path) -> featcache.FeatureCache:
    return featcache.open_cache(root / "cache")


# (argument named in the message, call on the work folder)
CASES = {
    "open_cache(None)": ("path", lambda r: featcache.open_cache(None)),
    "open_cache(123)": ("path", lambda r: featcache.open_cache(123)),
    "FeatureCache(row_index='yes')": ("row_index", lambda r: featcache.FeatureCache(r / "cache", row_index="yes")),
    "iter_maps(block_rows=0)": ("block_rows", lambda r: list(cache_of(r).iter_maps(block_rows=0))),
    "iter_maps(block_rows=-8)": ("block_rows", lambda r: list(cache_of(r).iter_maps(block_rows=-8))),
    "iter_maps(block_rows=2.5)": ("block_rows", lambda r: list(cache_of(r).iter_maps(block_rows=2.5))),
    "iter_maps(indices=[60])": ("indices", lambda r: list(cache_of(r).iter_maps(indices=[3, 60]))),
    "iter_maps(indices=[-1])": ("indices", lambda r: list(cache_of(r).iter_maps(indices=np.array([-1])))),
    "iter_maps(indices=['a'])": ("indices", lambda r: list(cache_of(r).iter_maps(indices=["a"]))),
    "iter_maps(indices=[1.5])": ("indices", lambda r: list(cache_of(r).iter_maps(indices=[1.5]))),
    "iter_maps(indices=2-D)": ("indices", lambda r: list(cache_of(r).iter_maps(indices=[[1, 2]]))),
    "iter_maps(dtype='int8')": ("dtype", lambda r: list(cache_of(r).iter_maps(dtype="int8"))),
    "iter_maps(dtype=np.uint8)": ("dtype", lambda r: list(cache_of(r).iter_maps(dtype=np.uint8))),
    "read_columns('label')": ("columns", lambda r: cache_of(r).read_columns("label")),
    "read_columns(('maps',))": ("columns", lambda r: cache_of(r).read_columns(("maps",))),
    "check_fingerprint(None)": ("expected", lambda r: cache_of(r).check_fingerprint(None)),
    "dataset(split='training')": ("split", lambda r: cache_of(r).dataset(split="training")),
    "dataset(split=1)": ("split", lambda r: cache_of(r).dataset(split=1)),
    "dataset(features='pool')": ("features", lambda r: cache_of(r).dataset(features="pool")),
    "dataset(batch_size=-1)": ("batch_size", lambda r: cache_of(r).dataset(batch_size=-1)),
    "dataset(batch_size='32')": ("batch_size", lambda r: cache_of(r).dataset(batch_size="32")),
    "dataset(dtype='int8')": ("dtype", lambda r: cache_of(r).dataset(dtype="int8")),
    "dataset(dtype='nope')": ("dtype", lambda r: cache_of(r).dataset(dtype="nope")),
    "dataset(shuffle_buffer=-1)": ("shuffle_buffer", lambda r: cache_of(r).dataset(shuffle_buffer=-1)),
    "dataset(block_rows=0)": ("block_rows", lambda r: cache_of(r).dataset(block_rows=0)),
    "dataset(seed='a')": ("seed", lambda r: cache_of(r).dataset(seed="a")),
    "dataset(shuffle='no')": ("shuffle", lambda r: cache_of(r).dataset(shuffle="no")),
    "dataset(with_index=1)": ("with_index", lambda r: cache_of(r).dataset(with_index=1)),
    "dataset(buffer=9)": ("buffer", lambda r: cache_of(r).dataset(buffer=9)),
    "extract(source=None)": ("source", lambda r: featcache.extract(None, r / "out")),
    "extract(cache=5)": ("cache", lambda r: featcache.extract(r / "src", 5)),
    "extract(batch_size='8')": ("batch_size", lambda r: featcache.extract(r / "src", r / "out", batch_size="8")),
    "extract(shard_size=-3)": ("shard_size", lambda r: featcache.extract(r / "src", r / "out", shard_size=-3)),
    "extract(workers='2')": ("workers", lambda r: featcache.extract(r / "src", r / "out", workers="2")),
    "extract(maps_dtype='int8')": ("maps_dtype", lambda r: featcache.extract(r / "src", r / "out", maps_dtype="int8")),
    "extract(compression='zip')": ("compression", lambda r: featcache.extract(r / "src", r / "out", compression="zip")),
    "extract(split=5)": ("split", lambda r: featcache.extract(r / "src", r / "out", split=5)),
    "extract(split={'dev': 1})": ("split", lambda r: featcache.extract(r / "src", r / "out", split={"dev": 1.0})),
    "extract(views='2')": ("views", lambda r: featcache.extract(r / "src", r / "out", views="2")),
    "extract(seed=-1)": ("seed", lambda r: featcache.extract(r / "src", r / "out", seed=-1)),
    "extract(part=5)": ("part", lambda r: featcache.extract(r / "src", r / "out", part=5)),
    "extract(overwrite='yes')": ("overwrite", lambda r: featcache.extract(r / "src", r / "out", overwrite="yes")),
    "extract(log='stderr')": ("log", lambda r: featcache.extract(r / "src", r / "out", log="stderr")),
    "train(None)": ("cache", lambda r: featcache.train(None)),
    "train([cache, 5])": ("cache[1]", lambda r: featcache.train([r / "cache", 5], runs=r / "runs")),
    "train(runs=5)": ("runs", lambda r: featcache.train(r / "cache", runs=5)),
    "train(sweep=5)": ("sweep", lambda r: featcache.train(r / "cache", sweep=5, runs=r / "runs")),
    "train(epochs=-2)": ("epochs", lambda r: featcache.train(r / "cache", epochs=-2, runs=r / "runs")),
    "train(head='svm')": ("head", lambda r: featcache.train(r / "cache", head="svm", runs=r / "runs")),
    "train(log='x')": ("log", lambda r: featcache.train(r / "cache", log="x", runs=r / "runs")),
    "train(epoch=3)": ("epoch", lambda r: featcache.train(r / "cache", epoch=3, runs=r / "runs")),
    "predict(split='dev')": ("split", lambda r: trainer_api.predict(r / "runs", r / "p.csv", split="dev")),
    "predict(out=None)": ("out", lambda r: trainer_api.predict(r / "runs", None)),
    "export(run_dir=1)": ("run_dir", lambda r: trainer_api.export(1, r / "m.keras")),
}


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("case", list(CASES))
def test_misuse_is_one_line_naming_the_argument(work, case):
    name, call = CASES[case]
    before = listing(work)
    with pytest.raises(featcache.FeatcacheError) as err:
        call(work)
    message = str(err.value)
    assert f"{name}=" in message and "\n" not in message, message
    assert listing(work) == before  # refused before anything was written
    assert not os.path.exists(work / "out") and not os.path.exists(work / "runs")


def test_progress_bars_default_to_whether_stderr_is_a_terminal(monkeypatch):
    """A script or notebook log gets no progress bar it did not ask for; a terminal gets one."""
    import io

    from featcache.shared.arguments import progress_arg

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert progress_arg(None) is False and progress_arg(True) is True
    monkeypatch.setattr("sys.stderr", Tty())
    assert progress_arg(None) is True and progress_arg(False) is False
    with pytest.raises(featcache.FeatcacheError, match=r"^progress=.yes.: expected True or False"):
        progress_arg("yes")
