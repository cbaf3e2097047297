"""A cache's shards read back with plain h5py (not featcache's reader), for tests and tests/faults.py."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from shared import schema


def read_shards(cache: Path) -> dict[str, np.ndarray]:
    """Every dataset of every shard listed in the manifest, concatenated, ids as str."""
    manifest = json.loads((Path(cache) / schema.MANIFEST_NAME).read_text())
    parts: dict[str, list] = {k: [] for k in schema.DATASETS}
    for s in manifest["shards"]:
        with h5py.File(Path(cache) / s["file"], "r") as f:
            for k in schema.DATASETS:
                parts[k].append(f[k].asstr()[()] if k == schema.ID else f[k][()])
    return {k: np.concatenate(v) for k, v in parts.items()}


def differing(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> list[str]:
    """Names of the datasets that are not equal byte for byte (ids: as strings)."""
    return [k for k in schema.DATASETS
            if (a[k].tolist() != b[k].tolist() if k == schema.ID else a[k].tobytes() != b[k].tobytes())]
