"""Class activation maps: where a run's head looks, drawn over the image (numpy only, no TensorFlow).

A ``linear`` or ``logreg`` head scores a pooled vector ``x`` (the spatial mean of the row's feature map
``m(h, w)``) as ``logit_c = z(x) . W_c + b_c``, where ``z`` is the head's input normalisation:
``z(x) = (x - mean) / std`` for a linear head (the sweep's standardisation; none with
``standardize=False``) and ``z(x) = (sign(x) |x|^power - mean) / std`` for a logreg head (its own).

* When ``z`` is affine (every linear head, and logreg heads of ``power`` 1), the class activation map
  (Zhou et al., *Learning Deep Features for Discriminative Localization*, 2016) is **exact**::

      CAM_c(h, w) = z(m(h, w)) . W_c + b_c

  and its spatial mean is the head's logit on the pooled vector: the logit decomposes exactly into the
  49 positions' contributions.
* When ``z`` is not affine (a logreg head of ``power`` != 1: signed power normalisation), what is drawn
  is the head **linearised at the row's pooled vector** ``x`` (first-order Taylor expansion of ``z``)::

      CAM_c(h, w) = logit_c(x) + ((m(h, w) - x) * z'(x)) . W_c,    z'(x) = power |x|^(power - 1) / std

  (a channel with ``x = 0``, nowhere active since the maps are ReLU outputs, contributes nothing). Its
  spatial mean is still exactly ``logit_c(x)``, but the positions' contributions are the linearisation's,
  not a decomposition of the head. :attr:`CamHead.exact` says which.

Here ``x`` is the spatial mean of the maps as read (float16 in most caches), so that the mean of the CAM
is the logit of exactly that vector; the cached pooled vector is the mean of the float32 maps, a few
parts in 10^4 away. Other heads (``mlp``, ``map``) are not linear in the pooled vector: refused.

The run's head is read by :func:`read_head` from the run directory (untrusted input: ``results.json``
by :func:`featcache.shared.runfiles.read_results`, ``heads.npz`` by
:func:`featcache.shared.cache._npz.load_declared`, shapes checked, never unpickled), without importing
the trainer. Pictures: :func:`overlay` blends a CAM, bilinearly upsampled, over an image, coloured
where the CAM is high and untouched where it is low.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import load_declared
from ..errors import FeatcacheError
from ..runfiles import HEADS, RESULTS, read_results
from .picture import heat_colours

CAM_KINDS = ("linear", "logreg")  # heads linear in the pooled vector (logreg after its normalisation)
CAM_ALPHA = 0.6  # the overlay's opacity where the CAM is highest


@dataclass(frozen=True)
class CamHead:
    """A run's linear or logreg head: ``W (C, K)``, ``b (K,)`` float64 and its input normalisation
    (``mean``, ``std`` ``(C,)``, None for none; ``power``: a logreg head's power normalisation, 1 for
    none); ``classes`` its K class names, ``fingerprint`` the run's record of its cache's fingerprint."""

    run: Path
    name: str
    kind: str
    W: np.ndarray
    b: np.ndarray
    mean: np.ndarray | None
    std: np.ndarray | None
    power: float
    classes: list[str]
    fingerprint: dict[str, Any]

    @property
    def exact(self) -> bool:
        """Whether the CAM decomposes the head's logit exactly (its normalisation is affine)."""
        return self.power == 1

    def _z(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self.power != 1:
            x = np.sign(x) * np.abs(x) ** self.power
        return x if self.mean is None else (x - self.mean) / self.std

    def logits(self, pooled: np.ndarray) -> np.ndarray:
        """The head's logits ``(B, K)`` float64 for pooled vectors ``(B, C)`` as cached."""
        return self._z(pooled) @ self.W + self.b

    def cam(self, maps: np.ndarray) -> np.ndarray:
        """Every class's activation map ``(B, h, w, K)`` float64 for feature maps ``(B, h, w, C)`` (see the
        module docstring: exact, or the linearisation at each row's spatial mean)."""
        m = np.asarray(maps, np.float64)
        if m.ndim != 4 or m.shape[-1] != self.W.shape[0]:
            raise FeatcacheError(f"maps of shape {m.shape}: expected (rows, h, w, {self.W.shape[0]}) for this head")
        if self.exact:
            return self._z(m) @ self.W + self.b
        x = m.mean(axis=(1, 2), keepdims=True)  # (B, 1, 1, C)
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = np.where(x > 0, self.power * np.abs(x) ** (self.power - 1), 0.0)
        if self.std is not None:
            slope = slope / self.std
        return self.logits(x[:, 0, 0])[:, None, None, :] + ((m - x) * slope) @ self.W


def head_from_params(
    run: Path,
    name: str,
    kind: str,
    params: dict[str, np.ndarray],
    standardize: tuple[np.ndarray, np.ndarray] | None,
    power: float,
    classes: list[str],
    fingerprint: dict[str, Any],
) -> CamHead:
    """A :class:`CamHead` from a head's saved parameters (``heads.npz``'s, as read by the trainer's
    ``rundir.head_params``: ``W``, ``b`` and for logreg ``mean``, ``std``) and the sweep's pooled
    ``standardize`` (used by linear heads only). Refuses other kinds (:func:`check_kind`) and
    non-finite parameters."""
    check_kind(run, name, kind)
    f64 = {k: np.asarray(v, np.float64) for k, v in params.items()}
    mean: np.ndarray | None
    std: np.ndarray | None
    if kind == "logreg":
        mean, std = f64["mean"], f64["std"]
    else:
        mean, std = (None, None) if standardize is None else (np.asarray(a, np.float64) for a in standardize)
        power = 1.0
    arrays = [f64["W"], f64["b"], *([] if mean is None or std is None else [mean, std])]
    if not all(np.isfinite(a).all() for a in arrays) or (std is not None and (std <= 0).any()):
        raise FeatcacheError(f"{Path(run) / HEADS}: head {name!r} has non-finite parameters or a std <= 0")
    return CamHead(Path(run), name, kind, f64["W"], f64["b"], mean, std, float(power), list(classes), fingerprint)


def check_kind(run: Path, name: str, kind: str) -> None:
    """Refuse, in one line naming the head's kind and the ``cam`` option, a head that is not linear in
    the pooled vector."""
    if kind not in CAM_KINDS:
        raise FeatcacheError(
            f"cam={run}: the run's best head {name!r} is a {kind} head, not linear in the pooled vector: class "
            f"activation maps are drawn for {' or '.join(CAM_KINDS)} heads only (pick another run)"
        )


def _want(ok: object, path: Path, what: str) -> None:
    if not ok:
        raise FeatcacheError(f"{path}: {what}: not a run featcache wrote (edited by hand?)")


def read_head(run: str | Path) -> CamHead:
    """The best head of the run directory ``run``, for class activation maps: refused in one line
    naming the file when the run is not one featcache wrote (missing, a link or FIFO, malformed JSON,
    parameters whose declared shapes are not the head's), and when the head is not linear in the pooled
    vector (:func:`check_kind`)."""
    run = Path(run)
    results: Any = read_results(run)  # untrusted JSON, checked field by field below
    path = run / RESULTS
    heads, best, classes = results.get("heads"), results.get("best"), results.get("classes")
    _want(isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes), path, "classes")
    _want(isinstance(heads, list) and all(isinstance(h, dict) for h in heads), path, "heads")
    entry: Any = next((h for h in heads if h.get("name") == best), None) if isinstance(best, str) else None
    _want(entry is not None, path, f"best: {best!r} is not one of the run's heads")
    config = entry.get("config")
    _want(isinstance(config, dict) and isinstance(config.get("kind"), str), path, f"heads ({best}).config.kind")
    kind = config["kind"]
    check_kind(run, best, kind)
    power = config.get("power", 1) if kind == "logreg" else 1
    _want(isinstance(power, int | float) and not isinstance(power, bool) and power > 0, path, f"{best}: power")
    label = entry.get("cache")
    if results["version"] == 3:  # a run on several caches: the head's own
        caches = results.get("caches")
        _want(isinstance(caches, dict) and label in caches, path, f"heads ({best}).cache")
        identity = caches[label]
    else:
        label, identity = None, results.get("cache")
    _want(isinstance(identity, dict) and isinstance(identity.get("fingerprint"), dict), path, "cache.fingerprint")
    fingerprint = identity["fingerprint"]
    shape = fingerprint.get("output_shape")
    _want(
        isinstance(shape, list) and len(shape) == 3 and all(isinstance(s, int) and s >= 1 for s in shape),
        path,
        "cache.fingerprint.output_shape (h, w, channels)",
    )
    channels, k = shape[-1], len(classes)
    index = results.get("heads_file")
    _want(isinstance(index, dict) and isinstance(index.get("params"), dict), path, "heads_file.params")
    keys = index["params"].get(best)
    want = {"W": (channels, k), "b": (k,), **({"mean": (channels,), "std": (channels,)} if kind == "logreg" else {})}
    _want(isinstance(keys, dict) and all(isinstance(keys.get(p), str) for p in want), path, f"heads_file ({best})")
    shapes = {keys[p]: s for p, s in want.items()}
    std = index.get("standardize")
    if label is not None:
        std = std.get(label) if isinstance(std, dict) else "bad"
    if kind == "linear" and std is not None:
        _want(isinstance(std, dict) and all(isinstance(std.get(p), str) for p in ("mean", "std")), path, "standardize")
        shapes.update({std["mean"]: (channels,), std["std"]: (channels,)})
    npz = run / HEADS

    def check(declared: dict[str, tuple[tuple[int, ...], np.dtype]], size: int) -> None:
        total = 0
        for key, (s, dtype) in declared.items():
            if tuple(s) != shapes[key] or dtype.kind != "f":
                raise FeatcacheError(
                    f"{npz}: {key} is declared {dtype} {tuple(s)}, not the float {shapes[key]} a {kind} head of {k} "
                    f"classes on {channels} channels has: not this run's heads file"
                )
            total += int(np.prod(s, dtype=np.float64)) * dtype.itemsize
        if total > size:
            raise FeatcacheError(f"{npz}: declares {total} bytes of parameters in a file of {size}: not a heads file")

    try:
        arrays = load_declared(npz, list(shapes), check)
    except FileNotFoundError:
        raise FeatcacheError(f"{npz}: missing: cannot read head {best!r}") from None
    except (OSError, KeyError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        raise FeatcacheError(f"{npz}: cannot read head {best!r} ({type(exc).__name__}: {str(exc)[:200]})") from None
    params = {p: arrays[keys[p]] for p in want}
    standardize = None if kind != "linear" or std is None else (arrays[std["mean"]], arrays[std["std"]])
    return head_from_params(run, best, kind, params, standardize, power, classes, fingerprint)


def describe(head: CamHead, which: str = "the class it predicts") -> str:
    """One sentence saying what a page's class activation maps show."""
    how = (
        "exact: its mean over the positions is the head's logit"
        if head.exact
        else f"the head linearised at the row's pooled vector, its power normalisation (power {head.power:g}) not "
        "being linear; its mean over the positions is still the head's logit"
    )
    return (
        f"Class activation maps of {head.name} ({head.kind} head of the run {head.run}) for {which} ({how}), "
        "over the image as the backbone saw it: untouched where the map is lowest, red to white towards its highest."
    )


def check_cache(head: CamHead, fingerprint: dict[str, Any], classes: list[str], where: str) -> None:
    """Refuse (one line) a cache whose features are not those the head was trained on: another
    fingerprint (backbone, weights, preprocessing) or other classes. ``where`` names the cache."""
    if fingerprint != head.fingerprint:
        raise FeatcacheError(
            f"cam={head.run}: the run was trained on features of another backbone, weights or preprocessing than "
            f"{where}'s"
        )
    if list(classes) != head.classes:
        raise FeatcacheError(
            f"cam={head.run}: the run's classes are not {where}'s ({len(head.classes)} vs {len(classes)})"
        )


def row_cams(
    cache: Any, head: CamHead, index: np.ndarray, classes: np.ndarray | None = None
) -> dict[int, tuple[np.ndarray, int]]:
    """For each listing position of ``index``, the CAM ``(h, w)`` of class ``classes[i]`` (default: the
    head's prediction for that row, the largest spatial mean) and that class; the maps are read through
    the cache's reader (``FeatureCache.iter_maps``), a few rows at a time."""
    index = np.asarray(index, np.int64)
    wanted = {} if classes is None else {int(i): int(k) for i, k in zip(index, classes, strict=True)}
    out: dict[int, tuple[np.ndarray, int]] = {}
    for block_index, block in cache.iter_maps(block_rows=16, indices=index, dtype="float32"):
        for i, grids in zip(block_index.tolist(), head.cam(block), strict=True):
            k = wanted.get(int(i), int(grids.mean(axis=(0, 1)).argmax()))
            out[int(i)] = (grids[..., k], k)
    return out


def upsample(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``grid (h, w)`` bilinearly resized to ``size (H, W)``, each cell's value at its centre (edges
    clamped), float64: the CAM over an image of any size."""
    grid = np.asarray(grid, np.float64)
    h, w = grid.shape

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, pos - lo

    r0, r1, fr = axis(h, size[0])
    c0, c1, fc = axis(w, size[1])
    top = grid[r0][:, c0] * (1 - fc) + grid[r0][:, c1] * fc
    bottom = grid[r1][:, c0] * (1 - fc) + grid[r1][:, c1] * fc
    return top * (1 - fr[:, None]) + bottom * fr[:, None]


def overlay(base: np.ndarray, cam: np.ndarray, alpha: float = CAM_ALPHA) -> np.ndarray:
    """``cam (h, w)`` over the image ``base (H, W, 3)`` uint8 (the image as the backbone saw it, the
    grid covering all of it): the CAM upsampled bilinearly, scaled to [0, 1] over its own range (min to
    max of this map), coloured (black, red, yellow, white) and blended with opacity ``alpha`` times that
    value, so the image is untouched where the CAM is lowest and most covered where it is highest."""
    H, W, _ = base.shape
    v = upsample(cam, (H, W))
    v = (v - v.min()) / (np.ptp(v) or 1.0)
    a = alpha * v[..., None]
    out = (1 - a) * base.astype(np.float64) + a * 255.0 * heat_colours(v)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
