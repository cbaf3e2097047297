"""The row index (``rows.h5``): every shard's label/id/index/split in one file, written when a cache is
complete, read instead of the shards only while it is current, checked by verify against the shards."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import extract
from test_update import SHARD, change_everything

from featcache.shared.cache import _rowindex as rowindex
from featcache.shared.cache import schema
from featcache.shared.cache._compact import compact
from featcache.shared.cache._manifest import Manifest
from featcache.shared.cache._parts import finalize
from featcache.shared.cache._reader import ROW, SPLIT_UNIT, FeatureCache
from featcache.shared.cache._reader import SHARD as SHARD_COLUMN
from featcache.shared.cache._split import hash_unit
from featcache.shared.cache.fsutil import sha256_file
from featcache.shared.errors import FeatcacheError
from featcache.shared.inspection.verify import fix, verify
from featcache.trainer.data import load_dataset

META = (schema.LABEL, schema.ID, schema.INDEX, schema.SPLIT, SHARD_COLUMN, ROW)


@pytest.fixture(scope="module")
def updated(tmp_path_factory, sample_dir) -> Path:
    """A cache updated once (rows retired, relabelled, added in a new generation): every rule the
    reader applies on top of what the shards store."""
    tmp = tmp_path_factory.mktemp("rowindex")
    src = change_everything(tmp, sample_dir)
    extract(src, tmp / "cache", shard_size=SHARD, update=True)
    return tmp / "cache"


def copy(cache: Path, tmp_path: Path) -> Path:
    """A copy keeping modification times (as ``cp -a`` or ``rsync -a``): the index stays current."""
    return Path(shutil.copytree(cache, tmp_path / "copy", copy_function=shutil.copy2))


def opens(monkeypatch) -> list[int]:  # noqa: ANN001
    """Count the shards the reader opens from now on with the full identity check (reading their
    ``index``; not those a current row index vouches for, ``index_checked=True``)."""
    opened: list[int] = []
    real = FeatureCache.open_shard

    def counted(self, record, **kw):  # noqa: ANN001, ANN003, ANN202
        if not kw.get("index_checked"):
            opened.append(record.shard)
        return real(self, record, **kw)

    monkeypatch.setattr(FeatureCache, "open_shard", counted)
    return opened


def test_index_is_the_shards_columns_and_reads_as_the_shards_without_opening_one(updated, monkeypatch):
    m = Manifest.load(updated)
    assert m.generation == 1 and m.dead and m.relabelled  # the update made it stale; its finalize wrote it anew
    with h5py.File(updated / schema.ROW_INDEX_NAME, "r") as f:  # plain h5py: the shards' datasets, concatenated
        for key in rowindex.COLUMNS:
            shards = []
            for s in m.shards:
                with h5py.File(updated / s.file, "r") as g:
                    shards.append(g[key].asstr()[()] if key == schema.ID else g[key][()])
            if key == schema.ID:  # one UTF-8 string, each id followed by a NUL
                got = [i.decode() for i in f["id_utf8"][()].tobytes().split(b"\0")[:-1]]
            else:
                got = f[key][()]
            np.testing.assert_array_equal(got, np.concatenate(shards), err_msg=key)
        np.testing.assert_array_equal(f["offsets"][()], np.cumsum([0] + [s.rows for s in m.shards]))
    assert (updated / schema.ROW_INDEX_NAME).stat().st_size < 20_000  # ~30 rows: no 1 MB chunk of ids
    via_shards = FeatureCache(updated, row_index=False).read_columns(META)
    opened = opens(monkeypatch)
    via_index = FeatureCache(updated).read_columns(META)
    assert opened == []
    for key in META:  # dead rows left out, relabels and class renumbering applied the same way
        np.testing.assert_array_equal(via_index[key], via_shards[key], err_msg=key)
    c = FeatureCache(updated).read_columns((schema.ID, schema.SPLIT, SPLIT_UNIT))
    hashed = c[schema.SPLIT] == schema.NO_SPLIT
    assert hashed.any() and (~hashed).any()  # splits given by the CSV for some rows, by hash for others
    np.testing.assert_array_equal(c[SPLIT_UNIT], hash_unit(c[schema.ID]))
    ds = load_dataset(FeatureCache(updated), pooled=False)  # the streamed trainer's start-up
    assert opened == []
    slow = load_dataset(FeatureCache(updated, row_index=False), pooled=False)
    for name in ("train", "val", "test"):
        assert getattr(ds, name).id.tolist() == getattr(slow, name).id.tolist()
    opened.clear()
    fast = FeatureCache(updated).load_pooled()  # pooled vectors from the shards, the rest from the index
    assert opened == []  # the shards' identity was checked when the index was copied from them
    truth = FeatureCache(updated, row_index=False).load_pooled()
    assert sorted(set(opened)) == [s.shard for s in m.shards]
    for key in ("pooled", "label", "id", "index", "split"):
        np.testing.assert_array_equal(getattr(fast, key), getattr(truth, key), err_msg=key)


def test_a_changed_shard_or_a_tampered_index_is_never_used(updated, tmp_path, monkeypatch):
    cache = copy(updated, tmp_path)
    m = Manifest.load(cache)
    assert rowindex.is_current(cache, m)
    opened = opens(monkeypatch)
    shard = cache / m.shards[0].file
    st = shard.stat()
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # replaced since (same size)
    assert not rowindex.is_current(cache, m)
    FeatureCache(cache).read_columns()
    assert len(opened) == len(m.shards)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert rowindex.is_current(cache, m)

    index = cache / schema.ROW_INDEX_NAME
    saved = index.read_bytes()
    with h5py.File(index, "r+") as f:  # an index value outside its shard's inputs
        f[schema.INDEX][0] = m.shards[-1].first_index + m.shards[-1].num_inputs
    assert not rowindex.is_current(cache, m)
    with h5py.File(index, "r+") as f:  # rows of one shard out of order
        first = m.shards[0]
        f[schema.INDEX][0:2] = [first.first_index + 1, first.first_index]
    assert not rowindex.is_current(cache, m)
    index.write_bytes(saved)
    with h5py.File(index, "r+") as f:  # built for another shard set
        f.attrs["built_from"] = "0" * 64
    assert not rowindex.is_current(cache, m)
    index.unlink()
    (tmp_path / "elsewhere.h5").write_bytes(saved)
    index.symlink_to(tmp_path / "elsewhere.h5")  # a link is never followed
    assert not rowindex.is_current(cache, m)
    with h5py.File(tmp_path / "elsewhere.h5", "r") as f:
        assert rowindex.load(tmp_path, m, rowindex.COLUMNS) is None  # not the cache: no shards there
        assert f.attrs["format"] == rowindex.FORMAT

    index.unlink()  # finalize writes it anew, removing a dead writer's partial file
    partial = cache / f".{schema.ROW_INDEX_NAME}.tmp-999999"
    partial.write_bytes(b"half")
    finalize(cache)
    assert rowindex.is_current(cache, m) and not partial.exists() and not index.is_symlink()


def test_verify_compares_the_index_with_the_shards_and_fix_writes_it_anew(updated, tmp_path):
    cache = copy(updated, tmp_path)
    assert verify(cache).ok
    truth = FeatureCache(cache, row_index=False).read_columns()
    index = cache / schema.ROW_INDEX_NAME
    with h5py.File(index, "r+") as f:  # hand-edited: a valid label of another class
        stored = f[schema.LABEL][()]
        k = int(np.flatnonzero(stored >= 0)[0])
        f[schema.LABEL][k] = (stored[k] + 1) % 2
    report = verify(cache)
    assert [str(p) for p in report.problems] == [
        f"{schema.ROW_INDEX_NAME}: its label rows of {Manifest.load(cache).shards[0].file} differ from the shard's"
    ]
    assert fix(cache, report) == [f"removed {schema.ROW_INDEX_NAME} (written anew from the shards)"]
    assert verify(cache).ok and rowindex.is_current(cache, Manifest.load(cache))
    got = FeatureCache(cache).read_columns()
    for key in truth:
        np.testing.assert_array_equal(got[key], truth[key])

    with h5py.File(index, "r+") as f:  # a label no class has: one line naming the index
        first_label = f[schema.LABEL][0]
        f[schema.LABEL][0] = 99
    with pytest.raises(FeatcacheError, match=rf"{schema.ROW_INDEX_NAME}: label 99 is not a class"):
        FeatureCache(cache).read_columns()
    with h5py.File(index, "r+") as f:  # a split hash that is not the id's: rows move between splits
        f[schema.LABEL][0] = first_label
        f[rowindex.SPLIT_UNIT][-1] = 0.999
    assert [p.reason for p in verify(cache).problems] == [
        f"its split_unit rows of {Manifest.load(cache).shards[-1].file} differ from the shard's"
    ]
    index.unlink()
    assert any("no rows.h5" in n for n in verify(cache).notes)


def test_compaction_writes_it_anew(updated, tmp_path):
    cache = copy(updated, tmp_path)
    before = FeatureCache(cache).read_columns()
    assert compact(cache, threshold=0.0).rewritten  # the shards holding dead rows are rewritten
    m = Manifest.load(cache)
    assert not m.dead and rowindex.is_current(cache, m)
    after = FeatureCache(cache).read_columns()
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])


def test_no_index_for_an_unfinished_cache_and_none_from_a_damaged_shard(tiny_cache, tmp_path):
    cache = copy(tiny_cache, tmp_path)
    (cache / schema.ROW_INDEX_NAME).unlink()
    m = Manifest.load(cache)
    shard = cache / m.shards[1].file
    with h5py.File(shard, "r+") as f:  # another shard's identity, same size
        f.attrs["shard"] = 3
    with pytest.warns(UserWarning, match=r"row index not written: .*shard-00001.h5: shard attribute shard is 3"):
        finalize(cache)
    assert not (cache / schema.ROW_INDEX_NAME).exists()

    (cache / schema.ROW_INDEX_NAME).mkdir()  # a folder where the index goes: a warning, nothing else
    with h5py.File(shard, "r+") as f:
        f.attrs["shard"] = 1
    with pytest.warns(UserWarning, match=r"row index not written: .*rows.h5"):
        finalize(cache)
    assert (cache / schema.ROW_INDEX_NAME).is_dir() and FeatureCache(cache).read_columns()[schema.ID].size

    partial = copy(tiny_cache, tmp_path / "p")
    (partial / schema.ROW_INDEX_NAME).unlink()
    m = Manifest.load(partial)
    m.shards = m.shards[:-1]
    m.save(partial)
    finalize(partial)
    assert not (partial / schema.ROW_INDEX_NAME).exists()


def test_ids_round_trip_through_the_index_encoding():
    ids = np.array(["a/1.jpg", "", "été/ß.png", "bad-\\xff-byte", "x" * 5000], dtype=object)
    for some in (ids, ids[[0, 1, 4]], ids[:0]):  # any UTF-8, ASCII only, none
        data = np.frombuffer(rowindex.encode_ids(some), np.uint8)
        assert rowindex.decode_ids(data, len(some)).tolist() == some.tolist()
    with pytest.raises(ValueError, match="id_utf8 holds 5 ids, not 4"):
        rowindex.decode_ids(np.frombuffer(rowindex.encode_ids(ids), np.uint8), 4)
    with pytest.raises(FeatcacheError, match="NUL"):
        rowindex.encode_ids(np.array(["a\x00b"], dtype=object))
    # what no shard holds (HDF5 UTF-8 strings): a lone surrogate, bytes that are not UTF-8
    with pytest.raises(FeatcacheError, match="not valid Unicode"):
        rowindex.encode_ids(np.array(["bad-\udcff-byte"], dtype=object))
    with pytest.raises(ValueError):
        rowindex.decode_ids(np.frombuffer(b"\xff\xfe/x.png\x00", np.uint8), 1)


def test_a_hostile_index_is_refused_before_it_is_read_or_followed_out_of_the_cache(tiny_cache, tmp_path):
    """rows.h5 edited by hand: datasets declaring absurd sizes (a few bytes on disk, gzip'd), links,
    virtual datasets and external storage pointing outside the cache, odd attribute types, ids that
    are not UTF-8 (a lone surrogate in the output: export and report raised a traceback). Each is
    refused (the reader falls back to the shards) without allocating the declared size or opening
    the other file."""
    import tracemalloc

    cache = copy(tiny_cache, tmp_path)
    m = Manifest.load(cache)
    index = cache / schema.ROW_INDEX_NAME
    saved = index.read_bytes()
    truth = FeatureCache(cache, row_index=False).read_columns()
    outside = tmp_path / "outside.h5"  # the same datasets, labels changed: what a followed link reads
    with h5py.File(index, "r") as f, h5py.File(outside, "w") as g:
        for key in f:
            g.create_dataset(key, data=f[key][()])
        g[schema.LABEL][...] = (f[schema.LABEL][()] + 1) % len(m.classes)
        n = f[schema.LABEL].shape[0]
        ids = f[rowindex.ID_BYTES][()].tobytes()
    raw = tmp_path / "outside.bin"
    raw.write_bytes(np.full(n, 1, np.int32).tobytes())

    def replace(key: str, make) -> None:  # noqa: ANN001
        with h5py.File(index, "r+") as f:
            del f[key]
            make(f)

    def set_attribute(key: str, value: object) -> None:
        with h5py.File(index, "r+") as f:
            f.attrs[key] = value

    huge = 25_000_000  # 200 MB of int64 declared, ~200 KB on disk
    layout = h5py.VirtualLayout(shape=(n,), dtype="int32")
    layout[:] = h5py.VirtualSource(str(outside), schema.LABEL, shape=(n,))
    edits = {
        "offsets declared huge": lambda: replace(
            rowindex.OFFSETS,
            lambda f: f.create_dataset(rowindex.OFFSETS, (huge,), "int64", chunks=(1 << 20,), compression="gzip"),
        ),
        "mtime_ns declared huge": lambda: replace(
            rowindex.MTIMES,
            lambda f: f.create_dataset(rowindex.MTIMES, (huge,), "int64", chunks=(1 << 20,), compression="gzip"),
        ),
        "id_utf8 declared huge": lambda: replace(
            rowindex.ID_BYTES,
            lambda f: f.create_dataset(rowindex.ID_BYTES, (huge,), "uint8", chunks=(1 << 20,), compression="gzip"),
        ),
        "external link": lambda: replace(
            schema.LABEL, lambda f: f.__setitem__(schema.LABEL, h5py.ExternalLink(str(outside), schema.LABEL))
        ),
        "virtual dataset": lambda: replace(schema.LABEL, lambda f: f.create_virtual_dataset(schema.LABEL, layout)),
        "external storage": lambda: replace(
            schema.LABEL, lambda f: f.create_dataset(schema.LABEL, (n,), "int32", external=[(str(raw), 0, 4 * n)])
        ),
        "version infinite": lambda: set_attribute("version", np.inf),
        "split_unit out of [0, 1]": lambda: replace(
            rowindex.SPLIT_UNIT, lambda f: f.create_dataset(rowindex.SPLIT_UNIT, data=np.full(n, 7.0))
        ),
        "split_unit NaN": lambda: replace(
            rowindex.SPLIT_UNIT, lambda f: f.create_dataset(rowindex.SPLIT_UNIT, data=np.full(n, np.nan))
        ),
        "ids not UTF-8": lambda: replace(
            rowindex.ID_BYTES,
            lambda f: f.__setitem__(
                rowindex.ID_BYTES, np.frombuffer(b"\xff\xfe.png\0" + ids.split(b"\0", 1)[1], np.uint8)
            ),
        ),
    }
    for name, edit in edits.items():
        index.write_bytes(saved)
        assert rowindex.is_current(cache, m)
        edit()
        tracemalloc.start()
        try:
            assert rowindex.load(cache, m, rowindex.ALL) is None, name
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 20_000_000, f"{name}: {peak} bytes allocated"
        got = FeatureCache(cache).read_columns()  # from the shards, as if there were no index
        for key in truth:
            np.testing.assert_array_equal(got[key], truth[key], err_msg=name)
        assert verify(cache).ok, name  # a note: not current
        finalize(cache)  # written anew
        assert rowindex.load(cache, m, rowindex.ALL) is not None, name


def test_a_shard_swapped_in_with_the_same_size_and_mtime_is_refused_with_a_current_index(tiny_cache, tmp_path):
    """With a current index, pooled vectors come from shards opened without reading their index
    again: a file of the same size and modification time (``touch -r``) that is another shard, or
    the same shard of a cache made with other weights, must still be refused, never read as this one."""
    cache = copy(tiny_cache, tmp_path)
    m = Manifest.load(cache)
    shard = cache / m.shards[1].file
    st = shard.stat()
    saved = shard.read_bytes()
    weights = m.fingerprint["weights_sha256"].encode()  # edited in the file's bytes: the size stays
    assert saved.count(weights) == 1
    other_weights = saved.replace(weights, b"f" * len(weights))
    for edit, error in (
        ("shard", r"shard-00001.h5: shard attribute shard is 2, the manifest says 1: it is another shard"),
        ("weights", r"shard-00001.h5: shard was made with different weights_sha256"),
    ):
        shard.write_bytes(saved if edit == "shard" else other_weights)
        if edit == "shard":
            with h5py.File(shard, "r+") as f:
                f.attrs["shard"] = 2
        os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert shard.stat().st_size == st.st_size and rowindex.is_current(cache, m)  # the index cannot tell
        with pytest.raises(FeatcacheError, match=error):
            FeatureCache(cache).load_pooled()


def test_a_full_disk_while_writing_the_index_is_a_warning_and_leaves_nothing(tiny_cache, tmp_path, monkeypatch):
    """h5py reports a full disk (ENOSPC) as a multi-line RuntimeError when a dataset is written or
    the file closed (measured on a full tmpfs, where the process then died of a segmentation fault
    freeing the file: the index is now built in memory and written as bytes), not as an OSError:
    finalize must still only warn, in one line naming rows.h5, and leave no temporary file."""
    cache = copy(tiny_cache, tmp_path)
    (cache / schema.ROW_INDEX_NAME).unlink()

    def full(self, *args, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        raise RuntimeError(
            "Can't decrement id ref count (file write failed: time = Sun Nov 29 04:54:16 2026\n, filename = "
            "'.rows.h5.tmp-1', file descriptor = 4, errno = 28, error message = 'No space left on device', "
            "buf = 0x7f6019ef81e8, total write size = 884272, bytes this sub-write = 884272, offset = 176128)"
        )

    monkeypatch.setattr(h5py.Dataset, "resize", full)
    with pytest.warns(
        UserWarning, match=r"row index not written: \S*rows.h5: cannot write the row index \(No space left on device\)$"
    ):
        finalize(cache)
    assert sorted(p.name for p in cache.iterdir() if "rows" in p.name) == []
    monkeypatch.undo()
    assert len(FeatureCache(cache).load_pooled()) == Manifest.load(cache).live_rows

    def no_space(path, data):  # noqa: ANN001, ANN202
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(rowindex, "atomic_write_bytes", no_space)  # the file is written in one go
    with pytest.warns(UserWarning, match=r"rows.h5: cannot write the row index \(No space left on device\)$"):
        finalize(cache)


def test_a_write_failure_reported_by_hdf5_is_one_line():
    """HDF5's reports of a full disk, as h5py raised them on a full tmpfs (an OSError whose strerror
    is the multi-line report, while a shard was written; a RuntimeError when rows.h5 was closed),
    are one line in the errors that name the file (the extractor's said the whole report)."""
    from featcache.shared.cache.fsutil import write_failure

    report = (
        "Can't write unprocessed chunk data (file write failed: time = Sun Nov 29 04:54:57 2026\n, filename = "
        "'x/.shard-00001.h5.tmp-1', file descriptor = 3, errno = 28, error message = 'No space left on device', "
        "buf = 0x7f2da0012830, total write size = 37656, bytes this sub-write = 37656, offset = 45056)"
    )
    assert write_failure(OSError(errno.ENOSPC, report)) == "No space left on device"
    assert write_failure(RuntimeError(report.replace("write unprocessed chunk data", "decrement id ref count"))) == (
        "No space left on device"
    )
    assert write_failure(OSError(errno.EACCES, "Permission denied")) == "Permission denied"
    assert write_failure(RuntimeError("first\nsecond")) == "first"


def test_finalize_of_a_cache_that_cannot_be_written_reports_it_unchanged(tiny_cache, tmp_path, monkeypatch):
    """A cache on a read-only mount (EROFS, as measured on a tmpfs remounted read-only; EACCES for
    another user's): the lock cannot be opened, so finalize reports the committed state with a
    one-line warning and writes nothing, instead of raising a bare OSError."""
    from featcache.shared.cache import _lock as lock

    cache = copy(tiny_cache, tmp_path)
    (cache / schema.ROW_INDEX_NAME).unlink()
    before = {p.name: p.read_bytes() for p in cache.iterdir() if p.is_file()}
    real = lock.open_regular

    def read_only(path, flags, *args):  # noqa: ANN001, ANN002, ANN202
        if flags & (os.O_RDWR | os.O_WRONLY):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, flags, *args)

    monkeypatch.setattr(lock, "open_regular", read_only)
    with pytest.warns(
        UserWarning, match=r"\.lock: cannot take the cache lock \(Read-only file system\): .* nothing folded"
    ):
        done = finalize(cache)
    m = Manifest.load(cache)
    assert done.complete and (done.done, done.rows) == (len(m.shards), m.rows) and not done.running
    assert {p.name: p.read_bytes() for p in cache.iterdir() if p.is_file()} == before


def test_a_shard_dataset_kept_in_another_file_is_never_read(tiny_cache, tmp_path):
    """A hostile cache (its manifest records the shard's size and checksum) whose shard keeps its pooled
    vectors or maps in another file (an external link, a virtual dataset): the row index is never built
    over it, and readers, with or without the row index, and verify refuse it in one line naming the
    shard instead of reading another file (or blocking for ever on a FIFO named as the target)."""
    cache = copy(tiny_cache, tmp_path)
    m = Manifest.load(cache)
    shard = cache / m.shards[1].file
    saved = shard.read_bytes()
    outside = tmp_path / "outside.h5"
    with h5py.File(shard, "r") as f, h5py.File(outside, "w") as g:
        for key in (schema.POOLED, schema.MAPS):
            g.create_dataset(key, data=f[key][()] + 1)
        shape, dtype = f[schema.POOLED].shape, f[schema.POOLED].dtype
    layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
    layout[:] = h5py.VirtualSource(str(outside), schema.POOLED, shape=shape)
    for name, key, edit in (
        (
            "external link",
            schema.POOLED,
            lambda f: f.__setitem__(schema.POOLED, h5py.ExternalLink(str(outside), schema.POOLED)),
        ),
        ("virtual dataset", schema.POOLED, lambda f: f.create_virtual_dataset(schema.POOLED, layout)),
        (
            "external link",
            schema.MAPS,
            lambda f: f.__setitem__(schema.MAPS, h5py.ExternalLink(str(outside), schema.MAPS)),
        ),
    ):
        shard.write_bytes(saved)
        with h5py.File(shard, "r+") as f:
            del f[key]
            edit(f)
        record = m.shards[1]  # a consistent hostile cache: its manifest and its index agree with the file
        record.bytes, record.sha256 = shard.stat().st_size, sha256_file(shard)
        m.save(cache)
        with pytest.warns(UserWarning, match=r"row index not written: .*shard-00001.h5: cannot read dataset"):
            finalize(cache)  # the shard opener refuses it: the index is never built over it
        assert not rowindex.is_current(cache, m), name
        error = rf"shard-00001.h5: cannot read dataset \({key} "
        if key == schema.POOLED:
            for row_index in (True, False):
                with pytest.raises(FeatcacheError, match=error):
                    FeatureCache(cache, row_index=row_index).load_pooled()
        else:
            with pytest.raises(FeatcacheError, match=error):
                list(FeatureCache(cache).iter_maps())
        reasons = [p.reason for p in verify(cache).problems]
        assert len(reasons) == 1 and reasons[0].startswith(f"cannot read dataset ({key} "), (name, reasons)
        assert reasons[0].endswith("(only datasets stored in the file are read))"), reasons
