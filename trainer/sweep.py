"""The sweep as data: a grid of head configurations, from command-line lists or a TOML/JSON file.

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

Keys a head kind does not use (``hidden`` and ``dropout`` for linear heads) are ignored for it, so a
grid never holds two identical heads.
"""

from __future__ import annotations

import itertools
import json
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..shared.errors import FeatcacheError

HEAD_KINDS = ("linear", "mlp", "map")
# Which inputs each kind reads from the cache.
POOLED_KINDS = ("linear", "mlp")
GRID_KEYS = ("head", "lr", "weight_decay", "hidden", "dropout", "label_smoothing")
SETTING_KEYS = ("epochs", "batch_size", "patience", "seed", "standardize", "val_fraction")
DEFAULT_GRID: dict[str, list[Any]] = {
    "head": ["linear"],
    "lr": [1e-3],
    "weight_decay": [0.0],
    "hidden": [256],
    "dropout": [0.0],
    "label_smoothing": [0.0],
}


@dataclass(frozen=True)
class HeadConfig:
    """One head: ``kind`` linear (softmax on pooled), mlp (one hidden ReLU layer of ``hidden`` units
    on pooled) or map (1x1 conv to ``hidden`` channels on the maps, attention pooling, linear);
    trained with AdamW at ``lr`` and decoupled ``weight_decay`` on kernels."""

    kind: str
    lr: float
    weight_decay: float = 0.0
    hidden: int = 0
    dropout: float = 0.0
    label_smoothing: float = 0.0

    @property
    def name(self) -> str:
        shape = "" if self.kind == "linear" else f"-h{self.hidden}-do{self.dropout:g}"
        return f"{self.kind}{shape}-lr{self.lr:g}-wd{self.weight_decay:g}-ls{self.label_smoothing:g}"

    @property
    def group(self) -> tuple[str, int]:
        """Heads of one group have parameters of the same shapes and are trained stacked."""
        return (self.kind, self.hidden)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}


def _check(key: str, values: list[Any]) -> list[Any]:
    if not values:
        raise FeatcacheError(f"sweep: {key} has no values")
    if key == "head":
        bad = [v for v in values if v not in HEAD_KINDS]
        if bad:
            raise FeatcacheError(f"sweep: unknown head kind {bad[0]!r}; choose from {', '.join(HEAD_KINDS)}")
        return values
    try:
        out = [int(v) if key == "hidden" else float(v) for v in values]
    except (TypeError, ValueError):
        raise FeatcacheError(f"sweep: {key} values must be numbers, got {values!r}") from None
    if key == "hidden" and any(v < 1 for v in out):
        raise FeatcacheError("sweep: hidden must be at least 1")
    if key == "lr" and any(v <= 0 for v in out):
        raise FeatcacheError("sweep: lr must be positive")
    if key in ("dropout", "label_smoothing") and any(not 0 <= v < 1 for v in out):
        raise FeatcacheError(f"sweep: {key} must be in [0, 1)")
    if key == "weight_decay" and any(v < 0 for v in out):
        raise FeatcacheError("sweep: weight_decay must be >= 0")
    return out


def expand(grid: dict[str, list[Any]]) -> list[HeadConfig]:
    """All configurations of one grid (missing keys take :data:`DEFAULT_GRID`), without duplicates."""
    unknown = set(grid) - set(GRID_KEYS)
    if unknown:
        raise FeatcacheError(f"sweep: unknown key {sorted(unknown)[0]!r}; grid keys are {', '.join(GRID_KEYS)}")
    g = {k: _check(k, list(grid.get(k, DEFAULT_GRID[k]))) for k in GRID_KEYS}
    out: dict[HeadConfig, None] = {}
    for head, lr, wd, hidden, dropout, ls in itertools.product(*(g[k] for k in GRID_KEYS)):
        if head == "linear":
            hidden, dropout = 0, 0.0
        out[HeadConfig(head, lr, wd, hidden, dropout, ls)] = None
    return list(out)


def parse_list(text: str, key: str) -> list[Any]:
    """``"1e-3,3e-3"`` -> ``[0.001, 0.003]`` (checked for ``key``)."""
    return _check(key, [v.strip() for v in text.split(",") if v.strip()])


def load_sweep_file(path: Path) -> tuple[list[dict[str, list[Any]]], dict[str, Any]]:
    """``(grids, settings)`` from a TOML or JSON sweep file."""
    try:
        text = path.read_bytes()
        data = tomllib.loads(text.decode()) if path.suffix.lower() == ".toml" else json.loads(text)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise FeatcacheError(f"{path}: cannot read sweep file ({exc})") from None
    if not isinstance(data, dict):
        raise FeatcacheError(f"{path}: a sweep file is a table/object of keys")
    unknown = set(data) - set(GRID_KEYS) - set(SETTING_KEYS) - {"grid"}
    if unknown:
        raise FeatcacheError(f"{path}: unknown key {sorted(unknown)[0]!r}")
    top = {k: v if isinstance(v, list) else [v] for k, v in data.items() if k in GRID_KEYS}
    grids = [{**top, **{k: v if isinstance(v, list) else [v] for k, v in g.items()}} for g in data.get("grid", [])] or [
        top
    ]
    return grids, {k: data[k] for k in SETTING_KEYS if k in data}
