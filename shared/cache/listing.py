"""``listing.npz``: the input listing a cache was made from, kept to say what changed on resume.

Arrays, one entry per input in listing order: ``id`` (str), ``label`` (int32), ``split`` (int8),
``size`` (int64 bytes, -1 when the file was missing) and ``mtime_ns`` (int64). A resume whose listing
differs is refused with a line that counts (and names a few of) the inputs added, removed, modified
(size or modification time) and relabelled.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from ..errors import FeatcacheError
from .fsutil import atomic_write_bytes, read_regular

LISTING_NAME = "listing.npz"
FIELDS = ("id", "label", "split", "size", "mtime_ns")
EXAMPLES = 3


def save_listing(cache_dir: Path, listing: dict[str, np.ndarray]) -> None:
    """Write ``CACHE/listing.npz`` atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(listing[k]) for k in FIELDS})
    atomic_write_bytes(Path(cache_dir) / LISTING_NAME, buf.getvalue())


def load_listing(cache_dir: Path) -> dict[str, np.ndarray] | None:
    """``CACHE/listing.npz``'s arrays, None when there is none; a file that is not a readable
    listing (corrupt zip, missing or ragged arrays, a link or FIFO) is a one-line :class:`FeatcacheError`."""
    path = Path(cache_dir) / LISTING_NAME
    if not path.exists() and not path.is_symlink():
        return None
    try:
        with np.load(io.BytesIO(read_regular(path)), allow_pickle=False) as z:
            out = {k: z[k] for k in FIELDS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise FeatcacheError(f"{path}: not a readable input listing ({type(exc).__name__}: {str(exc)[:200]})") from None
    if any(v.ndim != 1 or len(v) != len(out["id"]) for v in out.values()):
        raise FeatcacheError(f"{path}: not a readable input listing (arrays of different lengths)")
    return out


def describe_changes(old: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> str:
    """``3 added (e.g. a.jpg, ...), 1 removed (...), ...`` between two listings (empty when equal)."""
    o = {str(i): k for k, i in enumerate(old["id"])}
    n = {str(i): k for k, i in enumerate(new["id"])}
    common = [i for i in n if i in o]

    def differs(keys: tuple[str, ...]) -> list[str]:
        return [i for i in common if any(old[k][o[i]] != new[k][n[i]] for k in keys)]

    groups = [
        ("added", [i for i in n if i not in o]),
        ("removed", [i for i in o if i not in n]),
        ("modified", differs(("size", "mtime_ns"))),
        ("relabelled", differs(("label", "split"))),
    ]
    parts = [f"{len(ids)} {what} (e.g. {', '.join(ids[:EXAMPLES])})" for what, ids in groups if ids]
    if not parts and [str(i) for i in old["id"]] != [str(i) for i in new["id"]]:
        parts.append("the same inputs in another order")
    return ", ".join(parts)
