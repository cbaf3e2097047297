"""A sweep on several caches of the same images, one per backbone: which backbone serves best.

Each cache gets the same grid of heads; their rows are matched by id (:func:`align`), so every head is
chosen on the same val rows and scored on the same test rows, and one ranking (the one-SE rule of
:mod:`~featcache.trainer.report`) covers them all. A head of cache ``label`` is named
``"<label>:<head name>"`` and its ``results.json`` row says ``cache`` and ``backbone``. Labels are the
backbones' names, made unique with the cache folder's name (:func:`label_caches`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..shared.cache import FeatureCache
from ..shared.errors import FeatcacheError
from .data import Dataset, Split
from .loop import GroupState, TrainOutput
from .sweep import HeadConfig

SPLITS = ("train", "val", "test")
LABEL_SEPARATOR = ":"  # between a cache's label and a head's own name; never in a HeadConfig name


@dataclass
class TrainedCache:
    """One cache of a sweep, its rows (``ds``) and the heads trained on them (``out``). ``label`` is
    None when the sweep has one cache: heads then keep their own names, as in runs of version 2."""

    cache: FeatureCache
    ds: Dataset
    out: TrainOutput
    label: str | None = None

    @property
    def backbone(self) -> str:
        return str(self.cache.fingerprint.get("backbone"))

    def head_name(self, cfg: HeadConfig) -> str:
        """The name of this cache's head ``cfg`` in the run."""
        return cfg.name if self.label is None else f"{self.label}{LABEL_SEPARATOR}{cfg.name}"

    def head_rows(self) -> list[dict[str, Any]]:
        """``results.json`` ``heads`` rows of this cache (copies, renamed and tagged with the cache when
        the sweep has several; ``out.heads`` keeps the plain names the baselines look up)."""
        if self.label is None:
            return self.out.heads
        return [
            {**h, "name": f"{self.label}{LABEL_SEPARATOR}{h['name']}", "cache": self.label, "backbone": self.backbone}
            for h in self.out.heads
        ]

    def tag_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Baseline rows named and tagged with this cache (as they are with one cache)."""
        if self.label is None:
            return rows
        return [{**r, "name": f"{self.label}{LABEL_SEPARATOR}{r['name']}", "cache": self.label} for r in rows]


def locate(parts: list[TrainedCache], name: str) -> tuple[TrainedCache, GroupState, int]:
    """The part, group and position in it of the run's head ``name``."""
    for p in parts:
        for s in p.out.states:
            for k, c in enumerate(s.group.configs):
                if p.head_name(c) == name:
                    return p, s, k
    raise KeyError(name)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "cache"


def label_caches(caches: list[FeatureCache]) -> list[str]:
    """One short unique label per cache: its backbone's name; ``<backbone>-<folder name>`` for caches of
    the same backbone; ``-2``, ``-3``... when even those collide. Only letters, digits, ``_.-``."""
    backbones = [_safe(str(c.fingerprint.get("backbone"))) for c in caches]
    labels = [
        b if backbones.count(b) == 1 else f"{b}-{_safe(Path(c.path).name)}"
        for b, c in zip(backbones, caches, strict=True)
    ]
    out: list[str] = []
    for label in labels:
        n, unique = 1, label
        while unique in out:
            n += 1
            unique = f"{label}-{n}"
        out.append(unique)
    return out


def _by_id(ds: Dataset) -> dict[str, tuple[str, int]]:
    """id -> (split, label) of every labelled row of ``ds``."""
    out = {}
    for name in SPLITS:
        s = getattr(ds, name)
        out.update({i: (name, int(y)) for i, y in zip(s.id.tolist(), s.y, strict=True)})
    return out


def _take(s: Split, order: np.ndarray) -> Split:
    """``s``'s rows in ``order`` (maps are loaded after alignment, so none are held yet)."""
    assert s.pooled is not None, "a sweep on several caches holds them in memory"
    return Split(
        s.index[order], s.id[order], s.y[order], s.pooled[order], views=None if s.views is None else s.views[order]
    )


def align(first: Dataset, other: Dataset, where: Path) -> Dataset:
    """``other`` (the cache at ``where``) with each split's rows in ``first``'s order. Refuses, naming the
    cache and the first differing id, unless both have the same classes and the same labelled ids, each
    in the same split with the same label: heads of different backbones are only comparable on the same
    val and test rows."""
    if other.classes != first.classes:
        raise FeatcacheError(
            f"{where}: its classes ({', '.join(other.classes[:5])}...) are not those of the first cache "
            f"({', '.join(first.classes[:5])}...): caches trained together must be made from the same images"
        )
    a, b = _by_id(first), _by_id(other)
    if len(a) != len(b):
        extra = next((i for i in a if i not in b), None) or next((i for i in b if i not in a), None)
        raise FeatcacheError(
            f"{where}: {len(b)} labelled rows, the first cache has {len(a)} (first id in only one: {extra!r}); "
            "caches trained together must be made from the same images"
        )
    for i, (split, y) in a.items():
        if i not in b:
            raise FeatcacheError(f"{where}: id {i!r} of the first cache is not among its rows")
        if b[i][0] != split:
            raise FeatcacheError(f"{where}: id {i!r} is in {b[i][0]} here, in {split} in the first cache")
        if b[i][1] != y:
            raise FeatcacheError(
                f"{where}: id {i!r} is labelled {other.classes[b[i][1]]!r} here, "
                f"{first.classes[y]!r} in the first cache"
            )
    parts: dict[str, Any] = {}  # split name -> Split, as replace() takes them
    for name in SPLITS:
        pos = {v: k for k, v in enumerate(getattr(other, name).id.tolist())}
        order = np.array([pos[i] for i in getattr(first, name).id.tolist()], dtype=np.int64)
        parts[name] = _take(getattr(other, name), order)
    return replace(other, **parts)


CONCAT = "concat"  # the label of heads trained on the concatenated pooled vectors


def concat_dataset(datasets: list[Dataset]) -> Dataset:
    """The rows of ``datasets`` (aligned by :func:`align`) with each split's pooled vectors concatenated
    along channels ``(n, C1 + C2 + ...)`` float32; no views, no maps."""

    def joined(name: str) -> Split:
        s = getattr(datasets[0], name)
        pooled = np.concatenate([getattr(d, name).pooled for d in datasets], axis=1)
        return Split(s.index, s.id, s.y, pooled)

    splits: dict[str, Any] = {name: joined(name) for name in SPLITS}
    return replace(datasets[0], **splits)
