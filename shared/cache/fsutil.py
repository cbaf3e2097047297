"""Durable file operations: what makes a crash leave either the old file or the new one.

A rename is atomic on POSIX filesystems, but only durable once the data was fsynced before it and
the directory after it; without both, a power cut can leave an empty file under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .schema import TMP_PREFIX

_HASH_BLOCK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or unlink inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path_for(path: Path) -> Path:
    """The dot-name a file is written under before it is renamed to ``path``."""
    return path.with_name(f"{TMP_PREFIX}{path.name}.tmp-{os.getpid()}")


def commit_file(tmp: Path, final: Path) -> None:
    """fsync ``tmp``, rename it to ``final`` and fsync the directory."""
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    fsync_dir(final.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old or the new file, never a mix."""
    tmp = temp_path_for(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    """:func:`atomic_write_bytes` of ``obj`` as indented UTF-8 JSON."""
    text = json.dumps(obj, indent=1, ensure_ascii=False, sort_keys=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temps(directory: Path, mine: Callable[[str], bool] | None = None) -> list[Path]:
    """Delete partial files left by a killed writer: all of them, or those whose final name
    ``mine(name)`` accepts (only call while holding the lock of the files concerned)."""
    removed = []
    if directory.is_dir():
        for p in directory.iterdir():
            if p.name.startswith(TMP_PREFIX) and ".tmp-" in p.name and (
                mine is None or mine(p.name[len(TMP_PREFIX) : p.name.rindex(".tmp-")])
            ):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed
