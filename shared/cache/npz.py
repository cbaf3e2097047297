"""Reading what a ``.npz`` file declares before inflating any of it.

An ``.npz`` is a zip of ``.npy`` files, each with a header stating its shape and dtype: a few bytes of
zip can declare terabytes of zeros, so readers of files from disk (a cache's listing, a run's heads)
check the declared shapes first (:func:`declared_arrays`), and allocate only what they expect.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable

import numpy as np


def declared_arrays(z: zipfile.ZipFile, names: Iterable[str]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Each array's ``(shape, dtype)`` as the ``.npy`` header of ``NAME.npy`` in ``z`` declares them, read
    without inflating the arrays (``KeyError`` for a missing array, ``ValueError`` for a bad header)."""
    out = {}
    for name in names:
        with z.open(f"{name}.npy") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"{name}.npy has format version {version}")
        out[name] = (tuple(shape), np.dtype(dtype))
    return out
