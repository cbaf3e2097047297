"""featcache-inspect: verify catches each kind of damage, --fix + resume restores, and the rest works."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from cachefiles import read_shards
from conftest import extract
from typer.testing import CliRunner

from featcache.shared.cache._reader import FeatureCache
from featcache.shared.cache.fsutil import sha256_file
from featcache.shared.inspection.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def inspect(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def cache(tiny_cache, tmp_path) -> Path:
    """A private copy of the 15-row, 4-shard tiny cache."""
    return Path(shutil.copytree(tiny_cache, tmp_path / "cache"))


def manifest(cache: Path) -> dict:
    return json.loads((cache / "manifest.json").read_text())


def test_verify_passes_on_a_fresh_cache(cache):
    r = inspect("verify", cache, "--no-progress")
    assert r.exit_code == 0, r.output
    assert r.output.strip().endswith("OK: 4 shards, 15 rows checked")


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _overwrite_pooled_and_rehash(cache: Path) -> None:
    path = cache / "shards" / "shard-00001.h5"
    with h5py.File(path, "r+") as f:
        f["pooled"][...] = f["pooled"][()][::-1]  # other rows' vectors: plausible values, wrong rows
    m = manifest(cache)
    rec = m["shards"][1]
    rec["sha256"], rec["bytes"] = sha256_file(path), path.stat().st_size
    (cache / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda c: _flip_byte(c / "shards" / "shard-00001.h5"), "shard-00001.h5: sha256 differs from the manifest"),
        (
            lambda c: _truncate(c / "shards" / "shard-00001.h5"),
            r"shard-00001.h5: size \d+ bytes, manifest says \d+ \(truncated",
        ),
        (lambda c: (c / "shards" / "shard-00001.h5").unlink(), r"shard-00001.h5: missing \(listed in the manifest\)"),
        (
            lambda c: shutil.copy(c / "shards" / "shard-00001.h5", c / "shards" / "shard-00009.h5"),
            "shard-00009.h5: shard file the manifest does not list",
        ),
        (
            _overwrite_pooled_and_rehash,
            r"shard-00001.h5: pooled of row \d \(index \d\) differs from the mean of its maps",
        ),
    ],
    ids=["flipped-byte", "truncated", "missing", "unknown-extra", "pooled-overwritten"],
)
def test_verify_catches_damage(cache, damage, expected):
    import re

    damage(cache)
    r = inspect("verify", cache, "--no-progress")
    assert r.exit_code == 1
    problems = [line for line in r.output.splitlines() if line.startswith(str(cache / "shards"))]
    assert len(problems) == 1 and re.search(expected, problems[0]), r.output
    assert ": 1 problem: 4 shards" in r.output


def test_verify_fix_then_resume_equals_the_original(cache, sample_dir, tiny_cache):
    _overwrite_pooled_and_rehash(cache)
    _flip_byte(cache / "shards" / "shard-00002.h5")
    r = inspect("verify", cache, "--fix", "--no-progress")
    assert r.exit_code == 1 and "fixed: removed shards [1, 2] from the manifest" in r.output
    assert [s["shard"] for s in manifest(cache)["shards"]] == [0, 3]
    moved = sorted(p.name.split(".")[0] for p in (cache / "quarantine").iterdir())
    assert moved == ["shard-00001", "shard-00002"]  # moved aside, not deleted
    report = extract(sample_dir, cache)
    assert report.shards_written == 2 and report.shards_kept == 2
    a, b = read_shards(tiny_cache), read_shards(cache)
    for key in ("pooled", "label", "index", "split", "maps"):
        assert a[key].tobytes() == b[key].tobytes(), key
    assert inspect("verify", cache, "--no-progress").exit_code == 0


def test_neighbours_and_duplicates_find_a_planted_copy(tmp_path, sample_dir):
    src = tmp_path / "src"
    shutil.copytree(sample_dir, src)
    original = next((src / "circle").glob("*.jpg"))
    shutil.copy(original, src / "cross" / "copy_of_circle.jpg")
    extract(src, tmp_path / "c")
    r = inspect("neighbours", tmp_path / "c", f"circle/{original.name}", "-k", "3")
    assert r.exit_code == 0, r.output
    first = r.output.splitlines()[2]
    assert first.split()[0] == "1.0000" and first.endswith("cross/copy_of_circle.jpg")
    d = inspect("neighbours", tmp_path / "c", "--duplicates", "--block", "16")
    assert d.exit_code == 0, d.output
    assert d.stdout.startswith("1 pairs with cosine >= 0.995 among 16 rows")  # (a note on standard error)
    assert f"circle/{original.name}" in d.output and "cross/copy_of_circle.jpg" in d.output


def test_export_writes_arrays_and_csv_equal_to_the_cache(cache, tmp_path):
    r = inspect("export", cache, tmp_path / "out", "--maps", "2:6")
    assert r.exit_code == 0, r.output
    d = np.load(tmp_path / "out.npz")
    rows = FeatureCache(cache).load_pooled()
    np.testing.assert_array_equal(d["pooled"], rows.pooled)
    assert d["id"].tolist() == rows.id.tolist() and d["classes"].tolist() == ["checker", "circle", "cross"]
    assert d["maps_index"].tolist() == [2, 3, 4, 5] and d["maps"].shape == (4, 7, 7, 1280)
    np.testing.assert_array_equal(d["maps"], read_shards(cache)["maps"][2:6])
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0] == "index,id,label,class,split" and len(lines) == 16
    assert lines[1].startswith("0,checker/checker_0000.jpg,0,checker,")


def test_show_prints_the_row_and_draws_a_png(cache, tmp_path):
    r = inspect("show", cache, "circle/circle_0001.jpg", "--png", tmp_path / "s.png")
    assert r.exit_code == 0, r.output
    rows = FeatureCache(cache).load_pooled()
    k = rows.id.tolist().index("circle/circle_0001.jpg")
    assert r.output.startswith(
        f"row index {rows.index[k]} in shards/shard-0000{rows.index[k] // 4}.h5: circle/circle_0001.jpg"
    )
    top = int(np.argmax(rows.pooled[k]))
    assert f"strongest channels: {top} ({rows.pooled[k][top]:.3f})" in r.output
    png = (tmp_path / "s.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[16:24] == (224).to_bytes(4, "big") * 2
    assert inspect("show", cache, "9999").exit_code == 2


def test_summary_and_ls(cache):
    s = json.loads(inspect("summary", cache, "--json").output)
    assert s["rows"] == 15 and s["shards"] == {"done": 4, "planned": 4, "size": 4} and s["random_weights"]
    _flip_byte(cache / "shards" / "shard-00003.h5")
    out = inspect("ls", cache).output.splitlines()
    assert [line.split()[4] for line in out[1:]] == ["ok", "ok", "ok", "CHECKSUM"]


def test_no_inspection_command_loads_tensorflow(cache, tmp_path):
    code = f"""
import sys
from typer.testing import CliRunner
from featcache.shared.inspection.cli import app
c = {str(cache)!r}
for args in (["summary", c], ["summary", c, "--json"], ["verify", c, "--no-progress"], ["ls", c], ["show", c, "3"],
             ["neighbours", c, "3"], ["neighbours", c, "--duplicates"],
             ["export", c, {str(tmp_path / "e")!r}, "--maps", "0:2"]):
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, (args, r.output)
bad = [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")]
assert not bad, bad
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda c: (c / "manifest.json").write_text('{"format": "featcache", "sche'), "manifest is not valid JSON"),
        (
            lambda c: (c / "manifest.json").write_text(json.dumps({**manifest(c), "schema_version": 7})),
            "schema version 7 is newer",
        ),
        (
            lambda c: (c / "shards" / "shard-00000.h5").write_bytes(b"\x00" * 100),
            "shard-00000.h5: shard is not a readable HDF5 file",
        ),
    ],
)
def test_bad_caches_give_one_line_errors(cache, setup, message):
    setup(cache)
    # summary reports the manifest's counts without opening shards: a bad shard is shown reading a row
    cmd = ["show", str(cache), "0"] if "shard-" in message else ["summary", str(cache)]
    p = subprocess.run([sys.executable, "-m", "featcache.shared", *cmd], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_verify_notes_a_finished_but_unlisted_shard_of_an_interrupted_run(cache):
    m = manifest(cache)
    m["shards"] = m["shards"][:3]  # as if killed between the rename of shard 3 and the manifest update
    (cache / "manifest.json").write_text(json.dumps(m))
    r = inspect("verify", cache, "--no-progress")
    assert r.exit_code == 0, r.output
    assert "note: 1 shard files for shards not yet done are not in the manifest" in r.output


def test_export_for_the_embedding_projector(cache, tmp_path):
    """--projector DIR: the pooled vectors (tensors.tsv), a metadata line per row in the same order, a
    sprite of the rows' images in that order, and the config TensorBoard's projector reads."""
    from PIL import Image

    from featcache.shared.inspection.export import SPRITE_PX
    from featcache.shared.inspection.picture import load_source

    out = tmp_path / "proj"
    r = CliRunner().invoke(app, ["export", str(cache), "--projector", str(out)])
    assert r.exit_code == 0, r.output
    c = FeatureCache(cache)
    rows = c.load_pooled()
    np.testing.assert_allclose(np.loadtxt(out / "tensors.tsv", delimiter="\t"), rows.pooled, rtol=1e-5, atol=1e-6)
    meta = (out / "metadata.tsv").read_text().splitlines()
    assert meta[0] == "id\tclass\tsplit\tindex" and [m.split("\t")[0] for m in meta[1:]] == rows.id.tolist()
    sprite = np.asarray(Image.open(out / "sprite.png"))
    side = int(np.ceil(np.sqrt(len(rows))))
    assert sprite.shape == (side * SPRITE_PX, side * SPRITE_PX, 3)
    first, _ = load_source(c.manifest.source, str(rows.id[1]), (SPRITE_PX, SPRITE_PX))
    np.testing.assert_array_equal(sprite[:SPRITE_PX, SPRITE_PX : 2 * SPRITE_PX], first)  # row 1: second cell
    config = (out / "projector_config.pbtxt").read_text()
    assert 'tensor_path: "tensors.tsv"' in config and 'image_path: "sprite.png"' in config
    r = CliRunner().invoke(app, ["export", str(cache), "--projector", str(cache / "proj")])
    assert r.exit_code == 2 and "inside the cache" in r.output and not (cache / "proj").exists()
    r = CliRunner().invoke(app, ["export", str(cache)])
    assert r.exit_code == 2 and "give OUT" in r.output
