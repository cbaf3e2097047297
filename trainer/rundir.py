"""Writing and reading a run directory (its format is documented in docs/run-format.md).

A run is built in a hidden staging folder beside its final place (``RUNS/.featcache-run-PID-XXXX``)
and renamed to ``RUNS/YYYYmmdd-HHMMSS`` only once every file is written, so a failed or interrupted
sweep leaves nothing that looks like a result. The staging folder is made before training, so an
unwritable ``runs`` folder is reported before any work.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..shared.cache.fsutil import atomic_write_json, fsync_dir, open_input, read_regular
from ..shared.cache.lock import pid_alive
from ..shared.cache.npz import declared_arrays
from ..shared.errors import FeatcacheError

FORMAT = "featcache-train-results"
VERSION = 2  # 1: featcache 0.1.0 (heads.npz keys g<N>_<param>, no cache identity); 2: this layout
# A run on several caches (``caches``, heads tagged with theirs): a version of its own, so that a reader
# of version 2 refuses it rather than scoring a head on another backbone's features.
VERSION_MULTI = 3
VERSIONS = (VERSION, VERSION_MULTI)
RESULTS = "results.json"
LEADERBOARD = "leaderboard.txt"
PLOT = "plot.png"
BEST_HEAD = "best_head.keras"
HEADS = "heads.npz"
STAGING_PREFIX = ".featcache-run-"
MEAN_KEY, STD_KEY = "standardize/mean", "standardize/std"


def param_key(head: str, param: str) -> str:
    """``heads.npz`` key of parameter ``param`` of head ``head``: ``"<head name>/<param>"``."""
    return f"{head}/{param}"


def staging_pid(path: Path) -> int | None:
    """The process id in a staging folder's name (``.featcache-run-<pid>-<random>``), else None."""
    name = Path(path).name
    if not name.startswith(STAGING_PREFIX):
        return None
    pid = name[len(STAGING_PREFIX) :].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def remove_dead_staging(runs_root: Path) -> list[Path]:
    """Delete the staging folders of sweeps whose process is gone (killed with ``kill -9``)."""
    removed = []
    for p in runs_root.glob(f"{STAGING_PREFIX}*"):
        pid = staging_pid(p)
        if p.is_dir() and pid is not None and not pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def stage(runs_root: Path) -> Path:
    """A new empty staging folder in ``runs_root`` (created if missing); raises a one-line error naming
    the folder when it cannot be written."""
    runs_root = Path(runs_root)
    try:
        runs_root.mkdir(parents=True, exist_ok=True)
        remove_dead_staging(runs_root)
        return Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=runs_root))
    except OSError as exc:
        raise FeatcacheError(
            f"{runs_root}: cannot create a run directory there ({exc.strerror or exc}); choose a writable runs folder"
        ) from None


def commit(staging: Path, runs_root: Path) -> Path:
    """Rename the finished ``staging`` folder to ``runs_root/YYYYmmdd-HHMMSS`` (``-2``, ``-3``... when
    taken: never an earlier run's folder) and return that path."""
    stem = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        path = Path(runs_root) / (stem if n == 1 else f"{stem}-{n}")
        if path.exists():
            continue
        try:
            os.rename(staging, path)
        except OSError:  # taken in the meantime (EEXIST / ENOTEMPTY)
            continue
        fsync_dir(runs_root)
        return path
    raise FeatcacheError(f"{runs_root}: cannot name a new run directory (1000 runs this second?)")


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an ``OSError`` while writing ``path`` (disk full, quota) into a one-line error naming it."""
    try:
        yield
    except OSError as exc:
        raise FeatcacheError(f"{path}: cannot write ({exc.strerror or exc}); nothing of this run is kept") from None


def save_heads(
    path: Path, weights: dict[str, dict[str, np.ndarray]], mean_std: Any, by_cache: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write every head's parameters to ``heads.npz`` under :func:`param_key` names (and the pooled
    standardisation under :data:`MEAN_KEY`, :data:`STD_KEY`); return the index for ``results.json``:
    ``{"params": {head: {param: key}}, "standardize": {"mean": key, "std": key} | None}``.

    A run on several caches passes ``by_cache`` (cache label -> ``(mean, std)`` or None) instead of
    ``mean_std``: each cache's standardisation is stored under ``"<label>/standardize/..."`` and
    ``standardize`` maps each label to its ``{"mean": key, "std": key}`` or None."""
    arrays = {param_key(h, p): a for h, ps in weights.items() for p, a in ps.items()}
    index: dict[str, Any] = {"params": {h: {p: param_key(h, p) for p in ps} for h, ps in weights.items()}}

    def store(prefix: str, pair: Any) -> dict[str, str] | None:
        if pair is None:
            return None
        keys = {"mean": prefix + MEAN_KEY, "std": prefix + STD_KEY}
        arrays[keys["mean"]], arrays[keys["std"]] = pair
        return keys

    if by_cache is None:
        index["standardize"] = store("", mean_std)
    else:
        index["standardize"] = {label: store(f"{label}/", pair) for label, pair in by_cache.items()}
    with writing(path), open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return index


def write_text(path: Path, text: str) -> None:
    with writing(path):
        path.write_text(text)


def write_results(path: Path, results: dict[str, Any]) -> None:
    with writing(path):
        atomic_write_json(path, results)


def load_results(run_dir: Path) -> dict[str, Any]:
    """``results.json`` of a finished run, refusing other files and other format versions."""
    path = Path(run_dir) / RESULTS
    try:
        # never through a link, never a FIFO (which would block the read): run folders are data too
        results = json.loads(read_regular(path))
    except FileNotFoundError:
        raise FeatcacheError(f"{path}: no results: not a finished featcache-train run") from None
    except OSError as exc:
        raise FeatcacheError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise FeatcacheError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(results, dict) or results.get("format") != FORMAT or not results.get("complete"):
        raise FeatcacheError(f"{path}: not a finished featcache-train run")
    version = results.get("version")
    if version == 1:
        raise FeatcacheError(
            f"{path}: a run of format version 1 (featcache 0.1.0), which records no identity of its cache; "
            "train it again (its best_head.keras still loads with keras.models.load_model)"
        )
    if version not in VERSIONS:
        raise FeatcacheError(
            f"{path}: run format version {version!r} is not one this featcache reads ({', '.join(map(str, VERSIONS))})"
        )
    if version == VERSION_MULTI and not isinstance(results.get("caches"), dict):
        raise FeatcacheError(f"{path}: caches: a run of version {VERSION_MULTI} lists its caches")
    heads = results.get("heads")
    if not isinstance(heads, list) or not all(isinstance(h, dict) and isinstance(h.get("name"), str) for h in heads):
        raise FeatcacheError(f"{path}: heads: expected a list of heads with names")
    if results.get("best") not in {h["name"] for h in heads}:
        raise FeatcacheError(f"{path}: best: {results.get('best')!r} is not one of the run's heads")
    return results


def head_cache_label(results: dict[str, Any], name: str) -> str | None:
    """The label of the cache head ``name`` was trained on in a run on several caches, else None."""
    if "caches" not in results:
        return None
    entry = next((h for h in results["heads"] if h["name"] == name), None)
    if entry is None:  # no such head: the caller says so
        return None
    label = entry.get("cache")
    if label not in results["caches"]:
        raise FeatcacheError(f"{RESULTS}: head {name!r} names no cache of the run ({label!r})")
    return label


def head_cache(results: dict[str, Any], name: str) -> dict[str, Any]:
    """The identity (``results.json``'s ``cache`` form, see identity.cache_identity) of the cache head
    ``name`` was trained on: the run's only cache, or, in a run on several, the head's own."""
    label = head_cache_label(results, name)
    return results["cache"] if label is None else results["caches"][label]


def _check_declared(path: Path, results: dict[str, Any], name: str, declared: dict[str, Any]) -> None:
    """Refuse (one line) a parameter whose declared shape no head of ``name``'s config can have: more than
    2 axes, or an axis longer than the widest a head has (the cache's channels, the classes, or a map
    head's pooled width, ``hidden`` times the multiscale regions), or not floating point; checked on
    the ``.npy`` headers, before anything is allocated (a few bytes of zip can declare terabytes)."""
    from .pooling import MULTISCALE

    entry = next((h for h in results["heads"] if h["name"] == name), {"config": {}})
    channels = int(head_cache(results, name)["fingerprint"]["output_shape"][-1])
    hidden = int(entry["config"].get("hidden") or 0)
    widest = max(channels, len(results["classes"]), hidden * sum(s * s for s in MULTISCALE), 1)
    for key, (shape, dtype) in declared.items():
        if len(shape) > 2 or any(d > widest for d in shape) or dtype.kind != "f":
            raise FeatcacheError(
                f"{path}: {key} is declared {dtype} {shape}, which no head of {len(results['classes'])} classes on "
                f"{channels} channels has (at most 2 axes of {widest}, floating point): not this run's heads file"
            )


def head_params(run_dir: Path, results: dict[str, Any], name: str) -> tuple[dict[str, np.ndarray], Any]:
    """Head ``name``'s parameters and the pooled standardisation ``(mean, std)`` (or None), from heads.npz.

    The file is opened as an input (a FIFO or device refused without blocking) and the arrays' declared
    shapes are checked against ``results`` (:func:`_check_declared`) before any is read."""
    path = Path(run_dir) / HEADS
    keys = results["heads_file"]["params"].get(name)
    if keys is None:
        raise FeatcacheError(f"{path}: results.json lists no parameters for head {name!r}")
    label = head_cache_label(results, name)
    try:
        std = results["heads_file"]["standardize"]
        std = std if label is None else std[label]
        wanted = [*keys.values(), *([] if std is None else [std["mean"], std["std"]])]
        with os.fdopen(open_input(path), "rb") as fh:
            with zipfile.ZipFile(fh) as z:
                declared = declared_arrays(z, wanted)
            _check_declared(path, results, name, declared)
            fh.seek(0)
            with np.load(fh, allow_pickle=False) as z:
                weights = {p: z[k] for p, k in keys.items()}
                mean_std = None if std is None else (z[std["mean"]], z[std["std"]])
    except FileNotFoundError:
        raise FeatcacheError(f"{path}: missing: cannot read head {name!r}") from None
    except (OSError, KeyError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        raise FeatcacheError(f"{path}: cannot read head {name!r} ({type(exc).__name__}: {str(exc)[:200]})") from None
    return weights, mean_std


def importable_backbone(fp: dict[str, Any], where: str, backbone: str | None = None) -> str:
    """The backbone name that may be handed to the registry (which imports a ``module:attribute``) for
    a run's recorded cache fingerprint ``fp``: the recorded name when it is registered; else only a
    ``backbone`` the caller names (``where`` names the record in errors). A run directory may be someone
    else's: nothing it names is imported on its word."""
    from ..shared.backbones import names

    name = str(fp["backbone"])
    if backbone is not None:
        if backbone in names() and backbone != name:
            raise FeatcacheError(f"backbone={backbone!r}: the run's cache was made with backbone {name!r} ({where})")
        return backbone
    if name not in names():
        raise FeatcacheError(
            f"{where}: the cache was made with backbone {name!r}, which is not registered; featcache imports "
            "nothing named in a run directory: pass backbone=MODULE:ATTRIBUTE (the spec it was made with)"
        )
    return name
