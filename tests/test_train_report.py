"""featcache-train report and runs: the page's numbers, numpy predictions equal the Keras heads, history."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_cache
from test_report import Page
from typer.testing import CliRunner

from featcache.trainer.api import train
from featcache.trainer.cli import app
from featcache.trainer.report import ranking
from featcache.trainer.rundir import head_params, load_results
from featcache.trainer.sweep import HeadConfig

runner = CliRunner()
QUICK = dict(epochs=4, batch_size=64, patience=5, seed=0)


def train_cli(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two sweeps on two caches (the second with labels shuffled: many confident errors), and an
    unfinished run directory, in one runs folder."""
    root = tmp_path_factory.mktemp("runs")
    a = synthetic_cache(root / "cache-a", n=160, classes=4)
    b = synthetic_cache(root / "cache-b", n=160, classes=4, seed=1, shuffle_labels=True)
    runs = root / "runs"
    (runs / "20000101-000000").mkdir(parents=True)  # a sweep that never finished
    run_a = train(a, head=["linear", "mlp"], lr=[1e-2, 1e-3], hidden=16, runs=runs, **QUICK).run_dir
    run_b = train(b, head="linear", lr=1e-2, runs=runs, **QUICK).run_dir
    return {"runs": runs, "a": run_a, "b": run_b, "cache_a": a}


def test_numpy_predictions_equal_every_keras_head(runs):
    from featcache.shared.cache._reader import FeatureCache
    from featcache.trainer.html_report import head_probs
    from featcache.trainer.predict import load_head

    results = load_results(runs["a"])
    assert {h["config"]["kind"] for h in results["heads"]} == {"linear", "mlp"}
    rows = FeatureCache(results["cache"]["path"]).load_pooled()
    x = rows.pooled[:12]
    maps = np.broadcast_to(x[:, None, None, :], (12, 7, 7, 1280))  # the synthetic cache's maps
    for h in results["heads"]:  # the best one from best_head.keras, the others rebuilt from heads.npz
        kind = h["config"]["kind"]
        w, mean_std = head_params(runs["a"], results, h["name"])
        inp = maps if kind == "map" else (x - mean_std[0]) / mean_std[1]
        _, model = load_head(runs["a"], results, h["name"])
        want = model.predict(maps if kind == "map" else x, verbose=0)
        np.testing.assert_allclose(
            head_probs(HeadConfig.of(h["config"]), w, inp), want, rtol=1e-4, atol=1e-5, err_msg=h["name"]
        )


def test_numpy_map_head_equals_the_keras_map_head():
    """Map heads (not trained here: slow to compile) with random weights of the trainer's shapes."""
    from featcache.trainer.heads import HEAD_KINDS
    from featcache.trainer.html_report import head_probs
    from featcache.trainer.keras_heads import head_model

    rng = np.random.default_rng(0)
    w = {
        k: v[0] + rng.normal(0, 0.05, v[0].shape).astype(np.float32)
        for k, v in HEAD_KINDS["map"]
        .init(HeadConfig("map", hidden=8), 1, 32, 5, np.random.default_rng(0))
        .arrays()
        .items()
    }
    maps = rng.uniform(0, 3, (6, 7, 7, 32)).astype(np.float32)
    cfg = HeadConfig("map", 1e-2, hidden=8)
    model = head_model(cfg, w, (7, 7, 32), 5)
    np.testing.assert_allclose(head_probs(cfg, w, maps), model.predict(maps, verbose=0), rtol=1e-4, atol=1e-5)


def test_report_of_a_trained_map_head(tmp_path):
    """A map head trained for one epoch: the report's numpy predictions, made from heads.npz and the
    cache's maps, equal best_head.keras on those maps and reproduce the sweep's test confusion. (The
    synthetic maps repeat one vector at every position, so attention is tested by the test above.)"""
    from featcache.shared.cache._reader import FeatureCache
    from featcache.trainer.data import read_maps
    from featcache.trainer.html_report import best_head_test_predictions, write
    from featcache.trainer.predict import load_head

    cache = synthetic_cache(tmp_path / "cache", n=60, classes=3, seed=2, shuffle_labels=True)
    run = train(cache, head="map", lr=1e-2, hidden=8, runs=tmp_path / "runs", **{**QUICK, "epochs": 1}).run_dir
    results = load_results(run)
    facts = write(run, tmp_path / "r.html")
    assert facts["numpy_confusion"] == results["best_confusion_test"]
    _, pred = best_head_test_predictions(run, results)
    _, model = load_head(run, results)
    maps = read_maps(FeatureCache(cache), pred["index"], "float16")
    np.testing.assert_allclose(pred["probs"], model.predict(maps, verbose=0), rtol=1e-4, atol=1e-5)


def test_report_page_numbers(runs, tmp_path):
    out = tmp_path / "r.html"
    r = train_cli("report", runs["a"], out)
    assert r.exit_code == 0, r.output
    results = load_results(runs["a"])
    text = out.read_text()
    page = Page(text)
    assert page.external == []
    from featcache.trainer.html_report import BOARD_KEYS

    board = page.tables["leaderboard"][1:]
    val = 3 + len(BOARD_KEYS) + 1  # rank, head, kind, the grid keys, best epoch, then val acc, val loss, test acc
    test = val + 2
    order, _ = ranking(results["heads"], results["splits"]["val"])  # one-SE rule: not a plain sort by val
    heads = [results["heads"][i] for i in order]
    assert [row[1] for row in board] == [h["name"] for h in heads]
    assert [float(row[val]) for row in board] == pytest.approx([h["val_acc"] for h in heads], abs=1e-4)
    assert [float(row[test]) for row in board] == pytest.approx([h["test_acc"] for h in heads], abs=1e-4)
    assert [row[test + 1] for row in board] == [f"TTA x{h['views']}" if h.get("use_tta") else "view 0" for h in heads]
    assert "{'train'" not in text and f"train {results['splits']['train']:,}" in text  # no Python dict on the page
    lr = list(BOARD_KEYS).index("lr") + 3
    assert {row[lr] for row in board} <= {"0.01", "0.001"}  # settings at 3 significant digits
    assert text.count("data-head=") == len(heads)  # every head's curves
    cm = np.array(results["best_confusion_test"])
    for k, (name, precision, recall, support) in enumerate(page.tables["per-class"][1:]):
        assert name == results["classes"][k] and int(support) == cm[k].sum()
        assert float(recall) == pytest.approx(cm[k, k] / cm[k].sum(), abs=1e-3)
        assert float(precision) == pytest.approx(cm[k, k] / cm[:, k].sum(), abs=1e-3)
    assert "do not reproduce the confusion matrix" not in text


def test_report_lists_the_most_confident_errors(runs, tmp_path):
    from featcache.trainer.html_report import write

    facts = write(runs["b"], tmp_path / "r.html")
    results = load_results(runs["b"])
    assert facts["numpy_confusion"] == results["best_confusion_test"]  # numpy reproduces the sweep's test
    cm = np.array(results["best_confusion_test"])
    assert len(facts["wrong"]) == min(24, cm.sum() - np.trace(cm)) > 0
    assert all(d["label"] != d["predicted"] for d in facts["wrong"])
    ps = [d["p"] for d in facts["wrong"]]
    assert ps == sorted(ps, reverse=True)
    rows = Page((tmp_path / "r.html").read_text()).tables["wrong"][1:]
    assert [row[1] for row in rows] == [d["id"] for d in facts["wrong"]]


def test_report_without_the_cache_still_works(runs, tmp_path):
    run = Path(runs["b"])
    results = json.loads((run / "results.json").read_text())
    copy = copy_run(run, tmp_path / "run")
    results["cache"]["path"] = str(tmp_path / "moved")
    (copy / "results.json").write_text(json.dumps(results))
    r = train_cli("report", copy, tmp_path / "r.html")
    assert r.exit_code == 0, r.output
    text = (tmp_path / "r.html").read_text()
    assert "cannot be used" in text and "moved" in text and 'id="leaderboard"' in text
    assert "wrong" not in Page(text).tables


def test_runs_lists_every_sweep_newest_first(runs):
    r = train_cli("runs", runs["runs"], "--json")
    assert r.exit_code == 0, r.output
    listed = json.loads(r.output)
    assert [Path(e["run"]).name for e in listed] == [runs["b"].name, runs["a"].name, "20000101-000000"]
    assert listed[-1]["finished"] is False
    for e, run in zip(listed, (runs["b"], runs["a"]), strict=False):
        res = load_results(run)
        best = next(h for h in res["heads"] if h["name"] == res["best"])
        assert (e["heads"], e["best"], e["val_acc"], e["test_acc"]) == (
            len(res["heads"]),
            res["best"],
            best["val_acc"],
            best["test_acc"],
        )
        assert e["cache"] == res["cache"]["path"]
        assert e["weights_sha256"] == res["cache"]["fingerprint"]["weights_sha256"]
    only_a = json.loads(train_cli("runs", runs["runs"], "--cache", runs["cache_a"], "--json").output)
    assert [Path(e["run"]).name for e in only_a] == [runs["a"].name]
    text = train_cli("runs", runs["runs"]).output
    assert "UNFINISHED" in text and runs["a"].name in text
    missing = train_cli("runs", runs["runs"] / "nope")
    assert missing.exit_code == 2 and "no such runs folder" in missing.output


def copy_run(run: Path, dest: Path) -> Path:
    """A copy of a run directory (so a test can alter its results.json)."""
    shutil.copytree(run, dest)
    return dest


def test_report_refuses_a_cache_that_is_no_longer_the_one_trained_on(runs, tmp_path):
    """A cache whose shards differ from those recorded gets no predictions: the page names the shard."""
    copy = copy_run(Path(runs["b"]), tmp_path / "run")
    results = json.loads((copy / "results.json").read_text())
    shard = sorted(results["cache"]["shards"])[0]
    results["cache"]["shards"][shard] = "0" * 64
    (copy / "results.json").write_text(json.dumps(results))
    r = train_cli("report", copy, tmp_path / "r.html")
    assert r.exit_code == 0, r.output
    text = (tmp_path / "r.html").read_text()
    assert "cannot be used" in text and "missing or rewritten" in text and shard in text
    assert "wrong" not in Page(text).tables


def test_runs_explains_staging_folders_and_old_runs(runs, tmp_path):
    """A sweep in progress, one killed (kill -9) and a run of format 1 are listed, each with why."""
    import os

    folder = tmp_path / "runs"
    copy_run(Path(runs["a"]), folder / Path(runs["a"]).name)
    old = copy_run(Path(runs["a"]), folder / "19990101-000000")
    results = json.loads((old / "results.json").read_text())
    (old / "results.json").write_text(json.dumps({**results, "version": 1}))
    (folder / f".featcache-run-{os.getpid()}-abc").mkdir()
    (folder / ".featcache-run-999999999-def").mkdir()  # no such process
    listed = {Path(e["run"]).name: e for e in json.loads(train_cli("runs", folder, "--json").output)}
    assert len(listed) == 4 and listed[Path(runs["a"]).name]["finished"] is True
    assert "in progress" in listed[f".featcache-run-{os.getpid()}-abc"]["problem"]
    assert "killed" in listed[".featcache-run-999999999-def"]["problem"]
    assert listed["19990101-000000"]["finished"] is False and "version 1" in listed["19990101-000000"]["problem"]


def test_report_and_runs_import_no_tensorflow():
    """The page and the history are made in numpy: importing them must not pull in TensorFlow."""
    code = (
        "import sys\nfrom featcache.trainer import history, html_report\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_3000_class_confusion_is_kept_as_its_top_cells_and_counts():
    """Issue 24 #10: 3,000 classes wrote the whole 9-million-cell matrix (a 54 MB results.json)."""
    from featcache.trainer.report import TOP_CONFUSIONS, confusion_entries, recorded_confusion

    n = 3000
    m = np.zeros((n, n), np.int64)
    np.fill_diagonal(m, 3)
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, n, 400), rng.integers(0, n, 400)
    np.add.at(m, (t, p), rng.integers(1, 5, 400))
    entries = confusion_entries(m)
    assert entries["best_confusion_test"] is None
    assert len(json.dumps(entries)) < 100_000  # the per-class counts and 50 cells, not n^2 numbers
    _, summary = recorded_confusion(entries)
    assert summary["true"] == m.sum(1).tolist() and summary["predicted"] == m.sum(0).tolist()
    assert summary["correct"] == np.diag(m).tolist()
    off = m - np.diag(np.diag(m))
    assert len(summary["top"]) == TOP_CONFUSIONS
    assert [c for _, _, c in summary["top"]] == sorted(off.ravel(), reverse=True)[:TOP_CONFUSIONS]
    assert all(off[a, b] == c for a, b, c in summary["top"])


def test_a_sweep_on_60_classes_keeps_no_full_matrix_and_its_report_says_so(tmp_path):
    """Issue 24 #10, a variant: 60 classes (just past the limit), through a sweep, its report and its plot."""
    from featcache.trainer.html_report import write
    from featcache.trainer.report import FULL_CONFUSION_MAX_CLASSES

    cache = synthetic_cache(tmp_path / "cache", n=600, classes=60, shuffle_labels=True)
    run = train(cache, head="linear", lr=1e-2, runs=tmp_path / "runs", **{**QUICK, "epochs": 1}).run_dir
    results = load_results(run)
    assert len(results["classes"]) == 60 > FULL_CONFUSION_MAX_CLASSES
    assert results["best_confusion_test"] is None
    top = results["best_confusion_test_top"]
    assert sum(top["true"]) == results["splits"]["test"] and len(top["top"]) > 0
    facts = write(run, tmp_path / "r.html")
    text = (tmp_path / "r.html").read_text()
    page = Page(text)
    assert len(page.tables["per-class"]) == 1 + 60 and "top-confusions" in page.tables
    assert [[results["classes"][a], results["classes"][b], str(c)] for a, b, c in top["top"]] == page.tables[
        "top-confusions"
    ][1:]
    assert f"more than {FULL_CONFUSION_MAX_CLASSES}" in text and "not the whole matrix" in text
    assert "do not reproduce the confusion matrix" not in text and facts["numpy_confusion"] is None


def test_per_class_precision_recall_f1_and_macro_f1_equal_scikit_learns():
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    from featcache.trainer.report import class_metrics, confusion

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    pred = np.where(rng.random(300) < 0.6, y, rng.integers(0, 5, 300))  # class 4 is predicted, never true
    classes = ["a", "b", "c", "d", "e"]
    got = class_metrics(confusion(y, pred, 5), classes)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=range(5), zero_division=0)
    for k, c in enumerate(classes):
        row = got["per_class"][c]
        np.testing.assert_allclose([row["precision"], row["recall"], row["f1"]], [p[k], r[k], f[k]], atol=1e-12)
        assert row["support"] == s[k]
    assert got["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert got["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))


def test_logistic_regressions_are_drawn_as_their_regularisation_path(runs, tmp_path):
    """A logreg head has one fit, so one epoch: its epoch curves were empty panels. The page draws each
    path of C values as one chart against log10 C, and keeps epoch curves for the heads trained by epochs."""
    run = train(runs["cache_a"], head=["logreg", "linear"], c=[0.01, 0.1, 1.0], runs=tmp_path / "runs", **QUICK).run_dir
    r = train_cli("report", run, tmp_path / "r.html")
    assert r.exit_code == 0, r.output
    text = (tmp_path / "r.html").read_text()
    results = load_results(run)
    logreg = [h for h in results["heads"] if h["config"]["kind"] == "logreg"]
    assert len(logreg) == 3 and text.count('data-heads="3"') == 1 and "log10 C" in text
    assert text.count("data-head=") == len(results["heads"]) - len(logreg)
