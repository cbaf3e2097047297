"""Every default of a sweep, stated once, and the one check every setting goes through.

The command line, a sweep file and the Python API (:func:`featcache.trainer.api.train`) all build
their :class:`Settings` and grids through :func:`make_settings` and :func:`check_value`, so a value
refused by one is refused by all, before any training, with a one-line :class:`SettingError` naming
the file (or the argument) and the reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..shared.errors import FeatcacheError
from .heads import FEATURE_SETS, HEAD_KINDS, MAP_AUGMENTS, MAP_POOLS, NO_AUGMENT, POOLED
from .heads.logreg import DEFAULT_CS

AUTO_FOLDS = "auto"


@dataclass(frozen=True)
class Settings:
    """Training settings shared by every head of a sweep (the defaults here are the only ones)."""

    epochs: int = 30
    batch_size: int = 256
    patience: int = 5
    seed: int = 0
    standardize: bool = True
    val_fraction: float = 0.1
    max_memory_gb: float = 8.0  # inputs held in memory up to this; beyond, streamed from the shards
    stream: bool = False  # stream the inputs from the shards whatever their size
    allow_partial: bool = False
    views: bool = True  # on a cache with views: pooled heads train on them and are also scored with TTA
    baselines: bool = True  # the k-NN head and the ensemble beside the sweep
    # closed-form heads picked by k-fold cross-validation over train+val (trainer.cv): "auto" (when val is
    # small), 0 (never: on val), or a fold count
    folds: int | str = AUTO_FOLDS


DEFAULTS = Settings()
SETTING_KEYS = tuple(f.name for f in fields(Settings))
# Settings a sweep file may hold (the others are per-machine: given on the command line or the API).
FILE_SETTING_KEYS = (
    "epochs",
    "batch_size",
    "patience",
    "seed",
    "standardize",
    "val_fraction",
    "views",
    "baselines",
    "folds",
)
GRID_KEYS = (
    "head",
    "lr",
    "weight_decay",
    "hidden",
    "dropout",
    "label_smoothing",
    "c",
    "power",
    "pool",
    "map_augment",
    "features",
)
# The default sweep is what the CIFAR-10 dev table (docs/quality.md) shows to be worth its time: the
# L-BFGS logistic-regression path on square-rooted features (9 C values, one warm-started pass; the
# square root never lost to the raw features there) beside one SGD linear head; MLPs and map heads
# cost 10-100x more there and picked no better model.
DEFAULT_GRID: dict[str, list[Any]] = {
    "head": ["logreg", "linear"],
    "lr": [1e-3],
    "weight_decay": [0.0],
    "hidden": [256],
    "dropout": [0.0],
    "label_smoothing": [0.0],
    "c": list(DEFAULT_CS),
    "power": [0.5],
    "pool": ["mean"],  # map heads: +4 points over attention on the dev set (docs/quality.md, "Map heads")
    "map_augment": [NO_AUGMENT],
    "features": [POOLED],  # taps: see docs/trainer.md, "Feature sets"
}
DEFAULT_RUNS = Path("runs")
DEFAULT_TOP = 10


class SettingError(FeatcacheError):
    """A sweep setting or grid value that cannot be used. ``source`` is the sweep file it came from,
    or None for a Python argument (the command line shows it as its ``--flag``)."""

    def __init__(self, key: str, value: Any, reason: str, source: Path | None = None):
        self.key, self.value, self.reason, self.source = key, value, reason, source
        where = f"{source}: {key} = {value!r}" if source is not None else f"{key}={value!r}"
        super().__init__(f"{where}: {reason}")


def _whole(minimum: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        integral = isinstance(v, int) or (isinstance(v, float) and v.is_integer())
        if isinstance(v, bool) or not integral or v < minimum:
            raise ValueError(f"must be a whole number >= {minimum}")
        return int(v)

    return check


def _real(lo: float, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = True) -> Callable[[Any], float]:
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    reason = f"must be a number in {left}{lo:g}, {hi:g}{right}"

    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(reason)
        if v < lo or (lo_open and v == lo) or v > hi or (hi_open and v == hi):
            raise ValueError(reason)
        return float(v)

    return check


def _flag(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("must be true or false")
    return v


def _folds(v: Any) -> int | str:
    """``"auto"``, 0 (off) or a whole number of folds >= 2."""
    if v == AUTO_FOLDS:
        return v
    integral = isinstance(v, int) or (isinstance(v, float) and v.is_integer())
    if isinstance(v, bool) or not integral or v < 0 or v == 1:
        raise ValueError(f"must be {AUTO_FOLDS}, 0 (pick on val) or a whole number of folds >= 2")
    return int(v)


def _head_kind(v: Any) -> str:
    if v not in HEAD_KINDS:
        raise ValueError(f"unknown head kind; choose from {', '.join(HEAD_KINDS)}")
    return v


def _pool(v: Any) -> str:
    if not isinstance(v, str) or v not in MAP_POOLS:
        raise ValueError(f"unknown map pooling; choose from {', '.join(MAP_POOLS)}")
    return v


def _features(v: Any) -> str:
    if not isinstance(v, str) or v not in FEATURE_SETS:
        raise ValueError(f"unknown feature set; choose from {', '.join(FEATURE_SETS)}")
    return v


def _map_augment(v: Any) -> str:
    """``"none"`` or augmentation names joined by ``+``, normalised to the order of ``MAP_AUGMENTS``."""
    names = v.split("+") if isinstance(v, str) else [None]
    if v == NO_AUGMENT:
        return v
    if any(n not in MAP_AUGMENTS for n in names) or len(set(names)) != len(names):
        raise ValueError(f"must be {NO_AUGMENT} or names joined by +, each once, from {', '.join(MAP_AUGMENTS)}")
    return "+".join(n for n in MAP_AUGMENTS if n in names)


RULES: dict[str, Callable[[Any], Any]] = {
    "epochs": _whole(1),
    "batch_size": _whole(1),
    "patience": _whole(1),
    "seed": _whole(0),
    "standardize": _flag,
    "val_fraction": _real(0, 1, lo_open=True),
    "max_memory_gb": _real(0, lo_open=True),
    "stream": _flag,
    "allow_partial": _flag,
    "views": _flag,
    "baselines": _flag,
    "folds": _folds,
    "head": _head_kind,
    "lr": _real(0, lo_open=True),
    "weight_decay": _real(0),
    "hidden": _whole(1),
    "dropout": _real(0, 1),
    "label_smoothing": _real(0, 1),
    "c": _real(0, lo_open=True),
    "power": _real(0, 1, lo_open=True, hi_open=False),
    "pool": _pool,
    "map_augment": _map_augment,
    "features": _features,
}


def check_value(key: str, value: Any, source: Path | None = None) -> Any:
    """``value`` of setting or grid key ``key``, normalised (``2.0`` -> ``2`` for whole numbers), or a
    :class:`SettingError`. Strings are never numbers here: the command line parses its text first."""
    try:
        return RULES[key](value)
    except ValueError as exc:
        raise SettingError(key, value, str(exc), source) from None


def make_settings(values: Mapping[str, Any], source: Path | None = None) -> Settings:
    """:class:`Settings` from ``values`` (missing keys take :data:`DEFAULTS`), every value checked."""
    unknown = sorted(set(values) - set(SETTING_KEYS))
    if unknown:
        raise SettingError(
            unknown[0], values[unknown[0]], f"unknown setting; settings are {', '.join(SETTING_KEYS)}", source
        )
    return Settings(**{k: check_value(k, v, source) for k, v in values.items()})
