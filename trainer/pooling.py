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
GEM_MIN_P = 1.0  # a map head's learned GeM power is used clamped to >= 1 (1: the mean; below, not a pooling)


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


def region_bins(n: int, bins: int) -> list[tuple[int, int]]:
    """The ``[start, stop)`` ranges of ``bins`` adaptive bins over ``n`` cells (PyTorch's adaptive
    average pooling: bin ``i`` spans ``floor(i n / bins)`` to ``ceil((i + 1) n / bins)``; on 7 cells, 2
    bins are [0, 4) and [3, 7), 3 bins [0, 3), [2, 5) and [4, 7))."""
    return [(i * n // bins, -(-(i + 1) * n // bins)) for i in range(bins)]


MULTISCALE = (1, 2, 3)  # the whole grid, then its 2x2 and 3x3 regions: 1 + 4 + 9 = 14 region means


def region_matrix(h: int, w: int, scales: tuple[int, ...] = MULTISCALE) -> np.ndarray:
    """``(h * w, R)`` float32: column ``r`` averages the positions (row-major) of region ``r``, the
    regions being each scale ``s``'s ``s x s`` adaptive bins (row-major), scale by scale; ``R`` is the
    sum of ``s^2``. ``f (P, C)`` -> ``m.T @ f`` ``(R, C)`` region means; ``scales=(1,)`` is the mean."""
    cols = []
    for s in scales:
        for r0, r1 in region_bins(h, s):
            for c0, c1 in region_bins(w, s):
                col = np.zeros((h, w), np.float32)
                col[r0:r1, c0:c1] = 1.0 / ((r1 - r0) * (c1 - c0))
                cols.append(col.reshape(-1))
    return np.stack(cols, axis=1)


def multiscale(maps: np.ndarray, scales: tuple[int, ...] = MULTISCALE) -> np.ndarray:
    """``(n, h, w, C)`` -> ``(n, R * C)`` float32: the region means of :func:`region_matrix`, region by
    region (``R * C`` with the channel fastest)."""
    n, h, w, c = maps.shape
    m = region_matrix(h, w, scales)
    return _blocks(maps, lambda x: np.einsum("bpc,pr->brc", x.reshape(len(x), h * w, c), m).reshape(len(x), -1))


POOLINGS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gem-p2": lambda m: gem(m, 2.0),
    "gem-p3": lambda m: gem(m, 3.0),
    "max": max_pool,
    "mean+max": mean_max,
}
