"""The extract job end to end, checked against the backbone called directly."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from cachefiles import read_shards
from conftest import extract

from featcache.shared.backbones import build_backbone, get_backbone, resolve_weights
from featcache.shared.cache import schema
from featcache.shared.cache._parts import WHOLE, part_lock
from featcache.shared.cache._reader import FeatureCache
from featcache.shared.errors import BadInputError, CacheLockedError, FingerprintMismatchError, SourceMismatchError


def direct_features(paths: list[Path], backbone: str = "tiny", weights: str = "random") -> np.ndarray:
    """Float32 maps ``(n, 7, 7, 1280)`` of each image, by calling the Keras model on it directly (the
    resized image rounded to uint8, as a new cache feeds it)."""
    from featcache.shared.backbones import import_tensorflow

    tf = import_tensorflow()
    spec = get_backbone(backbone)
    model = build_backbone(spec, resolve_weights(spec, weights))
    preprocess = spec.preprocess_fn()
    out = []
    for p in paths:
        img = tf.io.decode_image(Path(p).read_bytes(), channels=3, expand_animations=False)
        img = tf.image.resize(img, spec.input_size, method="bilinear", antialias=True).numpy()
        img = np.clip(np.round(img), 0, 255).astype(np.uint8).astype(np.float32)
        out.append(model(preprocess(img[None]), training=False).numpy()[0])
    return np.stack(out)


def test_rows_line_up_with_their_images(tiny_cache, sample_dir):
    rows = read_shards(tiny_cache)
    ids = rows["id"].tolist()
    expected_ids = sorted(p.relative_to(sample_dir).as_posix() for p in sample_dir.rglob("*.*"))
    assert ids == expected_ids
    classes = json.loads((tiny_cache / "manifest.json").read_text())["classes"]
    assert classes == ["checker", "circle", "cross"]
    assert [classes[k] for k in rows["label"]] == [i.split("/")[0] for i in ids]
    assert rows["index"].tolist() == list(range(len(ids)))

    direct = direct_features([sample_dir / i for i in ids])
    assert rows["maps"].shape == (15, 7, 7, 1280) and rows["maps"].dtype == np.float16
    # Every row is its own image's features: no shift, no swap (features differ across images).
    np.testing.assert_allclose(rows["maps"].astype(np.float32), direct, rtol=2e-3, atol=2e-3)
    dist = np.abs(rows["pooled"][:, None, :] - direct.mean(axis=(1, 2))[None]).sum(-1)
    assert (dist.argmin(axis=1) == np.arange(len(ids))).all()
    np.testing.assert_allclose(rows["pooled"], direct.mean(axis=(1, 2)), rtol=1e-5, atol=1e-5)
    assert rows["pooled"].dtype == np.float32


def test_pooled_is_mean_of_float32_maps_whatever_the_maps_storage(tmp_path, sample_dir, tiny_cache):
    extract(sample_dir, tmp_path / "f32", maps_dtype="float32")
    r32, r16 = read_shards(tmp_path / "f32"), read_shards(tiny_cache)
    assert r32["maps"].dtype == np.float32 and r16["maps"].dtype == np.float16
    np.testing.assert_allclose(r32["pooled"], r32["maps"].mean(axis=(1, 2)), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(r16["pooled"], r32["pooled"])
    np.testing.assert_allclose(r16["maps"].astype(np.float32), r32["maps"], rtol=1e-3, atol=1e-3)


def test_cache_layout_and_manifest(tiny_cache):
    m = json.loads((tiny_cache / "manifest.json").read_text())
    assert m["format"] == "featcache" and m["schema_version"] == schema.SCHEMA_VERSION
    assert m["complete"] and m["num_shards"] == 4 and m["rows"] == 15
    assert [s["rows"] for s in m["shards"]] == [4, 4, 4, 3]
    assert [s["first_index"] for s in m["shards"]] == [0, 4, 8, 12]
    fp = m["fingerprint"]
    assert fp["backbone"] == "tiny" and fp["weights_sha256"] == "random:0" and fp["random_weights"] is True
    assert fp["maps_dtype"] == "float16" and fp["input_size"] == [224, 224] and fp["tensorflow"]
    assert m["source"]["num_inputs"] == 15 and len(m["source"]["listing_sha256"]) == 64
    names = sorted(p.name for p in (tiny_cache / "shards").iterdir())
    assert names == [f"shard-{k:05d}.h5" for k in range(4)]  # no temporary file left
    from featcache.shared.cache.fsutil import sha256_file

    for s in m["shards"]:
        path = tiny_cache / s["file"]
        assert path.stat().st_size == s["bytes"] and sha256_file(path) == s["sha256"]
        with h5py.File(path) as f:
            assert json.loads(f.attrs["fingerprint"])["weights_sha256"] == "random:0"
            assert f["maps"].chunks == (1, 7, 7, 1280) and f["maps"].compression == "gzip"
            assert f["maps"].compression_opts == 1 and not f["maps"].shuffle


def test_resume_after_stop_equals_uninterrupted_run(tmp_path, sample_dir, tiny_cache):
    cache = tmp_path / "resumed"
    first = extract(sample_dir, cache, max_shards=2)
    assert first.shards_written == 2 and first.shards_left == 2
    m = json.loads((cache / "manifest.json").read_text())
    assert not m["complete"] and [s["shard"] for s in m["shards"]] == [0, 1]
    # What a kill leaves behind: a partial temp file, a finished shard the manifest never got, and
    # garbage under a final shard name: each is redone, none is trusted or kept.
    (cache / "shards" / ".shard-00002.h5.tmp-999").write_bytes(b"partial")
    (cache / "shards" / "shard-00002.h5").write_bytes(b"garbage from a killed run")
    shutil.copy(tiny_cache / "shards" / "shard-00003.h5", cache / "shards" / "shard-00003.h5")
    second = extract(sample_dir, cache)
    assert second.shards_kept == 2 and second.shards_written == 2
    a, b = read_shards(tiny_cache), read_shards(cache)
    for key in ("pooled", "label", "id", "index", "split", "maps"):
        assert a[key].tobytes() == b[key].tobytes() if key != "id" else a[key].tolist() == b[key].tolist(), key
    assert not [p for p in (cache / "shards").iterdir() if p.name.startswith(".")]


def test_rerun_of_complete_cache_does_no_work(tmp_path, sample_dir):
    cache = tmp_path / "c"
    extract(sample_dir, cache)
    before = {p.name: p.stat().st_mtime_ns for p in (cache / "shards").iterdir()}
    again = extract(sample_dir, cache)
    assert again.shards_written == 0 and again.shards_kept == 4 and again.rows == 0
    assert {p.name: p.stat().st_mtime_ns for p in (cache / "shards").iterdir()} == before


def test_overwrite_starts_over(tmp_path, sample_dir):
    cache = tmp_path / "c"
    extract(sample_dir, cache, max_shards=1)
    report = extract(sample_dir, cache, overwrite=True, seed=3)
    assert report.shards_written == 4 and report.shards_kept == 0
    assert FeatureCache(cache).fingerprint["weights_sha256"] == "random:3"


def _bad_sample(tmp_path: Path, sample_dir: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(sample_dir, src)
    good = next((src / "circle").glob("*.jpg")).read_bytes()
    (src / "circle" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (src / "circle" / "notes.jpg").write_text("this is not an image\n")
    (src / "cross" / "empty.png").write_bytes(b"")
    return src


def test_bad_inputs_are_recorded_and_the_rest_written(tmp_path, sample_dir):
    src = _bad_sample(tmp_path, sample_dir)
    report = extract(src, tmp_path / "c")
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    failed = {f["id"]: f["reason"] for f in m["failed"]}
    assert set(failed) == {"circle/truncated.jpg", "circle/notes.jpg", "cross/empty.png"}
    assert failed["cross/empty.png"] == "empty file (0 bytes)"
    assert failed["circle/notes.jpg"].startswith("cannot decode")
    assert report.rows == 15 and report.failed == 3 and m["rows"] == 15
    rows = read_shards(tmp_path / "c")
    assert not set(failed) & set(rows["id"].tolist())
    # index keeps listing positions: the gaps are exactly the failed inputs
    assert sorted(rows["index"].tolist() + [f["index"] for f in m["failed"]]) == list(range(18))


def test_strict_stops_at_first_bad_input_and_keeps_finished_shards(tmp_path, sample_dir):
    src = _bad_sample(tmp_path, sample_dir)
    with pytest.raises(BadInputError, match=r"circle/notes\.jpg: cannot decode: Unknown image .*strict=True"):
        extract(src, tmp_path / "c", strict=True)
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    # circle/notes.jpg is input 10 (after 5 checker and 5 circle images): shard 2 of 4. Shards 0 and 1
    # were finished and are kept; nothing partial is left.
    assert [s["shard"] for s in m["shards"]] == [0, 1]
    assert sorted(p.name for p in (tmp_path / "c" / "shards").iterdir()) == ["shard-00000.h5", "shard-00001.h5"]


def test_second_writer_is_refused(tmp_path, sample_dir):
    cache = tmp_path / "c"
    with part_lock(cache, WHOLE):  # as held by a running extract
        with pytest.raises(CacheLockedError, match=rf"cache is being written by pid {os.getpid()} on host .* since"):
            extract(sample_dir, cache)
    extract(sample_dir, cache)  # free again
    assert not (cache / "parts").exists()  # a complete cache has no part bookkeeping left


def test_stale_lock_from_dead_process_is_taken_over(tmp_path, sample_dir):
    cache = tmp_path / "c"
    cache.mkdir()
    (cache / ".lock").write_text(json.dumps({"pid": 999999, "host": "h", "since": "then"}))
    with pytest.warns(UserWarning, match="stale lock left by pid 999999"):
        extract(sample_dir, cache)
    assert (cache / ".lock").read_text() == ""  # released


def test_fingerprint_mismatch_is_refused(tmp_path, sample_dir):
    cache = tmp_path / "c"
    extract(sample_dir, cache, max_shards=1)
    with pytest.raises(FingerprintMismatchError, match=r"weights_sha256: 'random:0' -> 'random:1'"):
        extract(sample_dir, cache, seed=1)
    with pytest.raises(FingerprintMismatchError, match="maps_dtype"):
        extract(sample_dir, cache, maps_dtype="float32")
    assert [s.shard for s in FeatureCache(cache).shards] == [0]  # nothing lost


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda src: shutil.copy(src / "circle" / "circle_0000.jpg", src / "circle" / "added.jpg"),
            r"1 added \(e\.g\. circle/added\.jpg\)",
        ),
        (lambda src: (src / "cross" / "cross_0001.jpg").unlink(), r"1 removed \(e\.g\. cross/cross_0001\.jpg\)"),
        (
            lambda src: (src / "checker" / "checker_0002.jpg").write_bytes(b"\xff\xd8" + b"0" * 999),
            r"1 modified \(e\.g\. checker/checker_0002\.jpg\)",
        ),
        (
            lambda src: os.utime(src / "checker" / "checker_0004.png", ns=(1, 1)),
            r"1 modified \(e\.g\. checker/checker_0004\.png\)",
        ),
        (
            lambda src: shutil.move(src / "circle" / "circle_0004.png", src / "cross" / "circle_0004.png"),
            r"1 added \(e\.g\. cross/circle_0004\.png\), 1 removed \(e\.g\. circle/circle_0004\.png\)",
        ),
    ],
    ids=["added", "removed", "modified-size", "modified-time", "moved"],
)
def test_changed_inputs_are_refused_on_resume_saying_what_changed(tmp_path, sample_dir, change, message):
    src = tmp_path / "src"
    shutil.copytree(sample_dir, src)
    extract(src, tmp_path / "c", max_shards=1)
    assert (tmp_path / "c" / "listing.npz").is_file()
    change(src)
    with pytest.raises(
        SourceMismatchError,
        match=rf"the inputs changed since the cache was made from .*: {message}; "
        r"run with update=True to extract only what changed, overwrite=True to start over",
    ):
        extract(src, tmp_path / "c")
    assert [s.shard for s in FeatureCache(tmp_path / "c").shards] == [0]  # nothing lost
    assert extract(src, tmp_path / "c", overwrite=True).shards_written > 0


def test_relabelled_csv_rows_are_refused(tmp_path, sample_dir):
    imgs = sorted(sample_dir.rglob("*.jpg"))[:4]
    (tmp_path / "l.csv").write_text("".join(f"{p},{p.parent.name}\n" for p in imgs))
    extract(tmp_path / "l.csv", tmp_path / "c", max_shards=1, shard_size=2)
    (tmp_path / "l.csv").write_text(
        "".join(f"{p},{'cross' if k == 3 else p.parent.name}\n" for k, p in enumerate(imgs))
    )
    with pytest.raises(SourceMismatchError, match=r"1 relabelled \(e\.g\. .*\)"):
        extract(tmp_path / "l.csv", tmp_path / "c", shard_size=2)


def test_csv_source_with_splits_and_a_missing_file(tmp_path, sample_dir):
    imgs = sorted(p.relative_to(sample_dir).as_posix() for p in sample_dir.rglob("*.jpg"))[:5]
    lines = ["path,label,split"] + [
        f"{sample_dir / p},{p.split('/')[0]},{'test' if k == 0 else ''}" for k, p in enumerate(imgs)
    ]
    lines.append(f"{sample_dir / 'gone.jpg'},circle,train")
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    report = extract(tmp_path / "list.csv", tmp_path / "c")
    assert report.rows == 5 and report.failed == 1
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert m["failed"] == [{"index": 5, "id": str(sample_dir / "gone.jpg"), "reason": "file not found", "shard": 1}]
    assert m["source"]["kind"] == "csv" and m["split"]["source"] == "csv"
    rows = FeatureCache(tmp_path / "c").load_pooled()
    assert rows.id.tolist() == [str(sample_dir / p) for p in imgs]  # CSV order, ids as written
    assert rows.split[0] == schema.SPLIT_CODES["test"]
    assert [m["classes"][k] for k in rows.label] == [p.split("/")[0] for p in imgs]


def test_mixed_precision_is_recorded_and_close_to_float32(tmp_path, sample_dir, tiny_cache):
    extract(sample_dir, tmp_path / "mp", mixed_precision=True)
    cache = FeatureCache(tmp_path / "mp")
    assert cache.fingerprint["compute_dtype"] == "mixed_float16"
    np.testing.assert_allclose(
        cache.load_pooled().pooled, FeatureCache(tiny_cache).load_pooled().pooled, rtol=0.05, atol=0.05
    )
    with pytest.raises(FingerprintMismatchError, match="compute_dtype"):
        extract(sample_dir, tmp_path / "mp", max_shards=1)  # float32 onto a mixed-precision cache


def test_a_shard_whose_inputs_all_fail_is_committed_empty(tmp_path, sample_dir):
    src = tmp_path / "src"
    (src / "a_bad").mkdir(parents=True)
    for k in range(4):
        (src / "a_bad" / f"{k}.jpg").write_bytes(b"nope")
    shutil.copytree(sample_dir / "circle", src / "circle")
    report = extract(src, tmp_path / "c")
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert m["complete"] and m["shards"][0]["rows"] == 0 and report.failed == 4 and report.rows == 5
    with h5py.File(tmp_path / "c" / m["shards"][0]["file"]) as f:
        assert f["maps"].shape == (0, 7, 7, 1280) and f["pooled"].shape == (0, 1280) and f["id"].shape == (0,)
    cache = FeatureCache(tmp_path / "c")
    assert len(cache.load_pooled()) == 5
    assert sum(len(i) for i, _ in cache.iter_maps()) == 5
