"""One writer per cache.

The lock is an ``flock`` on ``CACHE/.lock``: the kernel drops it when its holder dies, even by
``kill -9``, so a lock can never outlive its process on the same host. The file's content names
the holder (pid, host, start time, command) so that a refused writer can say who holds it. The file
is never deleted (deleting a lock file races with a process that has just opened it); an empty file
means free, and a non-empty one that we could lock was left by a process that died: we take it over
and say so.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from types import TracebackType

from .errors import CacheLockedError
from .schema import LOCK_NAME


class CacheLock:
    """Context manager holding the write lock of the cache at ``cache_dir``."""

    def __init__(self, cache_dir: str | os.PathLike[str]):
        self.path = Path(cache_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`CacheLockedError` naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise CacheLockedError(
                f"{self.path}: cache is being written by {describe_holder(read_holder(self.path))}; "
                "wait for it to finish or stop it"
            ) from None
        previous = _read_fd(fd)
        if previous:
            warnings.warn(
                f"{self.path}: taking over a stale lock left by {describe_holder(previous)}, "
                "which is no longer running",
                stacklevel=2,
            )
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv)[:500],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Mark the lock free and drop it."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "CacheLock":
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read_fd(fd: int) -> dict | None:
    raw = os.pread(fd, 4096, 0)
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return {"raw": raw[:200].decode("utf-8", "replace")}


def read_holder(path: Path) -> dict | None:
    """The holder recorded in a lock file, or None when it is free or unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return _read_fd(fd)
    finally:
        os.close(fd)


def describe_holder(holder: dict | None) -> str:
    """``pid 123 on host x since ...`` for messages."""
    if not holder:
        return "another process"
    if "pid" not in holder:
        return f"an unknown holder ({holder.get('raw', '?')!r})"
    return f"pid {holder['pid']} on host {holder.get('host', '?')} since {holder.get('since', '?')}"
