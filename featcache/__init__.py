"""featcache: compute a backbone's features once into an HDF5 cache, then train many cheap heads on it.

The three things a Python user calls::

    import featcache

    result = featcache.extract("data/sample", "cache/sample", weights="auto")  # stage 1 (TensorFlow)
    cache = featcache.open_cache("cache/sample")                               # read it (numpy, h5py)
    sweep = featcache.train("cache/sample", head=["linear", "mlp"], lr=[1e-3, 1e-2])  # stage 2

and ``cache.dataset(split="train")`` streams ``(features, label)`` into a ``tf.data`` pipeline for a
Keras model of one's own. Each call has the command line's defaults; errors are
:class:`FeatcacheError` whose one-line messages name the file and the keyword argument at fault.

The import name holds three packages (their folders sit at the top of the repository):
``featcache.extractor`` (stage 1), ``featcache.trainer`` (stage 2) and ``featcache.shared`` (the
cache format, the backbone registry and the inspect command).

Importing ``featcache`` loads numpy and h5py only; TensorFlow is imported when a job runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .extractor.api import ExtractResult, extract
from .shared.cache.reader import FeatureCache, PooledRows, open_cache
from .shared.errors import FeatcacheError

__all__ = ["ExtractResult", "FeatcacheError", "FeatureCache", "PooledRows", "extract", "open_cache", "train"]


def train(cache: str | Path, **sweep: Any) -> Any:
    """Train a sweep of heads on ``cache`` (what ``featcache-train CACHE`` does) and return its result.

    ``sweep`` holds the command line's options as keyword arguments, with its defaults: lists
    ``head`` (``"linear"``, ``"mlp"``, ``"map"``), ``lr``, ``weight_decay``, ``hidden``, ``dropout``,
    ``label_smoothing`` (a list, or one value), ``sweep`` (a TOML/JSON sweep file), and settings
    ``epochs``, ``batch_size``, ``patience``, ``seed``, ``standardize``, ``val_fraction``,
    ``max_maps_gb``, ``allow_partial``, ``runs`` (the folder of run directories), ``progress``.
    Heads read pooled vectors ``(N, 1280)`` float32 or maps ``(N, 7, 7, 1280)`` from the cache only.
    """
    try:
        from .trainer import api
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.trainer.api":
            raise
        # TODO(lead, at merge): featcache.trainer.api.train(cache, **settings) -> SweepResult comes
        # from the trainer's restructuring branch; delete this fallback (and _train_fallback) then.
        return _train_fallback(cache, **sweep)
    return api.train(cache, **sweep)


def _train_fallback(
    cache: str | Path,
    *,
    sweep: str | Path | None = None,
    runs: str | Path = "runs",
    progress: bool = True,
    max_maps_gb: float | None = None,
    allow_partial: bool = False,
    log: Any = None,
    **options: Any,
) -> Any:
    """Today's ``featcache.trainer.run.run_sweep`` behind :func:`train`'s signature (temporary).

    Returns a namespace with ``run_dir``, ``results`` (the ``results.json`` dict) and ``best`` (the
    best head's entry of ``results["heads"]``)."""
    import sys
    from types import SimpleNamespace

    from .trainer.run import Settings, run_sweep
    from .trainer.sweep import DEFAULT_GRID, GRID_KEYS, SETTING_KEYS, expand, load_sweep_file

    unknown = sorted(set(options) - set(GRID_KEYS) - set(SETTING_KEYS))
    if unknown:
        raise FeatcacheError(f"train: unknown arguments {', '.join(unknown)}")
    given = {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in options.items() if k in GRID_KEYS}
    grids, file_settings = load_sweep_file(Path(sweep)) if sweep else ([dict(DEFAULT_GRID)], {})
    configs = list(dict.fromkeys(c for g in grids for c in expand({**g, **given})))
    extra = {} if max_maps_gb is None else {"max_maps_gb": max_maps_gb}
    settings = Settings(
        **{**file_settings, **{k: v for k, v in options.items() if k in SETTING_KEYS}},
        allow_partial=allow_partial,
        **extra,
    )
    run_dir, results = run_sweep(
        Path(cache),
        configs,
        settings,
        Path(runs),
        ["featcache.train", str(cache)],
        log=log or (lambda m: print(m, file=sys.stderr)),
        progress=progress,
    )
    best = next(h for h in results["heads"] if h["name"] == results["best"])
    return SimpleNamespace(run_dir=run_dir, results=results, best=best)
