"""Parts of the shard plan: many workers filling one cache, on one machine or a cluster.

Worker ``I`` of ``N`` (``featcache-extract SRC CACHE --part I/N``) owns the shards ``k`` with
``k % N == I``. Workers share the cache directory (on a shared filesystem) but never a file:

- each holds ``parts/part-I-of-N.lock`` for its whole run: a second worker for the same part is
  refused, and so is one whose shards overlap a running part of another partition (a run without
  ``--part`` is part 0/1, which overlaps every part);
- each writes its own shard files and, after each one, atomically rewrites its own log
  ``parts/part-I-of-N.json``: the manifest records of the shards it finished;
- ``manifest.json`` is the merge of the logs, done under the cache lock by every worker as it stops
  (so the last one to stop completes it) and by ``featcache-extract CACHE --finalize``, which is safe
  to run at any time, twice, or while workers are still going, and says what is missing.

Once the cache is complete the ``parts/`` folder is removed, and the cache is the same, file for
file, as one made by a single run. A single run records each shard straight into the manifest.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CacheLockedError, FeatcacheError
from . import schema
from .fsutil import atomic_write_json, read_regular
from .lock import CacheLock, FileLock, describe_holder, read_holder
from .manifest import (
    FailedInput,
    Manifest,
    ShardRecord,
    failed_input,
    file_status,
    list_shards,
    now,
    shard_record,
)
from .paths import UnsafePathError, cache_path, shard_path

# How long a worker waits for the cache lock, which is only ever held for set-up and merges.
LOCK_WAIT_SECONDS = 300.0
LOG_FORMAT = "featcache-part-log"
_FILE_RE = re.compile(r"^part-(\d+)-of-(\d+)\.(json|lock)$")


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


@dataclass
class PartLog:
    """What one part's worker finished: shard records and their failed inputs, for the merge.

    ``generation`` is the manifest's ``created`` time: a log left from an earlier cache in the same
    directory is never merged into a new one."""

    part: Part
    generation: str
    shards: list[ShardRecord] = field(default_factory=list)
    failed: list[FailedInput] = field(default_factory=list)

    @property
    def path_name(self) -> str:
        return f"{self.part.stem}.json"

    def add(self, record: ShardRecord, failed: list[FailedInput]) -> None:
        self.shards.append(record)
        self.failed.extend(failed)

    def save(self, cache_dir: Path) -> None:
        d = parts_dir(cache_dir)
        d.mkdir(exist_ok=True)
        atomic_write_json(
            d / self.path_name,
            {
                "format": LOG_FORMAT,
                "part": str(self.part),
                "generation": self.generation,
                "updated": now(),
                "shards": [asdict(s) for s in self.shards],
                "failed": [asdict(f) for f in self.failed],
            },
        )

    @classmethod
    def load(cls, path: Path) -> "PartLog | None":
        """The log at ``path``, or None when it is unreadable (then its shards are simply redone)."""
        try:
            d = json.loads(read_regular(path).decode("utf-8"))
            if not isinstance(d, dict) or d.get("format") != LOG_FORMAT or not isinstance(d.get("generation"), str):
                return None
            return cls(
                Part.parse(d["part"]),
                d["generation"],
                [shard_record(s, f"shards[{k}]") for k, s in enumerate(d["shards"])],
                [failed_input(f, f"failed[{k}]") for k, f in enumerate(d["failed"])],
            )
        except Exception:  # noqa: BLE001 (whatever is wrong with a log, its shards are redone)
            return None


def _unmerged(cache_dir: Path, m: Manifest) -> list[tuple[ShardRecord, list[FailedInput]]]:
    """The shards the part logs of ``m``'s generation record that ``m`` does not list and whose file
    is in place with the recorded size, each with its failed inputs (first log wins)."""
    d = parts_dir(cache_dir)
    if not d.is_dir():
        return []
    have = {s.shard for s in m.shards}
    found = []
    for path in sorted(d.glob("part-*-of-*.json")):
        log = PartLog.load(path)
        if log is None or log.generation != m.created:
            continue
        failed: dict[int, list[FailedInput]] = {}
        for f in log.failed:
            failed.setdefault(f.shard, []).append(f)
        for rec in log.shards:
            if rec.shard in have or rec.shard >= m.num_shards:
                continue
            plan = m.shard_inputs(rec.shard)
            if (
                (rec.first_index, rec.num_inputs) != (plan.start, len(plan))
                or rec.rows + len(failed.get(rec.shard, [])) != rec.num_inputs
                or any(f.index not in plan for f in failed.get(rec.shard, []))
            ):
                continue
            try:
                path = shard_path(cache_dir, rec.file, rec.shard)
            except UnsafePathError:
                continue
            if file_status(path, rec, checksum=False) is not None:
                continue
            found.append((rec, failed.get(rec.shard, [])))
            have.add(rec.shard)
    return found


def merge_logs(cache_dir: Path, m: Manifest) -> int:
    """Add to ``m`` (in memory) every shard the part logs record whose file is in place with its
    recorded size; return how many were added. Call with the cache lock held, then save ``m``."""
    found = _unmerged(cache_dir, m)
    if found:
        m.shards = sorted(m.shards + [rec for rec, _ in found], key=lambda s: s.shard)
        m.failed = sorted(m.failed + [f for _, fs in found for f in fs], key=lambda f: f.index)
        m.updated = now()
    return len(found)


def awaiting_merge(cache_dir: Path, m: Manifest) -> list[int]:
    """Shards finished by parts but not yet in ``m`` (read-only)."""
    return sorted(rec.shard for rec, _ in _unmerged(cache_dir, m))


def remove_logs(cache_dir: Path) -> None:
    """Drop every part log (on ``--overwrite``; with the cache lock held and no part running): the
    files named like one that parse as one, nothing else."""
    d = parts_dir(cache_dir)
    if d.is_dir():
        for p in d.glob("part-*-of-*.json"):
            if _FILE_RE.match(p.name) and PartLog.load(p) is not None:
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
        merged = f"; merged {self.merged} shards from part logs" if self.merged else ""
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
        m = Manifest.load(cache_dir)
        merged = merge_logs(cache_dir, m)
        if merged:
            m.save(cache_dir)
        yield m, merged


def finalize(cache_dir: str | Path, *, wait: float = LOCK_WAIT_SECONDS) -> Finalized:
    """Merge the part logs into ``manifest.json`` and say what is missing and who is running.

    Safe at any time: it only adds shards whose files are in place, under the cache lock. When the
    cache is complete and no part is running, the ``parts/`` folder is removed."""
    cache_dir = Path(cache_dir)
    Manifest.load(cache_dir)  # not a cache: say so before the lock creates anything
    with CacheLock(cache_dir, wait=wait):
        m = Manifest.load(cache_dir)
        merged = merge_logs(cache_dir, m)
        if merged:
            m.save(cache_dir)
        parts = known_parts(cache_dir)
        running = running_parts(cache_dir)
        d = parts_dir(cache_dir)
        if m.complete and not running and d.is_dir():
            for p in d.iterdir():  # featcache's files only: a folder that holds anything else is kept
                if is_part_file(p.name) and not p.is_dir():
                    p.unlink()
            if not any(d.iterdir()):
                d.rmdir()
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
