"""``predict --source``: a run's head on new images, their features made exactly as the cached ones.

The trainer never imports the extractor (import-linter keeps the two stages apart: the trainer runs
without the image pipeline, and each stage can change alone). So new images go through the
extractor's public command, ``python -m featcache.extractor SOURCE SCRATCH ...``, in a subprocess,
with the flags that reproduce the head's cache fingerprint (:func:`extractor_flags`: backbone, weights,
resize policy, views, maps dtype, compute dtype). The scratch cache lives in the run directory,
``RUN/predict/<sha256 of the source path, 16 hex>/``, so a second predict of the same source resumes
or reuses it (``overwrite=True`` starts it over, as the extractor's own option does). Its fingerprint
must then have the head's cache identity (checked, not assumed), and its rows are scored by the same
code as cached rows (:func:`featcache.trainer.predict.score_rows`). Labels of the new source are
mapped onto the run's classes by name.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ..shared.backbones import PREPROCESS_SCHEMES, is_model_file
from ..shared.cache import FeatureCache, PooledRows, Recipe, schema
from ..shared.cache.fsutil import sha256_file
from ..shared.errors import FeatcacheError
from . import rundir
from .data import load_rows
from .identity import importable_backbone
from .predict import Prediction, head_entry, load_head, score_rows

SCRATCH_DIR = "predict"  # inside the run directory
SOURCE_HASH_CHARS = 16
EXTRACTOR_MODULE = "featcache.extractor"
CHUNK_BYTES = 4096
TAIL_CHARS = 8192  # the end of the extractor's output, searched for its one-line error
ERROR_PREFIX = "error: "  # how the extractor's command line (shared.cli.run_cli) starts a one-line error
CUSTOM_PREPROCESS = "RGB in [0, 255] -> "  # a model file's module:function preprocessing, as fingerprinted


def is_local(source: str) -> bool:
    """Whether ``source`` names one local path (not a URL such as ``gs://...``, not a glob)."""
    return "://" not in source and not any(ch in source for ch in "*?[")


def scratch_cache(run_dir: Path, source: str | Path) -> Path:
    """Where the features of ``source`` for the run in ``run_dir`` are kept: one folder per source (a
    local path resolved, a URL or glob as written)."""
    key = str(Path(source).resolve()) if is_local(str(source)) else str(source)
    digest = hashlib.sha256(key.encode()).hexdigest()[:SOURCE_HASH_CHARS]
    return Path(run_dir) / SCRATCH_DIR / digest


def _check_scratch(scratch: Path) -> None:
    """Create ``RUN/predict`` and refuse a link (or a non-folder) there or at ``scratch``: the
    extractor would write the features wherever a planted link points, outside the run directory."""
    try:
        scratch.parent.mkdir(exist_ok=True)
    except OSError as exc:
        raise FeatcacheError(f"{scratch.parent}: cannot create it ({exc.strerror})") from None
    for path in (scratch.parent, scratch):
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(mode):
            what = "a link" if stat.S_ISLNK(mode) else "not a folder"
            raise FeatcacheError(f"{path}: {what}; predict --source keeps its features inside the run directory")


def _preprocess_scheme(words: str, where: str) -> str:
    """The ``preprocess=`` value whose fingerprint words are ``words`` (a model-file backbone)."""
    for name, (_, w, _) in PREPROCESS_SCHEMES.items():
        if w == words:
            return name
    if words.startswith(CUSTOM_PREPROCESS):
        return words[len(CUSTOM_PREPROCESS) :]
    raise FeatcacheError(f"{where}: cannot tell which preprocess= made the cache ({words!r})")


def _recorded_file(path: Path, sha: str, what: str, where: str, hint: str) -> Path:
    """``path``, a file named in a run's record, when it is a regular file with the recorded ``sha``
    (checked before anything loads it: a swapped file is never read as the cache's)."""
    if not path.exists():
        raise FeatcacheError(f"{path}: the {what} the run's cache was made with is gone ({where}); {hint}")
    if sha256_file(path) != sha:
        raise FeatcacheError(
            f"{path}: not the {what} the run's cache was made with (its sha256 differs from {sha[:12]}..., "
            f"{where}); {hint}"
        )
    return path


def _model_file_flags(recipe: Recipe, where: str, backbone: str | None, preprocess: str | None) -> list[str]:
    """``--backbone FILE --layer L --preprocess P`` for a cache made from a saved Keras model: the file
    (the recorded one, or ``backbone``) must have the recorded sha256; a ``module:function``
    preprocessing is imported only when the caller names it again as ``preprocess``."""
    assert recipe.model_file is not None
    hint = "pass backbone= a copy of it"
    model = Path(backbone).expanduser() if backbone is not None else Path(recipe.model_file)
    _recorded_file(model, recipe.weights_sha256, "model file", where, hint)
    recorded = _preprocess_scheme(recipe.preprocessing, where)
    if recorded not in PREPROCESS_SCHEMES and preprocess is None:
        raise FeatcacheError(
            f"{where}: the cache was made with preprocess={recorded!r}, a function of your own; featcache imports "
            f"nothing named in a run directory: pass preprocess={recorded!r} to import it"
        )
    if preprocess is not None and preprocess != recorded:
        raise FeatcacheError(
            f"preprocess={preprocess!r}: the run's cache was made with preprocess={recorded!r} ({where})"
        )
    return ["--backbone", str(model), "--layer", str(recipe.layer), "--preprocess", recorded]


def _registered_flags(fp: dict[str, Any], where: str, backbone: str | None, preprocess: str | None) -> list[str]:
    """``--backbone NAME``: the recorded name when it is registered; a ``module:attribute`` spec only
    when the caller names it as ``backbone`` (:func:`identity.importable_backbone`; the fingerprint check
    after extraction says whether it is the one the cache was made with)."""
    if preprocess is not None:
        raise FeatcacheError(
            f"preprocess={preprocess!r}: applies to a model-file backbone; the run's is {fp['backbone']!r}"
        )
    return ["--backbone", importable_backbone(fp, where, backbone)]


def extractor_flags(
    fp: dict[str, Any],
    where: str,
    weights: str | None = None,
    backbone: str | None = None,
    preprocess: str | None = None,
) -> list[str]:
    """The ``featcache-extract`` flags that make features with fingerprint ``fp`` (a run's record of
    its cache; ``where`` names it in errors). ``weights`` replaces a weights file that has moved (its
    sha256 is checked against ``fp`` once the features are made).

    ``fp`` comes from a file that may be someone else's, so nothing it names is imported or loaded on
    its word: a registered backbone is named by its registry name; a ``module:attribute`` backbone or
    preprocessing function must be given again by the caller (``backbone``, ``preprocess``); a model
    or weights file it names is used only when its sha256 is the recorded one."""
    recipe = Recipe.parse(fp, where)
    if recipe.model_file is not None:
        flags = _model_file_flags(recipe, where, backbone, preprocess)
    else:
        flags = _registered_flags(fp, where, backbone, preprocess)
    sha = recipe.weights_sha256
    if weights is not None:
        flags += ["--weights", weights]
    elif recipe.random_seed is not None:
        flags += ["--weights", "random", "--seed", str(recipe.random_seed)]
    elif recipe.weights_source == "file" and recipe.model_file is None and recipe.weights_path is not None:
        path = _recorded_file(Path(recipe.weights_path), sha, "weights file", where, "pass weights= a copy of it")
        flags += ["--weights", str(path)]
    elif recipe.model_file is not None:
        flags += ["--weights", flags[1]]  # the model file carries its weights
    else:
        flags += ["--weights", "imagenet"]
    flags += ["--resize", recipe.resize_policy, "--maps-dtype", recipe.maps_dtype]
    if recipe.augment is not None:
        flags += ["--views", str(recipe.augment.views)]
        # repr, not :g: the fingerprint compares the exact floats (4/3 is not 1.33333)
        flags += ["--crop-scale", "{!r},{!r}".format(*recipe.augment.crop_scale)]
        flags += ["--crop-ratio", "{!r},{!r}".format(*recipe.augment.crop_ratio)]
    flags += ["--feed-dtype", recipe.fed_as]  # a cache made before the choice existed: float32
    # the layer taps and the top input as recorded (a cache made before taps existed: none)
    flags += ["--taps", ",".join(name for name, _ in schema.taps_of(fp)) or "none"]
    flags.append("--keep-top-input" if schema.top_input_of(fp) is not None else "--no-keep-top-input")
    if recipe.compute_dtype == "mixed_float16":
        flags.append("--mixed-precision")
    return flags


def run_extractor(args: list[str], source: str, stream: TextIO, user_module: bool = False) -> None:
    """Run ``python -I -m featcache.extractor ARGS``, copying its output (progress bar, notes, summary) to
    ``stream`` as it comes; raise its one-line error, naming ``source``, when it fails.

    ``-I``: the current directory is not searched for modules (a ``featcache.py`` or a backbone module
    planted beside a downloaded run is never imported). With ``user_module`` (the caller named a
    ``module:attribute`` of their own) ``-P`` instead: their module is found as ``featcache-extract``
    finds it (installed, or on ``PYTHONPATH``), still never from the current directory."""
    cmd = [sys.executable, "-P" if user_module else "-I", "-m", EXTRACTOR_MODULE, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    text = ""
    try:
        # stdout is a BufferedReader (bufsize -1), which typeshed types as IO[bytes]
        while chunk := proc.stdout.read1(CHUNK_BYTES):  # type: ignore[attr-defined]
            part = chunk.decode(errors="replace")
            stream.write(part)
            stream.flush()
            text = (text + part)[-TAIL_CHARS:]
        code = proc.wait()
    except BaseException:  # Ctrl-C reaches the extractor too: let it keep its finished shards
        proc.wait()
        raise
    if code != 0:
        errors = [line for line in text.splitlines() if line.startswith(ERROR_PREFIX)]
        reason = errors[-1][len(ERROR_PREFIX) :] if errors else f"it exited with status {code}"
        raise FeatcacheError(f"{source}: extracting its features failed: {reason}")


def map_labels(rows: PooledRows, new_classes: list[str], run_classes: list[str]) -> tuple[PooledRows, dict[str, int]]:
    """``rows`` with labels renumbered from the new source's ``new_classes`` to the run's ``run_classes``
    by name; rows of a class the run does not know become unlabelled (-1). Returns them and
    ``{unknown class: rows}``."""
    known = {c: k for k, c in enumerate(run_classes)}
    table = np.array([known.get(c, -1) for c in new_classes] + [-1], dtype=np.int32)  # [-1]: label -1 stays -1
    label = table[np.where(rows.label >= 0, rows.label, len(new_classes))]
    unknown: dict[str, int] = {}
    for k, c in enumerate(new_classes):
        n = int(np.sum(rows.label == k))
        if c not in known and n:
            unknown[c] = n
    mapped = PooledRows(rows.pooled, label, rows.id, rows.index, rows.split)
    return mapped, unknown


def predict_source(
    run_dir: Path,
    out: Path,
    source: str | Path,
    head: str | None = None,
    weights: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    stream: TextIO | None = None,
    backbone: str | None = None,
    preprocess: str | None = None,
) -> Prediction:
    """Class probabilities of a run's head (the best unless ``head``) for the images of ``source`` (any
    source the extractor takes: class folders, a CSV, a list, a folder of unlabelled images), written
    to the CSV ``out`` as :func:`~featcache.trainer.predict.predict` writes cached rows. The features
    are made by the extractor into :func:`scratch_cache` (reused by the next predict of the same
    source; ``overwrite`` starts over); its output, and notes, go to ``stream`` (default: stderr).
    ``backbone`` and ``preprocess`` name again a backbone or preprocessing function of the user's own
    (``module:attribute``) or a moved model file: see :func:`extractor_flags`."""
    stream = stream or sys.stderr
    results = rundir.load_results(run_dir)
    name = head or results["best"]
    cfg, model = load_head(run_dir, results, name)
    recorded = rundir.head_cache(results, name)
    fp = recorded["fingerprint"]
    Recipe.parse(fp, f"{Path(run_dir) / rundir.RESULTS}: the fingerprint of the cache of head {name!r}")
    source = str(source)  # a URL or a glob stays as written (Path would fold "gs://" into "gs:/")
    if is_local(source) and not Path(source).exists():
        raise FeatcacheError(f"{source}: no such source of images")
    scratch = scratch_cache(run_dir, source)
    _check_scratch(scratch)
    try:
        flags = extractor_flags(fp, str(recorded["path"]), weights, backbone, preprocess)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:  # an edited results.json
        where = Path(run_dir) / rundir.RESULTS
        raise FeatcacheError(f"{where}: the fingerprint of the cache of head {name!r} is damaged ({exc!r})") from None
    options = [*flags, *([] if progress else ["--no-progress"]), *(["--overwrite"] if overwrite else [])]
    # "--": a source named "-x" or "--overwrite" is a path, not an option
    user_module = any(":" in str(v) and not is_model_file(str(v)) for v in (backbone, preprocess) if v is not None)
    run_extractor([*options, "--", source, str(scratch)], source, stream, user_module)
    cache = FeatureCache(scratch)
    cache.require_complete()
    cache.check_fingerprint(fp)  # the extractor made them as the cached ones, or this says what differs
    rows, unknown = map_labels(load_rows(cache), list(cache.classes), results["classes"])
    if unknown:
        listed = ", ".join(f"{c} ({n})" for c, n in list(unknown.items())[:5])
        stream.write(
            f"note: {sum(unknown.values())} rows of classes the run does not know ({listed}): "
            "predicted, but not counted in the accuracy\n"
        )
    use_tta = bool(head_entry(run_dir, results, name).get("use_tta"))  # the scratch cache has the run's views
    return score_rows(cache, rows, np.arange(len(rows)), cfg, model, results["classes"], Path(out), name, use_tta)
