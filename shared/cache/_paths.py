"""Where a cache's own files may be, checked once for every path featcache did not just build itself.

A manifest, a commit journal or a directory listing is data anyone can edit: a shard ``file`` of
``../victim/secret.txt``, an absolute path, or a ``shards/`` folder that is a symbolic link to
another disk would otherwise make a reader open, or ``verify --fix`` move, a file outside the cache.
Every such path goes through :func:`shard_path` (shard files) or :func:`cache_path` (any other file
or folder of the cache) before anything opens, moves or deletes it: only the names the writer
produces (``shards/shard-NNNNN.h5``), inside the cache, with no symbolic link leading out of it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import FeatcacheError
from .schema import compacted_shard_name

# The names the writer produces: schema.shard_name(k) for k >= 0 (five digits, more past 99999), and
# schema.compacted_shard_name(k, v) for a shard rewritten by its v-th compaction (docs/updates.md).
_SHARD_FILE_RE = re.compile(r"shards/shard-(\d{5,})(?:-c([1-9]\d*))?\.h5")


class UnsafePathError(FeatcacheError):
    """A path read from a cache's files is not one of the cache's own files."""


def shard_file_problem(file: object, shard: int | None = None) -> str | None:
    """Why ``file`` (a manifest or part-log ``file`` entry) is not the writer's name for shard
    ``shard`` (for any shard when None), or None when it is."""
    m = _SHARD_FILE_RE.fullmatch(file) if isinstance(file, str) else None
    version = int(m[2] or 0) if m else 0
    if m is None or file != compacted_shard_name(int(m[1]), version):
        return f"{file!r} is not a featcache shard name (shards/shard-NNNNN.h5 or shards/shard-NNNNN-cV.h5)"
    if shard is not None and file != compacted_shard_name(shard, version):
        return f"{file!r} is not the name of shard {shard} ({compacted_shard_name(shard, 0)} or a compaction of it)"
    return None


def cache_path(cache_dir: str | os.PathLike[str], rel: str) -> Path:
    """``CACHE/rel``, after checking that it resolves inside the cache (no ``..``, no absolute
    path, no symbolic link on the way that leads out of it); raise :class:`UnsafePathError`.

    The file itself need not exist (a missing shard is the caller's business)."""
    root = Path(cache_dir)
    path = root / rel
    if os.path.isabs(rel) or ".." in Path(rel).parts:
        raise UnsafePathError(f"{path}: not inside the cache {root}; featcache only touches its own files")
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if real == real_root or not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise UnsafePathError(
            f"{path}: a symbolic link leads out of the cache (to {real}); featcache only touches its own files"
        )
    return path


def shard_path(cache_dir: str | os.PathLike[str], file: object, shard: int | None = None) -> Path:
    """The checked path of a shard ``file`` named in a manifest, a commit journal or ``shards/``'s
    listing: :func:`shard_file_problem` and :func:`cache_path` in one call."""
    problem = shard_file_problem(file, shard)
    if problem is not None:
        raise UnsafePathError(f"{Path(cache_dir)}: shard file {problem}; featcache only touches its own files")
    return cache_path(cache_dir, str(file))
