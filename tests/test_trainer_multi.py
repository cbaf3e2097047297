"""featcache-train on several caches of the same images (one per backbone), and predict --source on new
images: heads per cache equal the same heads trained on that cache alone, mismatched caches are refused,
and predicting a folder of images equals predicting their cached rows."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import extract, synthetic_cache

from featcache.shared.errors import FeatcacheError
from featcache.trainer.run import run_sweep
from featcache.trainer.settings import Settings
from featcache.trainer.sweep import expand

SETTINGS = Settings(epochs=3, batch_size=8, seed=0)
GRID = {"head": ["linear", "mlp"], "lr": [1e-2], "hidden": [8]}


def sweep(cache, runs: Path, concat: bool = False):
    return run_sweep(cache, expand(GRID), SETTINGS, runs, ["test"], log=lambda m: None, progress=False, concat=concat)


@pytest.fixture(scope="module")
def two_caches(tiny_cache, sample_dir, tmp_path_factory) -> tuple[Path, Path]:
    """The sample through the tiny backbone twice: random weights of seed 0 (``tiny_cache``) and of seed 1."""
    other = tmp_path_factory.mktemp("multi") / "seed1"
    extract(sample_dir, other, seed=1)
    return tiny_cache, other


@pytest.fixture(scope="module")
def multi_run(two_caches, tmp_path_factory) -> tuple[Path, dict]:
    """``featcache-train A B --concat`` with :data:`GRID` and :data:`SETTINGS`: (run dir, results)."""
    from typer.testing import CliRunner

    from featcache.trainer.cli import app

    runs = tmp_path_factory.mktemp("runs")
    grid = [f"--{k}={','.join(map(str, v))}" for k, v in GRID.items()]
    settings = ["--epochs=3", "--batch-size=8", "--seed=0", f"--runs={runs}", "--no-progress", "--concat"]
    r = CliRunner().invoke(app, [*map(str, two_caches), *grid, *settings])
    assert r.exit_code == 0, r.output
    (run_dir,) = runs.iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    # what a person reads: the leaderboard with a backbone column, then the concatenation's own table
    assert (
        "backbone  head" in r.output and f"concatenated pooled vectors of {' + '.join(results['caches'])}:" in r.output
    )
    assert f"best: {results['best']}" in r.output
    return run_dir, results


def test_two_caches_give_one_run_whose_heads_equal_each_cache_trained_alone(two_caches, multi_run, tmp_path):
    run_dir, r = multi_run
    a, b = two_caches
    labels = {"tiny-" + a.name: a, "tiny-" + b.name: b}
    assert r["version"] == 3 and set(r["caches"]) == set(labels) and len(r["heads"]) == 4
    assert {c["path"] for c in r["caches"].values()} == {str(a.resolve()), str(b.resolve())}
    assert {(h["cache"], h["backbone"]) for h in r["heads"]} == {(k, "tiny") for k in labels}
    best = next(h for h in r["heads"] if h["name"] == r["best"])
    assert r["cache"]["path"] == r["caches"][best["cache"]]["path"]  # the winner's cache, for export and report
    board = (run_dir / "leaderboard.txt").read_text()
    assert "backbone  head" in board.splitlines()[0] and all(h["name"] in board for h in r["heads"])
    from featcache.trainer.history import list_runs

    for cache in (a, b):  # runs --cache finds the sweep by any of its caches
        assert [e["run"] for e in list_runs(run_dir.parent, cache)] == [str(run_dir)]

    # independent check: the heads of cache b are those of a sweep on cache b alone, scored the same and
    # standardised with the same statistics (not bit for bit: in the multi run b's rows follow a's order,
    # and the block-shuffled batch order depends on the order of the split's rows)
    single_dir, single = sweep(b, tmp_path / "runs")
    label = "tiny-" + b.name
    with np.load(run_dir / "heads.npz") as multi_z, np.load(single_dir / "heads.npz") as single_z:
        for h in single["heads"]:
            mine = next(m for m in r["heads"] if m["name"] == f"{label}:{h['name']}")
            assert (mine["val_acc"], mine["test_acc"]) == (h["val_acc"], h["test_acc"])
            assert len(mine["epochs"]) == len(h["epochs"])
        std = r["heads_file"]["standardize"][label]
        np.testing.assert_allclose(multi_z[std["mean"]], single_z["standardize/mean"], rtol=1e-5, atol=1e-6)


def test_concat_heads_read_both_caches_pooled_vectors_side_by_side_and_are_never_picked(two_caches, multi_run):
    from featcache.shared.cache._reader import FeatureCache
    from featcache.trainer.data import load_dataset
    from featcache.trainer.multi import align, concat_dataset

    _, r = multi_run
    c = r["concat"]
    assert c["caches"] == list(r["caches"]) and c["width"] == 2560 and c["skipped"] == []
    assert [h["name"] for h in c["heads"]] == [f"concat:{cfg.name}" for cfg in expand(GRID)]
    assert not {h["name"] for h in c["heads"]} & {h["name"] for h in r["heads"]}  # reported, never ranked
    # independent check: each row is [cache a's pooled vector, cache b's] of the same id, read with load_pooled
    a, b = (FeatureCache(p) for p in two_caches)
    first = load_dataset(a, val_fraction=SETTINGS.val_fraction)
    ds = concat_dataset([first, align(first, load_dataset(b, val_fraction=SETTINGS.val_fraction), b.path)])
    by_id = [
        {i: v for i, v in zip(rows.id.tolist(), rows.pooled, strict=True)}
        for rows in (a.load_pooled(), b.load_pooled())
    ]
    for name in ("train", "val", "test"):
        split = getattr(ds, name)
        want = np.array([np.concatenate([by_id[0][i], by_id[1][i]]) for i in split.id.tolist()])
        np.testing.assert_array_equal(split.pooled, want)
    with pytest.raises(FeatcacheError, match="concat=True: needs at least two caches"):
        sweep(two_caches[0], Path("/nonexistent-runs"), concat=True)


def test_caches_of_other_images_or_splits_are_refused_naming_the_cache_and_id(tmp_path):
    first = synthetic_cache(tmp_path / "first", n=40)
    fewer = synthetic_cache(tmp_path / "fewer", n=30)
    with pytest.raises(FeatcacheError, match=r"fewer: 30 labelled rows, the first cache has 40 \(first id in"):
        sweep([first, fewer], tmp_path / "runs")
    resplit = synthetic_cache(tmp_path / "resplit", n=40, splits="no-val")
    with pytest.raises(FeatcacheError, match=r"resplit: id 'c\d/\d+\.jpg' is in \w+ here, in \w+ in the first cache"):
        sweep([first, resplit], tmp_path / "runs")
    assert not list((tmp_path / "runs").iterdir())  # nothing of a refused sweep is kept


def test_predict_source_equals_predict_on_the_cached_rows_of_the_same_images(multi_run, sample_dir, tmp_path):
    from typer.testing import CliRunner

    from featcache.trainer import api
    from featcache.trainer.cli import app
    from featcache.trainer.predict_source import scratch_cache

    run_dir, r = multi_run
    head = next(h["name"] for h in r["heads"] if h["name"] != r["best"] and h["config"]["kind"] == "linear")
    new = tmp_path / "new.csv"
    args = ["predict", str(run_dir), str(new), "--source", str(sample_dir), "--head", head, "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    # the extractor's own summary reaches the user, and the run's classes give the accuracy
    assert "wrote 15 rows in 1 shards" in result.output and "on the 15 labelled ones" in result.output
    assert scratch_cache(run_dir, sample_dir).joinpath("manifest.json").is_file()
    cached = api.predict(run_dir, tmp_path / "cached.csv", split="all", head=head)
    rows = {r["id"]: r for r in csv.DictReader(open(tmp_path / "cached.csv"))}
    got = list(csv.DictReader(open(new)))
    assert len(got) == len(rows) == 15
    probs = [c for c in got[0] if c.startswith("p_")]
    for g in got:
        want = rows[g["id"]]
        assert (g["label"], g["class"], g["predicted"]) == (want["label"], want["class"], want["predicted"])
        np.testing.assert_allclose([float(g[c]) for c in probs], [float(want[c]) for c in probs], atol=2e-6)
    assert f"accuracy {cached.accuracy:.4f} on the 15 labelled ones" in result.output


@pytest.mark.parametrize("name", ["-dash src", "--overwrite"])
def test_predict_source_named_like_an_option_is_a_path(multi_run, sample_dir, tmp_path, monkeypatch, name):
    """A source folder named "-dash src" reached the extractor as options ("No such option: -d"); one
    named "--overwrite" was read as the flag and the cache went missing. "--" ends the options."""
    import typer

    from featcache.extractor.cli import app as extract_app
    from featcache.trainer import predict_source as ps

    src = tmp_path / name
    shutil.copytree(sample_dir, src)
    seen: list[list[str]] = []

    def fake(args: list[str], source: str, stream, *rest) -> None:
        seen.append(args)
        raise FeatcacheError("stopped here")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ps, "run_extractor", fake)
    with pytest.raises(FeatcacheError, match="stopped here"):
        ps.predict_source(multi_run[0], tmp_path / "o.csv", name, progress=False)
    ctx = typer.main.get_command(extract_app).make_context("featcache-extract", list(seen[0]))
    assert ctx.params["source"] == name and ctx.params["overwrite"] is False
    assert str(ctx.params["cache"]) == str(ps.scratch_cache(multi_run[0], name))


@pytest.mark.parametrize("planted", ["predict", "digest"])
def test_predict_source_refuses_a_link_planted_in_the_run(multi_run, sample_dir, tmp_path, monkeypatch, planted):
    """A link at RUN/predict (or at RUN/predict/<digest>) made the extractor write the scratch cache
    wherever it pointed, outside the run directory. Refused, one line, before the extractor runs."""
    from featcache.trainer import predict_source as ps

    run_dir = tmp_path / "run"
    shutil.copytree(multi_run[0], run_dir, ignore=shutil.ignore_patterns("predict"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    scratch = ps.scratch_cache(run_dir, sample_dir)
    if planted == "digest":
        scratch.parent.mkdir()
    link = scratch.parent if planted == "predict" else scratch
    link.symlink_to(elsewhere)
    monkeypatch.setattr(ps, "run_extractor", lambda *a: pytest.fail("the extractor ran"))
    with pytest.raises(FeatcacheError, match=rf"^{link}: a link; predict --source keeps its features inside"):
        ps.predict_source(run_dir, tmp_path / "o.csv", sample_dir, progress=False)
    assert not list(elsewhere.iterdir())


@pytest.mark.parametrize("edit", [{"maps_dtype": None}, {"augment": {"views": 2}}, {"resize": None}])
def test_predict_source_on_an_edited_fingerprint_is_one_line(multi_run, sample_dir, tmp_path, monkeypatch, edit):
    """results.json edited so that the head's cache fingerprint lacks a key (or holds the wrong type)
    gave a KeyError traceback; now one line naming results.json, before the extractor runs."""
    from featcache.trainer import predict_source as ps
    from featcache.trainer.rundir import head_cache

    run_dir = tmp_path / "run"
    shutil.copytree(multi_run[0], run_dir, ignore=shutil.ignore_patterns("predict"))
    results = json.loads((run_dir / "results.json").read_text())
    fp = head_cache(results, results["best"])["fingerprint"]
    for key, value in edit.items():
        fp.pop(key) if value is None else fp.update({key: value})
    (run_dir / "results.json").write_text(json.dumps(results))
    monkeypatch.setattr(ps, "run_extractor", lambda *a: pytest.fail("the extractor ran"))
    with pytest.raises(FeatcacheError, match=rf"^{run_dir}/results.json: the fingerprint of the cache of head"):
        ps.predict_source(run_dir, tmp_path / "o.csv", sample_dir, progress=False)


EVIL_MODULE = """
import pathlib
pathlib.Path({marker!r}).write_text("ran")
SPEC = None
def fn(x):
    return x
"""


def _edited_run(multi_run, tmp_path, **fp_edit):
    """A copy of the run whose best head's cache fingerprint has ``fp_edit`` (a run from someone else)."""
    from featcache.trainer.rundir import head_cache

    run_dir = tmp_path / "run"
    shutil.copytree(multi_run[0], run_dir, ignore=shutil.ignore_patterns("predict"))
    results = json.loads((run_dir / "results.json").read_text())
    head_cache(results, results["best"])["fingerprint"].update(fp_edit)
    (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


@pytest.mark.parametrize("module", ["evilmod", "featcache_local"])
def test_predict_source_never_imports_a_backbone_named_in_the_run(multi_run, sample_dir, tmp_path, monkeypatch, module):
    """A run directory naming ``module:SPEC`` as its backbone made predict --source import module.py
    from the current directory. Now a backbone that is not registered must be named by the user; the
    run's word is refused in one line, the module never runs, the extractor never starts."""
    from featcache.trainer import predict_source as ps

    marker = tmp_path / "marker"
    (tmp_path / f"{module}.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    monkeypatch.chdir(tmp_path)
    run_dir = _edited_run(multi_run, tmp_path, backbone=f"{module}:SPEC")
    monkeypatch.setattr(ps, "run_extractor", lambda *a: pytest.fail("the extractor ran"))
    with pytest.raises(FeatcacheError, match=rf"backbone '{module}:SPEC', which is not registered; featcache imports"):
        ps.predict_source(run_dir, tmp_path / "o.csv", sample_dir, progress=False)
    assert not marker.exists() and not (tmp_path / "o.csv").exists()


def test_export_never_imports_a_backbone_named_in_the_run(multi_run, tmp_path, monkeypatch):
    """export built the backbone from the run's recorded name: ``evilmod:SPEC`` imported evilmod.py from
    the current folder. Refused in one line, nothing imported, nothing written."""
    from featcache.trainer import api

    marker = tmp_path / "marker"
    (tmp_path / "evilmod.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # even where the module is importable
    run_dir = _edited_run(multi_run, tmp_path, backbone="evilmod:SPEC")
    with pytest.raises(FeatcacheError, match=r"backbone 'evilmod:SPEC', which is not registered; featcache imports"):
        api.export(run_dir, tmp_path / "m.keras")
    assert not marker.exists() and not (tmp_path / "m.keras").exists()


def test_the_extractor_subprocess_never_searches_the_current_folder(sample_dir, tmp_path, monkeypatch):
    """Even a module:attribute the user names is looked up as featcache-extract looks it up (installed
    or on PYTHONPATH), never in the current folder, where a downloaded run may sit beside a module."""
    import io

    from featcache.trainer import predict_source as ps

    marker = tmp_path / "marker"
    (tmp_path / "evilmod.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    monkeypatch.chdir(tmp_path)
    for user_module in (False, True):
        with pytest.raises(FeatcacheError, match=r"extracting its features failed: backbone 'evilmod:SPEC': cannot"):
            args = ["--backbone", "evilmod:SPEC", "--weights", "random", "--", str(sample_dir), str(tmp_path / "c")]
            ps.run_extractor(args, str(sample_dir), io.StringIO(), user_module)
    assert not marker.exists()


def test_predict_source_model_file_needs_its_sha256_and_a_named_preprocess_function(tmp_path):
    """A model-file backbone is used only when the file has the recorded sha256, and a module:function
    preprocessing recorded in the run is imported only when the user names the same one again."""
    from featcache.shared.cache.fsutil import sha256_file
    from featcache.trainer.predict_source import extractor_flags

    model = tmp_path / "m.keras"
    model.write_bytes(b"a model")
    fp = {
        "backbone": "m.keras[features]",
        "model_file": str(model),
        "layer": "features",
        "preprocessing": "RGB in [0, 255] -> evilmod:fn",
        "weights_source": "file",
        "weights_path": str(model),
        "weights_sha256": sha256_file(model),
        "resize": "x,pad",
        "maps_dtype": "float16",
        "compute_dtype": "float32",
        "input_size": [224, 224],
        "output_shape": [7, 7, 1280],
    }
    with pytest.raises(FeatcacheError, match=r"preprocess='evilmod:fn', a function of your own; featcache imports"):
        extractor_flags(fp, "cache/")
    with pytest.raises(FeatcacheError, match=r"^preprocess='other:fn': the run's cache was made with preprocess='evil"):
        extractor_flags(fp, "cache/", preprocess="other:fn")
    flags = extractor_flags(fp, "cache/", preprocess="evilmod:fn")
    assert flags[:8] == [
        "--backbone",
        str(model),
        "--layer",
        "features",
        "--preprocess",
        "evilmod:fn",
        "--weights",
        str(model),
    ]
    model.write_bytes(b"another model")
    with pytest.raises(FeatcacheError, match=rf"^{model}: not the model file the run's cache was made with"):
        extractor_flags(fp, "cache/", preprocess="evilmod:fn")
    fifo = tmp_path / "fifo.keras"
    os.mkfifo(fifo)
    with pytest.raises(FeatcacheError, match=rf"^{fifo}: not a regular file"):
        extractor_flags(fp, "cache/", backbone=str(fifo), preprocess="evilmod:fn")


def test_predict_source_maps_labels_by_class_name_and_needs_the_weights_file():
    from featcache.shared.cache._reader import PooledRows
    from featcache.trainer.predict_source import extractor_flags, map_labels

    rows = PooledRows(np.zeros((4, 2), np.float32), np.array([0, 1, 2, -1]), np.array(list("abcd")), np.arange(4), 0)
    mapped, unknown = map_labels(rows, ["dog", "cat", "emu"], ["cat", "dog"])
    assert mapped.label.tolist() == [1, 0, -1, -1] and unknown == {"emu": 1}
    fp = {
        "backbone": "mobilenet_v2",
        "weights_source": "file",
        "weights_path": "/gone/w.h5",
        "weights_sha256": "ab" * 32,
        "preprocessing": "mobilenet_v2.preprocess_input",
        "input_size": [224, 224],
        "output_shape": [7, 7, 1280],
    }
    fp.update(resize="jpeg-dct-prescale-to-2x,bilinear,antialias,pad", maps_dtype="float16", compute_dtype="float32")
    with pytest.raises(FeatcacheError, match=r"^/gone/w.h5: the weights file the run's cache was made with is gone"):
        extractor_flags(fp, "cache/")
    flags = extractor_flags(fp, "cache/", weights="/moved/w.h5")
    want = "--backbone mobilenet_v2 --weights /moved/w.h5 --resize pad --maps-dtype float16 --feed-dtype float32"
    # a fingerprint without feed_dtype was fed float32; without taps (an older cache), none and no top input
    assert flags == [*want.split(), "--taps", "none", "--no-keep-top-input"]
    fp.update(feed_dtype="uint8", augment={"views": 2, "crop_scale": [0.35, 1.0], "crop_ratio": [0.75, 4 / 3]})
    fp.update(taps={"layers": ["a", "b"], "widths": [5, 6]}, top_input={"layer": "b", "shape": [7, 7, 6], "top": ["c"]})
    flags = extractor_flags(fp, "cache/", weights="/moved/w.h5")
    assert flags[flags.index("--crop-ratio") + 1] == "0.75,1.3333333333333333" and flags[-5:] == [
        "--feed-dtype",
        "uint8",
        "--taps",
        "a,b",
        "--keep-top-input",
    ]


def test_rows_of_another_cache_are_put_in_the_first_caches_order_by_id():
    from featcache.trainer.data import Dataset, Split
    from featcache.trainer.multi import align

    rng = np.random.default_rng(0)

    def split(ids: list[str], perm: np.ndarray) -> Split:
        ids_ = np.array(ids, dtype=object)[perm]
        y = np.array([int(i[1]) for i in ids_], np.int32)
        pooled = np.array([[float(i[1:])] * 3 for i in ids_], np.float32)  # the vector spells the id
        return Split(np.arange(len(ids))[perm], ids_, y, pooled, views=pooled[:, None].repeat(2, 1))

    names = {"train": [f"c{k % 2}{k}" for k in range(10, 20)], "val": ["c030", "c131"], "test": ["c040", "c141"]}
    same = {n: np.arange(len(v)) for n, v in names.items()}
    first = Dataset(["a", "b"], *(split(names[n], same[n]) for n in ("train", "val", "test")), False, 0)
    shuffled = {n: rng.permutation(len(v)) for n, v in names.items()}
    other = Dataset(["a", "b"], *(split(names[n], shuffled[n]) for n in ("train", "val", "test")), False, 0)
    got = align(first, other, Path("other/"))
    for n in names:
        a, b = getattr(first, n), getattr(got, n)
        assert a.id.tolist() == b.id.tolist() and a.y.tolist() == b.y.tolist()
        np.testing.assert_array_equal(a.pooled, b.pooled)
        np.testing.assert_array_equal(a.views, b.views)
