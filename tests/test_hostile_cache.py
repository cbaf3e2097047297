"""Hostile caches (issue #17): each test is one class of defect a hand-made cache could trigger.

Paths out of the cache, links planted as lock or temp files, --overwrite of a folder that is not a
cache, shards copied from another cache, manifests whose numbers or types lie, and export into the
cache. Every one must give a one-line error (or a verify problem) and change nothing outside the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import extract, make_sample
from typer.testing import CliRunner

from featcache.shared.cache._listing import load_listing
from featcache.shared.cache._reader import FeatureCache
from featcache.shared.cache.fsutil import atomic_write_json, sha256_file
from featcache.shared.errors import FeatcacheError
from featcache.shared.inspection.cli import app

REPO = Path(__file__).resolve().parents[1]
DECOY_TEXT = b"someone else's file\n"


def inspect(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def manifest(cache: Path) -> dict:
    return json.loads((cache / "manifest.json").read_text())


def write_manifest(cache: Path, m: dict) -> None:
    (cache / "manifest.json").write_text(json.dumps(m))


def rehash(cache: Path, shard: int) -> None:
    """Make the manifest's bytes and sha256 of ``shard`` match its file (a thorough forger)."""
    m = manifest(cache)
    rec = next(s for s in m["shards"] if s["shard"] == shard)
    path = cache / rec["file"]
    rec["bytes"], rec["sha256"] = path.stat().st_size, sha256_file(path)
    write_manifest(cache, m)


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (links as their target, files by content hash)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


@pytest.fixture
def cache(tiny_cache, tmp_path) -> Path:
    """A private copy of the 15-row, 4-shard tiny cache, with a decoy folder beside it."""
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "secret.txt").write_bytes(DECOY_TEXT)
    return Path(shutil.copytree(tiny_cache, tmp_path / "cache"))


# 1. paths read from a manifest or part log -------------------------------------------------------


@pytest.mark.parametrize("where", ["relative", "absolute", "symlinked-shards"])
def test_manifest_paths_never_leave_the_cache(cache, tmp_path, where):
    victim = tmp_path / "victim"
    if where == "symlinked-shards":  # shards/ itself a link to a folder outside, holding a shard
        shutil.copy(cache / "shards" / "shard-00001.h5", victim / "shard-00001.h5")
        shutil.rmtree(cache / "shards")
        (cache / "shards").symlink_to(victim)
    else:
        m = manifest(cache)
        m["shards"][1]["file"] = "../victim/secret.txt" if where == "relative" else str(victim / "secret.txt")
        write_manifest(cache, m)
    before = tree(victim)
    r = inspect("verify", cache, "--fix", "--no-progress")
    assert r.exit_code in (1, 2), r.output
    assert tree(victim) == before, "verify --fix moved or changed a file outside the cache"
    assert not (cache / "quarantine").exists() or not any((cache / "quarantine").iterdir())
    for cmd in (["summary", cache], ["export", cache, tmp_path / "out"]):
        r = inspect(*cmd)
        assert r.exit_code == 2 and r.output.startswith("error: "), r.output
    with pytest.raises(FeatcacheError, match="is not a featcache shard name|featcache only touches its own files"):
        FeatureCache(cache).load_pooled()
    assert tree(victim) == before


def test_part_log_paths_outside_the_cache_are_not_merged(cache, tmp_path):
    from featcache.shared.cache._manifest import Manifest
    from featcache.shared.cache._parts import awaiting_merge

    m = manifest(cache)
    rec = m["shards"].pop()
    write_manifest(cache, m)
    outside = tmp_path / "victim" / "shard-00003.h5"
    shutil.copy(cache / rec["file"], outside)
    rec["file"] = "../victim/shard-00003.h5"
    (cache / "parts").mkdir()
    atomic_write_json(
        cache / "parts" / "part-0-of-1.json",
        {
            "format": "featcache-part-log",
            "part": "0/1",
            "generation": m["created"],
            "updated": m["updated"],
            "shards": [rec],
            "failed": [],
        },
    )
    assert awaiting_merge(cache, Manifest.load(cache)) == []


# 2. links planted as lock and temporary files ---------------------------------------------------


@pytest.mark.parametrize("planted", [".lock", "parts/part-0-of-1.lock", ".manifest.json.tmp-{pid}"])
def test_planted_links_are_refused_not_written_through(cache, sample_dir, tmp_path, planted):
    decoy = tmp_path / "victim" / "secret.txt"
    link = cache / planted.format(pid=os.getpid())
    link.parent.mkdir(exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(decoy)
    if planted.startswith(".manifest"):  # an atomic write unlinks the link, never writes through it
        atomic_write_json(cache / "manifest.json", manifest(cache))
        assert not link.is_symlink()
    else:
        with pytest.raises(FeatcacheError, match="symbolic link") as info:
            extract(sample_dir, cache)  # nothing to do: still takes the locks
        assert "\n" not in str(info.value)
        if planted == ".lock":
            r = inspect("verify", cache, "--fix", "--no-progress")
            assert r.exit_code == 0, r.output  # nothing to fix: no lock taken
            (cache / "shards" / "shard-00001.h5").write_bytes(b"junk")
            r = inspect("verify", cache, "--fix", "--no-progress")
            assert r.exit_code == 2 and "symbolic link" in r.output, r.output
    assert decoy.read_bytes() == DECOY_TEXT


def test_lock_that_is_a_fifo_is_refused_without_hanging(cache, sample_dir):
    (cache / ".lock").unlink()
    os.mkfifo(cache / ".lock")
    t0 = time.monotonic()
    with pytest.raises(FeatcacheError, match="not a regular file"):
        extract(sample_dir, cache)
    assert time.monotonic() - t0 < 30


# 3. --overwrite and refused runs ----------------------------------------------------------------


def _not_a_cache(folder: Path) -> Path:
    (folder / "shards").mkdir(parents=True)
    (folder / "manifest.json").write_text('{"hello": "this is my own manifest"}')
    (folder / "listing.npz").write_bytes(b"my listing")
    (folder / "shards" / "shard-00000.h5").write_bytes(b"my data")
    (folder / ".manifest.json.tmp-1").write_bytes(b"my temp file")
    return folder


@pytest.mark.parametrize("overwrite", [True, False])
def test_a_folder_that_is_not_a_cache_is_refused_and_untouched(tmp_path, sample_dir, overwrite):
    folder = _not_a_cache(tmp_path / "mine")
    before = tree(folder)
    with pytest.raises(FeatcacheError, match="not a featcache manifest"):
        extract(sample_dir, folder, overwrite=overwrite)
    assert tree(folder) == before  # nothing deleted, and no .lock, parts/ or new file left behind


def test_overwrite_deletes_only_featcache_files(cache, sample_dir):
    (cache / "notes.txt").write_text("mine")
    (cache / "shards" / "shard-mine.h5").write_bytes(b"mine")
    (cache / "shards" / ".my-own.tmp-12").write_bytes(b"mine")
    foreign = cache / "shards" / "shard-00009.h5"  # a name featcache writes, not a featcache file
    foreign.write_bytes(b"mine")
    before = tree(cache)
    with pytest.raises(FeatcacheError, match="shard-00009.h5: not a featcache shard"):
        extract(sample_dir, cache, overwrite=True, shard_size=1)
    assert tree(cache) == before
    foreign.unlink()
    extract(sample_dir, cache, overwrite=True, seed=5)
    for name in ("notes.txt", "shards/shard-mine.h5", "shards/.my-own.tmp-12"):
        assert (cache / name).read_bytes() == b"mine", name


def test_refused_resume_creates_nothing(tmp_path, sample_dir, cache):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    m = manifest(cache)
    m["fingerprint"]["weights_sha256"] = "random:99"
    write_manifest(fresh, m)
    with pytest.raises(FeatcacheError, match="features would be mixed"):
        extract(sample_dir, fresh)
    assert sorted(p.name for p in fresh.iterdir()) == ["manifest.json"]


# 4. shards from another cache -------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_cache(tmp_path_factory) -> Path:
    """Another cache of other images, same backbone, weights and shard plan for its first shard."""
    src = tmp_path_factory.mktemp("other-src")
    make_sample(src, per_class=2, classes=2, seed=7)
    out = tmp_path_factory.mktemp("other") / "c"
    extract(src, out)
    return out


@pytest.mark.parametrize("forge_checksum", [False, True])
def test_shard_copied_from_another_cache_is_refused(cache, other_cache, forge_checksum):
    shutil.copy(other_cache / "shards" / "shard-00000.h5", cache / "shards" / "shard-00000.h5")
    if forge_checksum:
        rehash(cache, 0)
    with pytest.raises(FeatcacheError, match=r"shard-00000\.h5: shard (is \d+ bytes|belongs to another cache)") as info:
        FeatureCache(cache).load_pooled()
    assert "\n" not in str(info.value)
    # (summary reports the manifest's counts without opening shards: verify and readers check them)
    for cmd in (["show", cache, "1"], ["export", cache, cache.parent / "e"]):
        r = inspect(*cmd)
        assert r.exit_code == 2, (cmd, r.output)
    r = inspect("verify", cache, "--no-progress")
    assert r.exit_code == 1 and "shard-00000.h5" in r.output


def test_old_shards_without_the_identity_attribute_still_read_and_are_checked(cache):
    for k in range(4):
        with h5py.File(cache / "shards" / f"shard-{k:05d}.h5", "r+") as f:
            del f.attrs["listing_sha256"]
        rehash(cache, k)
    assert len(FeatureCache(cache).load_pooled()) == 15
    assert inspect("verify", cache, "--no-progress").exit_code == 0
    shutil.copy(cache / "shards" / "shard-00000.h5", cache / "shards" / "shard-00001.h5")  # same cache, other place
    rehash(cache, 1)
    with pytest.raises(FeatcacheError, match=r"shard-00001\.h5: shard attribute shard is 0, the manifest says 1"):
        FeatureCache(cache).load_pooled()


# 5. and 6. manifests whose numbers or types lie --------------------------------------------------


def _set(path: str, value: object):
    def edit(m: dict) -> None:
        *head, last = path.split(".")
        for key in head:
            m = m[key]
        if value is KeyError:
            del m[last]
        else:
            m[last] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (_set("shard_size", 0), "shard_size: must be between 1"),
        (_set("source.num_inputs", "x"), "source.num_inputs: expected an integer, got 'x'"),
        (_set("source.num_inputs", 1e9), "source.num_inputs: expected an integer"),
        (_set("source.num_inputs", 10**9), "num_shards: 4, but 1000000000 inputs"),
        (_set("source", None), "source: expected an object, got None"),
        (_set("fingerprint", []), "fingerprint: expected an object, got []"),
        (_set("split.fractions", KeyError), "split.fractions: missing"),
        (_set("shard_size", -3), "shard_size: must be between 1"),
        (_set("failed", [{"index": 99, "id": "x", "reason": "r", "shard": 0}]), "failed[0]: input 99 is not one of"),
        (lambda m: m["shards"][0].update(rows=-1), "shards[0].rows: must be between 0"),
    ],
)
def test_hand_edited_manifests_are_one_line_errors_and_verify_problems(cache, edit, field):
    m = manifest(cache)
    edit(m)
    write_manifest(cache, m)
    r = inspect("summary", cache)
    assert r.exit_code == 2 and f"manifest.json: {field}" in r.output, r.output
    r = inspect("verify", cache, "--fix", "--no-progress")
    assert r.exit_code == 1 and f"manifest.json: {field}" in r.output and "nothing moved" in r.output, r.output


def test_shortened_classes_are_caught_by_verify_and_readers(cache):
    m = manifest(cache)
    m["classes"] = m["classes"][:1]
    write_manifest(cache, m)
    r = inspect("verify", cache, "--no-progress")
    assert r.exit_code == 1 and "is not a class of the manifest (1 classes" in r.output, r.output
    with pytest.raises(FeatcacheError, match="is not a class of the manifest"):
        FeatureCache(cache).load_pooled()  # what the trainer reads


@pytest.mark.parametrize("code", [7, -100])
def test_split_codes_out_of_range_are_caught_by_verify_and_readers(cache, code):
    """Found by tests/hostile.py: a forged split code made summary, show, export and report fail
    with an IndexError and passed verify."""
    with h5py.File(cache / "shards" / "shard-00001.h5", "r+") as f:
        f["split"][2] = code
    rehash(cache, 1)
    r = inspect("verify", cache, "--no-progress")
    assert r.exit_code == 1 and f"split code {code} is not a split" in r.output, r.output
    for args in (["show", cache, "0"], ["export", cache, cache.parent / "out"]):  # summary: the manifest's counts
        r = inspect(*args)
        assert r.exit_code == 2 and "shard-00001.h5: split code" in r.output, (args, r.output)
    with pytest.raises(FeatcacheError, match=f"shard-00001.h5: split code {code} is not a split"):
        FeatureCache(cache).load_pooled()  # what the trainer reads


def test_huge_consistent_plan_is_bounded_by_what_is_on_disk(cache):
    m = manifest(cache)
    m["source"]["num_inputs"], m["num_shards"] = 4 * 10**12, 10**12
    m["shards"] = m["shards"][:3]
    write_manifest(cache, m)
    code = "from featcache.shared.inspection.cli import main; main()"
    for cmd in (["verify", str(cache), "--no-progress"], ["ls", str(cache)], ["summary", str(cache)]):
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-c", code, *cmd], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert time.monotonic() - t0 < 30 and "Traceback" not in p.stderr, (cmd, p.stderr)
        assert p.returncode in (0, 1), (cmd, p.stdout, p.stderr)


def test_corrupt_listing_is_one_line(cache):
    (cache / "listing.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(FeatcacheError, match=r"listing.npz: not a readable input listing \(BadZipFile"):
        load_listing(cache)
    r = inspect("verify", cache, "--no-progress")
    assert r.exit_code == 1 and "listing.npz: not a readable input listing" in r.output, r.output
    np.savez(cache / "listing.npz", id=np.array(["a"]), label=[0], split=[0], size=[1], mtime_ns=[1])
    r = inspect("verify", cache, "--no-progress")
    assert r.exit_code == 1 and "listing.npz: 1 inputs listed, the manifest plans 15" in r.output


# 7. export ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("out", ["cache/listing", "cache/shards/x.npz", "."])
def test_export_never_writes_inside_the_cache_and_checks_its_output(cache, tmp_path, out, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = tree(cache)
    r = inspect("export", cache, out)
    assert r.exit_code == 2 and r.output.startswith("error: ") and len(r.output.strip().splitlines()) == 1, r.output
    assert tree(cache) == before
