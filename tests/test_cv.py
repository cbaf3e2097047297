"""The pick that holds on small data (trainer.cv): k-fold cross-validation of the logreg path over
train+val, against scikit-learn fitted by hand on folds recomputed from the ids; the leaderboard and
the pick it feeds; fold counts refused; and the built-in sweeps (``--sweep thorough``)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from featcache.shared.errors import FeatcacheError
from featcache.trainer.heads import logreg


def _folds_by_hand(ids: list[str], k: int) -> np.ndarray:
    """The documented rule: rows sorted by the sha256 of the split salt, the fold salt and the id (its
    first 8 bytes, big-endian), dealt round-robin."""
    keys = [int.from_bytes(hashlib.sha256(f"featcache-split-v1:featcache-fold:{i}".encode()).digest()[:8], "big")
            for i in ids]  # fmt: skip
    folds = np.empty(len(ids), int)
    folds[np.argsort(keys, kind="stable")] = np.arange(len(ids)) % k
    return folds


def _dataset(seed: int = 6, n: tuple[int, int, int] = (150, 50, 60)):  # noqa: ANN202
    from featcache.trainer.data import Dataset, Split

    rng = np.random.default_rng(seed)
    k, d, v = 3, 12, 2
    centres = rng.uniform(0, 2, (k, d))
    first = iter(range(0, 10**6, 10**4))

    def split(m: int) -> Split:
        y = rng.integers(0, k, m)
        views = np.abs(centres[y][:, None] + rng.normal(scale=1.6, size=(m, v, d))).astype(np.float32)
        start = next(first)
        ids = np.array([f"img/{start + i:06d}.jpg" for i in range(m)])
        return Split(np.arange(m), ids, y.astype(np.int32), views[:, 0], views=views)

    return Dataset(["a", "b", "c"], split(n[0]), split(n[1]), split(n[2]), False, 0)


def _sklearn_fit(sklearn, x: np.ndarray, y: np.ndarray, c: float, power: float):  # noqa: ANN001, ANN202
    """scikit-learn on the power-normalised views ``x (n, V, C)`` (standardised with their own mean and
    std): a function from pooled vectors ``(m, C)`` to probabilities."""
    flat = logreg.signed_power(x.reshape(-1, x.shape[-1]).astype(np.float64), power)
    mean, std = flat.mean(0), flat.std(0)
    clf = sklearn.LogisticRegression(C=c, max_iter=5000, tol=1e-6).fit((flat - mean) / std, np.repeat(y, x.shape[1]))
    return lambda q: clf.predict_proba((logreg.signed_power(q.astype(np.float64), power) - mean) / std)


def test_cv_of_the_logreg_path_is_scikit_learns_on_the_same_folds():
    """Fold accuracies (view 0 and TTA), their mean and standard error, the out-of-fold val
    probabilities and the refit on train+val that test scores, each recomputed with scikit-learn on
    folds made from the ids by hand."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    from featcache.trainer.loop import train
    from featcache.trainer.settings import Settings
    from featcache.trainer.sweep import expand

    ds = _dataset()
    configs = expand({"head": ["logreg"], "c": [0.01, 1.0], "power": [1.0, 0.5]})
    out = train(ds, configs, Settings(epochs=1, folds=4), progress=False)
    x = np.concatenate([ds.train.views, ds.val.views])
    y = np.concatenate([ds.train.y, ds.val.y])
    folds = _folds_by_hand([*ds.train.id, *ds.val.id], 4)
    assert sorted(np.bincount(folds)) == [50, 50, 50, 50]
    n_val, v = len(ds.val), x.shape[1]
    for row in out.heads:
        cfg = next(c for c in configs if c.name == row["name"])
        oof, oof_tta = np.zeros((len(y), 3)), np.zeros((len(y), 3))
        for f in range(4):
            held = folds == f
            predict = _sklearn_fit(sklearn, x[~held], y[~held], cfg.c, cfg.power)
            oof[held] = predict(x[held, 0])
            oof_tta[held] = np.mean([predict(x[held, j]) for j in range(v)], axis=0)
        cv = row["cv"]
        for key, p in (("fold_acc", oof), ("fold_acc_tta", oof_tta)):
            want = [np.mean(p[folds == f].argmax(1) == y[folds == f]) for f in range(4)]
            # the two solvers agree to ~1e-3 in probability: one borderline row of a fold's 50 may differ
            np.testing.assert_allclose(cv[key], want, atol=1 / 50 + 1e-9)
        assert cv["folds"] == 4 and cv["acc"] == pytest.approx(np.mean(cv["fold_acc"]))
        assert cv["se"] == pytest.approx(np.std(cv["fold_acc"], ddof=1) / 2)
        assert cv["se_tta"] == pytest.approx(np.std(cv["fold_acc_tta"], ddof=1) / 2)
        assert row["use_tta"] == (cv["acc_tta"] > cv["acc"])
        state, i = out.locate(row["name"])
        # val is scored out of fold (no fit that scores a val row has seen it) ...
        np.testing.assert_allclose(state.predictions("val")[i], oof[-n_val:], atol=3e-3)
        np.testing.assert_allclose(state.tta_probabilities("val")[i], oof_tta[-n_val:], atol=3e-3)
        assert row["val_acc"] == pytest.approx(np.mean(state.predictions("val")[i].argmax(1) == ds.val.y))
        # ... and the head kept, scored once on test, is refitted on every train+val row
        refit = _sklearn_fit(sklearn, x, y, cfg.c, cfg.power)
        np.testing.assert_allclose(state.probabilities("test", i), refit(ds.test.views[:, 0]), atol=3e-3)


def test_folds_auto_off_and_too_many():
    from featcache.trainer.cv import CV_MAX_VAL, DEFAULT_FOLDS, folds_for
    from featcache.trainer.loop import train
    from featcache.trainer.settings import SettingError, Settings
    from featcache.trainer.sweep import expand

    assert folds_for("auto", CV_MAX_VAL - 1, 10**4) == DEFAULT_FOLDS and folds_for("auto", CV_MAX_VAL, 10**4) == 0
    assert folds_for("auto", 3, 2 * DEFAULT_FOLDS - 1) == 0  # too few rows to cut: on val, as before
    ds = _dataset(n=(12, 4, 5))
    configs = expand({"head": ["logreg"], "c": [1.0]})
    assert "cv" not in train(ds, configs, Settings(epochs=1, folds=0), progress=False).heads[0]
    assert train(ds, configs, Settings(epochs=1), progress=False).heads[0]["cv"]["folds"] == DEFAULT_FOLDS
    with pytest.raises(SettingError, match=r"^folds=17: more folds than the 16 labelled train\+val rows"):
        train(ds, configs, Settings(epochs=1, folds=17), progress=False)


def test_a_fold_count_larger_than_the_rows_is_one_line_naming_the_option_and_nothing_is_written(tmp_path):
    from conftest import synthetic_cache
    from typer.testing import CliRunner

    from featcache.trainer.api import train
    from featcache.trainer.cli import app

    cache = synthetic_cache(tmp_path / "c", n=40)  # 24 train + 8 val labelled rows
    runs = tmp_path / "runs"
    with pytest.raises(FeatcacheError, match=r"^folds=33: more folds than the 32 labelled train\+val rows"):
        train(cache, folds=33, runs=runs, progress=False)
    r = CliRunner().invoke(app, [str(cache), "--folds", "33", "--runs", str(runs), "--no-progress"])
    assert r.exit_code != 0 and "--folds 33: more folds than the 32 labelled train+val rows" in r.output, r.output
    assert len([ln for ln in r.output.splitlines() if ln.startswith("error")]) == 1
    assert not runs.exists() or not any(runs.iterdir())
    r = CliRunner().invoke(app, [str(cache), "--folds", "1", "--runs", str(runs), "--no-progress"])
    assert r.exit_code != 0 and "--folds 1: must be auto, 0 (pick on val) or a whole number of folds >= 2" in r.output


def test_the_pick_compares_cv_means_minus_their_standard_error_and_the_board_shows_them():
    from featcache.trainer.report import best_head, leaderboard

    def row(name: str, kind: str, val: float, cv: tuple[float, float] | None = None) -> dict:
        r = {"name": name, "config": {"kind": kind, "hidden": 0 if kind != "mlp" else 512}, "val_acc": val,
             "val_loss": 1.0, "test_acc": 0.5, "best_epoch": 1, "val_acc_tta": None, "test_acc_tta": None,
             "use_tta": False, "views": 1}  # fmt: skip
        if cv:
            r["cv"] = {"folds": 5, "acc": cv[0], "se": cv[1], "fold_acc": [cv[0]] * 5}
        return r

    # the logreg head's val acc is poor, its CV mean good: the CV mean is what counts
    lr, mlp = row("lr", "logreg", 0.70, (0.90, 0.01)), row("mlp", "mlp", 0.95)
    assert best_head([lr, mlp], 1000)["name"] == "mlp"  # 0.95 on 1,000 val rows: 0.90 is not within its SE
    assert best_head([lr, row("mlp", "mlp", 0.905)], 1000)["name"] == "lr"  # within the Wilson SE of 0.905
    # a CV best: the threshold is its mean minus its standard error
    a, b = row("a", "mlp", 0.5, None), row("b", "logreg", 0.5, (0.92, 0.02))
    a["val_acc"] = 0.901  # 0.92 - 0.02 = 0.90: tied, and logreg is the simpler kind
    board = leaderboard([a, b], 50).splitlines()
    assert board[0].split()[:5] == ["rank", "pick", "acc", "SE", "by"]
    assert board[1].startswith("  1~") and "  0.9200  0.0200   cv5" in board[1] and board[1].endswith(" b")
    se = np.sqrt(0.901 * 0.099 / 50)
    assert f"  0.9010  {se:.4f}   val" in board[2] and board[2].startswith("  2~")
    assert (
        "pick acc >= 0.9000, the best 5-fold cross-validation mean 0.9200 minus its standard error 0.0200"
        in (board[-2])
    )
    a["val_acc"] = 0.899
    assert leaderboard([a, b], 50).splitlines()[2].startswith("  2 ")


def test_builtin_sweeps_are_listed_once_and_expand_through_the_sweep_checks(tmp_path):
    from typer.testing import CliRunner

    from featcache.trainer.builtin_sweeps import BUILTIN_SWEEPS, THOROUGH_GRIDS, heads
    from featcache.trainer.cli import app
    from featcache.trainer.settings import DEFAULT_GRID
    from featcache.trainer.sweep import expand, resolve_sweep

    default, _ = resolve_sweep("default")
    assert default == resolve_sweep(None)[0] == expand(DEFAULT_GRID)
    thorough, _ = resolve_sweep("thorough")
    assert thorough == list(dict.fromkeys(c for g in THOROUGH_GRIDS for c in expand(g)))
    kinds = [c.kind for c in thorough]
    assert heads(BUILTIN_SWEEPS["thorough"], expand) == {k: kinds.count(k) for k in dict.fromkeys(kinds)}
    assert "map" not in kinds and {"logreg", "linear"} <= set(kinds)
    # a grid option still overrides a built-in sweep's key, as a file's
    assert {c.lr for c in resolve_sweep("thorough", {"lr": [0.01]})[0] if c.kind == "linear"} == {0.01}
    r = CliRunner().invoke(app, ["train", "--help"], terminal_width=400)
    help_text = " ".join(r.output.split())
    for name, sweep in BUILTIN_SWEEPS.items():
        counts = ", ".join(f"{n} {k}" for k, n in heads(sweep, expand).items())
        assert f"{name} ({sweep.help}: {counts} heads" in help_text
    assert "9 more on a cache with taps" in help_text
    # on a cache with layer taps, thorough adds the logreg path on pooled + taps (and nothing else)
    with_taps, _ = resolve_sweep("thorough", datasets={"pooled", "taps"})
    added = [c for c in with_taps if c not in thorough]
    assert with_taps[: len(thorough)] == thorough and len(added) == 9
    assert {(c.kind, c.features) for c in added} == {("logreg", "taps")}
    assert resolve_sweep("default", datasets={"taps"})[0] == default  # the default stays as it is
    with pytest.raises(FeatcacheError, match=r"thorugh: neither a built-in sweep \(default, thorough\) nor a sweep"):
        resolve_sweep("thorugh")
    f = tmp_path / "thorough"  # a file by a built-in name is reached by a path
    f.write_text('{"head": ["linear"]}')
    assert {c.kind for c in resolve_sweep(str(f))[0]} == {"linear"}


def test_a_warm_start_rewritten_for_other_rows_standardisation_starts_at_the_solution():
    """Folds start from the fit on all rows, its weights rewritten for the fold's standardisation: on
    the same rows that rewrite is the identity and the fit ends where it starts; on rows of other
    scale and offset it is the same function of the cached vectors (the same probabilities)."""
    from featcache.trainer.heads.logreg import LogregGroup
    from featcache.trainer.sweep import expand

    ds = _dataset()
    configs = expand({"head": ["logreg"], "c": [0.1, 1.0], "power": [0.5]})
    x = ds.train.views
    full = LogregGroup(configs, 12, 3)
    full.fit(x, ds.train.y)
    again = LogregGroup(configs, 12, 3)
    again.fit(x, ds.train.y, warm=full)
    assert [f.iterations for f in again.fits] == [0, 0]
    np.testing.assert_allclose(again.predict(ds.test.pooled), full.predict(ds.test.pooled), atol=1e-6)
    # the rewrite alone: a group standardised on other rows, given full's weights rewritten, predicts as full
    other = LogregGroup(configs, 12, 3)
    other.fit(x[:40] * 1.5 + 0.3, ds.train.y[:40])  # only to set other.norm from rows of another scale
    assert not np.allclose(other.norm[0.5][1], full.norm[0.5][1])
    for f_full, f_other in zip(full.fits, other.fits, strict=True):
        wb = logreg.restandardised(f_full, full.norm[0.5], other.norm[0.5])
        f_other.W, f_other.b = wb[:-1], wb[-1]
    np.testing.assert_allclose(other.predict(ds.test.pooled), full.predict(ds.test.pooled), atol=1e-5)


def test_a_fold_never_starts_from_a_fit_that_saw_its_rows():
    """On labels with no signal, a weakly regularised path memorises whatever it is fitted on: the
    fold accuracies must stay at chance (a fold fit started from the fit on all rows, held-out rows
    included, would keep part of them memorised and score above it)."""
    from featcache.trainer.cv import cross_validate, fold_of
    from featcache.trainer.heads.logreg import LogregGroup
    from featcache.trainer.sweep import expand

    rng = np.random.default_rng(0)
    n, d, k = 300, 600, 2  # more features than rows: every fit can separate its rows
    x = rng.normal(size=(n, 1, d)).astype(np.float32)
    y = rng.integers(0, k, n)
    ids = np.array([f"r{i}" for i in range(n)])
    configs = expand({"head": ["logreg"], "c": [1.0, 10.0, 100.0], "power": [1]})
    cv = cross_validate(lambda: LogregGroup(configs, d, k), x, y, ids, 5, 60)
    chance_se = np.sqrt(0.25 / n)
    assert np.all(np.abs(cv.fold_acc.mean(axis=1) - 0.5) < 3 * chance_se), cv.fold_acc.mean(axis=1)
    assert set(np.bincount(fold_of(ids, 5))) <= {60}
