"""Vectors from anywhere (#27): ``featcache.import_embeddings`` and ``featcache-inspect import`` make a
maps-less cache, checked against plain h5py, json and numpy; every inspect command reads it, the
trainer's pooled heads train on it and a map head is refused in one line; bad input is refused with one
line naming the argument and nothing written; Parquet export and import round-trip (pyarrow)."""

from __future__ import annotations

import hashlib
import json

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

import featcache
from featcache.shared.errors import FeatcacheError
from featcache.shared.inspection.cli import app

N, C = 900, 48
CLASSES = ["cat", "dog", "eel"]


def vectors(n: int = N, c: int = C, seed: int = 0):
    """Clustered non-negative vectors, labels following the clusters, one planted near-duplicate pair
    across train and test (rows 10 and 700) and splits."""
    rng = np.random.default_rng(seed)
    centres = rng.gamma(0.5, 1.0, (3, c))
    label = rng.integers(0, 3, n)
    x = (centres[label] + rng.gamma(0.5, 0.3, (n, c))).astype(np.float32)
    split = np.where(rng.random(n) < 0.8, "train", "test").astype(object)
    if n > 700:
        x[700] = x[10] * (1 + 1e-4 * rng.standard_normal(c)).astype(np.float32)
        split[10], split[700] = "train", "test"
    ids = [f"photos/{k:04d}.jpg" for k in range(n)]
    return x, ids, label, split.tolist()


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    x, ids, label, split = vectors()
    cache = tmp_path_factory.mktemp("imported") / "cache"
    m = featcache.import_embeddings(
        cache, x, ids=ids, labels=label, splits=split, classes=CLASSES, name="clip-toy", shard_size=256
    )
    return cache, x, ids, label, split, m


def test_the_cache_on_disk_holds_the_vectors_and_no_maps(imported):
    cache, x, ids, label, split, m = imported
    manifest = json.loads((cache / "manifest.json").read_text())
    fp = manifest["fingerprint"]
    expected_sha = hashlib.sha256(f"{N}x{C}\n".encode() + x.astype("<f4").tobytes()).hexdigest()
    assert fp["backbone"] == "external:clip-toy" and fp["maps"] is False
    assert fp["weights_sha256"] == expected_sha and fp["output_shape"] == [1, 1, C]
    assert manifest["classes"] == CLASSES and manifest["complete"] and manifest["rows"] == N
    assert len(manifest["shards"]) == 4  # 900 rows in shards of 256
    codes = {"train": 0, "val": 1, "test": 2}
    pooled, got_ids, got_label, got_split, index = [], [], [], [], []
    for rec in manifest["shards"]:
        with h5py.File(cache / rec["file"], "r") as f:
            assert "maps" not in f
            assert sorted(f) == ["id", "index", "label", "pooled", "split"]
            assert hashlib.sha256((cache / rec["file"]).read_bytes()).hexdigest() == rec["sha256"]
            pooled.append(f["pooled"][()])
            got_ids += f["id"].asstr()[()].tolist()
            got_label.append(f["label"][()])
            got_split.append(f["split"][()])
            index.append(f["index"][()])
    np.testing.assert_array_equal(np.concatenate(pooled), x)
    assert got_ids == ids
    np.testing.assert_array_equal(np.concatenate(got_label), label)
    np.testing.assert_array_equal(np.concatenate(got_split), [codes[s] for s in split])
    np.testing.assert_array_equal(np.concatenate(index), np.arange(N))
    rows = featcache.open_cache(cache).load_pooled()  # and the reader agrees
    np.testing.assert_array_equal(rows.pooled, x)
    assert m.rows == N


def test_the_same_import_again_writes_nothing_and_other_vectors_are_refused(imported, tmp_path):
    cache, x, ids, label, split, _ = imported
    before = {p.name: p.stat().st_mtime_ns for p in (cache / "shards").iterdir()}
    featcache.import_embeddings(
        cache, x, ids=ids, labels=label, splits=split, classes=CLASSES, name="clip-toy", shard_size=256
    )
    assert {p.name: p.stat().st_mtime_ns for p in (cache / "shards").iterdir()} == before
    with pytest.raises(FeatcacheError, match="overwrite=True"):
        featcache.import_embeddings(
            cache, x + 1, ids=ids, labels=label, splits=split, classes=CLASSES, name="clip-toy", shard_size=256
        )


def _refused(tmp_path, match, **changes):
    x, ids, label, split = vectors(60)
    given = {"ids": ids, "labels": label, "splits": split, "classes": CLASSES, **changes}
    pooled = given.pop("pooled", x)
    target = tmp_path / "never"
    with pytest.raises(FeatcacheError, match=match) as err:
        featcache.import_embeddings(target, pooled, **given)
    assert "\n" not in str(err.value) and "--" not in str(err.value)
    assert not target.exists()  # nothing written


def test_bad_input_is_refused_in_one_line_naming_the_argument(tmp_path):
    x, ids, label, split = vectors(60)
    _refused(tmp_path, r"^ids=.*expected 60, one per row", ids=ids[:-1])
    _refused(tmp_path, r"^labels=.*expected 60", labels=label[:-2])
    _refused(tmp_path, r"^splits=.*expected 60", splits=split[:5])
    nan = x.copy()
    nan[7, 3] = np.nan
    _refused(tmp_path, r"^pooled=.*row 7 holds NaN or Inf", pooled=nan)
    inf = x.copy()
    inf[9, 0] = np.inf
    _refused(tmp_path, r"^pooled=.*row 9 holds NaN or Inf", pooled=inf)
    _refused(tmp_path, r"^pooled=.*\(N, C\) array of floats", pooled=x[0])
    _refused(tmp_path, r"^pooled=.*\(N, C\) array of floats", pooled=x.astype(np.int64))
    dup = list(ids)
    dup[30] = dup[4]
    _refused(tmp_path, r"^ids=.*duplicate id \(also ids\[4\]\)", ids=dup)
    _refused(tmp_path, r"^ids=.*non-empty string", ids=[*ids[:-1], ""])
    bad_split = list(split)
    bad_split[3] = "validation"
    _refused(tmp_path, r"^splits=.*'validation'.*unknown split name", splits=bad_split)
    high = label.copy()
    high[0] = 3
    _refused(tmp_path, r"^labels=.*out of range of classes \(3 names", labels=high)
    _refused(tmp_path, r"^labels=.*from 0, or -1", labels=np.full(60, -2))
    _refused(tmp_path, r"^labels=.*expected integers", labels=label.astype(float))
    _refused(tmp_path, r"^classes=.*unique", classes=["a", "a", "b"])
    _refused(tmp_path, r"^name=", name="")
    with pytest.raises(FeatcacheError, match=r"import_embeddings: unknown argument label="):
        featcache.import_embeddings(tmp_path / "never", x, ids=ids, label=label)


def test_labels_default_to_unknown_and_splits_to_the_hash(tmp_path):
    x, ids, _, _ = vectors(50)
    featcache.import_embeddings(tmp_path / "c", x, ids=ids, progress=False)
    c = featcache.open_cache(tmp_path / "c")
    rows = c.load_pooled()
    assert c.classes == [] and (rows.label == -1).all()
    assert set(np.unique(rows.split)) <= {0, 1, 2}  # assigned by hash of the id, as for any source without splits


def _cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def test_every_inspect_command_reads_it(imported, tmp_path):
    cache, x, ids, label, split, _ = imported
    code, out = _cli("summary", cache)
    assert code == 0 and f"{N} rows" in out and "no maps" in out and "clip-toy" in out
    code, out = _cli("verify", cache, "--no-progress")
    assert code == 0 and f"OK: 4 shards, {N} rows checked" in out
    code, out = _cli("ls", cache)
    assert code == 0 and out.count(" ok ") == 4
    code, out = _cli("show", cache, ids[5])
    assert code == 0 and "maps: none" in out
    code, out = _cli("show", cache, ids[5], "--png", tmp_path / "x.png")
    assert code == 2 and "has no maps" in out and "--png" in out and not (tmp_path / "x.png").exists()
    # neighbours of a row: numpy's brute force
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = u @ u[123]
    sims[123] = -np.inf
    code, out = _cli("neighbours", cache, ids[123], "-k", "3")
    listed = [line.split()[-1] for line in out.splitlines()[2:5]]
    assert code == 0 and listed == [ids[i] for i in np.argsort(-sims)[:3]]
    code, out = _cli("neighbours", cache, "--duplicates")
    assert code == 0 and out.startswith("1 pairs") and "LEAK" in out and ids[10] in out and ids[700] in out
    code, out = _cli("outliers", cache, "--json", "--top", "2", "--no-progress")
    assert code == 0 and len(json.loads(out)) == 2
    code, out = _cli("suspects", cache, "--json", "--top", "3")
    assert code == 0 and {d["label"] for d in json.loads(out)} <= set(CLASSES)
    code, out = _cli("report", cache, tmp_path / "r.html", "--embedding", "pca")
    assert code == 0 and (tmp_path / "r.html").stat().st_size > 0 and "1 near-duplicate pairs (1 leaks)" in out
    code, out = _cli("export", cache, tmp_path / "e", "--maps", "0:10")
    assert code == 2 and "no maps" in out and "--maps" in out
    code, out = _cli("export", cache, tmp_path / "e")
    assert code == 0
    with np.load(tmp_path / "e.npz") as z:
        np.testing.assert_array_equal(z["pooled"], x)
        assert z["id"].tolist() == ids
    # the export's npz is an import source: the same rows back
    code, out = _cli("import", tmp_path / "e.npz", tmp_path / "again", "--no-progress")
    assert code == 0, out
    back = featcache.open_cache(tmp_path / "again").load_pooled()
    np.testing.assert_array_equal(back.pooled, x)
    np.testing.assert_array_equal(back.label, label)
    assert back.id.tolist() == ids


def test_the_import_command_refuses_bad_files_in_one_line(tmp_path):
    x, ids, label, split = vectors(40)
    np.savez(tmp_path / "nan.npz", pooled=np.where(np.arange(C) == 0, np.nan, x), id=np.array(ids))
    code, out = _cli("import", tmp_path / "nan.npz", tmp_path / "c", "--no-progress")
    assert code == 2 and "pooled=" in out and "NaN" in out and len(out.strip().splitlines()) == 1
    np.savez(tmp_path / "noid.npz", pooled=x)
    code, out = _cli("import", tmp_path / "noid.npz", tmp_path / "c")
    assert code == 2 and "needs arrays 'pooled' (N, C) and 'id'" in out
    np.savez(tmp_path / "split.npz", pooled=x, id=np.array(ids), split=np.array(["train"] * 39 + ["dev"]))
    code, out = _cli("import", tmp_path / "split.npz", tmp_path / "c")
    assert code == 2 and "splits=" in out and "'dev'" in out
    (tmp_path / "x.txt").write_text("no")
    code, out = _cli("import", tmp_path / "x.txt", tmp_path / "c")
    assert code == 2 and "expected a .npz or .parquet file" in out
    assert not (tmp_path / "c").exists()


def test_parquet_export_reads_back_and_imports(imported, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    from featcache.shared.cache import _columnar as columnar

    cache, x, ids, label, split, _ = imported
    code, out = _cli("export", cache, tmp_path / "rows", "--format", "parquet")
    assert code == 0, out
    f = pq.ParquetFile(tmp_path / "rows.parquet")
    table = f.read()
    assert table.column_names == ["id", "index", "label", "class", "split", "pooled"]
    assert str(table.schema.field("pooled").type) == f"fixed_size_list<element: float>[{C}]"
    np.testing.assert_array_equal(np.stack(table.column("pooled").to_numpy(zero_copy_only=False)), x)
    assert table.column("id").to_pylist() == ids
    assert table.column("label").to_pylist() == label.tolist()
    assert table.column("class").to_pylist() == [CLASSES[k] for k in label]
    assert table.column("split").to_pylist() == split
    # row groups: bounded, every group at most ROW_GROUP_ROWS (smaller here through the writer's argument)
    columnar.write_parquet(featcache.open_cache(cache), tmp_path / "small.parquet", row_group_rows=100)
    groups = pq.ParquetFile(tmp_path / "small.parquet")
    assert groups.num_row_groups == 9 and groups.metadata.row_group(0).num_rows == 100
    np.testing.assert_array_equal(np.stack(groups.read().column("pooled").to_numpy(zero_copy_only=False)), x)
    code, out = _cli("import", tmp_path / "rows.parquet", tmp_path / "again", "--name", "pq", "--no-progress")
    assert code == 0, out
    c = featcache.open_cache(tmp_path / "again")
    back = c.load_pooled()
    assert c.classes == CLASSES and back.id.tolist() == ids
    np.testing.assert_array_equal(back.pooled, x)
    np.testing.assert_array_equal(back.label, label)


def test_the_trainer_trains_pooled_heads_and_refuses_map_heads_in_one_line(imported, tmp_path):
    cache = imported[0]
    with pytest.raises(FeatcacheError, match=r"has no maps .* map heads read maps; train pooled heads") as err:
        featcache.train(cache, head=["logreg", "map"], runs=tmp_path / "runs", progress=False)
    assert "\n" not in str(err.value)
    result = featcache.train(cache, head=["logreg", "linear"], epochs=3, runs=tmp_path / "runs", progress=False)
    assert result.test_acc > 0.9  # three well-separated clusters
    assert any("knn" in str(b.get("name", b)) for b in result.baselines)


def test_byte_identical_files_are_listed_first_from_the_recorded_hashes(sample_dir, tmp_path):
    """An image copied under another name (and into another split's folder-less source: a leak by hash)
    is one group found from the sha256s that extract(checksum=True) records; without them, a note."""
    import hashlib
    import shutil

    from conftest import extract

    from featcache.shared.inspection import similarity

    source = tmp_path / "src"
    shutil.copytree(sample_dir, source)
    first = sorted(p for p in source.rglob("*") if p.is_file())[0]
    copy = first.with_name("copy-of-" + first.name)
    shutil.copyfile(first, copy)
    extract(source, tmp_path / "with", checksum=True)
    extract(source, tmp_path / "without")
    c = featcache.open_cache(tmp_path / "with")
    rows = c.load_pooled()
    hashes, why = similarity.recorded_content_hashes(c, rows.index)
    expected = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (source / i for i in rows.id)]
    assert why is None and hashes.tolist() == expected
    groups = similarity.content_groups(hashes)
    assert [sorted(rows.id[g].tolist()) for g in groups] == [
        sorted([str(first.relative_to(source)), str(copy.relative_to(source))])
    ]
    code, out = _cli("neighbours", tmp_path / "with", "--duplicates")
    assert code == 0 and out.startswith("1 groups of byte-identical files") and copy.name in out
    code, out = _cli("neighbours", tmp_path / "without", "--duplicates")
    assert code == 0 and out.startswith("note: no content hashes recorded (extract with --checksum")


def test_content_groups_against_a_dictionary():
    rng = np.random.default_rng(3)
    hashes = np.array([f"h{k}" for k in rng.integers(0, 40, 200)] + [""] * 5)
    from featcache.shared.inspection.similarity import content_groups

    by: dict[str, list[int]] = {}
    for i, h in enumerate(hashes.tolist()):
        if h:
            by.setdefault(h, []).append(i)
    expected = sorted((v for v in by.values() if len(v) > 1), key=lambda g: g[0])
    assert [g.tolist() for g in content_groups(hashes)] == expected
