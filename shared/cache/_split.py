"""Deterministic train/val/test assignment of cache rows.

A row keeps the split its source gave it (top-level ``train/``, ``val/``, ``test/`` folders, or a CSV
``split`` column). Otherwise its split is a function of its id alone: the sha256 of the id, read as a
number in [0, 1), against the cumulative fractions. So a row never changes split when images are
added or removed, and any tool can recompute the assignment from the ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import numpy as np

from ..errors import FeatcacheError
from .schema import DEFAULT_SPLIT_FRACTIONS, NO_SPLIT, SPLIT_CODES, SPLITS

SPLIT_SALT = "featcache-split-v1:"


def parse_fractions(text: str) -> dict[str, float]:
    """``"0.8,0.1,0.1"`` -> ``{"train": 0.8, "val": 0.1, "test": 0.1}`` (must sum to 1)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise FeatcacheError(f"split fractions {text!r}: expected three numbers like 0.8,0.1,0.1") from None
    if len(values) != 3 or any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
        raise FeatcacheError(f"split fractions {text!r}: expected three non-negative numbers summing to 1")
    return dict(zip(SPLITS, values, strict=True))


def hash_unit(ids: Iterable[str]) -> np.ndarray:
    """``(n,)`` float64 in [0, 1): a uniform, stable number per id."""
    out = [
        int.from_bytes(hashlib.sha256((SPLIT_SALT + i).encode("utf-8", "surrogateescape")).digest()[:8], "big")
        for i in ids
    ]
    return np.asarray(out, dtype=np.float64) / 2.0**64


def assign_splits(
    ids: Iterable[str],
    given: np.ndarray | None = None,
    fractions: Mapping[str, float] = DEFAULT_SPLIT_FRACTIONS,
    units: np.ndarray | None = None,
) -> np.ndarray:
    """``(n,)`` int8 split codes (see :data:`featcache.shared.cache.schema.SPLIT_CODES`).

    ``given`` holds the source's own codes (``-1`` where none); those rows keep them, and only the
    others are hashed (~1 us an id). ``units`` ``(n,)`` float64 holds :func:`hash_unit` of each id
    where already known (the row index stores it), NaN elsewhere.
    """
    ids = ids if isinstance(ids, np.ndarray) else np.asarray(list(ids), dtype=object)
    need = np.ones(len(ids), bool) if given is None else np.asarray(given) == NO_SPLIT
    u = np.full(len(ids), np.nan) if units is None else np.array(units, dtype=np.float64)
    todo = need & np.isnan(u)
    if todo.any():
        u[todo] = hash_unit(ids[todo])
    edges = np.cumsum([fractions[name] for name in SPLITS])
    codes = np.full(len(ids), NO_SPLIT, np.int8) if given is None else np.asarray(given).astype(np.int8)
    codes[need] = np.searchsorted(edges, u[need], side="right").clip(0, len(SPLITS) - 1)
    return codes


def split_names(codes: np.ndarray) -> np.ndarray:
    """Codes to names (``""`` for none)."""
    table = np.array(list(SPLITS) + [""], dtype=object)
    return table[np.where(codes == NO_SPLIT, len(SPLITS), codes)]


__all__ = ["SPLIT_CODES", "assign_splits", "hash_unit", "parse_fractions", "split_names"]
