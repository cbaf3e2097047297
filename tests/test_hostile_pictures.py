"""Issue 24 #2, #5, #9: where the report's thumbnails and ``show --png`` read source images from.

A cache may come from anyone: a record's id, a CSV row or a link must not make the report embed a
file outside the source the extractor listed; a FIFO where a source image was must not hang it; a
decompression bomb must be refused from its header, with the extractor's pixel cap, and said in one
note, never a traceback. Each test checks that the cache itself is left as it was.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import extract, make_sample
from typer.testing import CliRunner

from featcache.shared.inspection.cli import app
from featcache.shared.limits import DEFAULT_MAX_PIXELS

pytest.importorskip("PIL")
runner = CliRunner()


def _secret(folder: Path) -> Path:
    """A picture outside every source: what a hostile id would have the report embed."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "secret.png"
    Image.fromarray(np.full((40, 40, 3), (255, 0, 255), np.uint8)).save(path)
    return path


def _snapshot(cache: Path) -> dict[str, bytes]:
    return {str(p.relative_to(cache)): p.read_bytes() for p in sorted(cache.rglob("*")) if p.is_file()}


def _report(cache: Path, out: Path) -> tuple[dict, str]:
    from featcache.shared.inspection.report import write

    facts = write(cache, out, embedding="pca")
    return facts, out.read_text()


def _cli(*args: object) -> subprocess.CompletedProcess:
    """featcache-inspect in a subprocess: a hang is a timeout, not a test that never ends."""
    code = "from featcache.shared.inspection.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=120)


def test_record_ids_naming_files_are_never_read_for_pictures(tmp_path):
    """#2: a TFRecord whose image/filename is '../secret/secret.png' or the secret's absolute path (the
    issue's case was a tar's): no thumbnail is drawn from them, and the page says why."""
    from test_records import example, write_tfrecord

    secret = _secret(tmp_path / "secret")
    sample = tmp_path / "sample"
    files = make_sample(sample, per_class=2, classes=2, seed=3)
    names = ["../secret/secret.png", str(secret), "fine.jpg", "../secret/secret.png#2"]
    items = [example(f.read_bytes(), names[k], k % 2, None) for k, f in enumerate(files)]
    (tmp_path / "records").mkdir()
    write_tfrecord(tmp_path / "records" / "train-0.tfrecord", items)
    (tmp_path / "records" / "fine.jpg").write_bytes(files[0].read_bytes())  # beside the records: not drawn either
    cache = tmp_path / "cache"
    extract(tmp_path / "records", cache, source_format="tfrecord")
    before = _snapshot(cache)
    facts, text = _report(cache, tmp_path / "r.html")
    assert facts["thumbnails"] == 0 and "data:image" not in text
    assert "inside TFRecord or tar records, which are not read for pictures" in text
    r = runner.invoke(app, ["show", str(cache), str(secret), "--png", str(tmp_path / "s.png")])
    assert r.exit_code == 0, r.output
    assert f"grey square ({secret}: inside TFRecord or tar records" in r.output
    assert _snapshot(cache) == before


def test_listed_and_linked_images_outside_the_source_are_not_drawn(tmp_path):
    """#2, variants: a CSV row '../secret/secret.png' (the extractor reads it: the user listed it) and a
    folder source's image that is a link to the secret: neither is embedded; the other rows are."""
    secret = _secret(tmp_path / "secret")
    data = tmp_path / "data"
    files = make_sample(data, per_class=2, classes=2, seed=4)
    rows = [f"{f.relative_to(data)},{f.parent.name}" for f in files] + ["../secret/secret.png,circle"]
    (data / "list.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    link = data / files[0].parent.name / "zz_link.png"
    link.symlink_to(secret)
    for source, cache in ((data / "list.csv", tmp_path / "csv-cache"), (data, tmp_path / "folder-cache")):
        extract(source, cache)
        before = _snapshot(cache)
        facts, text = _report(cache, tmp_path / f"{cache.name}.html")
        assert facts["summary"]["rows"] == len(files) + 1
        assert facts["thumbnails"] <= len(files)  # what the thumbnails could show: the report draws the few it lists
        assert "outside the source folder" in text, cache
        r = runner.invoke(app, ["show", str(cache), "0", "--png", str(tmp_path / "s.png")])  # an ordinary row
        assert r.exit_code == 0 and "grey square" not in r.output, r.output
        outside = "../secret/secret.png" if source.suffix == ".csv" else f"{link.parent.name}/zz_link.png"
        r = runner.invoke(app, ["show", str(cache), outside, "--png", str(tmp_path / "s.png")])
        assert r.exit_code == 0 and f"grey square ({outside}: outside the source folder" in r.output, r.output
        assert _snapshot(cache) == before

    from featcache.shared.inspection import picture

    source = {"kind": "csv", "root": str(data)}
    for hostile in ("../secret/secret.png", str(secret), "~/x.png", "a/../../secret/secret.png", "", "x\0.png"):
        assert picture.source_image(source, hostile) == (None, picture.OUTSIDE), hostile
    assert picture.source_image(source, "..a.png") == (data / "..a.png", "")


def _png_declaring(path: Path, width: int, height: int) -> None:
    """A PNG whose header declares ``width x height`` RGB pixels, with a few bytes of image data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (3 * width + 1) * 4)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@pytest.fixture
def folder_cache(tmp_path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    make_sample(data, per_class=3, classes=2, seed=5)
    cache = tmp_path / "cache"
    extract(data, cache)
    return data, cache


def test_a_fifo_where_a_source_image_was_does_not_hang_report_or_show(tmp_path, folder_cache):
    """#5: a FIFO (made after the extraction) in place of one source image: report and show --png end at
    once, draw the others, and say the file is not a regular file."""
    data, cache = folder_cache
    victim = sorted(data.rglob("*.jpg"))[1]
    victim.unlink()
    os.mkfifo(victim)
    before = _snapshot(cache)
    p = _cli("report", cache, tmp_path / "r.html", "--embedding", "pca")
    assert p.returncode == 0, p.stderr
    text = (tmp_path / "r.html").read_text()
    assert "could not be read" in text and "not a regular file" in text
    row = str(victim.relative_to(data))
    p = _cli("show", cache, row, "--png", tmp_path / "s.png")
    assert p.returncode == 0, p.stderr
    assert f"grey square ({victim}: not a regular file" in p.stdout and (tmp_path / "s.png").exists()
    assert _snapshot(cache) == before


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path, folder_cache):
    """#9: a PNG declaring 15000x7000 pixels (more than the extractor's cap) where a source image was:
    never decoded, one note on the page, one grey square in show --png, no traceback."""
    data, cache = folder_cache
    victim = sorted(data.rglob("*.jpg"))[2]
    _png_declaring(victim, 15000, 7000)
    before = _snapshot(cache)
    facts, text = _report(cache, tmp_path / "r.html")
    assert f"image too large: 15000x7000 pixels &gt; {DEFAULT_MAX_PIXELS}" in text
    r = runner.invoke(app, ["show", str(cache), str(victim.relative_to(data)), "--png", str(tmp_path / "s.png")])
    assert r.exit_code == 0, r.output
    assert f"grey square ({victim}: image too large: 15000x7000 pixels > {DEFAULT_MAX_PIXELS})" in r.output
    assert _snapshot(cache) == before
