"""Garbage in: every kind of bad or unusual image is processed correctly or skipped with a reason,
the run completes, a disk error loses nothing, and memory stays bounded on a huge image."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cachefiles import extract_command, read_shards
from conftest import extract

from featcache.shared.cache._reader import FeatureCache
from featcache.shared.errors import FeatcacheError

PIL = pytest.importorskip("PIL.Image")
REPO = Path(__file__).resolve().parents[1]


def _rgb(seed: int, h: int = 40, w: int = 56) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """A folder of odd images (class 'odd') and broken files (class 'bad'); returns it and, for each
    odd image, the RGB pixels a correct decoder must produce."""
    root = tmp_path_factory.mktemp("zoo")
    odd, bad = root / "odd", root / "bad"
    odd.mkdir()
    bad.mkdir()
    expect: dict[str, np.ndarray] = {}
    gray = _rgb(1)[..., 0]
    PIL.fromarray(gray, "L").save(odd / "gray.png")
    expect["odd/gray.png"] = np.repeat(gray[..., None], 3, axis=-1)
    pal = PIL.fromarray(_rgb(2)).convert("P", palette=PIL.Palette.ADAPTIVE, colors=16)
    pal.save(odd / "palette.png")
    expect["odd/palette.png"] = np.asarray(pal.convert("RGB"))
    rgba = np.concatenate([_rgb(3), np.full((40, 56, 1), 77, np.uint8)], axis=-1)
    PIL.fromarray(rgba, "RGBA").save(odd / "rgba.png")
    expect["odd/rgba.png"] = rgba[..., :3]  # alpha dropped, not composited
    deep = (np.random.default_rng(4).random((40, 56, 3)) * 65535).astype(np.uint16)
    import tensorflow as tf

    (odd / "deep16.png").write_bytes(tf.io.encode_png(deep).numpy())
    expect["odd/deep16.png"] = (deep >> 8).astype(np.uint8)
    frames = [PIL.fromarray(_rgb(5 + k)).convert("P", palette=PIL.Palette.ADAPTIVE) for k in range(3)]
    frames[0].save(odd / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    with PIL.open(odd / "anim.gif") as g:
        expect["odd/anim.gif"] = np.asarray(g.convert("RGB"))  # first frame
    PIL.fromarray(_rgb(9, 1, 1)).save(odd / "tiny.png")
    expect["odd/tiny.png"] = _rgb(9, 1, 1)
    name = os.fsencode(odd) + b"/caf\xe9.png"  # not UTF-8
    PIL.fromarray(_rgb(10)).save(name.decode("utf-8", "surrogateescape"), format="PNG")
    expect["odd/caf\\xe9.png"] = _rgb(10)
    PIL.fromarray(_rgb(11)).convert("CMYK").save(odd / "cmyk.jpg")
    expect["odd/cmyk.jpg"] = None  # CMYK->RGB conversions differ between decoders: only "processed"
    good = odd / "tiny.png"
    (bad / "zero.jpg").write_bytes(b"")
    PIL.fromarray(_rgb(12, 200, 200)).save(bad / "truncated.jpg", quality=90)
    (bad / "truncated.jpg").write_bytes((bad / "truncated.jpg").read_bytes()[:2000])
    (bad / "random.jpg").write_bytes(np.random.default_rng(13).bytes(5000))
    (bad / "text.png").write_text("hello, I am not a picture\n")
    os.symlink(root / "nowhere.jpg", bad / "broken.jpg")
    assert good.exists()
    return root, expect


def test_odd_images_are_decoded_right_and_bad_ones_recorded(zoo, tmp_path):
    from featcache.shared.backbones import build_backbone, get_backbone, resolve_weights

    root, expect = zoo
    report = extract(root, tmp_path / "c", shard_size=5)
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    failed = {f["id"]: f["reason"] for f in m["failed"]}
    assert set(failed) == {"bad/broken.jpg", "bad/random.jpg", "bad/text.png", "bad/truncated.jpg", "bad/zero.jpg"}
    assert failed["bad/broken.jpg"] == "broken symlink" and failed["bad/zero.jpg"] == "empty file (0 bytes)"
    for key in ("bad/random.jpg", "bad/text.png", "bad/truncated.jpg"):  # the decoder's own words follow
        assert failed[key].startswith("cannot decode: ") and len(failed[key]) > len("cannot decode: "), failed[key]
    assert report.rows == len(expect) and m["complete"]
    rows = FeatureCache(tmp_path / "c").load_pooled()
    assert sorted(rows.id.tolist()) == sorted(expect)

    import tensorflow as tf

    spec = get_backbone("tiny")
    model = build_backbone(spec, resolve_weights(spec, "random"))
    pre = spec.preprocess_fn()
    for ident, pixels in expect.items():
        got = rows.pooled[rows.id.tolist().index(ident)]
        assert np.isfinite(got).all()
        if pixels is None:
            continue
        img = tf.image.resize(tf.constant(pixels), spec.input_size, method="bilinear", antialias=True).numpy()
        img = np.clip(np.round(img), 0, 255).astype(np.uint8).astype(np.float32)  # a new cache's uint8 feed
        want = model(pre(img[None]), training=False).numpy().mean(axis=(1, 2))[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=ident)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_recorded(tmp_path, sample_dir):
    src = tmp_path / "src"
    shutil.copytree(sample_dir, src)
    locked = next((src / "circle").glob("*.jpg"))
    locked.chmod(0)
    extract(src, tmp_path / "c")
    failed = {f["id"]: f["reason"] for f in json.loads((tmp_path / "c" / "manifest.json").read_text())["failed"]}
    assert failed == {f"circle/{locked.name}": "cannot read (Permission denied)"}


def test_disk_full_keeps_finished_shards_and_resume_works(tmp_path, sample_dir, tiny_cache, monkeypatch):
    from featcache.shared.cache._writer import ShardWriter

    real_append, calls = ShardWriter.append, []

    def append(self, *args):
        calls.append(1)
        if len(calls) == 5:  # the first batch of shard 2 (shards of 4 rows are written as batches of 3 + 1)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.tmp))
        return real_append(self, *args)

    monkeypatch.setattr(ShardWriter, "append", append)
    cache = tmp_path / "c"
    with pytest.raises(
        FeatcacheError,
        match=r"\.shard-00002\.h5\.tmp-\d+: cannot write \(No space left on device\); "
        r"the 2 shards finished in this run are kept",
    ):
        extract(sample_dir, cache)
    assert [s.shard for s in FeatureCache(cache).shards] == [0, 1]
    assert not [p for p in (cache / "shards").iterdir() if p.name.startswith(".")]  # partial file removed
    monkeypatch.setattr(ShardWriter, "append", real_append)  # space is back
    report = extract(sample_dir, cache)
    assert report.shards_kept == 2 and report.shards_written == 2
    a, b = read_shards(tiny_cache), read_shards(cache)
    for key in ("pooled", "maps", "index"):
        assert a[key].tobytes() == b[key].tobytes()


def test_a_writer_thread_that_dies_dropping_its_shard_never_leaves_the_main_thread_waiting():
    """The writer fails (disk full) and then fails again dropping the partial shard (HDF5's close
    raising, as on a full disk): the main thread, feeding more batches than the queue holds, gets
    the first error within seconds, and closing the sink returns at once instead of waiting on a
    thread that has ended."""
    import threading
    import time
    from types import SimpleNamespace

    from featcache.extractor.sink import QUEUE_BATCHES, ShardSink

    class Full:
        inputs = range(0, 4)
        tmp = Path("/cache/shards/.shard-00000.h5.tmp-7")

        def append(self, *args):  # noqa: ANN002
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.tmp))

        def abort(self) -> None:
            raise RuntimeError("Can't decrement id ref count (file write failed: errno = 28)")

    cache = SimpleNamespace(dir=Path("/cache"), manifest=SimpleNamespace(shard_of=lambda i: i // 4))
    cache.start_shard = lambda shard: Full()
    source = SimpleNamespace(
        labels=np.zeros(40, np.int32), ids=[str(i) for i in range(40)], splits=np.zeros(40, np.int8)
    )
    sink = ShardSink(cache, source, range(10), lambda i: "")
    outcome: list[BaseException] = []

    def feed() -> None:
        try:
            for k in range(3 * QUEUE_BATCHES):
                sink.put(np.array([k]), np.zeros((1, 1)), np.zeros((1, 1)))
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)
        t0 = time.perf_counter()
        try:
            sink.close(finish=False)
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)
        outcome.append(time.perf_counter() - t0)

    main = threading.Thread(target=feed, daemon=True)
    main.start()
    main.join(timeout=30)
    assert not main.is_alive(), "the main thread still waits for a writer that has ended"
    put_error, close_error, close_seconds = outcome
    assert isinstance(put_error, FeatcacheError) and close_error is put_error
    assert str(put_error) == (
        "/cache/shards/.shard-00000.h5.tmp-7: cannot write (No space left on device); the 0 shards finished "
        "in this run are kept: fix the cause and run the same command to resume"
    )
    assert close_seconds < 5


@pytest.fixture
def small_tmpfs(tmp_path):
    """A tmpfs folder of 1 MiB (grown with ``grow(size)``); skipped where mounting is not permitted."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("mounting a small tmpfs needs root and permission to mount")

    def grow(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)

    yield mnt, grow
    subprocess.run(["umount", "-l", str(mnt)])


@pytest.mark.parametrize("moment", ["extract", "update"])
def test_a_really_full_disk_ends_the_run_in_seconds_with_one_line_and_keeps_finished_shards(
    tmp_path, sample_dir, small_tmpfs, moment
):
    """A real full filesystem (tmpfs), uncompressed maps so that HDF5 itself writes the rows: the
    extractor (and an update) ended with a segmentation fault at exit, or waited for ever on its
    dead writer thread. Now: exit 2 within seconds, one line naming the shard file, the shards
    finished before kept (verify passes), no partial file left; with space back the same command
    completes the cache."""
    from featcache.shared.cache._manifest import Manifest
    from featcache.shared.inspection.verify import verify

    mnt, grow = small_tmpfs
    src, cache = tmp_path / "src", mnt / "c"
    shutil.copytree(sample_dir, src)
    extra = ["--compression", "none"] + (["--update"] if moment == "update" else [])
    if moment == "update":  # a cache of 12 images first, then 3 added; uncompressed shards of 4 are ~500 KB
        later = sorted(src.rglob("*_0004.*"))
        for p in later:
            p.rename(tmp_path / p.name)
        grow("2m")
        subprocess.run(extract_command(src, cache, "--compression", "none", shard_size=4), check=True, cwd=REPO)
        for p in later:
            (tmp_path / p.name).rename(p)
        grow(f"{(sum(p.stat().st_size for p in mnt.rglob('*') if p.is_file()) >> 10) + 300}k")
    done_before = len(Manifest.load(cache).shards) if moment == "update" else 0
    cmd = extract_command(src, cache, *extra, shard_size=4)
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode == 2, p.stderr[-3000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert re.fullmatch(
        rf"error: {re.escape(str(cache))}/shards/\.shard-\d{{5}}\.h5\.tmp-\d+: "
        r"cannot write \(No space left on device\); "
        r"the \d+ shards finished in this run are kept: fix the cause and run the same command to resume",
        errors[0],
    ), errors[0]
    assert len(Manifest.load(cache).shards) >= done_before
    assert verify(cache).ok
    assert not [q for q in (cache / "shards").iterdir() if q.name.startswith(".")]
    grow("8m")  # space is back
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    c = FeatureCache(cache)
    assert c.manifest.complete and sorted(c.load_pooled().id.tolist()) == sorted(
        q.relative_to(src).as_posix() for q in src.rglob("*.*")
    )
    assert verify(cache).ok


def _peak_rss_mb(args: list[str]) -> float:
    code = (
        "import resource, subprocess, sys\n"
        "subprocess.run(sys.argv[1:], check=True, capture_output=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return float(out.stdout)


def test_memory_stays_bounded_on_a_huge_jpeg(tmp_path):
    small = _rgb(20, 300, 300)
    for name, pixels in (("huge", np.asarray(PIL.fromarray(small).resize((8000, 8000)))), ("small", small)):
        (tmp_path / name / "x").mkdir(parents=True)
        PIL.fromarray(pixels).save(tmp_path / name / "x" / "img.jpg", quality=85)
    cmd = lambda d: extract_command(tmp_path / d, tmp_path / f"c-{d}", shard_size=1024, batch_size=32)  # noqa: E731
    base, huge = _peak_rss_mb(cmd("small")), _peak_rss_mb(cmd("huge"))
    assert huge < base + 100, (base, huge)  # a plain decode would add ~200 MB (uint8) to ~1 GB (floats)
    rows = read_shards(tmp_path / "c-huge")
    assert rows["pooled"].shape == (1, 1280) and np.isfinite(rows["pooled"]).all()


def test_a_source_whose_every_input_fails_is_an_error_not_an_empty_cache(tmp_path):
    """A CSV naming only files with image names that do not decode (a text file, a truncated JPEG,
    an empty PNG): exit 2 with one line naming the CSV, the count and the first reasons; the cache
    keeps its manifest with every failure; a second run says the same (nothing to do is no success)."""
    from typer.testing import CliRunner

    from featcache.extractor.cli import app
    from featcache.shared.cache._manifest import Manifest

    names = ["x/notes.jpg", "x/cut.jpeg", "y/empty.png", "y/zero.jpg"]
    contents = [b"meeting notes", b"\xff\xd8\xff\xe0\x00\x10JFIF", b"", b"\x00" * 64]
    for name, data in zip(names, contents, strict=True):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    csv = tmp_path / "list.csv"
    csv.write_text("path,label\n" + "".join(f"{n},{n[0]}\n" for n in names))
    cmd = [str(csv), str(tmp_path / "c"), "--backbone", "tiny", "--weights", "random", "--no-progress"]
    for attempt in range(2):
        r = CliRunner().invoke(app, cmd)
        errors = [line for line in r.output.splitlines() if line.startswith("error:")]
        assert r.exit_code == 2 and len(errors) == 1, r.output
        assert errors[0].startswith(
            f"error: {csv}: every input failed (4 inputs), so the cache has no row: x/notes.jpg: "
        )
        assert f"; and 1 more (all listed in {tmp_path / 'c' / 'manifest.json'})" in errors[0]
        assert "Traceback" not in r.output
        m = Manifest.load(tmp_path / "c")
        assert m.complete and m.rows == 0 and sorted(f.id for f in m.failed) == sorted(names), attempt


def test_a_full_disk_when_taking_a_lock_names_the_lock_file_and_holds_nothing(tmp_path, monkeypatch):
    """The disk fills up just as a run records itself in the part lock (the moment varies with the
    free space; ``os.pwrite``'s error names no file, so the line said only "No space left on
    device"): the error names the lock file, and the lock is not held afterwards."""
    from featcache.shared.cache._lock import FileLock

    path = tmp_path / "c" / "parts" / "part-0-of-1.lock"

    def full(fd, data, offset):  # noqa: ANN001, ANN202
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(OSError) as caught:
        FileLock(path, "part").acquire()
    monkeypatch.undo()
    assert (caught.value.filename, caught.value.strerror) == (str(path), "No space left on device")
    other = FileLock(path, "part")
    other.acquire(wait=0)  # free: nobody holds it
    other.release()
