"""Reading what a ``.npz`` file declares before inflating any of it.

An ``.npz`` is a zip of ``.npy`` files, each with a header stating its shape and dtype: a few bytes of
zip can declare terabytes of zeros, so readers of files from disk (a cache's listing, a run's heads)
check the declared shapes first (:func:`declared_arrays`), and allocate only what they expect.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Iterable

import numpy as np

from .fsutil import open_regular


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


def load_declared(
    path: str | os.PathLike[str],
    names: Iterable[str],
    check: Callable[[dict[str, tuple[tuple[int, ...], np.dtype]], int], None],
) -> dict[str, np.ndarray]:
    """The arrays ``names`` of the ``.npz`` file at ``path``, read as untrusted input: a regular file only,
    never through a symbolic link, a FIFO or device refused without blocking (:func:`.fsutil.open_regular`);
    ``check`` sees every array's declared ``(shape, dtype)`` (:func:`declared_arrays`) and the file's size
    and raises to refuse them, before any array is inflated; arrays are never unpickled (``allow_pickle=False``).
    Raises what reading raises (``OSError``, ``KeyError``, ``ValueError``, ``zipfile.BadZipFile``...)
    for the caller to say in one line."""
    names = list(names)
    with os.fdopen(open_regular(path, os.O_RDONLY), "rb") as fh:
        with zipfile.ZipFile(fh) as z:
            declared = declared_arrays(z, names)
        check(declared, os.fstat(fh.fileno()).st_size)
        fh.seek(0)
        with np.load(fh, allow_pickle=False) as z:
            return {k: z[k] for k in names}
