"""Writing and reading a run directory (its format is documented in docs/run-format.md).

A run is built in a hidden staging folder beside its final place (``RUNS/.featcache-run-PID-XXXX``)
and renamed to ``RUNS/YYYYmmdd-HHMMSS`` only once every file is written, so a failed or interrupted
sweep leaves nothing that looks like a result. The staging folder is made before training, so an
unwritable ``runs`` folder is reported before any work.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..shared.cache import load_declared, pid_alive, schema
from ..shared.cache.fsutil import atomic_write_json, fsync_dir
from ..shared.errors import FeatcacheError
from ..shared.runfiles import FORMAT, HEADS, RESULTS, VERSION, VERSION_MULTI, VERSIONS, read_results

__all__ = ["FORMAT", "HEADS", "RESULTS", "VERSION", "VERSION_MULTI", "VERSIONS"]  # one definition, in shared
from .heads import TAPS

LEADERBOARD = "leaderboard.txt"
PLOT = "plot.png"
BEST_HEAD = "best_head.keras"
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
        # numpy 2's stub checks **kwds against savez's allow_pickle: bool too (not numpy 1.26's)
        np.savez(fh, **arrays)  # type: ignore[arg-type, unused-ignore]
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
    results = read_results(run_dir)  # a regular file, JSON, a finished run of a version read here
    version = results["version"]
    if version == VERSION_MULTI and not isinstance(results.get("caches"), dict):
        raise FeatcacheError(f"{path}: caches: a run of version {VERSION_MULTI} lists its caches")
    heads = results.get("heads")
    if not isinstance(heads, list) or not all(isinstance(h, dict) and isinstance(h.get("name"), str) for h in heads):
        raise FeatcacheError(f"{path}: heads: expected a list of heads with names")
    if not isinstance(results.get("best"), str) or results["best"] not in {h["name"] for h in heads}:
        raise FeatcacheError(f"{path}: best: {results.get('best')!r} is not one of the run's heads")
    try:
        check_results(results)
    except _Bad as exc:
        raise FeatcacheError(f"{path}: {exc}: not a run featcache wrote (edited by hand?)") from None
    return results


# --- what a reader of results.json relies on, checked once where the file is read -----------------------


class _Bad(Exception):
    """A value of results.json that is not what featcache writes: ``where`` (a dotted key) and what was expected."""

    def __init__(self, where: str, expected: str):
        super().__init__(f"{where}: expected {expected}")


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_int(v: Any, lo: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _want(ok: bool, where: str, expected: str) -> None:
    if not ok:
        raise _Bad(where, expected)


def _dict(v: Any, where: str) -> dict[str, Any]:
    _want(isinstance(v, dict), where, "an object")
    return v


def _strings(v: Any, where: str, *, non_empty: bool = False) -> list[str]:
    _want(isinstance(v, list) and all(isinstance(s, str) for s in v), where, "a list of strings")
    _want(bool(v) or not non_empty, where, "at least one")
    return v


def _opt_num(d: dict[str, Any], key: str, where: str) -> None:
    _want(d.get(key) is None or _is_num(d[key]), f"{where}.{key}", "a number or null")


def _check_identity(v: Any, where: str) -> None:
    d = _dict(v, where)
    _want(isinstance(d.get("path"), str), f"{where}.path", "the cache's path")
    fp = _dict(d.get("fingerprint"), f"{where}.fingerprint")
    shape = fp.get("output_shape")
    _want(
        isinstance(shape, list) and 1 <= len(shape) <= 3 and all(_is_int(s, 1) for s in shape),
        f"{where}.fingerprint.output_shape",
        "1 to 3 whole numbers >= 1",
    )
    _strings(d.get("classes"), f"{where}.classes")
    for key in ("listing_sha256", "num_inputs", "generation"):
        _want(key in d, f"{where}.{key}", "a value (null when unknown)")
    _want(
        d.get("listing_sha256") is None or isinstance(d["listing_sha256"], str), f"{where}.listing_sha256", "a string"
    )
    _want(d.get("num_inputs") is None or _is_int(d["num_inputs"]), f"{where}.num_inputs", "a whole number")
    _want(d.get("generation") is None or _is_int(d["generation"]), f"{where}.generation", "a whole number or null")
    shards = _dict(d.get("shards"), f"{where}.shards")
    _want(all(isinstance(s, str) for s in shards.values()), f"{where}.shards", "shard file -> sha256 strings")


def _check_head(h: dict[str, Any], where: str) -> None:
    from .heads import HEAD_KINDS
    from .settings import RULES

    cfg = _dict(h.get("config"), f"{where}.config")
    _want(cfg.get("kind") in HEAD_KINDS, f"{where}.config.kind", f"one of {', '.join(HEAD_KINDS)}")
    for key in ("lr", "weight_decay", "dropout", "label_smoothing", "c", "power"):
        _want(key not in cfg or (_is_num(cfg[key]) and cfg[key] >= 0), f"{where}.config.{key}", "a number >= 0")
    _want("hidden" not in cfg or _is_int(cfg["hidden"]), f"{where}.config.hidden", "a whole number >= 0")
    for key in ("pool", "map_augment"):
        if key in cfg:
            try:
                RULES[key](cfg[key])
            except ValueError as exc:
                raise _Bad(f"{where}.config.{key}", f"a known value ({exc})") from None
    _want(set(cfg) <= {"name", "kind", *RULES}, f"{where}.config", "only head settings")
    epochs: Any = h.get("epochs")  # checked next
    _want(isinstance(epochs, list) and all(isinstance(e, dict) for e in epochs), f"{where}.epochs", "a list of objects")
    for i, e in enumerate(epochs):
        _want(_is_int(e.get("epoch"), 1), f"{where}.epochs[{i}].epoch", "a whole number >= 1")
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            _opt_num(e, key, f"{where}.epochs[{i}]")
    _want(_is_int(h.get("best_epoch"), 0), f"{where}.best_epoch", "a whole number")
    _want(_is_num(h.get("val_acc")), f"{where}.val_acc", "a number")
    for key in ("val_loss", "test_acc", "test_loss"):
        _want(key in h, f"{where}.{key}", "a value (null without those rows)")
    _want(_is_num(h["val_loss"]), f"{where}.val_loss", "a number")
    for key in ("test_acc", "test_loss", "val_acc_tta", "test_acc_tta", "group_wall_seconds"):
        _opt_num(h, key, where)
    _want(not h.get("use_tta") or _is_num(h.get("val_acc_tta")), f"{where}.val_acc_tta", "a number (use_tta is set)")
    _want(h.get("views", 1) is None or _is_int(h.get("views", 1), 1), f"{where}.views", "a whole number >= 1")
    for key in ("cache", "backbone"):
        _want(h.get(key) is None or isinstance(h[key], str), f"{where}.{key}", "a string")


def _check_confusion(results: dict[str, Any], n: int) -> None:
    full = results.get("best_confusion_test")
    if full is not None:
        _want(
            isinstance(full, list)
            and len(full) == n
            and all(isinstance(r, list) and len(r) == n and all(_is_int(c) for c in r) for r in full),
            "best_confusion_test",
            f"null or {n} rows of {n} counts (one per class)",
        )
    top = results.get("best_confusion_test_top")
    if top is not None:
        t = _dict(top, "best_confusion_test_top")
        _want(t.get("classes") == n, "best_confusion_test_top.classes", f"{n}, the classes")
        for key in ("true", "predicted", "correct"):
            v = t.get(key)
            _want(
                isinstance(v, list) and len(v) == n and all(map(_is_int, v)),
                f"best_confusion_test_top.{key}",
                f"{n} counts",
            )
        cells = t.get("top")
        _want(
            isinstance(cells, list)
            and all(
                isinstance(c, list) and len(c) == 3 and all(map(_is_int, c)) and c[0] < n and c[1] < n for c in cells
            ),
            "best_confusion_test_top.top",
            "a list of [true, predicted, count] cells",
        )


def _check_standardize(v: Any, where: str) -> None:
    if v is not None:
        d = _dict(v, where)
        _want(isinstance(d.get("mean"), str) and isinstance(d.get("std"), str), where, "null or {mean: key, std: key}")


def check_results(results: dict[str, Any]) -> None:
    """Raise :class:`_Bad` at the first value a reader of ``results`` (predict, export, report, runs, the
    Python API) relies on that is not of the type and shape featcache writes."""
    from .settings import RULES

    _strings(results.get("command", []), "command")
    _check_identity(results.get("cache"), "cache")
    if results.get("version") == VERSION_MULTI:
        for label, identity in _dict(results.get("caches"), "caches").items():
            _check_identity(identity, f"caches.{label}")
    n = len(_strings(results.get("classes"), "classes", non_empty=True))
    _want(len(set(results["classes"])) == n, "classes", "distinct class names")
    splits = _dict(results.get("splits"), "splits")
    for key in ("train", "val", "test"):
        _want(_is_int(splits.get(key)), f"splits.{key}", "a whole number of rows")
    settings = _dict(results.get("settings"), "settings")
    for key in ("val_fraction", "allow_partial"):
        _want(key in settings, f"settings.{key}", "a value (every run records it)")
    for key, value in settings.items():
        if key in RULES:
            try:
                RULES[key](value)
            except ValueError as exc:
                raise _Bad(f"settings.{key}", f"a valid value ({value!r} {exc})") from None
    _strings(results.get("notes", []), "notes")
    _want(
        results.get("random_weights") is None or isinstance(results["random_weights"], bool),
        "random_weights",
        "true or false",
    )
    _want(_is_num(results.get("wall_seconds")), "wall_seconds", "a number")
    _check_confusion(results, n)
    if results.get("best_test_metrics") is not None:
        _dict(results["best_test_metrics"], "best_test_metrics")
    for i, h in enumerate(results["heads"]):
        _check_head(h, f"heads[{i}] ({h['name']})")
    for key in ("baselines",):
        rows = results.get(key) or []
        _want(isinstance(rows, list) and all(isinstance(r, dict) for r in rows), key, "a list of objects")
        for i, r in enumerate(rows):
            _want(isinstance(r.get("name"), str), f"{key}[{i}].name", "a string")
            _want(_is_num(r.get("val_acc")), f"{key}[{i}].val_acc", "a number")
            _opt_num(r, "test_acc", f"{key}[{i}]")
    if results.get("concat") is not None:
        concat = _dict(results["concat"], "concat")
        _strings(concat.get("caches"), "concat.caches")
        heads: Any = concat.get("heads")  # checked next
        _want(
            isinstance(heads, list) and all(isinstance(h, dict) and isinstance(h.get("name"), str) for h in heads),
            "concat.heads",
            "a list of heads with names",
        )
        for i, h in enumerate(heads):
            _check_head(h, f"concat.heads[{i}] ({h['name']})")
    index = _dict(results.get("heads_file"), "heads_file")
    params = _dict(index.get("params"), "heads_file.params")
    for head, keys in params.items():
        _want(
            isinstance(keys, dict) and all(isinstance(k, str) for k in keys.values()),
            f"heads_file.params.{head}",
            "parameter name -> npz key",
        )
    std = index.get("standardize")
    if results.get("version") == VERSION_MULTI:
        for label, pair in _dict(std, "heads_file.standardize").items():
            _check_standardize(pair, f"heads_file.standardize.{label}")
    else:
        _check_standardize(std, "heads_file.standardize")


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


def input_width(cfg: dict[str, Any], fingerprint: dict[str, Any]) -> int:
    """The width of a pooled head's input on a cache of ``fingerprint`` (the maps' channels for a map
    head): the pooled maps' channels, plus the layer taps' for features ``taps``."""
    channels = int(fingerprint["output_shape"][-1])
    if cfg.get("features") == TAPS:
        channels += sum(w for _, w in schema.taps_of(fingerprint))
    return channels


def expected_shapes(cfg: dict[str, Any], channels: int, classes: int) -> dict[str, tuple[int, ...]]:
    """The parameters a head of config ``cfg`` on ``channels`` channels with ``classes`` outputs has in
    heads.npz, with their shapes, as its kind states them (``HeadKind.shapes``; docs/run-format.md,
    heads.npz). A ``top`` head has its copy of the backbone's last block too, ``"<layer>/<k>"``, shaped
    as the backbone's."""
    from .heads import HEAD_KINDS
    from .sweep import HeadConfig

    shapes = HEAD_KINDS[cfg["kind"]].shapes
    assert shapes is not None, "every registered kind states its parameters"
    return shapes(HeadConfig.of(cfg), channels, classes)


def _check_declared(
    path: Path, results: dict[str, Any], name: str, keys: dict[str, str], std: Any, declared: dict[str, Any], size: int
) -> None:
    """Refuse (one line) parameters that are not exactly those of head ``name``'s config on its cache's
    channels and the run's classes (:func:`expected_shapes`: names, shapes, floating point), or whose
    declared bytes exceed the file's; checked on the ``.npy`` headers, before anything is allocated (a
    few bytes of zip can declare terabytes)."""
    entry = next(h for h in results["heads"] if h["name"] == name)
    fp = head_cache(results, name)["fingerprint"]
    channels = input_width(entry["config"], fp)
    n = len(results["classes"])
    want = {keys[p]: shape for p, shape in expected_shapes(entry["config"], channels, n).items() if p in keys}
    missing = sorted(set(expected_shapes(entry["config"], channels, n)) - set(keys))
    if missing:
        raise FeatcacheError(f"{path}: head {name!r} lists no parameter {missing[0]} (results.json heads_file.params)")
    if std is not None:  # the sweep's standardisation: of the pooled maps, or of the maps and the taps
        widths = {int(fp["output_shape"][-1]) + t for t in (0, sum(w for _, w in schema.taps_of(fp)))}
        shape = tuple(declared[std["mean"]][0]) if std["mean"] in declared else ()
        width = shape[0] if len(shape) == 1 and shape[0] in widths and shape[0] >= channels else channels
        want.update({std["mean"]: (width,), std["std"]: (width,)})
    total = 0
    for key, (shape, dtype) in declared.items():
        expected = want.get(key, shape)
        total += int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        if tuple(shape) != expected or dtype.kind != "f":
            raise FeatcacheError(
                f"{path}: {key} is declared {dtype} {shape}, not the float {expected} a {entry['config']['kind']} head "
                f"of {n} classes on {channels} channels has: not this run's heads file"
            )
    if total > size:
        raise FeatcacheError(f"{path}: declares {total} bytes of parameters in a file of {size}: not a heads file")


def head_params(run_dir: Path, results: dict[str, Any], name: str) -> tuple[dict[str, np.ndarray], Any]:
    """Head ``name``'s parameters and the pooled standardisation ``(mean, std)`` (or None), from heads.npz.

    The file is read by :func:`featcache.shared.cache._npz.load_declared` (a regular file, not through a
    link, a FIFO or device refused without blocking, never unpickled) and the arrays' declared shapes are
    checked against ``results`` (:func:`_check_declared`) before any is read."""
    path = Path(run_dir) / HEADS
    keys = results["heads_file"]["params"].get(name)
    if keys is None:
        raise FeatcacheError(f"{path}: results.json lists no parameters for head {name!r}")
    label = head_cache_label(results, name)
    try:
        std = results["heads_file"]["standardize"]
        std = std if label is None else std[label]
        wanted = [*keys.values(), *([] if std is None else [std["mean"], std["std"]])]
        arrays = load_declared(
            path, wanted, lambda declared, size: _check_declared(path, results, name, keys, std, declared, size)
        )
        weights = {p: arrays[k] for p, k in keys.items()}
        mean_std = None if std is None else (arrays[std["mean"]], arrays[std["std"]])
        if mean_std is not None:  # the head's own columns (the taps come after the maps')
            config = next(h for h in results["heads"] if h["name"] == name)["config"]
            width = input_width(config, head_cache(results, name)["fingerprint"])
            mean_std = (mean_std[0][:width], mean_std[1][:width])
    except FileNotFoundError:
        raise FeatcacheError(f"{path}: missing: cannot read head {name!r}") from None
    except (OSError, KeyError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        raise FeatcacheError(f"{path}: cannot read head {name!r} ({type(exc).__name__}: {str(exc)[:200]})") from None
    return weights, mean_std
