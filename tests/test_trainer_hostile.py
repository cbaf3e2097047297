"""featcache-train against hostile input: bad settings are refused before any training, a run is
written whole or not at all, predict refuses a cache that is not the one a run was trained on, and
a non-finite feature is named instead of training heads to NaN."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import synthetic_cache
from typer.testing import CliRunner

from featcache.shared.errors import FeatcacheError
from featcache.trainer import run as run_module
from featcache.trainer.cli import app
from featcache.trainer.run import run_sweep
from featcache.trainer.settings import Settings
from featcache.trainer.sweep import expand

QUICK = Settings(epochs=2, batch_size=64, seed=0)


def _no_training(monkeypatch) -> None:
    def forbidden(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr(run_module, "train", forbidden)


def _error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "0"], "--epochs 0: must be a whole number >= 1"),
        (["--patience", "0"], "--patience 0: must be a whole number >= 1"),
        (["--batch-size", "0"], "--batch-size 0: must be a whole number >= 1"),
        (["--lr", "nan"], "--lr nan: must be a number in (0, inf)"),
        (["--hidden", "1.9", "--head", "mlp"], "--hidden 1.9: must be a whole number >= 1"),
        (["--dropout", "1"], "--dropout 1: must be a number in [0, 1)"),
        (["--val-fraction", "0"], "--val-fraction 0.0: must be a number in (0, 1)"),
        (["--head", "cnn"], "--head 'cnn': unknown head kind"),
    ],
)
def test_bad_arguments_are_one_line_errors_before_training(tmp_path, tiny_cache, monkeypatch, args, message):
    _no_training(monkeypatch)
    r = CliRunner().invoke(app, [str(tiny_cache), *args, "--runs", str(tmp_path / "runs"), "--no-progress"])
    assert message in _error_line(r)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("patience = 0\n", "patience = 0: must be a whole number >= 1"),
        ("epochs = 0\n", "epochs = 0: must be a whole number >= 1"),
        ('epochs = "abc"\n', "epochs = 'abc': must be a whole number >= 1"),
        ("batch_size = 0\n", "batch_size = 0: must be a whole number >= 1"),
        ('standardize = "no"\n', "standardize = 'no': must be true or false"),
        ('head = ["mlp"]\nhidden = [1.9]\n', "hidden = 1.9: must be a whole number >= 1"),
        ('[grid]\nhead = ["linear"]\n', "grid must be a list of tables ([[grid]] in TOML"),
        ("grid = 5\n", "grid must be a list of tables"),
        ("[[grid]]\nepochs = 3\n", "unknown key 'epochs' in a grid table"),
        ("lr = []\n", "lr = []: has no values"),
    ],
)
def test_bad_sweep_files_are_one_line_errors_naming_the_file(tmp_path, tiny_cache, monkeypatch, text, message):
    _no_training(monkeypatch)
    sweep = tmp_path / "s.toml"
    sweep.write_text(text)
    r = CliRunner().invoke(app, [str(tiny_cache), "--sweep", str(sweep), "--runs", str(tmp_path / "runs")])
    assert f"{sweep}: {message}" in _error_line(r)
    assert not (tmp_path / "runs").exists()


def test_api_errors_name_arguments_not_flags(tmp_path, tiny_cache):
    from featcache.trainer import api

    with pytest.raises(FeatcacheError, match=r"^epochs=0: must be a whole number >= 1$"):
        api.train(tiny_cache, epochs=0, runs=tmp_path / "runs")
    with pytest.raises(FeatcacheError, match=r"^allow_partial='yes': must be true or false$"):
        api.train(tiny_cache, allow_partial="yes", runs=tmp_path / "runs")


def test_options_before_the_cache(tmp_path, tiny_cache):
    r = CliRunner().invoke(app, ["--epochs", "1", "--no-progress", "--runs", str(tmp_path / "runs"), str(tiny_cache)])
    assert r.exit_code == 0, r.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "results.json").read_text())["settings"]["epochs"] == 1


def test_unwritable_runs_folder_fails_before_training(tmp_path, tiny_cache, monkeypatch):
    _no_training(monkeypatch)
    (tmp_path / "file").write_text("not a folder")
    r = CliRunner().invoke(app, [str(tiny_cache), "--runs", str(tmp_path / "file" / "runs"), "--no-progress"])
    assert f"{tmp_path / 'file' / 'runs'}: cannot create a run directory there" in _error_line(r)


def test_a_full_disk_names_the_file_and_leaves_no_run(tmp_path, monkeypatch):
    import errno

    import featcache.trainer.rundir as rundir

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir.np, "savez", full)
    with pytest.raises(FeatcacheError, match=r"heads\.npz: cannot write \(No space left on device\)"):
        run_sweep(
            synthetic_cache(tmp_path / "c", n=60), expand({}), QUICK, tmp_path / "runs", ["t"], lambda m: None, False
        )
    assert list((tmp_path / "runs").iterdir()) == []  # no run, no half-written best_head.keras


def test_ctrl_c_keeps_nothing_and_says_so(tmp_path, tiny_cache, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "train", interrupted)
    r = CliRunner().invoke(app, [str(tiny_cache), "--runs", str(tmp_path / "runs"), "--no-progress"])
    assert r.exit_code == 130 and "nothing of this sweep was kept" in r.output and "shards" not in r.output
    assert list((tmp_path / "runs").iterdir()) == []


def test_dead_sweeps_staging_folders_are_removed(tmp_path, tiny_cache):
    dead = tmp_path / "runs" / ".featcache-run-999999999-x"
    dead.mkdir(parents=True)
    (dead / "best_head.keras").write_bytes(b"")
    run_dir, _ = run_sweep(tiny_cache, expand({}), QUICK, tmp_path / "runs", ["t"], lambda m: None, False)
    assert list((tmp_path / "runs").iterdir()) == [run_dir]


def test_predict_refuses_a_cache_replaced_by_another_with_the_same_fingerprint(tmp_path):
    import shutil

    cache = synthetic_cache(tmp_path / "c", n=80, classes=4)
    run_dir, results = run_sweep(cache, expand({}), QUICK, tmp_path / "runs", ["t"], lambda m: None, False)
    recorded = results["cache"]
    assert recorded["classes"] == [f"class{k}" for k in range(4)] and recorded["listing_sha256"] == "x" * 64
    assert len(recorded["shards"]) == 1 and "generation" in recorded
    ok = CliRunner().invoke(app, ["predict", str(run_dir), str(tmp_path / "ok.csv")])
    assert ok.exit_code == 0, ok.output
    shutil.rmtree(cache)
    synthetic_cache(cache, n=80, classes=3)  # same backbone, weights and fingerprint; 3 classes
    r = CliRunner().invoke(app, ["predict", str(run_dir), str(tmp_path / "p.csv")])
    line = _error_line(r)
    assert "not the cache the run" in line and "the run has 4 classes" in line and "the cache 3 classes" in line
    assert f"Train again on the cache as it is now (featcache-train {cache})" in line  # what to do, as flags
    assert "predict the images themselves with --source FOLDER" in line
    assert not (tmp_path / "p.csv").exists()


def _poison(cache: Path, shard: str, dataset: str, row: int) -> None:
    """Set one row of a dataset to NaN and fix up the manifest's size and checksum, as a bit flip the
    writer never saw would look."""
    path = cache / "shards" / shard
    with h5py.File(path, "r+") as f:
        data = f[dataset][row]
        data[...] = np.nan
        f[dataset][row] = data
    manifest = json.loads((cache / "manifest.json").read_text())
    (record,) = [s for s in manifest["shards"] if s["file"] == f"shards/{shard}"]
    record["bytes"], record["sha256"] = path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()
    (cache / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(("dataset", "heads"), [("pooled", ["linear"]), ("maps", ["map"])])
def test_a_non_finite_row_is_named_not_trained_on(tmp_path, dataset, heads):
    cache = synthetic_cache(tmp_path / "c", n=240)  # shards of 100 rows
    _poison(cache, "shard-00001.h5", dataset, 7)
    with pytest.raises(FeatcacheError, match=rf"shard-00001\.h5: row 7 \(listing index 107\) has non-finite {dataset}"):
        run_sweep(cache, expand({"head": heads, "hidden": [4]}), QUICK, tmp_path / "runs", ["t"], lambda m: None, False)
    assert list((tmp_path / "runs").iterdir()) == []


def test_old_runs_are_refused_with_a_reason(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"format": "featcache-train-results", "version": 1, "complete": True}))
    r = CliRunner().invoke(app, ["predict", str(run), str(tmp_path / "p.csv")])
    assert "format version 1 (featcache 0.1.0), which records no identity of its cache" in _error_line(r)


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"best": "no-such-head"}, "best: 'no-such-head' is not one of the run's heads"),
        ({"heads": {"a": 1}}, "heads: expected a list of heads with names"),
        ({"heads": [7]}, "heads: expected a list of heads with names"),
    ],
)
def test_results_whose_best_or_heads_lie_are_one_line(tmp_path, edit, message):
    """Found by tests/hostile.py: ``report`` on a run whose ``best`` names no head died with StopIteration."""
    run = tmp_path / "run"
    run.mkdir()
    results = {"format": "featcache-train-results", "version": 2, "complete": True, "heads": [{"name": "h"}]}
    (run / "results.json").write_text(json.dumps({**results, "best": "h", **edit}))
    for command in (["report", str(run), str(tmp_path / "r.html")], ["predict", str(run), str(tmp_path / "p.csv")]):
        r = CliRunner().invoke(app, command)
        assert r.exit_code == 2 and message in _error_line(r), (command, r.output)


def test_results_that_are_a_fifo_or_a_link_are_refused_without_blocking(tmp_path):
    """Found by tests/hostile.py: results.json planted as a FIFO blocked ``report`` forever."""
    import os
    import subprocess
    import sys

    for kind in ("fifo", "link"):
        run = tmp_path / kind
        run.mkdir()
        if kind == "fifo":
            os.mkfifo(run / "results.json")
        else:
            (tmp_path / "elsewhere.json").write_text("{}")
            (run / "results.json").symlink_to(tmp_path / "elsewhere.json")
        code = "from featcache.trainer.cli import main; main()"
        p = subprocess.run(
            [sys.executable, "-c", code, "report", str(run), str(tmp_path / "r.html")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        last = p.stderr.strip().splitlines()[-1]
        assert p.returncode == 2 and last.startswith("error:") and "results.json" in last, p.stderr


@pytest.fixture(scope="module")
def two_heads(tmp_path_factory) -> Path:
    """A finished run of two linear heads (the best from best_head.keras, the other from heads.npz)."""
    root = tmp_path_factory.mktemp("two-heads")
    cache = synthetic_cache(root / "c", n=80, classes=4)
    grid = expand({"head": ["linear"], "lr": [1e-2, 1e-3]})
    run_dir, _ = run_sweep(cache, grid, QUICK, root / "runs", ["t"], lambda m: None, False)
    return run_dir


def _planted(run: Path, dest: Path, name: str, plant) -> tuple[Path, dict[str, bytes]]:
    """A copy of ``run``'s files with ``plant(path)`` at its file ``name``; the other files' bytes, to show
    that nothing is touched (folders, such as the TensorBoard events, are left out)."""
    dest.mkdir(parents=True)
    kept = {}
    for f in run.iterdir():
        if f.name != name and f.is_file():
            kept[f.name] = f.read_bytes()
            (dest / f.name).write_bytes(kept[f.name])
    plant(dest / name)
    return dest, kept


def _cli(*args: object) -> subprocess.CompletedProcess:
    """featcache-train in a subprocess (a hang is a timeout, not a test that never ends)."""
    code = "from featcache.trainer.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=240)


def test_a_fifo_at_a_runs_heads_or_head_model_is_refused_without_blocking(tmp_path, two_heads):
    """Issue 24 #5: a FIFO at best_head.keras or heads.npz hung predict, export and train report. Variants:
    heads.npz as a FIFO for report and for predict --head (the other head), best_head.keras for export."""
    results = json.loads((two_heads / "results.json").read_text())
    other = next(h["name"] for h in results["heads"] if h["name"] != results["best"])
    cases = [
        ("heads.npz", ["report", "RUN", tmp_path / "r.html"], tmp_path / "r.html"),
        ("heads.npz", ["predict", "RUN", tmp_path / "p.csv", "--head", other], tmp_path / "p.csv"),
        ("best_head.keras", ["export", "RUN", tmp_path / "m.keras"], tmp_path / "m.keras"),
    ]
    for k, (name, args, out) in enumerate(cases):
        run, kept = _planted(two_heads, tmp_path / f"run{k}", name, os.mkfifo)
        p = _cli(*[run if a == "RUN" else a for a in args])
        lines = [line for line in p.stderr.splitlines() if line.startswith("error:")]
        assert p.returncode == 2 and len(lines) == 1, (args, p.stderr)
        assert f"{run / name}: not a regular file" in lines[0], lines
        assert not out.exists()
        assert {f.name: f.read_bytes() for f in run.iterdir() if f.is_file() and f.name != name} == kept


def _npz_declaring(path: Path, arrays: dict[str, np.ndarray], lie: str, shape: tuple[int, ...]) -> None:
    """``arrays`` saved as an .npz, but ``lie``'s .npy header declaring ``shape`` (with no data behind it)."""
    import io
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        for key, a in arrays.items():
            buf = io.BytesIO()
            if key == lie:
                np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
            else:
                np.lib.format.write_array(buf, a)
            z.writestr(f"{key}.npy", buf.getvalue())


def test_heads_npz_declaring_a_huge_array_is_one_line_before_any_allocation(tmp_path, two_heads):
    """Issue 24 #11: heads.npz declaring a huge shape was a MemoryError traceback. Variants: the other
    head's bias declared (2^31,) for predict --head, the best head's kernel 3-D for the train report."""
    results = json.loads((two_heads / "results.json").read_text())
    with np.load(two_heads / "heads.npz") as z:
        arrays = {k: z[k] for k in z.files}
    best, other = results["best"], next(h["name"] for h in results["heads"] if h["name"] != results["best"])
    cases = [
        (f"{other}/b", (1 << 31,), ["predict", "RUN", tmp_path / "p.csv", "--head", other]),
        (f"{best}/W", (1280, 4, 1 << 20), ["report", "RUN", tmp_path / "r.html"]),
    ]
    for k, (lie, shape, args) in enumerate(cases):
        plant = functools.partial(_npz_declaring, arrays=arrays, lie=lie, shape=shape)
        run, kept = _planted(two_heads, tmp_path / f"run{k}", "heads.npz", plant)
        r = CliRunner().invoke(app, [str(run if a == "RUN" else a) for a in args])
        line = _error_line(r)
        assert f"{run / 'heads.npz'}: {lie} is declared float32 {shape}" in line and "not this run's heads" in line
        assert not (tmp_path / "p.csv").exists() and not (tmp_path / "r.html").exists()
        assert {f.name: f.read_bytes() for f in run.iterdir() if f.is_file() and f.name != "heads.npz"} == kept


def test_an_unloadable_best_head_keras_is_one_line_naming_it(tmp_path, two_heads):
    """Issue 24 #11: an unloadable best_head.keras was a 90-200-line traceback. Variants: the file cut in
    half (a copy interrupted), and a zip whose config.json is not a model."""
    import zipfile

    whole = (two_heads / "best_head.keras").read_bytes()

    def not_a_model(p: Path) -> None:
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("config.json", json.dumps({"class_name": "Nothing", "config": {}}))
            z.writestr("metadata.json", json.dumps({"keras_version": "3.0.0"}))

    for k, plant in enumerate([lambda p: p.write_bytes(whole[: len(whole) // 2]), not_a_model]):
        run, kept = _planted(two_heads, tmp_path / f"run{k}", "best_head.keras", plant)
        r = CliRunner().invoke(app, ["predict", str(run), str(tmp_path / "p.csv")])
        assert f"{run / 'best_head.keras'}: not a loadable Keras model" in _error_line(r)
        assert not (tmp_path / "p.csv").exists()
        assert {f.name: f.read_bytes() for f in run.iterdir() if f.name != "best_head.keras"} == kept


def _csv_cache(tmp_path: Path, sample_dir: Path, split_of) -> Path:  # noqa: ANN001
    """A cache (tiny backbone) of the sample named by a CSV whose split column is ``split_of(k)``."""
    from conftest import extract

    imgs = sorted(p for p in sample_dir.rglob("*.*"))
    (tmp_path / "src.csv").write_text(
        "path,label,split\n" + "".join(f"{p},{p.parent.name},{split_of(k)}\n" for k, p in enumerate(imgs))
    )
    extract(tmp_path / "src.csv", tmp_path / "c")
    return tmp_path / "c"


@pytest.mark.parametrize(
    ("split_of", "message"),
    [
        (lambda k: "test", "the train split is empty (no labelled train rows): nothing to train on"),
        (None, "the val split is empty (no labelled val rows): raise val_fraction"),
    ],
    ids=["no-train", "no-val"],
)
def test_an_empty_split_is_refused_in_one_line_naming_it_before_training(
    tmp_path, sample_dir, monkeypatch, split_of, message
):
    """Every row given to test (or a single train row, nothing to carve a val row from): one line
    naming the cache and the empty split, exit 2, no training and no run kept."""
    if split_of is None:  # one train row whose id's hash keeps it in train (ids are paths under tmp_path)
        from featcache.shared.cache._split import hash_unit
        from featcache.trainer.data import CARVE_SALT

        imgs = sorted(p for p in sample_dir.rglob("*.*"))
        keep = next(k for k, p in enumerate(imgs) if hash_unit([CARVE_SALT + str(p)])[0] >= 0.1)
        split_of = lambda k: "train" if k == keep else "test"  # noqa: E731
    cache = _csv_cache(tmp_path, sample_dir, split_of)
    _no_training(monkeypatch)
    r = CliRunner().invoke(app, [str(cache), "--runs", str(tmp_path / "runs"), "--no-progress"])
    assert _error_line(r) == f"error: {cache}: {message}"
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


def test_a_cache_with_no_row_is_refused_in_one_line_before_training(tmp_path, monkeypatch):
    """A complete cache with no row, as the extraction job itself (``run_extract``, below the API's
    refusal) leaves from files with image names that do not decode: named in one line, not a
    ``ValueError: cannot reshape array of size 0`` from the finiteness check."""
    from conftest import extract

    for k, name in enumerate(["a/1.png", "a/2.jpeg", "b/3.jpg"]):
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / name).write_bytes(b"\x89PNG\r\n" if k == 0 else b"\xff\xd8\xff truncated")
    report = extract(tmp_path / "src", tmp_path / "c")
    assert report.rows == 0 and report.failed == 3
    _no_training(monkeypatch)
    r = CliRunner().invoke(app, [str(tmp_path / "c"), "--runs", str(tmp_path / "runs"), "--no-progress"])
    assert _error_line(r) == (
        f"error: {tmp_path / 'c'}: the cache has no rows (every input failed when it was extracted: "
        "featcache-inspect summary lists why): nothing to train on"
    )
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


def _edit(results: dict, where: str, value: object) -> dict:
    """``results`` with the value at dotted ``where`` (``heads.0.config``) replaced (``...`` deletes it)."""
    results = json.loads(json.dumps(results))
    *path, last = [int(k) if k.isdigit() else k for k in where.split(".")]
    node = results
    for k in path:
        node = node[k]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return results


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        ("classes", "--flag", "classes: expected a list of strings"),
        ("cache", None, "cache: expected an object"),
        ("cache.fingerprint.output_shape", [], "cache.fingerprint.output_shape: expected 1 to 3"),
        ("cache.generation", ..., "cache.generation: expected a value"),
        ("splits", {}, "splits.train: expected a whole number"),
        ("settings.allow_partial", ..., "settings.allow_partial: expected a value"),
        ("command", None, "command: expected a list of strings"),
        ("wall_seconds", "x", "wall_seconds: expected a number"),
        ("best_confusion_test", [[1]], "best_confusion_test: expected null or 4 rows of 4 counts"),
        ("heads.0.config", None, "heads[0]"),
        ("heads.0.val_loss", None, "val_loss: expected a number"),
        ("heads.1.config.kind", "cnn", "config.kind: expected one of"),
        ("heads_file.params", [], "heads_file.params: expected an object"),
    ],
)
def test_results_json_of_the_wrong_shape_is_one_line_naming_the_key(tmp_path, two_heads, where, value, message):
    """Hostile round d: results.json was checked for its format, version, heads and best only; any other
    key of the wrong type or missing (classes a string, cache null, a head's config null, a confusion
    of the wrong size...) was a TypeError/KeyError/IndexError traceback, exit 1, from report, predict
    or export. Variants: one edit per key a reader relies on, through report and predict."""
    results = json.loads((two_heads / "results.json").read_text())
    edited = _edit(results, where, value)
    run, kept = _planted(two_heads, tmp_path / "run", "results.json", lambda p: p.write_text(json.dumps(edited)))
    for args, out in (
        (["report", run, tmp_path / "r.html"], tmp_path / "r.html"),
        (["predict", run, tmp_path / "p.csv", "--split", "test"], tmp_path / "p.csv"),
    ):
        r = CliRunner().invoke(app, list(map(str, args)))
        line = _error_line(r)
        assert f"{run / 'results.json'}: " in line and message in line, (where, line)
        assert not out.exists()
    assert {f.name: f.read_bytes() for f in run.iterdir() if f.is_file() and f.name != "results.json"} == kept


def test_heads_npz_whose_arrays_do_not_fit_the_head_is_one_line(tmp_path, two_heads):
    """Hostile round d: heads.npz arrays were checked only against the widest axis any head could have,
    so a bias of 3 classes beside a kernel of 4 (or a parameter missing from results.json's index) was a
    numpy ValueError/KeyError traceback in report, and a map head's ``hidden`` edited up let an array of
    that width through to allocation. Now every array must have exactly its head's shape."""
    results = json.loads((two_heads / "results.json").read_text())
    with np.load(two_heads / "heads.npz") as z:
        arrays = {k: z[k] for k in z.files}
    best = results["best"]
    arrays[f"{best}/b"] = arrays[f"{best}/b"][:3]

    def plant(p: Path) -> None:
        np.savez(p, **arrays)

    run, kept = _planted(two_heads, tmp_path / "run", "heads.npz", plant)
    r = CliRunner().invoke(app, ["report", str(run), str(tmp_path / "r.html")])
    line = _error_line(r)
    assert f"{run / 'heads.npz'}: {best}/b is declared float32 (3,), not the float (4,)" in line, line
    assert not (tmp_path / "r.html").exists()
    edited = json.loads(json.dumps(results))
    edited["heads_file"]["params"][best] = {"W": f"{best}/W"}
    (run / "heads.npz").write_bytes((two_heads / "heads.npz").read_bytes())
    (run / "results.json").write_text(json.dumps(edited))
    line = _error_line(CliRunner().invoke(app, ["report", str(run), str(tmp_path / "r.html")]))
    assert f"{run / 'heads.npz'}: head {best!r} lists no parameter b" in line, line
