"""The smaller findings of hostile round 4 (#13), each a variant of the reported case: a full disk
while the manifest is folded, verify after a kill, WebP/TIFF inputs, a tar member named twice, EXIF
orientation, a one-class cache, a retry after a start with other weights, a cache inside its source."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import extract, synthetic_cache
from test_hostile_cache import tree
from test_records import write_tar
from typer.testing import CliRunner

from featcache.shared.cache import fsutil
from featcache.shared.cache._reader import FeatureCache
from featcache.shared.errors import FeatcacheError, FingerprintMismatchError

TINY = ["--backbone", "tiny", "--weights", "random", "--shard-size", "4", "--batch-size", "3", "--no-progress"]


def extract_cli(*args: object):
    from featcache.extractor.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def error_line(r) -> str:
    lines = [line for line in r.output.splitlines() if line.startswith("error: ")]
    assert r.exit_code == 2 and len(lines) == 1, r.output
    return lines[0]


def manifest(cache: Path) -> dict:
    return json.loads((cache / "manifest.json").read_text())


def failed(cache: Path) -> dict[str, str]:
    return {f["id"]: f["reason"] for f in manifest(cache)["failed"]}


def pooled_by_id(cache: Path) -> dict[str, np.ndarray]:
    rows = FeatureCache(cache).load_pooled()
    return {str(i): p for i, p in zip(rows.id, rows.pooled, strict=True)}


# -- a full disk while the manifest is replaced names manifest.json --------------------------------


def test_full_disk_while_a_resume_folds_the_manifest_names_it(tmp_path, sample_dir, monkeypatch):
    cache = tmp_path / "cache"
    extract(sample_dir, cache, max_shards=2)
    before = (cache / "manifest.json").read_bytes()
    real = fsutil.create_new

    def full(path, *a, **k):  # the manifest's temporary file is on a full disk: writes fail, ENOSPC
        if path.name.startswith(".manifest.json"):
            return os.open("/dev/full", os.O_WRONLY)
        return real(path, *a, **k)

    monkeypatch.setattr(fsutil, "create_new", full)
    line = error_line(extract_cli(sample_dir, cache, *TINY))
    assert line == f"error: {cache / 'manifest.json'}: No space left on device", line
    assert (cache / "manifest.json").read_bytes() == before  # the old manifest stands, both shards kept
    assert not [p for p in cache.iterdir() if p.name.startswith(".manifest.json")]
    monkeypatch.setattr(fsutil, "create_new", real)
    assert extract(sample_dir, cache).shards_kept == 2


def test_full_disk_while_a_commit_is_journaled_names_the_journal(tmp_path, sample_dir, monkeypatch):
    from featcache.shared.cache import _journal as journal

    real, calls = journal.os.fdatasync, []

    def full(fd):
        calls.append(fd)
        if len(calls) == 2:  # the second shard's commit record
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(journal.os, "fdatasync", full)
    cache = tmp_path / "cache"
    with pytest.raises(FeatcacheError) as err:
        extract(sample_dir, cache)
    assert str(err.value).startswith(f"{cache / 'parts' / 'part-0-of-1.journal'}: cannot write (No space left"), err
    monkeypatch.setattr(journal.os, "fdatasync", real)
    kept = [s.shard for s in FeatureCache(cache).shards]  # written, not synced: it may stand
    assert kept in ([0], [0, 1]), kept
    assert extract(sample_dir, cache).shards_kept == len(kept)
    assert len(pooled_by_id(cache)) == 15


def test_enospc_without_a_file_name_gets_the_destination(tmp_path, monkeypatch):
    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fsutil.os, "fsync", fsync)
    with pytest.raises(OSError) as err:
        fsutil.atomic_write_json(tmp_path / "listing.json", {"a": 1})
    assert err.value.filename == str(tmp_path / "listing.json") and err.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


# -- verify after a kill: the writer is gone, its lock stale ----------------------------------------


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("alive", [False, True])
def test_verify_after_a_kill_says_the_writer_is_gone(tiny_cache, tmp_path, alive):
    from featcache.shared.inspection.cli import app

    cache = Path(shutil.copytree(tiny_cache, tmp_path / "cache"))
    pid = os.getpid() if alive else dead_pid()
    (cache / "parts").mkdir(exist_ok=True)
    holder = {"pid": pid, "host": os.uname().nodename, "since": "2026-01-01T00:00:00+0000", "command": "x"}
    (cache / "parts" / "part-1-of-2.lock").write_text(json.dumps(holder))
    (cache / "shards" / f".shard-00003.h5.tmp-{pid}").write_bytes(b"partial")
    r = CliRunner().invoke(app, ["verify", str(cache), "--no-progress"])
    assert r.exit_code == 0, r.output
    note = next(line for line in r.output.splitlines() if "partial shard files" in line)
    if alive:
        assert f"a writer is running: pid {pid}" in note, note
    else:
        assert "writer that is gone" in note and "lock is stale" in note and "running" not in note, note


# -- WebP is an image; TIFF is listed and refused with its reason -----------------------------------


def image_bytes(fmt: str, seed: int, **kw) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buf, fmt, **kw)
    return buf.getvalue()


def test_webp_is_extracted_and_a_tiff_is_recorded_as_refused(tmp_path):
    src = tmp_path / "src"
    for cls, files in {"ant": {"a.webp": "WEBP", "b.png": "PNG"}, "bee": {"c.TIFF": "TIFF", "d.jpg": "JPEG"}}.items():
        (src / cls).mkdir(parents=True)
        for k, (name, fmt) in enumerate(files.items()):
            (src / cls / name).write_bytes(image_bytes(fmt, k))
    extract(src, tmp_path / "cache")
    assert sorted(pooled_by_id(tmp_path / "cache")) == ["ant/a.webp", "ant/b.png", "bee/d.jpg"]
    reasons = failed(tmp_path / "cache")
    assert list(reasons) == ["bee/c.TIFF"] and reasons["bee/c.TIFF"].startswith("TIFF is not read: "), reasons


# -- a tar member named twice: the first is the sample, the second is refused -----------------------


def test_a_tar_member_named_twice_keeps_the_first_and_lists_the_second(tmp_path):
    first, second, other = image_bytes("PNG", 1), image_bytes("PNG", 2), image_bytes("JPEG", 3)
    members = [("x/cat.png", first), ("x/cat.cls", b"cat"), ("y/dog.jpg", other), ("y/dog.cls", b"dog")]
    (tmp_path / "twice").mkdir()
    (tmp_path / "once").mkdir()
    write_tar(tmp_path / "twice" / "train-0.tar", [*members[:2], ("x/cat.png", second), *members[2:]])
    write_tar(tmp_path / "once" / "train-0.tar", members)
    extract(tmp_path / "twice", tmp_path / "c2")
    extract(tmp_path / "once", tmp_path / "c1")
    twice, once = pooled_by_id(tmp_path / "c2"), pooled_by_id(tmp_path / "c1")
    assert sorted(twice) == sorted(once) == ["x/cat.png", "y/dog.jpg"]
    np.testing.assert_array_equal(twice["x/cat.png"], once["x/cat.png"])  # the first member's image
    reasons = failed(tmp_path / "c2")
    assert list(reasons) == ["x/cat.png#2"], reasons
    assert reasons["x/cat.png#2"].startswith("tar member x/cat.png appears again in train-0.tar"), reasons


# -- EXIF orientation: not applied, as documented in docs/inputs.md --------------------------------


def test_exif_orientation_is_not_applied(tmp_path):
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    for folder, kw in (("plain", {}), ("rotated", {"exif": exif.tobytes()})):
        (tmp_path / folder / "cls").mkdir(parents=True)
        (tmp_path / folder / "cls" / "photo.jpg").write_bytes(image_bytes("JPEG", 7, quality=95, **kw))
        extract(tmp_path / folder, tmp_path / f"{folder}-cache")
    assert b"Exif" in (tmp_path / "rotated" / "cls" / "photo.jpg").read_bytes()[:64]
    plain, rotated = pooled_by_id(tmp_path / "plain-cache"), pooled_by_id(tmp_path / "rotated-cache")
    np.testing.assert_array_equal(plain["cls/photo.jpg"], rotated["cls/photo.jpg"])
    assert "EXIF orientation is not applied" in (Path(__file__).parents[1] / "docs" / "inputs.md").read_text()


# -- one class: accuracy is meaningless, and the trainer says so -------------------------------------


def test_one_class_cache_trains_with_a_note_that_accuracy_means_nothing(tmp_path):
    from featcache.trainer.cli import app

    cache = synthetic_cache(tmp_path / "c", n=60, classes=1)
    r = CliRunner().invoke(
        app, [str(cache), "--head", "linear", "--epochs", "1", "--runs", str(tmp_path / "runs"), "--no-progress"]
    )
    assert r.exit_code == 0, r.output
    notes = [line for line in r.output.splitlines() if "one class only" in line]
    assert len(notes) == 1 and "accuracy (1.0) and loss are meaningless" in notes[0], r.output
    (results,) = (tmp_path / "runs").glob("*/results.json")
    assert any("one class only" in n for n in json.loads(results.read_text())["notes"])


# -- a start with other weights that committed nothing: the retry is told overwrite loses nothing ----


def test_a_retry_after_a_start_that_committed_nothing_says_overwrite_loses_nothing(tmp_path, sample_dir, monkeypatch):
    from featcache.shared.cache._writer import CacheWriter

    def interrupted(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(CacheWriter, "commit_shard", interrupted)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        extract(sample_dir, cache, seed=1)  # random weights of seed 1: not the ones meant
    monkeypatch.undo()
    assert manifest(cache)["shards"] == []
    with pytest.raises(FingerprintMismatchError) as err:
        extract(sample_dir, cache, seed=2)
    assert "no shard of it is committed yet" in str(err.value) and str(err.value).endswith("use overwrite=True")
    line = error_line(extract_cli(sample_dir, cache, *TINY, "--seed", "2"))
    assert "features would be mixed" in line and line.endswith("nothing is lost by starting over: use --overwrite")
    assert extract(sample_dir, cache, seed=2, overwrite=True).rows == 15


def test_a_cache_with_shards_is_still_refused_without_that_advice(tiny_cache, tmp_path, sample_dir):
    cache = Path(shutil.copytree(tiny_cache, tmp_path / "cache"))
    with pytest.raises(FingerprintMismatchError) as err:
        extract(sample_dir, cache, seed=3)
    assert "committed" not in str(err.value)


# -- a cache inside its source folder is refused before anything is written ---------------------------


@pytest.mark.parametrize("through_link", [False, True])
def test_a_cache_inside_the_source_is_refused_before_anything_is_written(tmp_path, sample_dir, through_link):
    src = Path(shutil.copytree(sample_dir, tmp_path / "src"))
    if through_link:  # a path that does not look inside: a link into the source
        (tmp_path / "elsewhere").symlink_to(src / "circle")
        cache = tmp_path / "elsewhere" / "features"
    else:
        cache = src / "circle" / "deeper" / "cache"
    before = tree(src)
    with pytest.raises(FeatcacheError) as err:
        extract(src, cache)
    assert "\n" not in str(err.value) and "is inside the source folder" in str(err.value)
    line = error_line(extract_cli(src, cache, *TINY))
    assert (
        line
        == f"error: {cache}: the cache directory is inside the source folder {src}; extract into a folder outside it"
    )
    assert tree(src) == before


# -- a content change that kept size and modification time: --update --checksum sees it --------------


def test_update_checksum_sees_a_content_change_that_kept_size_and_time(tmp_path, sample_dir):
    src = Path(shutil.copytree(sample_dir, tmp_path / "src"))
    bmp = src / "circle" / "scan.bmp"
    bmp.write_bytes(image_bytes("BMP", 11))
    cache = tmp_path / "cache"
    extract(src, cache)  # made without hashes: the first checksum update records them
    first = extract(src, cache, update=True, checksum=True)
    assert first.changes == {"added": 0, "removed": 0, "modified": 0, "relabelled": 0}
    st = bmp.stat()
    bmp.write_bytes(image_bytes("BMP", 12))  # other pixels, the same byte size
    os.utime(bmp, ns=(st.st_atime_ns, st.st_mtime_ns))  # touch -r: the same modification time
    assert bmp.stat().st_size == st.st_size
    plain = extract(src, cache, update=True)  # size and time only: the change is invisible (documented)
    assert plain.changes is None or not any(plain.changes.values())
    found = extract(src, cache, update=True, checksum=True)
    assert found.changes["modified"] == 1 and found.changes["added"] == 0
    extract(src, tmp_path / "fresh")
    a, b = pooled_by_id(cache), pooled_by_id(tmp_path / "fresh")
    assert sorted(a) == sorted(b)
    np.testing.assert_array_equal(a["circle/scan.bmp"], b["circle/scan.bmp"])
    again = extract(src, cache, update=True, checksum=True)  # the new hash is recorded: nothing more
    assert not any(again.changes.values())
