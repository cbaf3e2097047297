"""One shard file, opened read-only and checked: the one place a shard is opened for reading.

A shard path comes from a manifest, which is a file on disk and so untrusted. Everything that reads
a shard (the reader, the tf.data stream, the trainer's feed, verify, compact, the reports) opens it
here, and gets every check at once:

* the path is a regular file, not a symbolic link, a FIFO or a device (a FIFO would block the open);
* its first bytes are the HDF5 signature, and HDF5 opens it;
* (:meth:`Shard.problem`) its fingerprint is the cache's, it is the shard its manifest record
  describes (size, ``shard``/``first_index``/``num_inputs`` attributes, row count, index values,
  the cache's listing), and every per-row dataset the layout (:func:`schema.row_layout`) names is
  there, stored in the file itself (no link, virtual dataset or external storage:
  :func:`own_dataset`), with the record's rows, the layout's shape and its dtype.

Callers then read through :meth:`Shard.read` (whole datasets or sorted rows) and never see h5py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import FeatcacheError, FingerprintMismatchError
from . import schema
from ._blocks import read_block
from ._fingerprint import IDENTITY_KEYS, differences
from ._h5file import own_dataset
from ._manifest import Manifest, ShardRecord
from .fsutil import NotARegularFileError, open_regular
from .schema import LISTING_ATTR

# The first 8 bytes of every HDF5 file featcache writes (no user block).
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

# name -> (shape of one row, dtype name): what schema.row_layout returns
Layout = dict[str, tuple[tuple[int, ...], str]]


class ShardError(FeatcacheError):
    """A shard file that cannot be read as one: ``reason`` says why (the message adds the path)."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


class ShardMismatchError(ShardError):
    """A listed shard file is not the shard its manifest record describes (copied from another cache,
    or from another position of this one)."""


class ShardFingerprintError(ShardError, FingerprintMismatchError):
    """A listed shard file was made with other features than its cache (another backbone, weights, size)."""


def cache_layout(m: Manifest) -> Layout:
    """The per-row datasets every shard of the cache of ``m`` holds (:func:`schema.row_layout`)."""
    return schema.layout_of(m.fingerprint, m.storage["maps_dtype"])


def dtype_name(dtype: np.dtype) -> str:
    """A dataset's dtype as the layout spells it: ``"object"`` for h5py's variable-length strings."""
    return schema.ID_DTYPE if h5py.check_string_dtype(dtype) is not None else str(dtype)


class Shard:
    """An open shard file (read-only). Use :func:`open_shard_file`; close it (or use ``with``).

    ``layout`` is the cache's; ``rows`` the record's row count. Datasets are checked against the layout
    when first used (:meth:`dataset`), and all at once by :meth:`problem`."""

    def __init__(self, path: Path, file: h5py.File, layout: Layout, rows: int):
        self.path = path
        self._file = file
        self.layout = layout
        self.rows = rows
        self._checked: dict[str, h5py.Dataset] = {}

    def __enter__(self) -> Shard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    @property
    def attrs(self) -> Any:
        """The file's attributes (read them, never write)."""
        return self._file.attrs

    def names(self) -> list[str]:
        """Names of everything at the top of the file (datasets, groups, links), sorted."""
        return sorted(self._file)

    def has(self, key: str) -> bool:
        """Whether the layout names ``key`` (so that :meth:`dataset` finds it, or raises saying why)."""
        return key in self.layout

    def dataset(self, key: str) -> h5py.Dataset:
        """Dataset ``key``, checked once: named by the layout, stored in this file, ``(rows, *shape)`` of
        the layout's dtype. :class:`ShardError` says what differs."""
        d = self._checked.get(key)
        if d is not None:
            return d
        problem = self._dataset_problem(key)
        if problem:
            raise ShardError(self.path, f"cannot read dataset ({problem})")
        return self._checked[key]

    def _dataset_problem(self, key: str) -> str | None:
        if key not in self.layout:
            return f"{key} is not a dataset of this cache's shards"
        try:  # never through a link, nor data kept in another file: read, it could hang
            d = own_dataset(self._file, key)
        except KeyError:
            return f"{key} missing"
        except ValueError as exc:
            return str(exc)
        tail, dtype = self.layout[key]
        shape, got = (self.rows, *tail), dtype_name(d.dtype)
        if d.shape != shape or got != dtype:
            return f"{key} is {d.shape} {got}, expected {shape} {dtype}"
        self._checked[key] = d
        return None

    def read(self, key: str, rows: np.ndarray | None = None, dtype: Any = None) -> np.ndarray:
        """Dataset ``key``: every row, or ``rows`` (increasing positions in the file: one read from the
        first to the last, :func:`read_block`); ids as ``str`` objects; ``dtype`` casts floats."""
        d = self.dataset(key)
        try:
            if key == schema.ID:
                values = d.asstr()[()].astype(object)
                return values if rows is None else values[rows]
            if rows is None:
                values = d[()]
                return values if dtype is None else values.astype(dtype, copy=False)
            return read_block(d, rows, dtype)
        except (OSError, ValueError, TypeError) as exc:
            raise ShardError(self.path, f"cannot read dataset {key!r} ({exc})") from None

    def problem(
        self, m: Manifest, rec: ShardRecord, size: int, *, read_index: bool = True, datasets: bool = True
    ) -> ShardError | None:
        """What shows this file is not shard ``rec`` of the cache of ``m`` (``size`` bytes on disk), as
        the error to raise, or None: the fingerprint, then :func:`shard_identity_problem`, then (with
        ``datasets``) every dataset of the layout. ``read_index=False``: the index values are vouched
        for by a current row index, so only the attributes are read."""
        try:
            fp = json.loads(self.attrs["fingerprint"])
        except (KeyError, ValueError, TypeError, OSError):
            return ShardError(self.path, "shard has no fingerprint attribute")
        diff = differences(m.fingerprint, fp, IDENTITY_KEYS) if isinstance(fp, dict) else ["fingerprint"]
        if diff:
            return ShardFingerprintError(self.path, "shard was made with different " + "; ".join(diff))
        identity = shard_identity_problem(self, rec, m, size, read_index=read_index)
        if identity:
            return ShardMismatchError(self.path, identity)
        for key in self.layout if datasets else ():
            bad = self._dataset_problem(key)
            if bad:
                return ShardError(self.path, f"cannot read dataset ({bad})")
        return None


def open_shard_file(path: Path, layout: Layout, rows: int) -> Shard:
    """Open the shard file at ``path`` read-only: a regular file (never through a symbolic link, never
    a FIFO or device) that starts with the HDF5 signature and that HDF5 opens; :class:`ShardError` says
    why not. ``path`` must come from :func:`~featcache.shared.cache._paths.shard_path` (inside the cache)."""
    try:
        fd = open_regular(path, os.O_RDONLY)
    except FileNotFoundError:
        raise ShardError(path, "shard listed in the manifest is missing") from None
    except NotARegularFileError:
        raise ShardError(path, "not a regular file (a link, a FIFO, a device or a folder)") from None
    except OSError as exc:
        raise ShardError(path, f"cannot open ({exc.strerror or exc})") from None
    try:
        head = os.read(fd, len(HDF5_SIGNATURE))
    finally:
        os.close(fd)
    if head != HDF5_SIGNATURE:
        raise ShardError(path, "shard is not a readable HDF5 file (no HDF5 signature at its start)")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ShardError(path, f"shard is not a readable HDF5 file ({exc})") from None
    return Shard(path, f, layout, rows)


def shard_identity_problem(f: Shard, rec: ShardRecord, m: Manifest, size: int, read_index: bool = True) -> str | None:
    """What shows that the open shard ``f`` (``size`` bytes on disk) is not the shard ``rec`` of the
    cache of ``m``, or None: byte size, the ``shard``/``first_index``/``num_inputs`` attributes, the
    row count, index values inside the shard's inputs and increasing, and the cache's
    ``listing_sha256`` (an attribute only shards written since it was added carry). Reads the
    attributes and the ``index`` dataset only (8 bytes a row); ``read_index=False`` (values a current
    row index has checked) the attributes only."""
    if size != rec.bytes:
        fix = "replaced or truncated; run featcache-inspect verify"
        return f"shard is {size} bytes, the manifest says {rec.bytes} ({fix})"
    attrs = f.attrs
    try:
        for key, expected in (("shard", rec.shard), ("first_index", rec.first_index), ("num_inputs", rec.num_inputs)):
            got = attrs.get(key)
            if got is None or int(got) != expected:
                shown = "missing" if got is None else int(got)
                return f"shard attribute {key} is {shown}, the manifest says {expected}: it is another shard"
        listing = attrs.get(LISTING_ATTR)
        if isinstance(listing, bytes):
            listing = listing.decode("utf-8", "replace")
        mine = m.listing_sha256_of(rec.shard)
        if listing is not None and mine is not None and listing != mine:
            return (
                f"shard belongs to another cache (made from listing {str(listing)[:12]}..., this cache's is "
                f"{str(mine)[:12]}...)"
            )
        if not read_index:
            return None
        index = own_dataset(f._file, schema.INDEX)
        if index.shape != (rec.rows,):
            return f"shard has {index.shape} index values, the manifest says {rec.rows} rows"
        values = index[()]
    except (KeyError, OSError, TypeError, ValueError) as exc:
        return f"shard identity unreadable ({exc})"
    if len(values) and not (
        values[0] >= rec.first_index and values[-1] < rec.first_index + rec.num_inputs and (np.diff(values) > 0).all()
    ):
        return (
            f"index values are not increasing inside inputs {rec.first_index}.."
            f"{rec.first_index + rec.num_inputs - 1}: it is another shard"
        )
    return None


__all__ = [
    "HDF5_SIGNATURE",
    "Layout",
    "Shard",
    "ShardError",
    "ShardFingerprintError",
    "ShardMismatchError",
    "cache_layout",
    "open_shard_file",
    "shard_identity_problem",
]
