"""The command lines as a user runs them: exit codes, one-line errors, help, weights resolution."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from featcache.shared import backbones
from featcache.shared.cache.fsutil import sha256_file
from featcache.shared.errors import WeightsUnavailableError

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


def test_help_explains_every_option_without_tensorflow():
    p = run(
        "-c",
        "import sys; from typer.testing import CliRunner; from featcache.extractor.cli import app;"
        "r = CliRunner().invoke(app, ['--help']); print(r.output);"
        "assert 'tensorflow' not in sys.modules",
    )
    assert p.returncode == 0, p.stderr
    for opt in (
        "--weights",
        "--backbone",
        "--batch-size",
        "--shard-size",
        "--maps-dtype",
        "--compression",
        "--split",
        "--mixed-precision",
        "--seed",
        "--overwrite",
        "--strict",
        "--max-shards",
        "--debug",
    ):
        assert opt in p.stdout, opt
    assert run("-m", "featcache.shared", "--help").returncode == 0
    p = run(
        "-c",
        "import sys; sys.argv = ['featcache-train', 'train', '--help']\nfrom featcache.trainer.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\nassert 'tensorflow' not in sys.modules",
    )
    assert p.returncode == 0 and "--weight-decay" in p.stdout and "--sweep" in p.stdout, p.stderr


def test_featcache_train_cache_runs_a_sweep_without_the_word_train(tiny_cache, tmp_path):
    p = run(
        "-m", "featcache.trainer", str(tiny_cache), "--epochs", "2", "--runs", str(tmp_path / "runs"), "--no-progress"
    )
    assert p.returncode == 0, p.stderr
    # the default sweep: 9 logreg heads and one linear head
    assert "logreg-pow0.5-C0.001" in p.stdout and "best: " in p.stdout and "10 heads" in p.stdout, p.stdout
    assert len(list((tmp_path / "runs").iterdir())) == 1


def test_cli_extract_then_inspect(sample_dir, tmp_path):
    cache = tmp_path / "c"
    p = run(
        "-m",
        "featcache.extractor",
        str(sample_dir),
        str(cache),
        "--backbone",
        "tiny",
        "--weights",
        "random",
        "--shard-size",
        "8",
        "--no-progress",
    )
    assert p.returncode == 0, p.stderr
    assert "wrote 15 rows in 2 shards" in p.stdout and "RANDOM WEIGHTS" in p.stdout
    assert "RANDOM weights" in p.stderr
    again = run(
        "-c",
        "import sys; from featcache.extractor.cli import main; sys.argv = ['x', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'tensorflow' not in sys.modules, 'a run with nothing to do imported TensorFlow'",
        str(sample_dir),
        str(cache),
        "--backbone",
        "tiny",
        "--weights",
        "random",
        "--shard-size",
        "8",
    )
    assert again.returncode == 0, again.stderr
    assert "nothing to do: all 2 shards were already done (15 rows)" in again.stdout
    s = run("-m", "featcache.shared", "summary", str(cache), "--json")
    assert s.returncode == 0, s.stderr
    summary = json.loads(s.stdout)
    assert summary["rows"] == 15 and summary["complete"] and summary["random_weights"]
    assert sum(sum(v.values()) for v in summary["classes"].values()) == 15
    text = run("-m", "featcache.shared", "summary", str(cache)).stdout
    assert text.startswith("WARNING: this cache was made with RANDOM weights")
    ls = run("-m", "featcache.shared", "ls", str(cache)).stdout
    assert "shards/shard-00000.h5" in ls and "shards/shard-00001.h5" in ls


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nowhere", "c"], "error: nowhere: no such file or folder"),
        (["{src}", "{cache}", "--backbone", "nope"], "error: unknown backbone 'nope'; known: convnext_tiny, "),
        (["{src}", "{cache}", "--weights", "missing.h5"], "error: missing.h5: weights file not found"),
        (["{src}", "{cache}", "--backbone", "tiny", "--weights", "random", "--split", "1,1,1"], "summing to 1"),
    ],
)
def test_bad_arguments_give_one_line_errors(sample_dir, tmp_path, args, message):
    args = [a.format(src=sample_dir, cache=tmp_path / "c") for a in args]
    p = run("-m", "featcache.extractor", *args)
    assert p.returncode == 2
    assert message in p.stderr and "Traceback" not in p.stderr
    assert len([line for line in p.stderr.splitlines() if line.startswith("error:")]) == 1


def test_inspect_on_a_non_cache_is_one_line(tmp_path):
    p = run("-m", "featcache.shared", "summary", str(tmp_path))
    assert (
        p.returncode == 2
        and p.stderr.strip() == f"error: {tmp_path}/manifest.json: not a featcache cache (no manifest.json)"
    )


def _offline(monkeypatch, tmp_path):
    import keras

    def fail(*a, **k):
        raise Exception("URL fetch failure on https://x: None -- [Errno -2] Name or service not known")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv(backbones.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(
        backbones.weights, "keras_cache_candidates", lambda name: [tmp_path / "keras" / "models" / name]
    )
    monkeypatch.setattr(keras.utils, "get_file", fail)


def test_imagenet_offline_says_where_to_put_the_file(monkeypatch, tmp_path):
    _offline(monkeypatch, tmp_path)
    spec = backbones.get_backbone("mobilenet_v2")
    with pytest.raises(
        WeightsUnavailableError,
        match=(
            r"keras/models/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1\.0_224_no_top\.h5: "
            r"ImageNet weights .* not in Keras' cache .*weights=PATH .*FEATCACHE_WEIGHTS"
        ),
    ):
        backbones.resolve_weights(spec, "imagenet")
    with pytest.warns(UserWarning, match="Falling back to RANDOM weights"):
        assert backbones.resolve_weights(spec, "auto").sha256 == "random:0"


def test_weights_from_env_keras_cache_and_path(monkeypatch, tmp_path):
    _offline(monkeypatch, tmp_path)
    spec = backbones.get_backbone("mobilenet_v2")
    f = tmp_path / "w.h5"
    f.write_bytes(b"weights")
    monkeypatch.setenv(backbones.WEIGHTS_ENV, str(f))
    w = backbones.resolve_weights(spec, "auto")
    assert (w.source, w.path) == ("file", str(f)) and len(w.sha256) == 64
    cached = tmp_path / "keras" / "models" / backbones.MOBILENET_V2_WEIGHTS_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    w = backbones.resolve_weights(spec, "imagenet")
    assert (w.source, w.path, w.sha256) == ("imagenet", str(cached), sha256_file(f))


def test_the_weights_variable_is_read_in_one_place_so_cli_and_api_agree(monkeypatch, tmp_path):
    """FEATCACHE_WEIGHTS is what ``auto`` means (backbones.resolve_weights, the one reader): the command
    line no longer takes it as its --weights default behind the API's back. That no other module reads
    it (nor takes any option from the environment with typer's ``envvar=``) is a rule of
    tests/test_architecture.py."""
    import inspect

    import typer

    from featcache.extractor import api
    from featcache.extractor.cli import app

    monkeypatch.setenv(backbones.WEIGHTS_ENV, str(tmp_path / "w.h5"))
    ctx = typer.main.get_command(app).make_context("featcache-extract", ["src", "cache"])
    assert ctx.params["weights"] == inspect.signature(api.extract).parameters["weights"].default == "imagenet"
