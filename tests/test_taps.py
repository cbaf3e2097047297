"""Layer taps and the kept top input (issue #29): written in the backbone's one pass, checked against
the Keras model called directly; carried by views, update, verify and compact; absent from older caches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import extract
from typer.testing import CliRunner

from featcache.shared.backbones import build_backbone, get_backbone, import_tensorflow, resolve_weights
from featcache.shared.cache import schema
from featcache.shared.cache.fsutil import sha256_file
from featcache.shared.cache.reader import FeatureCache
from featcache.shared.errors import FeatcacheError
from featcache.shared.inspection.compact import compact
from featcache.shared.inspection.verify import verify


def direct_layers(paths: list[Path], names: list[str]) -> list[np.ndarray]:
    """The float32 outputs of the tiny backbone's layers ``names`` for each image, by Keras directly
    (the resized image rounded to uint8, as a new cache feeds it)."""
    tf = import_tensorflow()
    import keras

    spec = get_backbone("tiny")
    model = build_backbone(spec, resolve_weights(spec, "random"))
    probe = keras.Model(model.inputs[0], [model.get_layer(n).output for n in names])
    out: list[list[np.ndarray]] = [[] for _ in names]
    for p in paths:
        img = tf.io.decode_image(Path(p).read_bytes(), channels=3, expand_animations=False)
        img = tf.image.resize(img, spec.input_size, method="bilinear", antialias=True).numpy()
        img = np.clip(np.round(img), 0, 255).astype(np.uint8).astype(np.float32)
        got = probe(spec.preprocess_fn()(img[None]), training=False)
        for k, t in enumerate(got if isinstance(got, list | tuple) else [got]):
            out[k].append(np.asarray(t)[0])
    return [np.stack(o) for o in out]


def shard_rows(cache: Path, name: str) -> np.ndarray:
    """Dataset ``name`` of every shard the manifest lists, by plain h5py."""
    m = json.loads((cache / schema.MANIFEST_NAME).read_text())
    parts = []
    for s in m["shards"]:
        with h5py.File(cache / s["file"], "r") as f:
            parts.append(f[name][()])
    return np.concatenate(parts)


@pytest.fixture(scope="module")
def tapped(sample_dir, tmp_path_factory) -> Path:
    """The sample with the default taps, 2 views and the top input kept."""
    cache = tmp_path_factory.mktemp("taps") / "c"
    extract(sample_dir, cache, views=2, keep_top_input=True)
    return cache


def test_taps_and_top_input_are_the_layers_outputs(tapped, sample_dir):
    c = FeatureCache(tapped)
    fp = c.fingerprint
    assert fp["taps"]["layers"] == ["patches"] and fp["taps"]["widths"] == [24]
    assert fp["top_input"]["layer"] == "pool" and fp["top_input"]["top"] == ["top_conv", "top_relu"]
    ids = c.read_columns((schema.ID,))[schema.ID].tolist()
    patches, pool = direct_layers([sample_dir / i for i in ids], ["patches", "pool"])
    taps = shard_rows(tapped, schema.TAPS)
    assert taps.shape == (15, 24) and taps.dtype == np.float32
    np.testing.assert_allclose(taps, patches.mean(axis=(1, 2)), rtol=1e-4, atol=1e-5)
    top = shard_rows(tapped, schema.TOP_INPUT)
    assert top.shape == (15, 7, 7, 24) and top.dtype == np.float16
    np.testing.assert_allclose(top.astype(np.float32), pool, rtol=2e-3, atol=2e-3)
    # the reader gives the same, in index order; views: the mirror's taps differ from view 0's
    np.testing.assert_array_equal(c.read_columns((schema.TAPS,))[schema.TAPS], taps)
    views = c.load_taps_views()
    assert views.shape == (15, 2, 24) and not np.allclose(views[:, 0], views[:, 1])
    np.testing.assert_array_equal(views[:, 0], taps)
    np.testing.assert_array_equal(np.concatenate([b for _, b in c.iter_maps(dataset=schema.TOP_INPUT)]), top)
    assert verify(tapped).ok


def test_a_cache_without_taps_reads_as_before_and_says_how_to_get_them(tmp_path, sample_dir):
    extract(sample_dir, tmp_path / "c", taps="none")
    c = FeatureCache(tmp_path / "c")
    assert "taps" not in c.fingerprint and "top_input" not in c.fingerprint
    with h5py.File(tmp_path / "c" / c.shards[0].file) as f:
        assert sorted(f) == sorted(schema.DATASETS)
    assert len(c.load_pooled()) == 15
    with pytest.raises(FeatcacheError, match=r"no taps dataset \(extract it with taps="):
        c.read_columns((schema.TAPS,))
    with pytest.raises(FeatcacheError, match=r"no top_input dataset \(extract it with keep_top_input=True\)"):
        next(c.iter_maps(dataset=schema.TOP_INPUT))
    # resuming it without naming taps keeps what it records (no refusal, no new dataset)
    report = extract(sample_dir, tmp_path / "c")
    assert report.shards_written == 0 and "taps" not in FeatureCache(tmp_path / "c").fingerprint
    # asking for other taps than it records is refused, naming what differs
    with pytest.raises(FeatcacheError, match=r"different taps"):
        extract(sample_dir, tmp_path / "c", taps="default")


def test_a_tap_the_backbone_does_not_have_is_one_line_and_writes_nothing(tmp_path, sample_dir):
    with pytest.raises(FeatcacheError, match=r"^taps='patches,nope': backbone 'tiny' has no layer 'nope'"):
        extract(sample_dir, tmp_path / "c", taps="patches,nope")
    assert not (tmp_path / "c").exists()
    from featcache.extractor.cli import app

    r = CliRunner().invoke(
        app, [str(sample_dir), str(tmp_path / "c"), "--backbone", "tiny", "--weights", "random", "--taps", "nope"]
    )
    assert r.exit_code == 2 and "--taps nope: backbone 'tiny' has no layer 'nope'" in r.output, r.output
    assert not (tmp_path / "c").exists()


def test_named_taps_take_their_widths_from_the_model(tmp_path, sample_dir):
    extract(sample_dir, tmp_path / "c", taps="pool,patches", shard_size=8)
    c = FeatureCache(tmp_path / "c")
    assert c.taps == [("pool", 24), ("patches", 24)]
    ids = c.read_columns((schema.ID,))[schema.ID].tolist()
    pool, patches = direct_layers([sample_dir / i for i in ids], ["pool", "patches"])
    expected = np.concatenate([pool.mean(axis=(1, 2)), patches.mean(axis=(1, 2))], axis=1)
    np.testing.assert_allclose(c.read_columns((schema.TAPS,))[schema.TAPS], expected, rtol=1e-4, atol=1e-5)


def test_update_verify_and_compact_carry_taps_and_top_input(tmp_path, sample_dir):
    """An updated, then compacted cache holds, per listing id, the taps and top input of a cache made
    from scratch; verify checks the new datasets (a NaN in one is found)."""
    shutil.copytree(sample_dir, tmp_path / "img")
    imgs = sorted(p.relative_to(sample_dir).as_posix() for p in sample_dir.rglob("*.*"))
    rows = "".join(f"img/{p},{p.split('/')[0]}\n" for p in imgs)
    (tmp_path / "a.csv").write_text("path,label\n" + "".join(rows.splitlines(True)[:10]))
    extract(tmp_path / "a.csv", tmp_path / "cache", keep_top_input=True)
    lines = rows.splitlines(True)
    (tmp_path / "a.csv").write_text("path,label\n" + "".join(lines[:3] + lines[5:]))  # 2 removed, 5 added
    extract(tmp_path / "a.csv", tmp_path / "cache", update=True)  # taps and top input: as recorded
    extract(tmp_path / "a.csv", tmp_path / "scratch", keep_top_input=True)
    assert compact(tmp_path / "cache", threshold=0.0).rewritten
    assert verify(tmp_path / "cache").ok

    def by_id(cache: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        c = FeatureCache(cache)
        col = c.read_columns((schema.ID, schema.INDEX, schema.TAPS))
        top = {
            int(i): t
            for index, block in c.iter_maps(dataset=schema.TOP_INPUT)
            for i, t in zip(index, block, strict=True)
        }
        return {
            str(i): (t, top[int(x)])
            for i, x, t in zip(col[schema.ID], col[schema.INDEX], col[schema.TAPS], strict=True)
        }

    a, b = by_id(tmp_path / "cache"), by_id(tmp_path / "scratch")
    assert sorted(a) == sorted(b) and len(a) == 13
    for k in a:
        np.testing.assert_array_equal(a[k][0], b[k][0])
        np.testing.assert_array_equal(a[k][1], b[k][1])
    # a NaN in the top input is found by verify (checksums aside: the file is edited in place)
    m = FeatureCache(tmp_path / "cache").manifest
    path = tmp_path / "cache" / m.shards[0].file
    with h5py.File(path, "r+") as f:
        f[schema.TOP_INPUT][0, 0, 0, 0] = np.nan
    from featcache.shared.inspection.verify import check_shard

    rec = m.shards[0]
    rec.bytes, rec.sha256 = path.stat().st_size, sha256_file(path)
    assert check_shard(tmp_path / "cache", m, rec, 4, np.random.default_rng(0)) == "top_input has NaN/Inf values"
