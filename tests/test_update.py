"""Updating a cache with what changed in its source (docs/updates.md): the updated cache reads, row
for row by id, as one extracted from scratch from the new source, and costs only what changed."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import extract

from featcache.shared.cache import schema
from featcache.shared.cache._reader import FeatureCache
from featcache.shared.errors import FeatcacheError, FingerprintMismatchError, SourceMismatchError

SHARD = 4


def by_id(cache: Path) -> dict[str, dict]:
    """What a reader sees, keyed by id, read with plain h5py and json (not featcache's reader):
    rows retired by an update skipped, relabelled rows with their new label and split, labels as
    class names, split as the stored code (-1: by hash of the id), maps as float32."""
    m = json.loads((cache / schema.MANIFEST_NAME).read_text())
    dead = set(m.get("dead", []))
    relabel = {i: (lab, sp) for i, lab, sp in m.get("relabelled", [])}
    gens = m.get("generations") or [{"first_shard": 0, "classes": m["classes"]}]
    out = {}
    for s in m["shards"]:
        classes = [g for g in gens if g["first_shard"] <= s["shard"]][-1]["classes"]
        with h5py.File(cache / s["file"], "r") as f:
            for k, (ident, index) in enumerate(zip(f["id"].asstr()[()], f["index"][()], strict=True)):
                if int(index) in dead:
                    continue
                label, split = int(f["label"][k]), int(f["split"][k])
                name = classes[label] if label >= 0 else None
                if int(index) in relabel:
                    lab, split = relabel[int(index)]
                    name = m["classes"][lab] if lab >= 0 else None
                assert ident not in out, f"{ident} twice"
                out[ident] = {"class": name, "split": split, "pooled": f["pooled"][k], "maps": f["maps"][k]}
    return out


def assert_same_rows(a: Path, b: Path) -> None:
    ra, rb = by_id(a), by_id(b)
    assert sorted(ra) == sorted(rb)
    for ident in ra:
        assert (ra[ident]["class"], ra[ident]["split"]) == (rb[ident]["class"], rb[ident]["split"]), ident
        np.testing.assert_array_equal(ra[ident]["pooled"], rb[ident]["pooled"], err_msg=ident)
        np.testing.assert_array_equal(ra[ident]["maps"], rb[ident]["maps"], err_msg=ident)
    # featcache's own reader agrees: same ids, labels, splits (hash applied) and pooled, by id
    ca, cb = FeatureCache(a).load_pooled(), FeatureCache(b).load_pooled()
    oa, ob = np.argsort(ca.id.astype(str)), np.argsort(cb.id.astype(str))
    assert ca.id[oa].tolist() == cb.id[ob].tolist()
    assert FeatureCache(a).classes == FeatureCache(b).classes
    np.testing.assert_array_equal(ca.label[oa], cb.label[ob])
    np.testing.assert_array_equal(ca.split[oa], cb.split[ob])
    np.testing.assert_array_equal(ca.pooled[oa], cb.pooled[ob])
    ma, mb = maps_by_index(a), maps_by_index(b)
    for ia, ib in zip(ca.index[oa].tolist(), cb.index[ob].tolist(), strict=True):
        np.testing.assert_array_equal(ma[ia], mb[ib])
    assert len(ma) == len(ca)


def maps_by_index(cache: Path) -> dict[int, np.ndarray]:
    return {int(i): m for index, maps in FeatureCache(cache).iter_maps() for i, m in zip(index, maps, strict=True)}


def write_csv(path: Path, rows: list[tuple[str, str, str]]) -> None:
    path.write_text("path,label,split\n" + "".join(f"{p},{lab},{sp}\n" for p, lab, sp in rows))


def csv_rows(sample_dir: Path) -> list[tuple[str, str, str]]:
    imgs = sorted(p.relative_to(sample_dir).as_posix() for p in sample_dir.rglob("*.*"))
    return [(f"img/{p}", p.split("/")[0], "test" if k % 7 == 3 else "") for k, p in enumerate(imgs)]


def snapshot(cache: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (cache / "shards").glob("shard-*.h5")}


def change_everything(tmp_path: Path, sample_dir: Path) -> Path:
    """A CSV source of 12 images extracted into ``tmp_path/cache``, then changed in every way at
    once (2 removed, 1 modified, 2 relabelled, 3 added); returns the CSV."""
    shutil.copytree(sample_dir, tmp_path / "img")
    rows = csv_rows(sample_dir)
    write_csv(tmp_path / "src.csv", rows[:12])
    extract(tmp_path / "src.csv", tmp_path / "cache", shard_size=SHARD)
    new = list(rows[:12])
    del new[1]  # removed (shard 0)
    gone = new.pop(4)  # removed (shard 1)
    new[6] = (new[6][0], "circle" if new[6][1] != "circle" else "cross", new[6][2])  # relabelled
    new[7] = (new[7][0], new[7][1], "val")  # a given split changed: relabelled too
    (tmp_path / new[2][0]).write_bytes((tmp_path / gone[0]).read_bytes())  # modified: size and mtime
    new += rows[12:]  # added
    write_csv(tmp_path / "src.csv", new)
    return tmp_path / "src.csv"


@pytest.fixture(scope="module")
def updated(tmp_path_factory, sample_dir):
    """(csv, cache before the update, report of the update, updated cache, cache made from scratch)."""
    tmp = tmp_path_factory.mktemp("updated")
    src = change_everything(tmp, sample_dir)
    shutil.copytree(tmp / "cache", tmp / "before", copy_function=shutil.copy2)
    with pytest.raises(SourceMismatchError, match=r"2 removed .* 1 modified .* 2 relabelled .*update=True"):
        extract(src, tmp / "cache", shard_size=SHARD)  # the default still refuses
    report = extract(src, tmp / "cache", shard_size=SHARD, update=True)
    extract(src, tmp / "scratch", shard_size=SHARD)
    return src, tmp / "before", report, tmp / "cache", tmp / "scratch"


def test_update_reads_as_a_cache_made_from_scratch(updated):
    src, before, report, cache, scratch = updated
    assert report.changes == {"added": 3, "removed": 2, "modified": 1, "relabelled": 2}
    assert report.rows == 4 and report.shards_written == 1  # the 3 added and the modified one, in 1 new shard
    assert "update: 3 added, 2 removed, 1 modified, 2 relabelled; now generation 1" in report.summary()
    old, new = snapshot(before), snapshot(cache)
    assert {k: new[k] for k in old} == old  # existing shard files untouched: bytes and mtimes
    assert sorted(new) == sorted([*old, "shard-00003.h5"])
    assert_same_rows(cache, scratch)
    c = FeatureCache(cache)
    assert c.generation == 1 and c.dead_rows == 3 and c.num_rows == FeatureCache(scratch).num_rows


def test_the_report_sample_of_an_updated_cache_is_its_live_rows_with_current_labels(updated):
    """``featcache-inspect report`` samples big caches: the sample must come from the rows readers see (no dead
    row, relabelled rows with their new class and split), each row's vector its own: checked by id against
    the cache made from scratch."""
    from featcache.shared.inspection.report import load_rows

    *_, cache, scratch = updated
    c, truth = FeatureCache(cache), FeatureCache(scratch).load_pooled()
    at = {i: k for k, i in enumerate(truth.id.tolist())}
    names = FeatureCache(scratch).classes
    for seed in range(4):
        loaded = load_rows(c, max_rows=c.num_rows - 2, seed=seed)
        got = loaded.rows
        assert loaded.total == c.num_rows and len(set(got.id.tolist())) == c.num_rows - 2
        k = [at[i] for i in got.id.tolist()]  # a KeyError is a dead (removed or replaced) row
        assert [c.classes[x] for x in got.label] == [names[x] for x in truth.label[k]]
        np.testing.assert_array_equal(got.split, truth.split[k])
        np.testing.assert_array_equal(got.pooled, truth.pooled[k])


def test_update_of_nothing_is_a_fast_no_op_that_says_so(tmp_path, sample_dir):
    extract(sample_dir, tmp_path / "c")
    before = (tmp_path / "c" / "manifest.json").read_text()
    report = extract(sample_dir, tmp_path / "c", update=True)
    assert report.shards_written == 0 and report.changes == {k: 0 for k in report.changes}
    assert report.summary().startswith("update: nothing changed in the source since generation 0\nnothing to do")
    assert (tmp_path / "c" / "manifest.json").read_text() == before
    assert report.startup_seconds < 5  # no TensorFlow import, no backbone


def test_relabel_only_update_runs_no_backbone_and_class_renumbering_is_by_name(tmp_path, sample_dir):
    shutil.copytree(sample_dir, tmp_path / "img")
    rows = [r for r in csv_rows(sample_dir) if r[1] != "checker"]
    write_csv(tmp_path / "src.csv", rows)
    extract(tmp_path / "src.csv", tmp_path / "c")
    # a new class that sorts first renumbers every label, and one row moves to it: one relabel only
    rows[0] = (rows[0][0], "aardvark", rows[0][2])
    write_csv(tmp_path / "src.csv", rows)
    report = extract(tmp_path / "src.csv", tmp_path / "c", update=True)
    assert report.changes == {"added": 0, "removed": 0, "modified": 0, "relabelled": 1}
    assert report.shards_written == 0 and report.backbone_seconds == 0
    assert len(json.loads((tmp_path / "c" / "manifest.json").read_text())["relabelled"]) == 1
    extract(tmp_path / "src.csv", tmp_path / "scratch")
    assert_same_rows(tmp_path / "c", tmp_path / "scratch")


def test_update_keeps_every_split_and_refuses_other_weights_or_options(tmp_path, sample_dir):
    src = tmp_path / "src"
    shutil.copytree(sample_dir, src)
    extract(src, tmp_path / "c")
    old = FeatureCache(tmp_path / "c").load_pooled()
    shutil.copy(src / "circle" / "circle_0000.jpg", src / "circle" / "zz_added.jpg")
    with pytest.raises(FingerprintMismatchError, match="weights_sha256"):
        extract(src, tmp_path / "c", update=True, seed=5)
    with pytest.raises(FingerprintMismatchError, match="maps_dtype"):
        extract(src, tmp_path / "c", update=True, maps_dtype="float32")
    with pytest.raises(FeatcacheError, match="shard size differs"):
        extract(src, tmp_path / "c", update=True, shard_size=5)
    assert FeatureCache(tmp_path / "c").generation == 0  # refused before anything was recorded
    extract(src, tmp_path / "c", update=True)
    new = FeatureCache(tmp_path / "c").load_pooled()
    split = dict(zip(new.id.tolist(), new.split.tolist(), strict=True))
    assert all(split[i] == s for i, s in zip(old.id.tolist(), old.split.tolist(), strict=True))
    assert len(new) == len(old) + 1


def test_updating_an_unfinished_cache_is_refused(tmp_path, sample_dir):
    src = tmp_path / "src"
    shutil.copytree(sample_dir, src)
    extract(src, tmp_path / "c", max_shards=1)
    os.unlink(src / "cross" / "cross_0001.jpg")
    with pytest.raises(FeatcacheError, match=r"unfinished \(3 of 4 shards missing\)"):
        extract(src, tmp_path / "c", update=True)


KILL_AT = """
import os, signal, sys
from featcache.shared.cache import _compact as c
name, nth, when, cache = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
real, calls = getattr(c, name), []
def hooked(*a, **k):
    calls.append(1)
    if len(calls) == nth and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    out = real(*a, **k)
    if len(calls) == nth and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return out
setattr(c, name, hooked)
c.compact(cache, threshold=0.0)
"""


def assert_reads(cache: Path, want: dict[str, dict]) -> None:
    got = by_id(cache)
    assert sorted(got) == sorted(want)
    for ident, row in want.items():
        assert (got[ident]["class"], got[ident]["split"]) == (row["class"], row["split"])
        assert got[ident]["pooled"].tobytes() == row["pooled"].tobytes()
        assert got[ident]["maps"].tobytes() == row["maps"].tobytes()


@pytest.mark.parametrize(
    ("moment", "committed"),
    [
        (("commit_file", 1, "before"), 0),  # new file written under its dot-name, not renamed
        (("commit_file", 1, "after"), 0),  # new file in place, manifest still names the old one
        (("remove_file", 1, "before"), 1),  # manifest committed, old file not deleted yet
        (("commit_file", 2, "before"), 1),  # one shard done, the next one half-way
    ],
    ids=["temp-written", "renamed", "committed", "second-shard"],
)
def test_compaction_killed_at_any_moment_loses_nothing(updated, tmp_path, moment, committed):
    import subprocess
    import sys

    from featcache.shared.cache._compact import compact
    from featcache.shared.inspection.verify import verify

    cache = tmp_path / "cache"
    shutil.copytree(updated[3], cache)
    want = by_id(cache)
    dead_shards = len({FeatureCache(cache).manifest.shard_of(i) for i in FeatureCache(cache).manifest.dead})
    assert dead_shards >= 2
    name, nth, when = moment
    p = subprocess.run([sys.executable, "-c", KILL_AT, name, str(nth), when, str(cache)], capture_output=True)
    assert p.returncode == -9, p.stderr.decode()
    report = verify(cache)
    assert report.ok, report.problems
    assert_reads(cache, want)

    done = compact(cache, threshold=0.0)
    assert verify(cache).ok and FeatureCache(cache).dead_rows == 0
    assert_reads(cache, want)
    m = FeatureCache(cache).manifest
    assert sorted(p.name for p in (cache / "shards").iterdir()) == sorted(Path(s.file).name for s in m.shards)
    assert len(done.rewritten) == dead_shards - committed
    assert_same_rows(cache, updated[4])
    assert compact(cache, threshold=0.0).rewritten == []  # idempotent


@pytest.mark.parametrize("parts,kills", [(1, 1)])  # more: python tests/faults.py --update [--parts 2]
def test_kill_during_update_then_resume_reads_as_from_scratch(tmp_path, parts, kills):
    from conftest import make_sample
    from faults import campaign

    make_sample(tmp_path / "src", per_class=5, classes=4, seed=4)
    stats = campaign(
        tmp_path / "src", tmp_path, kills=kills, max_seconds=120, seed=2, log=lambda m: None, parts=parts, update=True
    )
    assert stats.kills == kills and stats.rounds >= 1
    assert stats.ok, (stats.verify_failures, stats.mismatches, stats.partial_files_left)


@pytest.mark.parametrize("runner", [["--workers", "2"], ["--runner", "ray", "--workers", "2"]], ids=["workers", "ray"])
def test_update_with_many_workers_reads_as_from_scratch(tmp_path, sample_dir, runner):
    """``--update`` with local worker processes or Ray tasks: the first worker to take the cache lock
    records the changes, every worker extracts its share of the new shards, and the result reads as
    a cache made from scratch (the existing shard files untouched)."""
    import subprocess

    from cachefiles import extract_command

    if "ray" in runner:
        pytest.importorskip("ray")
    src = change_everything(tmp_path, sample_dir)
    old = snapshot(tmp_path / "cache")
    cmd = extract_command(src, tmp_path / "cache", "--update", *runner, shard_size=SHARD, batch_size=3)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert all(snapshot(tmp_path / "cache")[name] == kept for name, kept in old.items())
    extract(src, tmp_path / "scratch", shard_size=SHARD)
    assert_same_rows(tmp_path / "cache", tmp_path / "scratch")


def test_update_after_shuffling_csv_rows_extracts_nothing_and_keeps_reading_by_id(tmp_path, sample_dir):
    """The same CSV rows in another order (shuffled, not reversed) change no image: ``--update``
    exits 0 saying so, writes no shard, leaves no lock behind, and the cache reads as one made from
    scratch from the shuffled CSV; a shard lost afterwards is re-extracted at the cache's own
    positions (the listing's), not at the shuffled CSV's."""
    import subprocess

    from cachefiles import extract_command

    shutil.copytree(sample_dir, tmp_path / "img")
    rows = csv_rows(sample_dir)
    write_csv(tmp_path / "src.csv", rows)
    extract(tmp_path / "src.csv", tmp_path / "c", shard_size=SHARD)
    before = snapshot(tmp_path / "c")
    shuffled = [rows[k] for k in np.random.default_rng(3).permutation(len(rows))]
    write_csv(tmp_path / "src.csv", shuffled)
    cmd = extract_command(tmp_path / "src.csv", tmp_path / "c", "--update", shard_size=SHARD, batch_size=3)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "update: the same inputs in another order, no row to extract; now generation 1" in p.stdout
    assert "Traceback" not in p.stderr
    assert snapshot(tmp_path / "c") == before  # no shard touched
    assert not (tmp_path / "c" / schema.PARTS_DIR).exists()  # no part lock left
    extract(tmp_path / "src.csv", tmp_path / "scratch", shard_size=SHARD)
    assert_same_rows(tmp_path / "c", tmp_path / "scratch")
    assert extract(tmp_path / "src.csv", tmp_path / "c", shard_size=SHARD).shards_written == 0  # no update needed now
    (tmp_path / "c" / "shards" / "shard-00001.h5").unlink()  # lost: re-extracted by the cache's listing
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new file carries its generation's identity: no warning
        assert extract(tmp_path / "src.csv", tmp_path / "c", shard_size=SHARD).shards_written == 1
    assert {k: v[0] for k, v in snapshot(tmp_path / "c").items()} == {k: v[0] for k, v in before.items()}
    assert_same_rows(tmp_path / "c", tmp_path / "scratch")


def test_an_update_that_fails_under_the_lock_releases_it_and_changes_nothing(tmp_path, sample_dir, monkeypatch):
    from featcache.shared.cache import _writer as writer

    shutil.copytree(sample_dir, tmp_path / "img")
    rows = csv_rows(sample_dir)
    write_csv(tmp_path / "src.csv", rows[:10])
    extract(tmp_path / "src.csv", tmp_path / "c", shard_size=SHARD)
    manifest = (tmp_path / "c" / schema.MANIFEST_NAME).read_bytes()
    write_csv(tmp_path / "src.csv", rows)

    def boom(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        raise FeatcacheError("listing.npz: cannot be read (simulated)")

    monkeypatch.setattr(writer, "apply_update", boom)
    with pytest.raises(FeatcacheError, match=r"^listing.npz: cannot be read \(simulated\)$"):
        extract(tmp_path / "src.csv", tmp_path / "c", shard_size=SHARD, update=True)
    assert (tmp_path / "c" / schema.MANIFEST_NAME).read_bytes() == manifest
    assert not (tmp_path / "c" / schema.PARTS_DIR).exists()
    monkeypatch.undo()
    assert extract(tmp_path / "src.csv", tmp_path / "c", shard_size=SHARD, update=True).changes["added"] == 5
