"""Datasets that are the HDF5 file's own: what a reader of a cache file may read.

HDF5 lets a file point elsewhere: an external link (``f["label"] = h5py.ExternalLink(path, name)``)
is followed by h5py on access, a virtual dataset maps its rows to other files, and a dataset with
external storage keeps its raw bytes in any file it names. A hand-edited ``rows.h5`` or shard could
thus make a reader read outside the cache, or hang for ever (a FIFO named as the target blocks the
open). Every dataset featcache writes is a plain one (a hard link to contiguous or chunked storage
inside the file), so anything else is refused before it is touched.
"""

from __future__ import annotations

import h5py


def own_dataset(group: h5py.Group, key: str) -> h5py.Dataset:
    """``group[key]``, checked to be a dataset stored in this file, without following any link out of
    it: ``KeyError`` when absent, ``ValueError`` saying why for a link, a group, a virtual dataset or
    external storage (the exceptions a reader already turns into a one-line error or a fallback)."""
    link = group.get(key, getlink=True)
    if link is None:
        raise KeyError(key)
    if not isinstance(link, h5py.HardLink):
        raise ValueError(f"{key} is a {type(link).__name__} (a link; only datasets stored in the file are read)")
    d = group[key]
    if not isinstance(d, h5py.Dataset):
        raise ValueError(f"{key} is not a dataset")
    if d.is_virtual or d.external:
        raise ValueError(f"{key} keeps its data in another file (only datasets stored in the file are read)")
    return d
