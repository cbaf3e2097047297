"""Class activation maps (#26): exact for linear heads, the linearisation for power-normalised logreg
heads, drawn by ``featcache-inspect show --cam`` and the two reports; a run read without the trainer."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from featcache.shared.cache._reader import FeatureCache
from featcache.shared.errors import FeatcacheError
from featcache.shared.inspection import cam
from featcache.shared.inspection.cli import app

runner = CliRunner()


def inspect(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def read_png(path: Path) -> np.ndarray:
    """An 8-bit RGB PNG with filter type 0 (what write_png writes) as ``(h, w, 3)`` uint8."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w, h = 8, b"", 0, 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        if kind == b"IHDR":
            w, h = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + 3 * w)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(h, w, 3)


@pytest.fixture(scope="module")
def run(tiny_cache, tmp_path_factory) -> Path:
    """A sweep on the tiny cache (real pictures, maps that vary over positions): a power-1 logreg head
    and a linear head (the sweep's standardisation)."""
    from featcache.trainer.api import train

    root = tmp_path_factory.mktemp("cam")
    cache = Path(shutil.copytree(tiny_cache, root / "cache"))
    return train(
        cache, head=["logreg", "linear"], c=0.1, power=1, lr=1e-2, epochs=3, baselines=False, runs=root / "runs"
    ).run_dir


def maps_of(cache: Path) -> tuple[np.ndarray, np.ndarray]:
    blocks = list(FeatureCache(cache).iter_maps(dtype="float32"))
    return np.concatenate([i for i, _ in blocks]), np.concatenate([m for _, m in blocks])


def test_cam_of_a_known_head_on_a_known_map_against_numpy():
    rng = np.random.default_rng(0)
    c, k = 6, 3
    W, b = rng.normal(size=(c, k)), rng.normal(size=k)
    mean, std = rng.uniform(0, 1, c), rng.uniform(0.5, 2, c)
    maps = rng.uniform(0, 3, (2, 4, 5, c)) * (rng.uniform(size=(2, 4, 5, c)) < 0.7)
    maps[..., 0] = 0  # a channel nowhere active
    fp = {"output_shape": [4, 5, c]}
    linear = cam.CamHead(Path("r"), "h", "linear", W, b, mean, std, 1.0, ["a", "b", "c"], fp)
    want = np.zeros((2, 4, 5, k))
    for n in range(2):
        for y in range(4):
            for x in range(5):
                for j in range(k):
                    want[n, y, x, j] = (
                        sum((maps[n, y, x, ch] - mean[ch]) / std[ch] * W[ch, j] for ch in range(c)) + b[j]
                    )
    np.testing.assert_allclose(linear.cam(maps), want, rtol=1e-12, atol=1e-12)
    assert linear.exact

    # power 0.5: the linearisation at each row's spatial mean, its derivative taken numerically here
    root = cam.CamHead(Path("r"), "h", "logreg", W, b, mean, std, 0.5, ["a", "b", "c"], fp)
    assert not root.exact
    got = root.cam(maps)
    for n in range(2):
        xbar = maps[n].mean(axis=(0, 1))
        eps = 1e-7
        f = lambda v: ((np.sign(v) * np.abs(v) ** 0.5) - mean) / std @ W + b  # noqa: E731
        jac = np.stack(
            [
                (f(xbar + eps * e) - f(xbar - eps * e)) / (2 * eps) if xbar[i] > 0 else np.zeros(k)
                for i, e in enumerate(np.eye(c))
            ]
        )  # (c, k)
        lin = f(xbar) + (maps[n] - xbar) @ jac
        np.testing.assert_allclose(got[n], lin, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[n].mean(axis=(0, 1)), f(xbar), rtol=1e-12)


def test_the_mean_of_the_cam_is_the_trainers_logit(run):
    """Exact case: for a logreg (power 1) and a linear head, the spatial mean of the CAM is the logit the
    trainer's own forward pass gives the pooled vector (softmax of it: the trainer's probabilities)."""
    from featcache.trainer.heads.logreg import head_proba
    from featcache.trainer.html_report import head_probs
    from featcache.trainer.rundir import head_params, load_results
    from featcache.trainer.sweep import HeadConfig

    results = load_results(run)
    index, maps = maps_of(Path(results["cache"]["path"]))
    rows = FeatureCache(results["cache"]["path"]).load_pooled()
    cached = rows.pooled[np.searchsorted(rows.index, index)]
    xbar = maps.astype(np.float64).mean(axis=(1, 2))
    seen = set()
    for h in results["heads"]:
        kind = h["config"]["kind"]
        w, mean_std = head_params(run, results, h["name"])
        head = cam.head_from_params(run, h["name"], kind, w, mean_std, 1, results["classes"], {})
        assert head.exact
        logits = head.cam(maps).mean(axis=(1, 2))
        log_p = (
            logits
            - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True))
            - logits.max(1, keepdims=True)
        )

        def trainer(x: np.ndarray, kind: str = kind, w: dict = w, mean_std: tuple = mean_std) -> np.ndarray:
            if kind == "logreg":
                return head_proba(w, x, 1)
            return head_probs(HeadConfig("linear"), w, (x - mean_std[0]) / mean_std[1])

        np.testing.assert_allclose(log_p, np.log(trainer(xbar)), atol=2e-4, err_msg=h["name"])
        # the cached pooled vector is the mean of the float32 maps; these are float16: close, not equal
        np.testing.assert_allclose(np.exp(log_p), trainer(cached), atol=1e-2, err_msg=h["name"])
        seen.add(kind)
    assert seen == {"logreg", "linear"}
    best = cam.read_head(run)  # the shared reader (no trainer import) reads the same best head
    assert best.name == results["best"]
    w, mean_std = head_params(run, results, best.name)
    again = cam.head_from_params(run, best.name, best.kind, w, mean_std, 1, results["classes"], {})
    np.testing.assert_allclose(best.cam(maps), again.cam(maps))


def test_show_draws_the_cam_over_the_image(run, tmp_path):
    from featcache.shared.inspection.picture import load_source

    results = json.loads((run / "results.json").read_text())
    cache = Path(results["cache"]["path"])
    c = FeatureCache(cache)
    rid = "circle/circle_0001.jpg"
    r = inspect("show", cache, rid, "--png", tmp_path / "cam.png", "--cam", run)
    assert r.exit_code == 0, r.output
    rows = c.load_pooled()
    k = rows.id.tolist().index(rid)
    ((_, maps),) = c.iter_maps(indices=[int(rows.index[k])], dtype="float32")
    grids = cam.read_head(run).cam(maps)[0]
    best = int(grids.mean(axis=(0, 1)).argmax())
    grid = grids[..., best]
    assert f"for the class it predicts, {results['classes'][best]}" in r.output
    assert "  " + " ".join(f"{x:7.3f}" for x in grid[3]) in r.output.splitlines()
    png = read_png(tmp_path / "cam.png")
    base, where = load_source(c.manifest.source, rid, (224, 224))
    assert where.endswith(rid) and png.shape == base.shape == (224, 224, 3)  # the size show --png draws
    diff = np.abs(png.astype(int) - base.astype(int)).sum(axis=-1)
    (hy, hx), (ly, lx) = (np.unravel_index(f(grid), grid.shape) for f in (np.argmax, np.argmin))
    assert diff[hy * 32 + 16, hx * 32 + 16] > 100  # covered where the CAM is highest
    assert diff[ly * 32 + 16, lx * 32 + 16] <= 3  # untouched where it is lowest
    # without --cam the picture is the activation energy, another picture
    assert inspect("show", cache, rid, "--png", tmp_path / "e.png").exit_code == 0
    assert not np.array_equal(read_png(tmp_path / "e.png"), png)


def test_show_without_pillow_says_so(run, tmp_path, monkeypatch):
    import sys

    results = json.loads((run / "results.json").read_text())
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    r = inspect("show", results["cache"]["path"], "0", "--png", tmp_path / "g.png", "--cam", run)
    assert r.exit_code == 0, r.output
    assert "grey square (pip install 'featcache[viz]'" in r.output
    assert read_png(tmp_path / "g.png").shape == (224, 224, 3)


def test_cache_report_draws_the_suspects_cams(run, tmp_path):
    from featcache.shared.inspection import report

    results = json.loads((run / "results.json").read_text())
    cache = results["cache"]["path"]
    facts = report.write(cache, tmp_path / "r.html", cam=run)
    page = (tmp_path / "r.html").read_text()
    assert facts["cam"] == {"run": str(run), "head": results["best"], "exact": True}
    assert facts["suspects"] and all(d["cam_class"] in results["classes"] for d in facts["suspects"])
    drawn = page.count('<img class="t" src="data:image/jpeg;base64,')
    looks = page.count('" title="') and page.count(f"looks for {facts['suspects'][0]['cam_class']}")
    assert page.count('title="') and looks
    cams = [d for d in facts["suspects"] if f"{d['id']}: where {results['best']} looks for {d['cam_class']}" in page]
    assert len(cams) == len(facts["suspects"]) and drawn >= 2 * len(cams)  # beside every suspect's thumbnail
    plain = report.build(cache)[0]
    assert "looks for" not in plain
    r = inspect("report", cache, tmp_path / "c.html", "--cam", run)
    assert r.exit_code == 0 and "looks for" in (tmp_path / "c.html").read_text()


def test_a_head_that_is_not_linear_is_refused_in_one_line(tiny_cache, tmp_path):
    from featcache.trainer.api import train

    cache = Path(shutil.copytree(tiny_cache, tmp_path / "cache"))
    mlp = train(cache, head="mlp", hidden=8, epochs=1, baselines=False, runs=tmp_path / "runs").run_dir
    with pytest.raises(FeatcacheError, match=r"^cam=.*: the run's best head 'mlp-.*' is a mlp head, not linear"):
        cam.read_head(mlp)
    r = inspect("show", cache, "0", "--cam", mlp)
    assert r.exit_code == 2
    assert r.output.startswith(f"error: --cam {mlp}: the run's best head") and "is a mlp head" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_a_run_from_elsewhere_is_checked(run, tmp_path, synthetic_run_dir=None):
    bad = Path(shutil.copytree(run, tmp_path / "run"))
    (bad / "heads.npz").unlink()
    (bad / "heads.npz").symlink_to(run / "heads.npz")
    with pytest.raises(FeatcacheError, match="symbolic link"):
        cam.read_head(bad)
    (bad / "heads.npz").unlink()
    results = json.loads((run / "results.json").read_text())
    best = results["heads_file"]["params"][results["best"]]
    with np.load(run / "heads.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays[best["W"]] = np.zeros((5, 2), np.float32)
    np.savez(bad / "heads.npz", **arrays)
    with pytest.raises(FeatcacheError, match=r"is declared float32 \(5, 2\), not the float \(1280, 3\)"):
        cam.read_head(bad)
    arrays[best["W"]] = np.array([{"a": 1}], dtype=object)
    np.savez(bad / "heads.npz", **arrays)
    with pytest.raises(FeatcacheError, match="not the float"):
        cam.read_head(bad)
    other = FeatureCache(results["cache"]["path"])
    head = cam.read_head(run)
    with pytest.raises(FeatcacheError, match="classes are not"):
        cam.check_cache(head, other.fingerprint, ["x", "y", "z"], "elsewhere")


def test_the_picture_is_the_image_as_the_backbone_saw_it():
    from PIL import Image

    from featcache.shared.backbones import PAD_VALUE, RESIZE_POLICIES
    from featcache.shared.inspection import picture

    assert picture.POLICIES == RESIZE_POLICIES and picture.PAD_GREY == round(PAD_VALUE + 0.5)
    a = np.zeros((100, 300, 3), np.uint8)
    a[:, :100] = (255, 0, 0)  # left third red, middle green, right third blue
    a[:, 100:200] = (0, 255, 0)
    a[:, 200:] = (0, 0, 255)
    im = Image.fromarray(a)
    crop = np.asarray(picture.as_seen(im, (20, 20), "centre-crop"))
    assert (crop[:, 2:-2] == (0, 255, 0)).all()  # the centred square: the middle third
    pad = np.asarray(picture.as_seen(im, (30, 30), "pad"))
    assert (pad[:8, 15] == picture.PAD_GREY).all() and (pad[12:18, 15] == (0, 255, 0)).all()
    squash = np.asarray(picture.as_seen(im, (30, 30), "squash"))
    assert (squash[:, 2] == (255, 0, 0)).all() and (squash[:, -3] == (0, 0, 255)).all()
    up = cam.upsample(np.array([[0.0, 1.0], [2.0, 3.0]]), (4, 4))
    np.testing.assert_allclose(up[0], [0, 0.25, 0.75, 1]) and np.testing.assert_allclose(up[:, 0], [0, 0.5, 1.5, 2])


def test_run_report_draws_the_mistakes_cams(tmp_path):
    from conftest import synthetic_cache

    from featcache.trainer import html_report
    from featcache.trainer.api import train

    cache = synthetic_cache(tmp_path / "c", n=120, classes=3, shuffle_labels=True)
    linear = train(cache, head="linear", lr=1e-2, epochs=2, baselines=False, runs=tmp_path / "runs").run_dir
    facts = html_report.write(linear, tmp_path / "run.html")
    page = (tmp_path / "run.html").read_text()
    assert facts["cam"] == {"head": facts["best"], "exact": True} and facts["wrong"]
    for d in facts["wrong"]:  # the map of the class it wrongly predicts, beside the thumbnail
        assert f'title="{d["id"]}: where {facts["best"]} looks for {d["predicted"]}"' in page
    assert "Class activation maps of" in page
    mlp = train(cache, head="mlp", hidden=8, epochs=1, baselines=False, runs=tmp_path / "runs").run_dir
    facts = html_report.write(mlp, tmp_path / "mlp.html")
    assert (
        facts["cam"] is None
        and "No class activation maps: the best head is a mlp head" in (tmp_path / "mlp.html").read_text()
    )
