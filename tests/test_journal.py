"""Commit journals (shared/cache/_journal.py): one record per shard, replayed by every reader after
``manifest.json``; what a kill mid-append, a hostile journal and a kill mid-fold leave readers.

Caches here are written by bench/scale.py's synthetic writer (the real commit path, no backbone).
Killed runs of real extractions: tests/test_kill.py, tests/test_parts.py, tests/faults.py."""

from __future__ import annotations

import hashlib
import json
import sys

from cachefiles import committed_shards
from conftest import REPO

from featcache.shared.cache import _journal as journal
from featcache.shared.cache import schema
from featcache.shared.cache._lock import CacheLock
from featcache.shared.cache._manifest import Manifest
from featcache.shared.cache._parts import WHOLE, Part, exclusive, fold, journal_path
from featcache.shared.cache._reader import FeatureCache
from featcache.shared.cache._writer import CacheWriter

sys.path.insert(0, str(REPO / "bench"))
from scale import fill, synthetic_manifest  # noqa: E402

SHARDS, ROWS = 6, 4


def killed(cache, shards=(0, 1, 2), part: Part = WHOLE) -> CacheWriter:
    """A run that committed ``shards`` and then died: its journal and lock dropped, nothing folded."""
    cw = CacheWriter(cache, synthetic_manifest(cache, SHARDS, ROWS), part=part).__enter__()
    fill(cw, list(shards))
    cw._journal.close()
    cw._part_lock.release()
    return cw


def shards(cache) -> list[int]:
    return [s.shard for s in Manifest.load(cache).shards]


def files(cache) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((cache / "shards").iterdir())}


def test_a_commit_appends_one_record_that_readers_replay(tmp_path):
    cache = tmp_path / "c"
    killed(cache)
    assert json.loads((cache / schema.MANIFEST_NAME).read_text())["shards"] == []  # not rewritten per shard
    assert len(journal_path(cache, WHOLE).read_bytes().splitlines()) == 1 + 3  # a header, a record per shard
    m = Manifest.load(cache)
    assert [s.shard for s in m.shards] == [0, 1, 2] == committed_shards(cache) and m.journaled == [0, 1, 2]
    assert FeatureCache(cache).read_columns((schema.INDEX,))[schema.INDEX].tolist() == list(range(3 * ROWS))


def test_torn_forged_and_hostile_records_are_ignored_and_the_resume_equals_a_single_run(tmp_path):
    ref = tmp_path / "ref"
    with CacheWriter(ref, synthetic_manifest(ref, SHARDS, ROWS)) as cw:
        fill(cw, cw.pending_shards())
    assert not (ref / "parts").exists()
    record = {"shard": json.loads((ref / schema.MANIFEST_NAME).read_text())["shards"][2], "failed": []}
    cache = tmp_path / "c"
    killed(cache, (0, 1))
    j = journal_path(cache, WHOLE)
    outside = dict(record["shard"], file="../ref/shards/shard-00002.h5")
    hostile = [
        {"shard": dict(record["shard"], shard=10**18), "failed": []},
        {"shard": outside, "failed": []},
        {"shard": dict(record["shard"], rows=ROWS - 1), "failed": []},  # a row neither written nor failed
        {"shard": dict(record["shard"], first_index=0), "failed": []},
        {"shard": record["shard"], "failed": [{"index": 0, "id": "x", "reason": "r", "shard": 0}]},
        [record],
        "not a record",
    ]
    with open(j, "ab") as fh:
        fh.write(b"00000000 " + journal.frame(record)[9:])  # a wrong CRC
        for value in hostile:
            fh.write(journal.frame(value))
        fh.write(journal.frame(record)[:-1])  # torn: killed before its newline
    other = journal_path(cache, Part(1, 2))  # a journal of an earlier cache in this directory
    other.write_bytes(journal.frame({**json.loads(j.read_bytes().splitlines()[0][9:]), "generation": "old"}))
    with open(other, "ab") as fh:
        fh.write(journal.frame(record))
    journal_path(cache, Part(0, 2)).symlink_to(j)  # a link is never followed
    (cache / "shards" / "shard-00002.h5").write_bytes((ref / "shards" / "shard-00002.h5").read_bytes())
    assert shards(cache) == [0, 1] == committed_shards(cache)
    with open(j, "ab") as fh:  # the control: the same record, whole, is committed
        fh.write(b"\n" + journal.frame(record))
    assert shards(cache) == [0, 1, 2] == committed_shards(cache)

    with CacheWriter(cache, synthetic_manifest(cache, SHARDS, ROWS)) as cw:
        assert cw.pending_shards() == [3, 4, 5]
        fill(cw, cw.pending_shards())
    assert files(cache) == files(ref)
    untimed = lambda c: [  # noqa: E731
        {k: v for k, v in r.items() if k != "completed"}
        for r in json.loads((c / schema.MANIFEST_NAME).read_text())["shards"]
    ]
    assert untimed(cache) == untimed(ref)
    assert not (cache / "parts").exists() or not any(p.suffix == ".journal" for p in (cache / "parts").iterdir())


def test_a_fold_killed_before_it_retires_the_journal_applies_nothing_twice(tmp_path):
    cache = tmp_path / "c"
    killed(cache)
    m = Manifest.load(cache)
    m.journals = {}
    m.save(cache)  # the fold's first step (the manifest, atomically), then a kill: the journal stays
    assert journal_path(cache, WHOLE).exists()
    again = Manifest.load(cache)
    assert [s.shard for s in again.shards] == [0, 1, 2] and again.journaled == [] and again.rows == 3 * ROWS
    assert committed_shards(cache) == [0, 1, 2]
    # what removes a shard from the manifest (verify --fix, compact) folds first and retires the
    # journals, so no journal can bring the shard back
    with exclusive(cache, "stop the writer first") as (m, merged):
        assert merged == 0 and not journal_path(cache, WHOLE).exists()
        m.shards = [s for s in m.shards if s.shard != 1]
        m.save(cache)
    assert shards(cache) == [0, 2] == committed_shards(cache)


def test_a_fold_while_a_part_runs_keeps_its_journal_and_records_the_offset(tmp_path):
    cache = tmp_path / "c"
    cw = CacheWriter(cache, synthetic_manifest(cache, SHARDS, ROWS), part=Part(0, 2)).__enter__()
    fill(cw, [0])
    with CacheLock(cache):
        fold(cache)  # e.g. --finalize from another process while the worker appends
    j = journal_path(cache, Part(0, 2))
    on_disk = json.loads((cache / schema.MANIFEST_NAME).read_text())
    assert [s["shard"] for s in on_disk["shards"]] == [0]
    assert on_disk["journals"] == {j.name: {"id": cw._journal.id, "offset": j.stat().st_size}}
    fill(cw, [2])
    m = Manifest.load(cache)
    assert [s.shard for s in m.shards] == [0, 2] and m.journaled == [2]  # replay starts at the offset
    cw.__exit__(None, None, None)
    assert not j.exists() and shards(cache) == [0, 2] == committed_shards(cache)
    assert "journals" not in json.loads((cache / schema.MANIFEST_NAME).read_text())


def test_summary_adds_up_the_manifest_counts_without_opening_a_shard(tmp_path, monkeypatch):
    import numpy as np

    from featcache.shared.inspection.summary import summarize

    cache = tmp_path / "c"
    with CacheWriter(cache, synthetic_manifest(cache, SHARDS, ROWS)) as cw:
        for k in cw.pending_shards():
            w = cw.start_shard(k)
            r = np.arange(w.inputs.start, w.inputs.stop)
            split = np.where(r % 2 == 0, -1, r % 3)  # half the rows split by hash of their id
            pooled = np.ones((len(r), 4), np.float32)
            w.append(pooled[:, None, None], pooled, (r % 3 - 1).astype(np.int32), [f"i{i}" for i in r], r, split)
            cw.commit_shard(w, [])
    m = json.loads((cache / schema.MANIFEST_NAME).read_text())
    assert sorted(m["counts"]) == [str(k) for k in range(SHARDS)]
    with monkeypatch.context() as mp:
        mp.setattr(FeatureCache, "open_shard", lambda *a: (_ for _ in ()).throw(AssertionError("opened a shard")))
        fast = summarize(FeatureCache(cache))
    m["counts"]["3"][2] += 1  # counts that do not add up to the shard's rows are not trusted
    (cache / schema.MANIFEST_NAME).write_text(json.dumps(m))
    assert FeatureCache(cache).manifest.count_rows() is None
    slow = summarize(FeatureCache(cache))  # read from every shard
    del m["counts"]  # a cache written before counts existed
    (cache / schema.MANIFEST_NAME).write_text(json.dumps(m))
    assert summarize(FeatureCache(cache))["classes"] == slow["classes"]
    assert fast["classes"] == slow["classes"] and fast["splits"] == slow["splits"] and fast["rows"] == SHARDS * ROWS
    assert "(unlabelled)" in fast["classes"] and sum(fast["splits"].values()) == SHARDS * ROWS


def test_a_huge_journal_is_read_in_bounded_memory(tmp_path):
    """A journal made huge (sparse, 256 MiB, one endless line) was read whole into memory by every
    reader: a 20 GiB one gave `featcache-inspect summary` a MemoryError traceback. It is read in
    chunks: the overlong line is dropped, the records around it are kept, memory stays small."""
    import tracemalloc

    path = tmp_path / "part-0-of-1.journal"
    head = journal.frame({"format": journal.FORMAT, "id": "ab", "generation": "g", "part": "0/1"})
    first, second = journal.frame({"n": 1}), journal.frame({"n": 2})
    with open(path, "wb") as fh:
        fh.write(head + first)
        fh.truncate(len(head + first) + (1 << 28))  # 256 MiB of zeros, no newline
        fh.seek(0, 2)
        fh.write(b"\n" + second + b"0123 torn")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        got = journal.scan(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got is not None
    assert got.records == [(len(head), {"n": 1}), (size - len(second) - 9, {"n": 2})]
    assert got.end == size - 9
    assert peak < 3 * journal.MAX_RECORD_BYTES
