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
from h5py import h5d, h5l


def own_dataset(group: h5py.Group, key: str) -> h5py.Dataset:
    """``group[key]``, checked to be a dataset stored in this file, without following any link out of
    it: ``KeyError`` when absent, ``ValueError`` saying why for a link, a group, a virtual dataset or
    external storage (the exceptions a reader already turns into a one-line error or a fallback).
    ~5 us more than ``group[key]`` (low-level calls: the link's type, the creation property list)."""
    name = key.encode()
    if not group.id.links.exists(name):
        raise KeyError(key)
    if group.id.links.get_info(name).type != h5l.TYPE_HARD:
        raise ValueError(f"{key} is a link (only datasets stored in the file are read)")
    d = group[key]
    if not isinstance(d, h5py.Dataset):
        raise ValueError(f"{key} is not a dataset")
    dcpl = d.id.get_create_plist()
    if dcpl.get_layout() == h5d.VIRTUAL or dcpl.get_external_count():
        raise ValueError(f"{key} keeps its data in another file (only datasets stored in the file are read)")
    return d
