"""The cache format in shared/: reader, manifest, split, lock, and that it never loads TensorFlow."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from featcache.shared.cache import schema
from featcache.shared.cache._lock import CacheLock
from featcache.shared.cache._manifest import Manifest
from featcache.shared.cache._reader import FeatureCache
from featcache.shared.cache._split import assign_splits, parse_fractions
from featcache.shared.errors import CacheLockedError, FeatcacheError, FingerprintMismatchError, NotACacheError

REPO = Path(__file__).resolve().parents[1]


def test_import_shared_loads_no_tensorflow(tiny_cache):
    code = (
        "import sys, featcache.shared as shared, featcache.shared.cache._reader, "
        "featcache.shared.cache._writer, featcache.shared.inspection.cli, "
        "featcache.shared.backbones\n"
        f"c = shared.open_cache({str(tiny_cache)!r}); c.load_pooled(); list(c.iter_maps())\n"
        "spec = shared.get_backbone('mobilenet_v2'); shared.resolve_weights(spec, 'random')\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_reader_returns_all_rows_in_index_order(tiny_cache, sample_dir):
    c = FeatureCache(tiny_cache)
    rows = c.load_pooled()
    assert len(rows) == c.num_rows == 15
    assert rows.pooled.shape == (15, 1280) and rows.pooled.dtype == np.float32
    assert rows.index.tolist() == list(range(15))
    assert rows.id.tolist() == sorted(p.relative_to(sample_dir).as_posix() for p in sample_dir.rglob("*.*"))
    assert set(rows.split.tolist()) <= {0, 1, 2}
    blocks = list(c.iter_maps(block_rows=3))
    assert all(len(i) <= 3 for i, _ in blocks)
    index = np.concatenate([i for i, _ in blocks])
    maps = np.concatenate([m for _, m in blocks])
    assert index.tolist() == list(range(15)) and maps.shape == (15, 7, 7, 1280)
    np.testing.assert_allclose(maps.astype(np.float32).mean(axis=(1, 2)), rows.pooled, rtol=2e-3, atol=2e-3)
    some = np.array([1, 6, 13])
    sel = list(c.iter_maps(indices=some, dtype="float32"))
    assert np.concatenate([i for i, _ in sel]).tolist() == [1, 6, 13]
    np.testing.assert_array_equal(np.concatenate([m for _, m in sel]), maps[some].astype(np.float32))


def test_reader_refuses_a_shard_from_another_cache(tiny_cache, tmp_path):
    cache = tmp_path / "c"
    shutil.copytree(tiny_cache, cache)
    with h5py.File(cache / "shards" / "shard-00001.h5", "r+") as f:
        fp = json.loads(f.attrs["fingerprint"])
        fp["weights_sha256"] = "0" * 64
        f.attrs["fingerprint"] = json.dumps(fp)
    with pytest.raises(
        FingerprintMismatchError, match=r"shard-00001\.h5: shard was made with different weights_sha256"
    ):
        FeatureCache(cache).load_pooled()


def test_reader_names_missing_and_non_hdf5_shards(tiny_cache, tmp_path):
    cache = tmp_path / "c"
    shutil.copytree(tiny_cache, cache)
    (cache / "shards" / "shard-00002.h5").write_bytes(b"not hdf5")
    with pytest.raises(FeatcacheError, match=r"shard-00002\.h5: shard is not a readable HDF5 file"):
        FeatureCache(cache).load_pooled()
    (cache / "shards" / "shard-00002.h5").unlink()
    with pytest.raises(FeatcacheError, match=r"shard-00002\.h5: shard listed in the manifest is missing"):
        FeatureCache(cache).load_pooled()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no manifest.json"),
        ("{trunc", "manifest is not valid JSON"),
        ('{"format": "other"}', "not a featcache manifest"),
        ('{"format": "featcache", "schema_version": 99}', "schema version 99 is newer"),
        ('{"format": "featcache", "schema_version": 1}', "manifest.json: created: missing"),
    ],
)
def test_not_a_cache_errors_name_the_file(tmp_path, content, message):
    if content is not None:
        (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(NotACacheError, match=message) as info:
        FeatureCache(tmp_path)
    assert str(tmp_path / "manifest.json") in str(info.value)


def test_manifest_round_trip(tiny_cache):
    m = Manifest.load(tiny_cache)
    again = Manifest.from_json(json.loads(json.dumps(m.to_json())))
    assert again == m
    assert m.shard_inputs(3) == range(12, 15) and m.missing_shards() == []


def test_split_is_deterministic_stable_and_respects_given_splits():
    ids = [f"class/{k:05d}.jpg" for k in range(5000)]
    codes = assign_splits(ids)
    assert codes.tolist() == assign_splits(list(ids)).tolist()
    frac = np.bincount(codes, minlength=3) / len(ids)
    np.testing.assert_allclose(frac, [0.8, 0.1, 0.1], atol=0.02)
    more = assign_splits(ids + [f"new/{k}.jpg" for k in range(100)])
    assert more[:5000].tolist() == codes.tolist()  # adding images moves nobody
    given = np.full(5000, schema.NO_SPLIT, np.int8)
    given[:10] = 2
    assert (assign_splits(ids, given)[:10] == 2).all()
    assert (assign_splits(ids, fractions=parse_fractions("1,0,0")) == 0).all()
    with pytest.raises(FeatcacheError, match="summing to 1"):
        parse_fractions("0.5,0.1,0.1")


def test_lock_is_exclusive_and_names_holder(tmp_path):
    with CacheLock(tmp_path):
        holder = json.loads((tmp_path / ".lock").read_text())
        assert holder["pid"] > 0 and holder["host"]
        with pytest.raises(CacheLockedError, match=rf"pid {holder['pid']} on host {holder['host']}"):
            CacheLock(tmp_path).acquire()
    with CacheLock(tmp_path):  # released: can be taken again, with no stale warning
        pass


def test_lock_held_by_another_process_is_refused(tmp_path):
    code = (
        "import sys, time; from featcache.shared.cache._lock import CacheLock\n"
        f"l = CacheLock({str(tmp_path)!r}); l.acquire(); print('held', flush=True); time.sleep(30)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(CacheLockedError, match=rf"pid {p.pid} on host"):
            CacheLock(tmp_path).acquire()
    finally:
        p.kill()
        p.wait()
    # killed with SIGKILL: the kernel dropped its flock; the next writer takes over and says so
    with pytest.warns(UserWarning, match=rf"stale lock left by pid {p.pid}"):
        CacheLock(tmp_path).acquire()


def test_threaded_deflate_writes_what_the_gzip_filter_writes(tmp_path):
    from featcache.shared.cache import _deflate as deflate

    rng = np.random.default_rng(0)
    maps = (np.maximum(rng.normal(0, 1, (37, 7, 7, 16)), 0) * (rng.random((37, 7, 7, 16)) < 0.2)).astype(np.float32)
    for name, threaded in (("filter.h5", False), ("threads.h5", True)):
        with h5py.File(tmp_path / name, "w") as f:
            d = f.create_dataset(
                "maps",
                shape=(0, 7, 7, 16),
                maxshape=(37, 7, 7, 16),
                chunks=(1, 7, 7, 16),
                dtype="float16",
                compression="gzip",
                compression_opts=1,
            )
            for s in range(0, 37, 10):  # batches of 10, the last one short
                if threaded:
                    deflate.append(d, maps[s : s + 10], 1, threads=3)
                else:
                    d.resize(min(s + 10, 37), axis=0)
                    d[s:] = maps[s : s + 10].astype(np.float16)
    with h5py.File(tmp_path / "threads.h5") as f:  # any HDF5 reader inflates it with the standard filter
        assert f["maps"].compression == "gzip" and f["maps"].shape == (37, 7, 7, 16)
        np.testing.assert_array_equal(f["maps"][()], maps.astype(np.float16))
    assert (tmp_path / "threads.h5").read_bytes() == (tmp_path / "filter.h5").read_bytes()
    with h5py.File(tmp_path / "filter.h5") as f:  # and reads what the filter wrote, any rows, any dtype
        assert deflate.is_row_gzip(f["maps"])
        rows = np.array([36, 0, 5, 5])
        got = deflate.read_rows(f["maps"], rows, np.float32, threads=2)
        np.testing.assert_array_equal(got, maps.astype(np.float16).astype(np.float32)[rows])


def test_a_map_row_that_does_not_inflate_names_file_and_row(tiny_cache, tmp_path):
    from featcache.shared.cache import _deflate as deflate
    from featcache.shared.errors import FeatcacheError

    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset(
            "maps",
            shape=(0, 2, 3),
            maxshape=(4, 2, 3),
            chunks=(1, 2, 3),
            dtype="float16",
            compression="gzip",
            compression_opts=1,
        )
        deflate.append(d, np.ones((3, 2, 3)), 1)
        d.id.write_direct_chunk((1, 0, 0), b"not zlib")
    with h5py.File(path) as f, pytest.raises(FeatcacheError, match=r"bad\.h5: row 1 of /maps does not inflate"):
        deflate.read_rows(f["maps"], np.arange(3))
