"""Parts of the shard plan: many workers filling one cache, on one machine or a cluster.

Worker ``I`` of ``N`` (``featcache-extract SRC CACHE --part I/N``) owns the shards ``k`` with
``k % N == I``. Workers share the cache directory (on a shared filesystem) but never a file:

- each holds ``parts/part-I-of-N.lock`` for its whole run: a second worker for the same part is
  refused, and so is one whose shards overlap a running part of another partition (a run without
  ``--part`` is part 0/1, which overlaps every part);
- each writes its own shard files and, after each one, appends one record to its own commit
  journal ``parts/part-I-of-N.journal`` (:mod:`featcache.shared.cache._journal`): O(1) per shard.
  Readers replay the journals after ``manifest.json``, so a shard is visible once its record is;
- :func:`fold` writes the replayed manifest and retires the journals of parts no longer running,
  under the cache lock: every writer folds now and then (when its journal holds as many records as
  the manifest lists shards, so folding costs O(1) per shard amortised) and as it stops (so the
  last one to stop completes the cache), and ``featcache-extract CACHE --finalize`` folds on
  demand (safe at any time, twice, or while workers are still going; it says what is missing).

A single run is part 0/1 and works the same way. Once the cache is complete the ``parts/`` folder is
removed, and the cache is the same, file for file, as one made by a single run.
"""

from __future__ import annotations

import errno
import math
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CacheLockedError, FeatcacheError
from . import _journal as journal
from . import schema
from ._lock import CacheLock, FileLock, describe_holder, read_holder
from ._manifest import Manifest, journal_names, list_shards, plan_shards
from ._paths import cache_path
from ._reader import FeatureCache

# How long a worker waits for the cache lock, which is only ever held for set-up and merges.
LOCK_WAIT_SECONDS = 300.0
_FILE_RE = re.compile(r"^part-(\d+)-of-(\d+)\.(journal|json|lock)$")  # json: logs of older versions


@dataclass(frozen=True, order=True)
class Part:
    """Worker ``index`` of ``count``: the shards ``k`` with ``k % count == index``."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not (self.count >= 1 and 0 <= self.index < self.count):
            raise FeatcacheError(f"part {self.index}/{self.count}: expected I/N with 0 <= I < N")

    @classmethod
    def parse(cls, text: str) -> "Part":
        """``"I/N"`` (the ``part`` argument of an extraction)."""
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not m:
            raise FeatcacheError(f"part={text!r}: expected I/N, e.g. 0/4 for the first of 4 workers")
        return cls(int(m[1]), int(m[2]))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def whole(self) -> bool:
        return self.count == 1

    @property
    def label(self) -> str:
        return "the whole cache (a run not split into parts)" if self.whole else f"part {self}"

    @property
    def stem(self) -> str:
        return f"part-{self.index}-of-{self.count}"

    def owns(self, shard: int) -> bool:
        return shard % self.count == self.index

    def shards(self, num_shards: int) -> list[int]:
        return list(range(self.index, num_shards, self.count))

    def inputs(self, num_inputs: int, shard_size: int) -> np.ndarray:
        """``(m,)`` int64 listing positions of the inputs of this part's shards of a plan of
        ``num_inputs`` in shards of ``shard_size`` (shard ``k`` holds ``k * shard_size`` on)."""
        mine = [
            np.arange(k * shard_size, min((k + 1) * shard_size, num_inputs), dtype=np.int64)
            for k in self.shards(plan_shards(num_inputs, shard_size))
        ]
        return np.concatenate(mine) if mine else np.zeros(0, dtype=np.int64)

    def overlaps(self, other: "Part") -> bool:
        """Whether some shard number belongs to both (by the Chinese remainder theorem)."""
        return (self.index - other.index) % math.gcd(self.count, other.count) == 0


WHOLE = Part(0, 1)


def parts_dir(cache_dir: Path) -> Path:
    """``CACHE/parts``, checked not to lead out of the cache (a symbolic link to elsewhere is refused)."""
    return cache_path(cache_dir, schema.PARTS_DIR)


def is_part_file(name: str) -> bool:
    """Whether ``name`` is a part lock or log name, or the temporary name of one (what featcache
    writes in ``parts/``, and all it ever deletes there)."""
    stem, sep, pid = name.rpartition(".tmp-")
    if sep and pid.isdigit() and stem.startswith(schema.TMP_PREFIX):
        name = stem[len(schema.TMP_PREFIX) :]
    return _FILE_RE.match(name) is not None


def part_lock(cache_dir: Path, part: Part) -> FileLock:
    """The lock a worker of ``part`` holds for its whole run."""
    return FileLock(parts_dir(cache_dir) / f"{part.stem}.lock", "cache" if part.whole else f"part {part}")


def known_parts(cache_dir: Path) -> set[Part]:
    """Parts that have a lock or a log in the cache (running, finished or died)."""
    d = parts_dir(cache_dir)
    found = set()
    if d.is_dir():
        for p in d.iterdir():
            if m := _FILE_RE.match(p.name):
                found.add(Part(int(m[1]), int(m[2])))
    return found


def acquire_part(cache_dir: Path, part: Part) -> FileLock:
    """Take ``part``'s lock, refusing when it or an overlapping part is being written.

    Call with the cache lock held: part locks are only taken (and probed) under it, so probing
    another part's lock cannot make its worker's own acquire fail."""
    for other in sorted(known_parts(cache_dir)):
        if other != part and part.overlaps(other):
            holder = part_lock(cache_dir, other).held_by()
            if holder is not None:
                raise CacheLockedError(
                    f"{cache_dir}: {part.label} overlaps {other.label}, which is being written by "
                    f"{describe_holder(holder)}; all workers of a cache must use the same N in part='I/N'"
                )
    lock = part_lock(cache_dir, part)
    lock.acquire()
    return lock


def running_parts(cache_dir: Path) -> dict[Part, dict]:
    """Parts whose lock is held now, with their recorded holder (call with the cache lock held)."""
    held = {}
    for part in sorted(known_parts(cache_dir)):
        holder = part_lock(cache_dir, part).held_by()
        if holder is not None:
            held[part] = holder
    return held


def recorded_holders(cache_dir: Path) -> dict[Part, dict]:
    """Parts whose lock file names a holder: running, or killed without releasing (read-only, no
    probing, so safe without the cache lock; :func:`running_parts` is exact)."""
    found = {}
    for part in sorted(known_parts(cache_dir)):
        holder = read_holder(part_lock(cache_dir, part).path)
        if holder:
            found[part] = holder
    return found


def journal_path(cache_dir: Path, part: Part) -> Path:
    """``CACHE/parts/part-I-of-N.journal``: the commit journal of ``part``'s writer."""
    return parts_dir(cache_dir) / f"{part.stem}{journal.SUFFIX}"


def open_journal(cache_dir: Path, part: Part, generation: str) -> journal.JournalWriter:
    """A fresh commit journal for ``part`` (any older one under its name is replaced). Call holding
    the cache lock and ``part``'s lock, after a :func:`fold` that included the older one."""
    parts_dir(cache_dir).mkdir(exist_ok=True)
    return journal.JournalWriter(journal_path(cache_dir, part), generation, str(part))


def _part_of(name: str) -> Part | None:
    m = _FILE_RE.match(name)
    try:
        return Part(int(m[1]), int(m[2])) if m else None
    except FeatcacheError:
        return None


def fold(cache_dir: Path, m: Manifest | None = None) -> tuple[Manifest, int]:
    """Fold the commit journals into ``manifest.json``; return the manifest and how many shards it
    gained. Call with the cache lock held. ``m``: the state to write instead of the one loaded
    (always written; a writer's own manifest, which already holds every journal's records).

    Safe at every instant: the new manifest (with every journal replayed, and for each journal of a
    running part the offset it includes) replaces the old one atomically *first*; only then are the
    journals of parts that are not running deleted. A kill between the two leaves journals whose
    records the manifest already lists: replay skips them (the manifest wins), so nothing is applied
    twice. A running part's journal is never deleted (its writer appends to it without the cache
    lock); its writer starts a new one at its next fold."""
    given = m is not None
    m = m if m is not None else Manifest.load(cache_dir)
    merged = len(m.journaled)
    names = journal_names(cache_dir)
    if not given and not names and not merged and not m.journals:
        return m, 0
    running = set(running_parts(cache_dir))
    retired = [n for n in names if _part_of(n) not in running]
    m.journals = {n: pos for n, pos in m.journals.items() if n not in retired}
    m.save(cache_dir)
    m.journaled = []
    d = parts_dir(cache_dir)
    for name in retired:
        (d / name).unlink(missing_ok=True)
    return m, merged


def awaiting_merge(cache_dir: Path, m: Manifest) -> list[int]:
    """Shards ``m`` (loaded with its journals replayed) has from commit journals, not yet folded
    into ``manifest.json`` (readers see them already; ``finalize`` folds them)."""
    return sorted(m.journaled)


def remove_logs(cache_dir: Path) -> None:
    """Drop every commit journal (on ``overwrite=True``; with the cache lock held and no part
    running), and part logs of older featcache versions: the files named like one, nothing else."""
    d = parts_dir(cache_dir)
    if d.is_dir():
        for p in d.iterdir():
            m = _FILE_RE.match(p.name)
            if m and m[3] in ("journal", "json") and not p.is_symlink() and p.is_file():
                p.unlink()


@dataclass
class Finalized:
    """The state of a cache after a merge: what is done, what is missing, who is still running."""

    cache: Path
    num_shards: int
    done: int
    rows: int
    merged: int
    missing: list[int]
    running: dict[Part, dict]
    partitions: list[int]

    @property
    def complete(self) -> bool:
        return not self.missing

    def to_json(self) -> dict[str, Any]:
        return {
            "cache": str(self.cache),
            "complete": self.complete,
            "shards": self.num_shards,
            "done": self.done,
            "rows": self.rows,
            "merged": self.merged,
            "missing": self.missing,
            "running": {str(p): h for p, h in self.running.items()},
        }

    def summary(self) -> str:
        merged = f"; folded {self.merged} shards from commit journals" if self.merged else ""
        if self.complete:
            return f"{self.cache}: complete, {self.done}/{self.num_shards} shards, {self.rows} rows{merged}"
        head = (
            f"{self.cache}: INCOMPLETE, {self.done}/{self.num_shards} shards done ({self.rows} rows){merged}; "
            f"{len(self.missing)} missing: "
        )
        return head + "; ".join(self._missing_by_part())

    def _missing_by_part(self) -> list[str]:
        count = max(self.partitions) if self.partitions else 1
        groups: dict[Part, list[int]] = {}
        for k in self.missing:
            groups.setdefault(Part(k % count, count), []).append(k)
        lines = []
        for part, shards in sorted(groups.items()):
            holder = next((h for p, h in self.running.items() if p.overlaps(part)), None)
            if holder is not None:
                state = f"running: {describe_holder(holder)}"
            else:
                state = "not running: rerun it" + ("" if part.whole else f" with --part {part}")
            what = "shards" if part.whole else f"part {part}: shards"
            lines.append(f"{what} {list_shards(shards)} ({state})")
        return lines


@contextmanager
def exclusive(cache_dir: Path, when: str) -> Iterator[tuple[Manifest, int]]:
    """The cache lock, held while no part is running, and the manifest with every finished part's
    shards merged in (and saved when that changed it), with how many were merged: what a command that
    rewrites a cache's files (``verify --fix``, ``compact``) works on. A running part is refused with
    one line ending in ``when`` (what to do instead)."""
    with CacheLock(cache_dir, wait=LOCK_WAIT_SECONDS):
        running = running_parts(cache_dir)
        if running:
            part, holder = next(iter(running.items()))
            raise CacheLockedError(f"{cache_dir}: {part.label} is being written by {describe_holder(holder)}; {when}")
        m, merged = fold(cache_dir)
        yield m, merged
        refresh_row_index(cache_dir)  # what was rewritten made it stale


def refresh_row_index(cache_dir: Path) -> bool:
    """Bring the row index (``rows.h5``, :mod:`~featcache.shared.cache._rowindex`) up to date with the
    complete cache; call with the cache lock held and no part running. A shard that cannot be read
    leaves no index (a warning says which): readers then read the shards, and say the same."""
    try:  # the reader checks each shard's identity as it copies it
        return FeatureCache(cache_dir, row_index=False).refresh_row_index()
    except (FeatcacheError, OSError) as exc:  # OSError: e.g. a folder where rows.h5 goes, a full disk
        warnings.warn(f"row index not written: {exc}", stacklevel=2)
        return False


# errno of a lock file that cannot be opened for writing: a read-only filesystem, no permission
UNWRITABLE_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


def finalize(cache_dir: str | Path, *, wait: float = LOCK_WAIT_SECONDS) -> Finalized:
    """Fold the commit journals into ``manifest.json`` and say what is missing and who is running.

    Safe at any time: it only adds shards whose files are in place, under the cache lock. When the
    cache is complete and no part is running, the ``parts/`` folder is removed. A cache that cannot
    be written (a read-only mount, another user's: the lock cannot be opened) is reported as it is,
    with a warning, and left unchanged (``running`` then holds the parts whose lock names a holder,
    running or killed)."""
    cache_dir = Path(cache_dir)
    m = Manifest.load(cache_dir)  # not a cache: say so before the lock creates anything
    lock = CacheLock(cache_dir, wait=wait)
    try:
        lock.acquire()
    except OSError as exc:
        if exc.errno not in UNWRITABLE_ERRNOS:
            raise
        # a cache on a read-only mount, or someone else's: what is committed is in m (the manifest
        # with the journals replayed), so say what it holds and change nothing
        warnings.warn(
            f"{lock.path}: cannot take the cache lock ({exc.strerror}): the cache cannot be written here; "
            "its state is reported as it is, nothing folded and no row index written",
            stacklevel=2,
        )
        holders = recorded_holders(cache_dir)
        return Finalized(
            cache_dir,
            m.num_shards,
            len(m.shards),
            m.rows,
            0,
            m.missing_shards(),
            holders,
            sorted({p.count for p in known_parts(cache_dir) if not p.whole}),
        )
    try:
        m, merged = fold(cache_dir)
        parts = known_parts(cache_dir)
        running = running_parts(cache_dir)
        d = parts_dir(cache_dir)
        if m.complete and not running and d.is_dir():
            for p in d.iterdir():  # featcache's files only: a folder that holds anything else is kept
                if is_part_file(p.name) and not p.is_dir():
                    p.unlink()
            if not any(d.iterdir()):
                d.rmdir()
        if m.complete and not running:
            refresh_row_index(cache_dir)
    finally:
        lock.release()
    return Finalized(
        cache_dir,
        m.num_shards,
        len(m.shards),
        m.rows,
        merged,
        m.missing_shards(),
        running,
        sorted({p.count for p in parts if not p.whole}),
    )
