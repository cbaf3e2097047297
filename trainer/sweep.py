"""The sweep as data: a grid of head configurations, from Python lists, command-line lists or a
TOML/JSON file, and the one place where all of them are checked (:func:`resolve_sweep`).

A sweep file holds the same keys as the command line's list options, at the top level and/or in
``[[grid]]`` tables; each table (or the top level when there is none) is expanded as a Cartesian
product and the results are concatenated::

    epochs = 40
    [[grid]]
    head = ["linear"]
    lr = [0.001, 0.003, 0.01]
    weight_decay = [0, 1e-4]
    [[grid]]
    head = ["mlp"]
    hidden = [256, 512]
    dropout = [0, 0.2]
    lr = [0.001]

Keys a head kind does not use (``hidden`` and ``dropout`` for linear heads; see
:mod:`~featcache.trainer.heads`) are neutralised for it, so a grid never holds two identical heads.
"""

from __future__ import annotations

import itertools
import json
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..shared.errors import FeatcacheError
from .builtin_sweeps import BUILTIN_SWEEPS, builtin
from .heads import HEAD_KINDS, NO_AUGMENT, POOLED, TAPS, reads_maps, reads_top_input
from .settings import DEFAULT_GRID, FILE_SETTING_KEYS, GRID_KEYS, SettingError, Settings, check_value, make_settings

# A grid key's value when the head's kind does not read it (see HeadKind.keys).
UNUSED: dict[str, Any] = {
    "lr": 0.0,
    "weight_decay": 0.0,
    "hidden": 0,
    "dropout": 0.0,
    "label_smoothing": 0.0,
    "c": 0.0,
    "power": 1.0,
    "pool": "attention",
    "map_augment": NO_AUGMENT,
    "features": POOLED,
}


@dataclass(frozen=True)
class HeadConfig:
    """One head: ``kind`` (a name in :data:`~featcache.trainer.heads.HEAD_KINDS`; linear, mlp with
    ``hidden`` ReLU units, map with ``hidden`` channels and attention pooling), trained with AdamW at
    ``lr`` and decoupled ``weight_decay`` on kernels, ``dropout`` before the last layer and
    ``label_smoothing`` of the cross-entropy; or logreg, scikit-learn's logistic regression with
    inverse regularisation ``c`` on power-normalised features ``sign(x) |x|^power`` (1: as cached).
    Map heads also have a ``pool`` (attention, mean, gem, multiscale; see
    :data:`~featcache.trainer.heads.map.MAP_POOLS`) and train-time ``map_augment`` of their maps ("none" or
    e.g. "flip+crop"); the defaults are the map head as it was before these keys."""

    kind: str
    lr: float = 0.0
    weight_decay: float = 0.0
    hidden: int = 0
    dropout: float = 0.0
    label_smoothing: float = 0.0
    c: float = 0.0
    power: float = 1.0
    pool: str = UNUSED["pool"]
    map_augment: str = UNUSED["map_augment"]
    features: str = UNUSED["features"]

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> HeadConfig:
        """The head a run's ``results.json`` row describes (its ``config``; keys this version does not know,
        such as a later version's, are left out)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in known})

    @property
    def name(self) -> str:
        """E.g. ``logreg-pow0.5-C0.001``, ``map-h256-do0.3-gem-augflip+crop-lr0.001-wd0-ls0``; pool and
        augmentation appear only when not the defaults, so names of earlier runs still read the same."""
        keys = HEAD_KINDS[self.kind].keys
        kind = self.kind + ("" if self.features == UNUSED["features"] else f"-{self.features}")
        if "c" in keys:
            return f"{kind}{'' if self.power == 1 else f'-pow{self.power:g}'}-C{self.c:g}"
        shape = (f"-h{self.hidden}" if "hidden" in keys else "") + (f"-do{self.dropout:g}" if "dropout" in keys else "")
        shape += f"-{self.pool}" if self.pool != UNUSED["pool"] else ""
        shape += f"-aug{self.map_augment}" if self.map_augment != UNUSED["map_augment"] else ""
        return f"{kind}{shape}-lr{self.lr:g}-wd{self.weight_decay:g}-ls{self.label_smoothing:g}"

    @property
    def group(self) -> tuple[str, int, str, str, str]:
        """Heads of one group have parameters of the same shapes and are fed the same (augmented)
        inputs, so they are trained stacked."""
        return (self.kind, self.hidden, self.pool, self.map_augment, self.features)

    @property
    def reads_top_input(self) -> bool:
        """Whether the head fine-tunes the backbone's last block from the cached top input (``top``)."""
        return reads_top_input(self.kind)

    @property
    def reads_taps(self) -> bool:
        """Whether the head reads the cache's layer taps (features ``taps``)."""
        return self.features == TAPS

    @property
    def reads_maps(self) -> bool:
        return reads_maps(self.kind)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> HeadConfig:
        return cls(**{k: v for k, v in d.items() if k != "name"})


def _values(key: str, raw: Any, source: Path | None) -> list[Any]:
    values = list(raw) if isinstance(raw, list | tuple) else [raw]
    if not values:
        raise SettingError(key, raw, "has no values", source)
    return [check_value(key, v, source) for v in values]


def expand(grid: Mapping[str, Any], source: Path | None = None) -> list[HeadConfig]:
    """All configurations of one grid (key -> value or list; missing keys take :data:`DEFAULT_GRID`),
    every value checked, without duplicates."""
    unknown = sorted(set(grid) - set(GRID_KEYS))
    if unknown:
        k = unknown[0]
        raise SettingError(k, grid[k], f"unknown grid key; grid keys are {', '.join(GRID_KEYS)}", source)
    g = {k: _values(k, grid.get(k, DEFAULT_GRID[k]), source) for k in GRID_KEYS}
    out: dict[HeadConfig, None] = {}
    for combo in itertools.product(*(g[k] for k in GRID_KEYS)):
        values = dict(zip(GRID_KEYS, combo, strict=True))
        kind = HEAD_KINDS[values.pop("head")]
        values.update({k: v for k, v in UNUSED.items() if k not in kind.keys})
        out[HeadConfig(kind.name, **values)] = None
    return list(out)


def parse_text(text: str) -> Any:
    """One command-line list item as a Python value: a whole number, a real number, or the text."""
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


def parse_list(text: str) -> list[Any]:
    """``"1e-3,3e-3"`` -> ``[0.001, 0.003]`` (items parsed by :func:`parse_text`, checked later)."""
    return [parse_text(v.strip()) for v in text.split(",") if v.strip()]


def load_sweep_file(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(grids, settings)`` from a TOML or JSON sweep file, its structure checked (values are checked
    by :func:`resolve_sweep`)."""
    try:
        text = path.read_bytes()
        data = tomllib.loads(text.decode()) if path.suffix.lower() == ".toml" else json.loads(text)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise FeatcacheError(f"{path}: cannot read sweep file ({exc})") from None
    if not isinstance(data, dict):
        raise FeatcacheError(f"{path}: a sweep file is a table/object of keys")
    unknown = sorted(set(data) - set(GRID_KEYS) - set(FILE_SETTING_KEYS) - {"grid"})
    if unknown:
        known = ", ".join((*GRID_KEYS, *FILE_SETTING_KEYS, "grid"))
        raise FeatcacheError(f"{path}: unknown key {unknown[0]!r}; sweep file keys are {known}")
    tables = data.get("grid", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise FeatcacheError(
            f"{path}: grid must be a list of tables ([[grid]] in TOML, a list of objects in JSON), "
            f"got {type(tables).__name__}"
        )
    for t in tables:
        bad = sorted(set(t) - set(GRID_KEYS))
        if bad:
            raise FeatcacheError(
                f"{path}: unknown key {bad[0]!r} in a grid table; grid keys are {', '.join(GRID_KEYS)}"
            )
    top = {k: v for k, v in data.items() if k in GRID_KEYS}
    grids = [{**top, **t} for t in tables] or [top]
    return grids, {k: data[k] for k in FILE_SETTING_KEYS if k in data}


def resolve_sweep(
    sweep_file: Path | None = None,
    grid: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    datasets: Collection[str] = (),
) -> tuple[list[HeadConfig], Settings]:
    """The heads and settings of a sweep, every value checked before anything is trained.

    ``sweep_file``: a sweep file, or the name of a built-in sweep (:mod:`~featcache.trainer.builtin_sweeps`).
    ``sweep_file``'s grids and settings are the base; ``grid`` (key -> value or list) overrides the
    keys of each of its grids and ``settings`` (None values ignored) its settings. Errors name the
    file for its values, the argument for the others. ``datasets``: what the cache's shards hold
    (a built-in sweep adds the grids that read them, :meth:`BuiltinSweep.grids_for`).
    """
    given = {k: v for k, v in (grid or {}).items() if v is not None}
    chosen = {k: v for k, v in (settings or {}).items() if v is not None}
    named = builtin(sweep_file) if sweep_file is not None else None
    if named is not None:
        grids, file_settings = [dict(g) for g in named.grids_for(datasets)], dict(named.settings)
    elif sweep_file is not None:
        if not Path(sweep_file).exists() and not Path(sweep_file).suffix:
            raise FeatcacheError(
                f"{sweep_file}: neither a built-in sweep ({', '.join(BUILTIN_SWEEPS)}) nor a sweep file"
            )
        grids, file_settings = load_sweep_file(Path(sweep_file))
    else:
        grids, file_settings = [{}], {}
    make_settings(file_settings, sweep_file)  # the file's values, named with the file
    expand(given)  # the arguments' values, named as arguments
    checked = make_settings({**file_settings, **chosen})
    return list(dict.fromkeys(c for g in grids for c in expand({**g, **given}, sweep_file))), checked
