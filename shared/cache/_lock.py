"""Locks of a cache: who may change which files.

Two kinds, both :class:`FileLock`: the cache lock ``CACHE/.lock``, held briefly by whoever creates
the cache or rewrites ``manifest.json`` (setting up, folding commit journals, ``verify --fix``), and one
lock per part of the shard plan, ``CACHE/parts/part-I-of-N.lock``, held by the worker filling that
part for the whole of its run (see :mod:`featcache.shared.cache._parts`).

Each lock is an ``flock``: the kernel drops it when its holder dies, even by ``kill -9``, so a lock
can never outlive its process on the same host (on NFS v4 flock is emulated with byte-range locks
and works across clients; Lustre needs the ``flock`` mount option). The file's content names
the holder (pid, host, start time, command) so that a refused writer can say who holds it. The file
is never deleted (deleting a lock file races with a process that has just opened it); an empty file
means free, and a non-empty one that we could lock was left by a process that died: we take it over
and say so. A lock file is opened without following symbolic links and only when it is a regular file
(:func:`featcache.shared.cache.fsutil.open_regular`): a link planted as ``.lock`` is refused, never
truncated through.
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

from ..errors import CacheLockedError
from .fsutil import NotARegularFileError, open_regular
from .schema import LOCK_NAME

_POLL_SECONDS = 0.05


class FileLock:
    """Context manager holding an exclusive ``flock`` on ``path``; ``what`` names what it guards in
    the refusal message (``"{path}: {what} is being written by pid ..."``); ``wait`` is how long
    the context manager retries before refusing."""

    def __init__(self, path: str | os.PathLike[str], what: str = "cache", wait: float = 0.0):
        self.path = Path(path)
        self.what = what
        self.wait = wait
        self._fd: int | None = None

    def acquire(self, wait: float | None = None) -> None:
        """Take the lock, retrying for up to ``wait`` seconds (default: the constructor's), or raise
        :class:`CacheLockedError` naming the holder."""
        wait = self.wait if wait is None else wait
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = open_regular(self.path, os.O_RDWR | os.O_CREAT)
        deadline = time.monotonic() + wait
        while not _try_flock(fd):
            if time.monotonic() >= deadline:
                os.close(fd)
                waited = f" (waited {wait:g} s)" if wait else ""
                raise CacheLockedError(
                    f"{self.path}: {self.what} is being written by {describe_holder(read_holder(self.path))}"
                    f"{waited}; wait for it to finish or stop it"
                )
            time.sleep(_POLL_SECONDS)
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
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
            os.fsync(fd)
        except OSError as exc:  # a full disk: say which file (os.pwrite's error names none), hold nothing
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None
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

    def held_by(self) -> dict | None:
        """None when nobody holds the lock, else the recorded holder (``{}`` when unrecorded).

        Probing takes the lock for an instant, so call it only where a would-be holder cannot be
        acquiring at the same moment (under the cache lock, for part locks)."""
        try:
            fd = open_regular(self.path, os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            if _try_flock(fd):
                fcntl.flock(fd, fcntl.LOCK_UN)
                return None
            return _read_fd(fd) or {}
        finally:
            os.close(fd)

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class CacheLock(FileLock):
    """The cache lock, ``CACHE/.lock``."""

    def __init__(self, cache_dir: str | os.PathLike[str], wait: float = 0.0):
        super().__init__(Path(cache_dir) / LOCK_NAME, "cache", wait)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        return False
    return True


def _read_fd(fd: int) -> dict | None:
    raw = os.pread(fd, 4096, 0)
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return {"raw": raw[:200].decode("utf-8", "replace")}


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def holder_gone(holder: dict | None) -> bool:
    """Whether a recorded lock ``holder`` is known to be gone: it names a process of this host that
    no longer exists (killed without releasing). A holder of another host, or unrecorded, is not
    known to be gone. Read-only: nothing is locked to find out."""
    if not isinstance(holder, dict) or holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    return isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 and not pid_alive(pid)


def read_holder(path: Path) -> dict | None:
    """The holder recorded in a lock file, or None when it is free or unreadable."""
    try:
        fd = open_regular(path, os.O_RDONLY)
    except (OSError, NotARegularFileError):
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
