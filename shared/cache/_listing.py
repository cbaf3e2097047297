"""``listing.npz``: the input listing a cache was made from, kept to say what changed on resume.

Arrays, one entry per input in listing order: ``id`` (str), ``label`` (int32), ``split`` (int8),
``size`` (int64 bytes, -1 when the file was missing) and ``mtime_ns`` (int64); optionally ``sha256``
(str, each input's content hash, ``""`` when not recorded), written by runs with ``checksum=True``.
A resume whose listing differs is refused with a line that counts (and names a few of) the inputs
added, removed, modified (size or modification time) and relabelled.

The manifest records how many entries the cache uses (``num_inputs``) and their
:func:`entries_sha256` (``listing_sha256``): :func:`load_listing` given the manifest refuses a
listing that was edited or replaced since, so that neither an update nor ``verify`` trusts it.
"""

from __future__ import annotations

import hashlib
import io
import os
import resource
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import FeatcacheError
from ._npz import declared_arrays
from .fsutil import atomic_write_bytes, read_regular

if TYPE_CHECKING:
    from ._manifest import Manifest

LISTING_NAME = "listing.npz"
FIELDS = ("id", "label", "split", "size", "mtime_ns")
OPTIONAL = ("sha256",)  # present only in listings written with checksum=True
# numpy dtype kind of each field: what save_listing writes (str ids and hashes, integer numbers)
KINDS = {"id": "U", "label": "i", "split": "i", "size": "i", "mtime_ns": "i", "sha256": "U"}
KIND_NAMES = {"U": "strings", "i": "integers"}


def save_listing(cache_dir: Path, listing: dict[str, np.ndarray]) -> None:
    """Write ``CACHE/listing.npz`` atomically."""
    buf = io.BytesIO()
    # numpy 2's stub checks **kwds against savez's allow_pickle: bool too (not numpy 1.26's)
    arrays = {k: np.asarray(listing[k]) for k in (*FIELDS, *OPTIONAL) if k in listing}
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type, unused-ignore]
    atomic_write_bytes(Path(cache_dir) / LISTING_NAME, buf.getvalue())


def entries_sha256(listing: dict[str, np.ndarray]) -> str:
    """sha256 of a listing's entries (the :data:`FIELDS`, in listing order; ids as UTF-8, numbers as
    little-endian int64): the same for the arrays written and the ones read back. Not the optional
    content hashes: an update may record them for kept entries (written before the manifest that
    records the new sha256), and an edited hash can only make an update re-extract an input or miss
    a content change, never duplicate a row."""
    h = hashlib.sha256()
    h.update("\x00".join(np.asarray(listing["id"]).astype(str).tolist()).encode("utf-8", "surrogatepass"))
    for key in FIELDS[1:]:
        h.update(b"\x1f" + np.ascontiguousarray(np.asarray(listing[key]), dtype="<i8").tobytes())
    return h.hexdigest()


def load_listing(cache_dir: Path, manifest: Manifest | None = None) -> dict[str, np.ndarray] | None:
    """``CACHE/listing.npz``'s arrays, None when there is none; a file that is not a readable
    listing (corrupt zip, missing or ragged arrays, a link or FIFO) is a one-line :class:`FeatcacheError`.

    Given the cache's ``manifest``, the listing is cut to its ``num_inputs`` (an update writes the
    grown listing before the manifest that uses it, so after a crash between the two the listing may
    have entries no manifest plans yet) and checked against it: fewer entries, or entries whose
    :func:`entries_sha256` is not the manifest's ``listing_sha256`` (a hand-edited or swapped file),
    is a one-line :class:`FeatcacheError`. Caches made before the manifest recorded it are checked
    for the count only."""
    path = Path(cache_dir) / LISTING_NAME
    if not path.exists() and not path.is_symlink():
        return None
    errors = (OSError, ValueError, KeyError, EOFError, MemoryError, zipfile.BadZipFile, zipfile.LargeZipFile)
    try:
        data = read_regular(path)
        declared = _declared(data)
    except errors as exc:
        raise FeatcacheError(f"{path}: not a readable input listing ({type(exc).__name__}: {str(exc)[:200]})") from None
    n = declared["id"][0][0] if len(declared["id"][0]) == 1 else -1
    if any(shape != (n,) for shape, _ in declared.values()):
        raise FeatcacheError(f"{path}: not a readable input listing (arrays of different lengths)")
    for key, (_, dtype) in declared.items():  # e.g. labels as strings: one line here, not a ValueError where used
        if dtype.kind != KINDS[key]:
            raise FeatcacheError(
                f"{path}: not a readable input listing ({key} is {dtype}, expected {KIND_NAMES[KINDS[key]]})"
            )
    need = sum(n * dtype.itemsize for _, dtype in declared.values())
    if need > memory_budget():  # a few MB of zeros can declare terabytes: refused before any is inflated
        raise FeatcacheError(
            f"{path}: not a readable input listing ({n} inputs declared, {need / 1e9:.1f} GB: more than half "
            "of this machine's memory)"
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            out = {k: z[k] for k in (*FIELDS, *OPTIONAL) if k in declared}
    except errors as exc:
        raise FeatcacheError(f"{path}: not a readable input listing ({type(exc).__name__}: {str(exc)[:200]})") from None
    if manifest is not None:
        size = manifest.num_inputs
        if len(out["id"]) < size:
            raise FeatcacheError(f"{path}: {len(out['id'])} inputs listed, the manifest plans {size}")
        out = {k: v[:size] for k, v in out.items()}
        if manifest.listing_sha256 is not None and entries_sha256(out) != manifest.listing_sha256:
            raise FeatcacheError(
                f"{path}: its entries differ from the ones manifest.json records (sha256 "
                f"{entries_sha256(out)[:12]}..., recorded {manifest.listing_sha256[:12]}...): edited or replaced "
                "since the cache was written; restore it, or start over with overwrite=True"
            )
    return out


def _declared(data: bytes) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Each field's shape and dtype as the zip ``data`` declares them (see :func:`.npz.declared_arrays`)."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = set(z.namelist())
        return declared_arrays(z, (*FIELDS, *(k for k in OPTIONAL if f"{k}.npy" in names)))


def memory_budget() -> int:
    """Bytes a listing may take in memory: half of the machine's memory, or of the process's
    address-space limit when one is set (``ulimit -v``)."""
    budget = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return min(budget, soft // 2) if soft != resource.RLIM_INFINITY else budget
