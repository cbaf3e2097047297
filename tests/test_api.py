"""The Python API (``import featcache``), argument-named errors and their flag spelling, the tf.data
bridge (``cache.dataset``), and the README's own-Keras-model example."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import typer
from conftest import synthetic_cache
from typer.testing import CliRunner

import featcache
from featcache.shared.cache import schema
from featcache.shared.cache._stream import BlockStream
from featcache.shared.cli import flag_spelling
from featcache.shared.errors import FeatcacheError, FingerprintMismatchError

REPO = Path(__file__).resolve().parents[1]
TINY = {"backbone": "tiny", "weights": "random", "shard_size": 4, "batch_size": 3, "progress": False}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> featcache.FeatureCache:
    """240 rows, 4 separable classes, given splits 60/20/20, maps stored float32 uncompressed."""
    return featcache.open_cache(synthetic_cache(tmp_path_factory.mktemp("api") / "synth"))


def test_import_featcache_loads_no_tensorflow_and_offers_the_three_calls():
    code = (
        "import sys, featcache\n"
        "assert callable(featcache.open_cache) and callable(featcache.extract) and callable(featcache.train)\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow imported'\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


# --- errors: arguments in the library, flags on the command line -------------------------------


def test_flag_spelling_rewrites_only_the_commands_own_options():
    from featcache.extractor.cli import app

    params = typer.main.get_command(app).params
    cases = {
        "x: use overwrite=True to start over": "x: use --overwrite to start over",
        "progress=False and strict=True.": "--no-progress and --strict.",
        "part='1/3' runs one worker": "--part 1/3 runs one worker",
        "runner='a b': choose": "--runner 'a b': choose",
        "pass weights=PATH (or set X=PATH)": "pass --weights PATH (or set X=PATH)",
        "gpus='4': 3 GPUs visible; use workers=N.": "--gpus 4: 3 GPUs visible; use --workers N.",
        "train with allow_partial=True": "train with allow_partial=True",  # not an extractor option
        "max_shards=3, shard_size=4": "--max-shards 3, --shard-size 4",
    }
    for library, cli in cases.items():
        assert flag_spelling(library, params) == cli
    assert flag_spelling("use overwrite=True", []) == "use overwrite=True"


def test_library_errors_name_arguments_and_the_cli_names_flags(tmp_path, sample_dir):
    from featcache.extractor.cli import app

    with pytest.raises(FeatcacheError, match=r"^runner='nope': choose one of local, ray$"):
        featcache.extract(sample_dir, tmp_path / "c", runner="nope")
    r = CliRunner().invoke(app, [str(sample_dir), str(tmp_path / "c"), "--runner", "nope"])
    assert r.exit_code == 2 and "error: --runner nope: choose one of local, ray" in r.output, r.output

    # a cache made with other weights: the library says overwrite=True, the command --overwrite
    featcache.extract(sample_dir, tmp_path / "c", **{**TINY, "max_shards": 1}, log=lambda m: None)
    with pytest.raises(FingerprintMismatchError, match=r"\(use overwrite=True to start over"):
        featcache.extract(sample_dir, tmp_path / "c", **{**TINY, "seed": 7}, log=lambda m: None)
    args = [str(sample_dir), str(tmp_path / "c"), "--backbone", "tiny", "--weights", "random", "--seed", "7"]
    r = CliRunner().invoke(app, [*args, "--shard-size", "4", "--no-progress"])
    assert r.exit_code == 2 and "(use --overwrite to start over" in r.output, r.output
    assert "overwrite=True" not in r.output


def test_library_code_names_no_flags_in_its_errors():
    """No ``raise ...("... --flag ...")`` left in shared/ and extractor/ outside the CLI modules."""
    offenders = []
    for path in [*(REPO / "shared").rglob("*.py"), *(REPO / "extractor").rglob("*.py")]:
        if path.name == "cli.py":
            continue
        for m in re.finditer(r"raise \w+\((.*?)\)(?: from \w+)?\n", path.read_text(), re.S):
            if re.search(r"--[a-z]", m[1]):
                offenders.append(f"{path.relative_to(REPO)}: {m[1][:80]}")
    assert not offenders, offenders


# --- extract ----------------------------------------------------------------------------------


def test_extract_returns_what_was_done_and_resumes(tmp_path, sample_dir):
    src = tmp_path / "src"
    shutil.copytree(sample_dir, src)
    (src / "circle" / "broken.jpg").write_bytes(b"not an image")
    cache = tmp_path / "c"
    first = featcache.extract(src, cache, **TINY, log=lambda m: None)
    rows_on_disk = 0
    for p in sorted((cache / "shards").glob("*.h5")):
        with h5py.File(p, "r") as f:
            rows_on_disk += f["pooled"].shape[0]
    assert first.rows == rows_on_disk == 15 and first.cache_rows == 15
    assert first.shards_written == 4 and first.shards_kept == 0 and first.complete and first.ok
    assert [f.id for f in first.failed] == ["circle/broken.jpg"] and first.seconds > 0
    again = featcache.extract(src, cache, **TINY, log=lambda m: None)
    assert (again.rows, again.shards_written, again.shards_kept, again.cache_rows) == (0, 0, 4, 15)
    ids = featcache.open_cache(cache).load_pooled().id.tolist()
    assert len(ids) == 15 and "circle/broken.jpg" not in ids


# --- cache.dataset ----------------------------------------------------------------------------


def _collect(ds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs, ys, idx = zip(*((x.numpy(), y.numpy(), i.numpy()) for x, y, i in ds), strict=True)
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(idx)


def test_pooled_dataset_yields_exactly_the_splits_rows_and_labels(synth):
    rows = synth.load_pooled()
    for split in schema.SPLITS:
        ds = synth.dataset(split, batch_size=7, shuffle=True, seed=1, with_index=True)
        x, y, idx = _collect(ds)
        want = np.flatnonzero((rows.split == schema.SPLIT_CODES[split]) & (rows.label >= 0))
        assert sorted(idx.tolist()) == rows.index[want].tolist()  # each row once
        pos = np.searchsorted(rows.index, idx)
        np.testing.assert_array_equal(x, rows.pooled[pos])
        np.testing.assert_array_equal(y, rows.label[pos])
        assert x.dtype == np.float32 and x.shape[1:] == (1280,) and y.dtype == np.int32
        assert int(ds.cardinality()) == -(-len(want) // 7)


def test_maps_dataset_matches_iter_maps_on_gzip_float16_maps(tiny_cache):
    cache = featcache.open_cache(tiny_cache)
    assert cache.manifest.storage["compression"] == "gzip-1"
    rows = cache.load_pooled()
    train = rows.index[rows.split == schema.SPLIT_CODES["train"]]
    want = {
        int(i): m
        for index, maps in cache.iter_maps(indices=train, dtype="float32")
        for i, m in zip(index, maps, strict=True)
    }
    x, y, idx = _collect(cache.dataset("train", "maps", batch_size=4, shuffle=True, seed=2, with_index=True))
    assert sorted(idx.tolist()) == sorted(want) and x.dtype == np.float32 and x.shape[1:] == (7, 7, 1280)
    for k, i in enumerate(idx):
        np.testing.assert_array_equal(x[k], want[int(i)])
        assert y[k] == rows.label[rows.index == i][0]


def test_shuffle_is_seeded_reproducible_and_new_every_epoch(synth):
    def order(seed: int, epochs: int = 2) -> list[list[int]]:
        ds = synth.dataset("train", batch_size=16, seed=seed, with_index=True)
        return [_collect(ds)[2].tolist() for _ in range(epochs)]

    a, b = order(3), order(3)
    assert a == b  # the same seed, the same batches, epoch after epoch
    assert a[0] != a[1] and sorted(a[0]) == sorted(a[1])  # a new order each epoch, the same rows
    assert order(4)[0] != a[0]
    unshuffled = _collect(synth.dataset("val", with_index=True))[2]
    assert unshuffled.tolist() == sorted(unshuffled.tolist())  # val/test: in index order by default


def test_memory_is_bounded_by_the_shuffle_buffer(synth):
    s = BlockStream(synth, "train", "maps", batch_size=16, shuffle=True, block_rows=8, shuffle_buffer=32)
    seen = [i for _, _, index in s.epoch(0) for i in index]
    assert len(seen) == s.rows == 144
    assert s.peak_rows <= 32 + 8 and s.peak_rows < s.rows / 3
    with pytest.raises(FeatcacheError, match=r"features='nope': choose one of pooled, maps"):
        BlockStream(synth, "train", "nope")
    with pytest.raises(FeatcacheError, match=r"split='dev': choose one of train, val, test"):
        BlockStream(synth, "dev")


# --- the README example -----------------------------------------------------------------------


def readme_example() -> str:
    """The README's Python block that trains a Keras model of one's own on ``cache.dataset``."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    return next(b for b in blocks if "cache.dataset(" in b and "model.fit(" in b)


@pytest.mark.filterwarnings("ignore:`shuffle=True` was passed")
def test_readme_keras_example_matches_featcaches_linear_head(synth, capsys):
    from featcache.trainer.data import load_dataset
    from featcache.trainer.run import Settings, train
    from featcache.trainer.sweep import HeadConfig

    code = readme_example()
    assert len(code.strip().splitlines()) <= 12 and '"cache/sample"' in code
    ns: dict = {}
    exec(code.replace('"cache/sample"', repr(str(synth.path))), ns)  # noqa: S102 (the README's own code)
    ours = ns["model"].evaluate(synth.dataset("test"), return_dict=True, verbose=0)["accuracy"]
    epochs = int(re.search(r"epochs=(\d+)", code)[1])
    out = train(load_dataset(synth), [HeadConfig("linear", 1e-3)], Settings(epochs=epochs, seed=0), progress=False)
    theirs = out.heads[0]["test_acc"]
    assert ours > 0.5 and abs(ours - theirs) <= 0.05, (ours, theirs)
