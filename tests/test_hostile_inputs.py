"""Hostile sources (issue #17): inputs that used to hang the extractor, blow up its memory, give a
traceback or silently mislabel, each as a class of defect. Every refusal is one line naming the file
and the reason; a refused input is recorded in the manifest and never stops the job (unless strict)."""

from __future__ import annotations

import json
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import extract

from featcache.extractor.inputs import DEFAULT_MAX_PIXELS, declared_size
from featcache.extractor.sources import open_source
from featcache.shared.errors import BadInputError, FeatcacheError

PIL = pytest.importorskip("PIL.Image")


def _noise(path: Path | bytes, h: int, w: int, seed: int = 0, **save) -> None:
    pixels = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    PIL.fromarray(pixels).save(os.fsdecode(path), **save)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_bomb(path: Path, side: int) -> None:
    """A PNG declaring ``side`` x ``side`` gray pixels in a few hundred bytes. Its first row has an
    invalid filter byte, so that code without the header check fails to decode it at once instead
    of allocating gigabytes (run on the old code, this test must fail, not take the machine down)."""
    rows = zlib.compress(b"\x09" + b"\x00" * side + b"\x00" * (side + 1) * 15)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", rows))


def _failed(cache: Path) -> dict[str, str]:
    return {f["id"]: f["reason"] for f in json.loads((cache / "manifest.json").read_text())["failed"]}


@contextmanager
def _unblock_fifo_readers(fifo: Path, after: float = 15.0) -> Iterator[None]:
    """Code that opens ``fifo`` (the bug) blocks forever; after ``after`` seconds this feeds such a
    reader a few bytes, so that the test fails instead of hanging. Code that never opens it is not
    affected (a writer cannot open a FIFO nobody reads: ENXIO)."""
    stop = threading.Event()

    def feed() -> None:
        stop.wait(after)
        while not stop.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                stop.wait(0.2)
                continue
            os.write(fd, b"not an image")
            os.close(fd)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def test_fifo_device_and_pixel_bomb_are_skipped_not_read(tmp_path):
    """A FIFO blocked the run forever (Ctrl-C ignored), /dev/zero was read until memory ran out and a
    small PNG declaring 20000x20000 decoded to 1.2 GB; all are now refused before being read."""
    src = tmp_path / "src"
    for cls in ("a", "b"):
        (src / cls).mkdir(parents=True)
        _noise(src / cls / "ok.jpg", 30, 40, seed=len(cls))
    os.mkfifo(src / "a" / "pipe.jpg")
    os.symlink("/dev/null", src / "a" / "device.jpg")  # /dev/zero is the real attack; same class, safe
    _png_bomb(src / "b" / "bomb.png", 20000)
    with _unblock_fifo_readers(src / "a" / "pipe.jpg"):
        report = extract(src, tmp_path / "c")
    assert _failed(tmp_path / "c") == {
        "a/pipe.jpg": "not a regular file: a named pipe (FIFO)",
        "a/device.jpg": "not a regular file: a character device",
        "b/bomb.png": f"image too large: PNG of 20000x20000 = 400000000 pixels > max_pixels={DEFAULT_MAX_PIXELS}",
    }
    assert report.rows == 2


def test_cli_passes_the_limits(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from featcache.extractor import runner
    from featcache.extractor.cli import app

    seen = []
    monkeypatch.setattr(runner, "run_extract", lambda cfg, log: seen.append(cfg) or runner.ExtractReport())
    args = [str(tmp_path), str(tmp_path / "c"), "--max-input-bytes", "5000", "--max-pixels", "7000"]
    CliRunner().invoke(app, args)  # the stubbed run writes no cache: only what reached it matters here
    assert len(seen) == 1 and (seen[0].max_input_bytes, seen[0].max_pixels) == (5000, 7000)
    assert "--max-pixels" in CliRunner().invoke(app, ["--help"]).output


def test_size_and_pixel_limits_are_arguments_and_strict_stops(tmp_path):
    src = tmp_path / "src" / "x"
    src.mkdir(parents=True)
    _noise(src / "small.png", 40, 56)  # 2240 px, ~7 KB
    _noise(src / "big.png", 200, 200)  # ~120 KB of noise: past max_input_bytes
    _noise(src / "wide.jpg", 100, 120)  # 12000 px: past max_pixels
    _noise(src / "ok.bmp", 100, 90)  # 9000 px, 27 KB: allowed
    frames = [PIL.fromarray(np.full((60, 60, 3), 40 * k, np.uint8)) for k in range(3)]
    frames[0].save(src / "anim.gif", save_all=True, append_images=frames[1:])  # 3600 px x 3 frames
    limits = {"max_input_bytes": 50_000, "max_pixels": 10_000}
    extract(src.parent, tmp_path / "c", **limits)
    big = (src / "big.png").stat().st_size
    assert _failed(tmp_path / "c") == {
        "x/big.png": f"file too large: {big} bytes > max_input_bytes=50000",
        "x/wide.jpg": "image too large: JPEG of 120x100 = 12000 pixels > max_pixels=10000",
        "x/anim.gif": "image too large: GIF of 60x60 x 3 frames = 10800 pixels > max_pixels=10000",
    }
    with pytest.raises(BadInputError, match=r"x/anim\.gif: image too large: GIF .* > max_pixels=10000"):
        extract(src.parent, tmp_path / "strict", strict=True, **limits)
    with pytest.raises(FeatcacheError, match=r"^max_pixels=0: must be a positive integer$"):
        extract(src.parent, tmp_path / "zero", max_pixels=0)


def test_declared_size_is_read_from_headers_like_pillow(tmp_path):
    """Sizes read without decoding agree with Pillow's, for every format the decoder accepts."""
    cases = {
        "a.jpg": {},
        "p.jpg": {"progressive": True, "exif": b"Exif\x00\x00" + bytes(3000)},  # frame header after EXIF
        "a.png": {},
        "a.gif": {},
        "a.bmp": {},
        "lossy.webp": {"quality": 80},
        "lossless.webp": {"lossless": True},
    }
    for k, (name, save) in enumerate(cases.items()):
        _noise(tmp_path / name, 37 + k, 91 - k, **save)
        with PIL.open(tmp_path / name) as im:
            want = (im.size[0], im.size[1], 1)
        assert declared_size((tmp_path / name).read_bytes())[1:] == want, name
    assert declared_size(b"hello, I am not a picture") is None
    assert declared_size(b"\x89PNG\r\n\x1a\n\x00") is None  # cut short: the decoder says why


@pytest.mark.parametrize(
    ("labels", "expect"),
    [
        # 99999999999 made the old code list 10^11 class names (OOM); 10^6 is enough to show the bound
        (["1000000", "1"], r"l\.csv:1: integer label 1000000 would make more than 100000 classes"),
        (["1" * 5000], r"l\.csv:1: integer label 1{20}\.\.\. \(5000 digits\) would make more than"),
        (["²", "1"], (["1", "²"], [1, 0])),  # one rule for integers: ASCII digits; "²" is a name
        (["٣", "0"], (["0", "٣"], [1, 0])),  # not class 3
        (["007", "2"], ([str(k) for k in range(8)], [7, 2])),
    ],
)
def test_csv_integer_labels_one_rule_and_bounded(tmp_path, labels, expect):
    (tmp_path / "l.csv").write_text("".join(f"{k}.jpg,{lab}\n" for k, lab in enumerate(labels)), encoding="utf-8")
    if isinstance(expect, str):
        with pytest.raises(BadInputError, match=expect) as err:
            open_source(tmp_path / "l.csv")
        assert "\n" not in str(err.value)
        return
    s = open_source(tmp_path / "l.csv")
    assert (s.classes, s.labels.tolist()) == expect


def test_junk_folders_ignored_and_ambiguous_layouts_refused(tmp_path):
    for rel in ("train/cat/1.jpg", "train/dog/2.jpg", "val/cat/3.jpg", "test/dog/4.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    for junk in ("__MACOSX/train/._1.jpg", ".ipynb_checkpoints/a.jpg", "train/cat/__MACOSX/x.jpg"):
        (tmp_path / junk).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / junk).write_bytes(b"x")
    s = open_source(tmp_path)
    assert s.kind == "folder-splits" and s.classes == ["cat", "dog"] and len(s) == 4
    assert s.splits.tolist() == [2, 0, 0, 1]  # test/dog/4, train/cat/1, train/dog/2, val/cat/3
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "run.jpg").write_bytes(b"x")
    with pytest.raises(BadInputError, match=r"ambiguous layout: test, train, val look like split folders .* logs"):
        open_source(tmp_path)
    # a class that happens to be called "train" (CIFAR-100 has one) holds images, not class folders
    other = tmp_path / "cifar100"
    for rel in ("train/1.jpg", "tractor/2.jpg"):
        (other / rel).parent.mkdir(parents=True, exist_ok=True)
        (other / rel).write_bytes(b"x")
    assert open_source(other).classes == ["tractor", "train"]


def test_same_file_under_two_csv_spellings_is_one_input(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "img", tmp_path / "link")
    (tmp_path / "l.csv").write_text("img/a.jpg,dog\nimg/../img/a.jpg,dog\nlink/a.jpg,dog\n")
    s = open_source(tmp_path / "l.csv")
    assert s.ids == ["img/a.jpg"] and s.notes == [f"{tmp_path / 'l.csv'}: 2 duplicate rows ignored"]
    for other in ("./img/a.jpg,cat", f"{tmp_path}/img/a.jpg,dog,test", "link/a.jpg,cat"):
        (tmp_path / "l.csv").write_text(f"img/a.jpg,dog\n{other}\n")
        with pytest.raises(BadInputError, match=r"l\.csv:2: .* is listed again \(first at line 1, as 'img/a\.jpg'\)"):
            open_source(tmp_path / "l.csv")


def test_csv_headers_are_found_by_name_or_shape(tmp_path):
    (tmp_path / "img").mkdir()
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / "img" / name).write_bytes(b"x")
    cases = {
        "filename,class\nimg/a.jpg,dog\nimg/b.jpg,cat\n": (["cat", "dog"], [1, 0], [-1, -1]),
        "image_path,label\nimg/a.jpg,dog\nimg/b.jpg,cat\n": (["cat", "dog"], [1, 0], [-1, -1]),
        "Subset,Category,File\ntest,dog,img/a.jpg\ntrain,cat,img/b.jpg\n": (["cat", "dog"], [1, 0], [2, 0]),
        "name,breed\nimg/a.jpg,dog\nimg/b.jpg,cat\n": (["cat", "dog"], [1, 0], [-1, -1]),  # unknown names
        "img/a.jpg,class\nimg/b.jpg,dog\n": (["class", "dog"], [0, 1], [-1, -1]),  # no header: a label 'class'
    }
    for text, (classes, labels, splits) in cases.items():
        (tmp_path / "l.csv").write_text(text)
        s = open_source(tmp_path / "l.csv")
        assert s.ids == ["img/a.jpg", "img/b.jpg"], text
        assert (s.classes, s.labels.tolist(), s.splits.tolist()) == (classes, labels, splits), text


def test_non_utf8_names_give_distinct_ids_and_utf8_classes(tmp_path):
    root = os.fsencode(tmp_path)
    for rel in (b"cls\xff/a.png", b"ok/d\\xff.png", b"ok/d\xff.png"):
        os.makedirs(os.path.dirname(root + b"/" + rel), exist_ok=True)
        _noise(root + b"/" + rel, 8, 8, format="PNG")
    s = open_source(tmp_path)
    assert s.ids == ["cls\\xff/a.png", "ok/d\\\\xff.png", "ok/d\\xff.png"]  # the literal backslash is doubled
    assert s.classes == ["cls\\xff", "ok"]
    assert len(s.listing_sha256()) == 64  # hashing the listing used to raise UnicodeEncodeError
    s.describe()
    json.dumps(s.classes, ensure_ascii=False).encode("utf-8")


@pytest.mark.parametrize("name", ["pipe.tfrecord", "pipe.tar", "pipe.csv"])
def test_a_fifo_behind_a_file_url_is_refused_not_opened(tmp_path, name):
    """``file:///.../pipe.tfrecord`` went through tf.io.gfile, which opens a FIFO with a blocking
    open: the listing hung forever. A file:// URL gets the local checks: refused, one line."""
    pytest.importorskip("tensorflow")
    fifo = tmp_path / name
    os.mkfifo(fifo)
    with _unblock_fifo_readers(fifo, after=1.0), pytest.raises(FeatcacheError, match="named pipe") as err:
        open_source(f"file://{fifo}")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["pipe.csv", "pipe.txt"])
def test_a_csv_or_list_that_is_a_fifo_is_refused_not_read(tmp_path, name):
    """A FIFO given as the source's CSV or list file was opened with a blocking open and read: the
    extractor hung for ever. Refused, one line naming it."""
    fifo = tmp_path / name
    os.mkfifo(fifo)
    with _unblock_fifo_readers(fifo, after=1.0), pytest.raises(BadInputError, match="named pipe") as err:
        open_source(fifo)
    assert "\n" not in str(err.value) and name in str(err.value)
