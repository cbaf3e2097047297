"""``listing.npz``: the input listing a cache was made from, kept to say what changed on resume.

Arrays, one entry per input in listing order: ``id`` (str), ``label`` (int32), ``split`` (int8),
``size`` (int64 bytes, -1 when the file was missing) and ``mtime_ns`` (int64). A resume whose listing
differs is refused with a line that counts (and names a few of) the inputs added, removed, modified
(size or modification time) and relabelled.
"""

from __future__ import annotations

import io
import os
import resource
import zipfile
from pathlib import Path

import numpy as np

from ..errors import FeatcacheError
from .fsutil import atomic_write_bytes, read_regular
from .npz import declared_arrays

LISTING_NAME = "listing.npz"
FIELDS = ("id", "label", "split", "size", "mtime_ns")
# numpy dtype kind of each field: what save_listing writes (str ids, integer numbers)
KINDS = {"id": "U", "label": "i", "split": "i", "size": "i", "mtime_ns": "i"}
KIND_NAMES = {"U": "strings", "i": "integers"}


def save_listing(cache_dir: Path, listing: dict[str, np.ndarray]) -> None:
    """Write ``CACHE/listing.npz`` atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(listing[k]) for k in FIELDS})
    atomic_write_bytes(Path(cache_dir) / LISTING_NAME, buf.getvalue())


def load_listing(cache_dir: Path, size: int | None = None) -> dict[str, np.ndarray] | None:
    """``CACHE/listing.npz``'s arrays, None when there is none; a file that is not a readable
    listing (corrupt zip, missing or ragged arrays, a link or FIFO) is a one-line :class:`FeatcacheError`.

    ``size`` cuts it to the manifest's ``num_inputs``: an update writes the grown listing before the
    manifest that uses it, so after a crash between the two the listing may have entries no manifest
    plans yet (a shorter listing than ``size`` is an error)."""
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
            out = {k: z[k] for k in FIELDS}
    except errors as exc:
        raise FeatcacheError(f"{path}: not a readable input listing ({type(exc).__name__}: {str(exc)[:200]})") from None
    if size is not None:
        if len(out["id"]) < size:
            raise FeatcacheError(f"{path}: {len(out['id'])} inputs listed, the manifest plans {size}")
        out = {k: v[:size] for k, v in out.items()}
    return out


def _declared(data: bytes) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Each field's shape and dtype as the zip ``data`` declares them (see :func:`.npz.declared_arrays`)."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return declared_arrays(z, FIELDS)


def memory_budget() -> int:
    """Bytes a listing may take in memory: half of the machine's memory, or of the process's
    address-space limit when one is set (``ulimit -v``)."""
    budget = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return min(budget, soft // 2) if soft != resource.RLIM_INFINITY else budget
