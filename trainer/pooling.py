"""Pooling variants of the cached ``(n, h, w, C)`` maps into vectors a pooled head can use.

The cache's ``pooled`` is the spatial mean. Other poolings keep more of where and how strongly a
channel fired: generalised mean (GeM, Radenovic et al., 2018: ``mean(x^p)^(1/p)``, between the mean
at ``p = 1`` and the max as ``p`` grows), the max, and the mean concatenated with the max.
Computed in row blocks (float32 work arrays of a few MB), since the maps of a split are large.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

BLOCK_ROWS = 256
GEM_EPS = 1e-6  # GeM needs non-negative inputs: MobileNetV2's maps are ReLU6 outputs, clamped here anyway


def _blocks(maps: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    return np.concatenate(
        [fn(maps[i : i + BLOCK_ROWS].astype(np.float32)) for i in range(0, len(maps), BLOCK_ROWS)]
        or [np.zeros((0, maps.shape[-1]), np.float32)]
    )


def gem(maps: np.ndarray, p: float = 3.0) -> np.ndarray:
    """``(n, h, w, C)`` -> ``(n, C)`` float32: ``mean over positions of max(x, eps)^p``, to the ``1/p``
    (computed relative to each channel's max, so that a large ``p`` cannot overflow)."""

    def one(m: np.ndarray) -> np.ndarray:
        m = np.maximum(m, GEM_EPS)
        top = m.max(axis=(1, 2), keepdims=True)
        return (np.mean((m / top) ** p, axis=(1, 2)) ** (1.0 / p)) * top[:, 0, 0]

    return _blocks(maps, one)


def max_pool(maps: np.ndarray) -> np.ndarray:
    """``(n, h, w, C)`` -> ``(n, C)`` float32: each channel's largest value."""
    return _blocks(maps, lambda m: m.max(axis=(1, 2)))


def mean_max(maps: np.ndarray) -> np.ndarray:
    """``(n, h, w, C)`` -> ``(n, 2C)`` float32: the mean and the max, side by side."""
    return _blocks(maps, lambda m: np.concatenate([m.mean(axis=(1, 2)), m.max(axis=(1, 2))], axis=1))


POOLINGS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gem-p2": lambda m: gem(m, 2.0),
    "gem-p3": lambda m: gem(m, 3.0),
    "max": max_pool,
    "mean+max": mean_max,
}
