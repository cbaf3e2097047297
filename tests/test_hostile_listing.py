"""A hand-edited ``listing.npz`` (hostile round 4, #7): ``verify`` checks it against the manifest's record
(count and sha256 of its entries) and against the shards' ids, and ``--update`` refuses it with one
line, before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import extract
from test_hostile_cache import tree
from typer.testing import CliRunner

from featcache.shared.errors import FeatcacheError
from featcache.shared.inspection.cli import app


def verify(cache: Path):
    return CliRunner().invoke(app, ["verify", str(cache), "--no-progress"])


def edit_listing(cache: Path, **change) -> None:
    """Rewrite ``listing.npz`` as a person would with numpy: ``change[field](array) -> array``."""
    with np.load(cache / "listing.npz") as z:
        arrays = {k: z[k].copy() for k in z.files}
    for key, fn in change.items():
        arrays[key] = fn(arrays[key])
    np.savez(cache / "listing.npz", **arrays)


@pytest.fixture
def src_cache(sample_dir, tmp_path) -> tuple[Path, Path]:
    src = Path(shutil.copytree(sample_dir, tmp_path / "src"))
    extract(src, tmp_path / "cache")
    return src, tmp_path / "cache"


def test_edited_listing_entry_fails_verify_and_update_refuses_it_touching_nothing(src_cache):
    src, cache = src_cache
    # one modification time changed: the ids still match the shards', only the recorded sha256 tells
    edit_listing(cache, mtime_ns=lambda a: np.where(np.arange(len(a)) == 6, a + 1, a))
    r = verify(cache)
    assert r.exit_code == 1, r.output
    lines = [line for line in r.output.splitlines() if "listing.npz" in line]
    assert len(lines) == 1 and "differ from the ones manifest.json records" in lines[0], r.output
    img = next(src.rglob("*.jpg"))
    shutil.copy(img, img.parent / "new_one.jpg")  # something to update
    before = tree(cache)
    with pytest.raises(FeatcacheError) as err:
        extract(src, cache, update=True)
    assert "listing.npz" in str(err.value) and "\n" not in str(err.value)
    assert tree(cache) == before  # no duplicate rows, no new generation, nothing written


def test_listing_ids_are_checked_against_the_shards_when_no_sha256_is_recorded(src_cache):
    """A cache from before the record: the ids two shards hold are swapped in the listing."""
    _, cache = src_cache
    m = json.loads((cache / "manifest.json").read_text())
    del m["listing_sha256"]
    (cache / "manifest.json").write_text(json.dumps(m))
    assert verify(cache).exit_code == 0
    edit_listing(cache, id=lambda a: a[[9, *range(1, 9), 0, *range(10, len(a))]])
    r = verify(cache)
    assert r.exit_code == 1, r.output
    bad = [line for line in r.output.splitlines() if "ids differ from listing.npz's" in line]
    assert [Path(line.split(":")[0]).name for line in bad] == ["shard-00000.h5", "shard-00002.h5"], r.output
    before = tree(cache)  # which of listing and shards is wrong is unknown: --fix moves neither
    r = CliRunner().invoke(app, ["verify", str(cache), "--no-progress", "--fix"])
    assert "nothing moved" in r.output and tree(cache) == before, r.output


def test_edited_listing_of_an_updated_cache_fails_verify(src_cache):
    """The record follows the grown listing of an update; an id appended twice by hand is caught."""
    src, cache = src_cache
    img = next(src.rglob("*.png"))
    shutil.copy(img, img.parent / "later.png")
    extract(src, cache, update=True)
    assert verify(cache).exit_code == 0, verify(cache).output
    edit_listing(cache, id=lambda a: np.where(np.arange(len(a)) == len(a) - 1, a[0], a))
    r = verify(cache)
    assert r.exit_code == 1 and "listing.npz: its entries differ from the ones manifest.json records" in r.output


def test_a_parts_worker_never_adopts_an_edited_listing(sample_dir, tmp_path):
    """Another moment: a resumed worker of a job adopts the published listing without statting the
    other parts' files; an entry of part 0 edited by hand made worker 1 refuse the unchanged source."""
    from featcache.extractor.runner import ExtractConfig, run_extract
    from featcache.shared.cache._parts import Part

    src = Path(shutil.copytree(sample_dir, tmp_path / "src"))
    cache = tmp_path / "cache"
    extract(src, cache, part=Part(0, 2))
    edit_listing(cache, mtime_ns=lambda a: np.where(np.arange(len(a)) == 0, a + 5, a))  # shard 0: part 0's
    lines: list[str] = []
    cfg = ExtractConfig(source=src, cache=cache, backbone="tiny", weights="random", shard_size=4, batch_size=3)
    run_extract(replace_part(cfg, Part(1, 2)), log=lines.append)
    assert not [line for line in lines if "adopted" in line], lines
    assert verify(cache).exit_code == 1  # the edited listing is still named by verify


def replace_part(cfg, part):
    from dataclasses import replace

    return replace(cfg, part=part, progress=False)
