"""Durable file operations: what makes a crash leave either the old file or the new one.

A rename is atomic on POSIX filesystems, but only durable once the data was fsynced before it and
the directory after it; without both, a power cut can leave an empty file under the final name.

Files featcache opens for writing inside a cache (locks, temporary files) are opened without
following symbolic links and only when they are regular files (:func:`open_regular`,
:func:`create_new`): ``ln -s /some/file CACHE/.lock`` must not let a run truncate ``/some/file``,
nor a FIFO make it hang.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import FeatcacheError
from .schema import TMP_PREFIX

_HASH_BLOCK = 1 << 20


class NotARegularFileError(FeatcacheError):
    """A file featcache would open for writing (or trusts) is a symbolic link, a FIFO, a device or a folder."""


def _regular_fd(fd: int, path: str | os.PathLike[str], refusal: str) -> int:
    """``fd`` (opened with ``O_NONBLOCK``), made blocking, when it is a regular file; else closed and
    :class:`NotARegularFileError` with ``refusal`` after the path."""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotARegularFileError(f"{path}: {refusal}")
    os.set_blocking(fd, True)
    return fd


def open_input(path: str | os.PathLike[str]) -> int:
    """A read-only descriptor (close-on-exec, blocking) on the file a user or a record named at ``path``:
    links are followed (the user's own layout), but anything other than a regular file (a FIFO, a
    device, a folder) is refused with one line, and the open itself never blocks (``O_NONBLOCK``)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    return _regular_fd(fd, path, "not a regular file (a FIFO, a device or a folder); featcache reads files")


def open_named_input(path: str | os.PathLike[str]) -> int:
    """:func:`open_input` for a file a user named, its failures as one :class:`FeatcacheError` line naming it
    (no such file, cannot open and why, not a regular file)."""
    try:
        return open_input(path)
    except FileNotFoundError:
        raise FeatcacheError(f"{path}: no such file") from None
    except OSError as exc:
        raise FeatcacheError(f"{path}: cannot open ({exc.strerror})") from None


def check_input(path: str | os.PathLike[str]) -> None:
    """:func:`open_input`'s refusal, for a library call that takes a path rather than a descriptor
    (``keras.models.load_model``): made right before that call, it keeps a FIFO or device from
    blocking it."""
    os.close(open_input(path))


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a regular file's bytes, read in 1 MiB blocks (a FIFO or device is refused, never read)."""
    digest = hashlib.sha256()
    with os.fdopen(open_input(path), "rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def open_regular(path: str | os.PathLike[str], flags: int, mode: int = 0o644) -> int:
    """``os.open(path, flags)`` that never follows a symbolic link and accepts only a regular file
    (else :class:`NotARegularFileError`, one line); returns the descriptor (close-on-exec).

    ``O_NONBLOCK`` keeps a FIFO from blocking the open before it is refused. Do not pass ``O_TRUNC``
    for a file that may already exist: check first (:func:`create_new` makes new files)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotARegularFileError(
                f"{path}: is a symbolic link; featcache does not follow links for its own files (remove it)"
            ) from None
        raise
    return _regular_fd(fd, path, "not a regular file; featcache refuses to open it (remove it)")


def check_regular(path: str | os.PathLike[str]) -> None:
    """Refuse (as :func:`open_regular` would) a ``path`` that exists but is not a regular file, without
    opening or creating anything: for checks made before a run changes anything."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise NotARegularFileError(
            f"{path}: is a symbolic link; featcache does not follow links for its own files (remove it)"
        )
    if not stat.S_ISREG(mode):
        raise NotARegularFileError(f"{path}: not a regular file; featcache refuses to open it (remove it)")


def create_new(path: str | os.PathLike[str], access: int = os.O_WRONLY) -> int:
    """A new, empty regular file at ``path`` opened for writing (``access``: ``os.O_WRONLY`` or
    ``os.O_RDWR``): whatever was there (a stale temp file, a symbolic link) is unlinked first, never
    written through."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return os.open(path, access | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)


class FailSafeFile:
    """A new file at ``path`` (:func:`create_new`) for HDF5 to write through (``h5py.File(obj, "w")``,
    h5py's file-object driver), on which no write ever fails as far as HDF5 can tell.

    HDF5 does not survive a failed write: once a write or the close of a file fails (a full disk),
    the process dies of a segmentation fault when the library shuts down at exit, whatever is done
    with the file afterwards (measured with h5py 3.14 / HDF5 1.14 on a full tmpfs; closing again
    crashes at once). So the first failing write or truncate is kept in :attr:`error` and from then
    on the file lives in memory (the bytes written so far read back, at most the one file), which
    lets HDF5 finish and close cleanly; the owner checks :meth:`raise_error` after each call into
    h5py and discards the file. Reads past the end give zeros, as HDF5's own POSIX driver does."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.error: OSError | None = None
        self._fd: int | None = create_new(path, os.O_RDWR)
        self._mem: bytearray | None = None
        self._pos = 0
        self._size = 0

    def _spill(self, exc: OSError) -> None:
        """Keep ``exc`` and go on in memory from the bytes already on disk."""
        self.error = exc
        self._mem = bytearray(self._size)
        assert self._fd is not None, "FailSafeFile used after close()"
        done = 0
        while done < self._size:
            chunk = os.pread(self._fd, self._size - done, done)
            if not chunk:
                break  # a short file reads as zeros beyond, like a sparse one
            self._mem[done : done + len(chunk)] = chunk
            done += len(chunk)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        size = max(0, self._size - self._pos) if size < 0 else size
        if self._mem is not None:
            data = bytes(self._mem[self._pos : self._pos + size])
        else:
            assert self._fd is not None, "FailSafeFile used after close()"
            data = os.pread(self._fd, size, self._pos)
        self._pos += size
        return data + bytes(size - len(data))

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        if self._mem is None:
            assert self._fd is not None, "FailSafeFile used after close()"
            try:
                done = 0
                while done < n:
                    done += os.pwrite(self._fd, view[done:], self._pos + done)
            except OSError as exc:
                self._spill(exc)
        if self._mem is not None:
            end = self._pos + n
            if len(self._mem) < end:
                self._mem.extend(bytes(end - len(self._mem)))
            self._mem[self._pos : end] = view
        self._pos += n
        self._size = max(self._size, self._pos)
        return n

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        if self._mem is None:
            assert self._fd is not None, "FailSafeFile used after close()"
            try:
                os.ftruncate(self._fd, size)
            except OSError as exc:
                self._spill(exc)
        if self._mem is not None:
            del self._mem[size:]
            self._mem.extend(bytes(size - len(self._mem)))
        self._size = size
        return size

    def flush(self) -> None:
        """Nothing to do: writes go straight to the descriptor (durability is :func:`commit_file`'s)."""

    def raise_error(self) -> None:
        """Raise the first write failure as an ``OSError`` naming :attr:`path`, in one line."""
        if self.error is not None:
            raise OSError(self.error.errno, write_failure(self.error), str(self.path))

    def close(self) -> None:
        """Close the descriptor and drop the memory copy (the file on disk stays for its owner to rename or unlink)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._mem = None


def read_regular(path: str | os.PathLike[str]) -> bytes:
    """The bytes of the regular file ``path`` (not through a symbolic link, never a FIFO)."""
    fd = open_regular(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


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
    fd = open_regular(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old or the new file, never a mix.

    A failed write (disk full, I/O error) raises an ``OSError`` whose ``filename`` is ``path``
    (a write or fsync reports none): every message names the file that could not be replaced."""
    tmp = temp_path_for(path)
    try:
        with os.fdopen(create_new(tmp), "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    """:func:`atomic_write_bytes` of ``obj`` as indented UTF-8 JSON."""
    text = json.dumps(obj, indent=1, ensure_ascii=False, sort_keys=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temps(directory: Path, mine: Callable[[str], bool]) -> list[Path]:
    """Delete partial files left by a killed writer: the ``.NAME.tmp-PID`` files whose final name
    ``NAME`` ``mine(NAME)`` accepts (only featcache's own names; call only while holding the lock
    of the files concerned, and with ``directory`` checked by :func:`featcache.shared.cache._paths.cache_path`)."""
    removed = []
    if directory.is_dir() and not directory.is_symlink():
        for p in directory.iterdir():
            name, sep, pid = p.name.rpartition(".tmp-")
            if sep and pid.isdigit() and name.startswith(TMP_PREFIX) and mine(name[len(TMP_PREFIX) :]):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def write_failure(exc: BaseException) -> str:
    """One line saying why a write failed: the ``error message`` of HDF5's multi-line report (h5py
    raises a full disk as ``RuntimeError: Can't decrement id ref count (file write failed: ...,
    errno = 28, error message = 'No space left on device', ...)``, or as an ``OSError`` whose
    ``strerror`` is that report), else an OSError's ``strerror``, else the first line."""
    text = str(exc)
    found = re.search(r"error message = '([^']*)'", text)
    if found:
        return found[1]
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
