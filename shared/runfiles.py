"""Reading a run directory's files, for every stage alike (no TensorFlow, no trainer import).

A run directory (docs/run-format.md) may be someone else's: ``results.json`` is read as a regular
file (never through a link, never a FIFO), and ``heads.npz`` through
:func:`featcache.shared.cache._npz.load_declared` (declared shapes checked before anything is inflated,
never unpickled). The trainer's loader (``trainer/rundir.py``) checks the rest of ``results.json``;
``featcache-inspect`` reads a run's best head here (``shared/inspection/cam.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .cache.fsutil import read_regular
from .errors import FeatcacheError

FORMAT = "featcache-train-results"
VERSION = 2  # 1: featcache 0.1.0 (heads.npz keys g<N>_<param>, no cache identity); 2: this layout
# A run on several caches (``caches``, heads tagged with theirs): a version of its own, so that a reader
# of version 2 refuses it rather than scoring a head on another backbone's features.
VERSION_MULTI = 3
VERSIONS = (VERSION, VERSION_MULTI)
RESULTS = "results.json"
HEADS = "heads.npz"


def read_results(run_dir: str | Path) -> dict[str, Any]:
    """``results.json`` of a finished run as a dict, refusing (one line naming the file) a missing or
    unreadable file, a link or FIFO, invalid JSON, another format, an unfinished run and format versions
    this featcache does not read. What is inside is checked by its reader."""
    path = Path(run_dir) / RESULTS
    try:
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
    return results
