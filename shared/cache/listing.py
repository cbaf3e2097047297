"""``listing.npz``: the input listing a cache was made from, kept to say what changed on resume.

Arrays, one entry per input in listing order: ``id`` (str), ``label`` (int32), ``split`` (int8),
``size`` (int64 bytes, -1 when the file was missing) and ``mtime_ns`` (int64). A resume whose listing
differs is refused with a line that counts (and names a few of) the inputs added, removed, modified
(size or modification time) and relabelled.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .fsutil import atomic_write_bytes

LISTING_NAME = "listing.npz"
FIELDS = ("id", "label", "split", "size", "mtime_ns")


def save_listing(cache_dir: Path, listing: dict[str, np.ndarray]) -> None:
    """Write ``CACHE/listing.npz`` atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(listing[k]) for k in FIELDS})
    atomic_write_bytes(Path(cache_dir) / LISTING_NAME, buf.getvalue())


def load_listing(cache_dir: Path, size: int | None = None) -> dict[str, np.ndarray] | None:
    """``CACHE/listing.npz``, or None when there is none. ``size`` cuts it to the manifest's
    ``num_inputs``: an update writes the grown listing before the manifest that uses it, so after
    a crash between the two the listing may have entries no manifest plans yet."""
    path = Path(cache_dir) / LISTING_NAME
    if not path.is_file():
        return None
    with np.load(path) as z:
        return {k: z[k] if size is None else z[k][:size] for k in FIELDS}
