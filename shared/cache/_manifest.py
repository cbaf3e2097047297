"""``manifest.json``: the index of a cache, and the only thing a reader trusts.

A shard exists for readers once it is committed: listed in ``manifest.json``, or recorded in a
commit journal (:mod:`featcache.shared.cache._journal`) after the position the manifest says it
folded. :meth:`Manifest.load` replays the journals, so every reader sees exactly the committed
shards. A shard's record is appended only after its file is renamed into place, so a crash between
the two leaves a shard file nothing names (it is recomputed on resume), never a record naming a
missing or partial file.

A manifest is also data anyone can edit. :func:`validate` checks every field's type and range and
the numbers against each other (the shard plan, each shard record, the failed inputs) when it is
loaded, so that every command refuses a bad one with ``CACHE/manifest.json: <field>: <reason>``
instead of a traceback, a file outside the cache, or a loop over a billion planned shards.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NotACacheError
from . import _journal as journal
from ._fingerprint import IDENTITY_KEYS, OPTIONAL_IDENTITY_KEYS
from ._paths import shard_file_problem
from .fsutil import NotARegularFileError, atomic_write_json, read_regular, sha256_file
from .schema import COMPRESSIONS, FORMAT_NAME, MANIFEST_NAME, MAPS_DTYPES, PARTS_DIR, SCHEMA_VERSION, SPLITS

# Largest integer a manifest may hold: what HDF5's int64 datasets (``index``) can store.
MAX_INT = 2**62 - 1
# How far split fractions may sum away from 1 (as written by parse_fractions).
FRACTIONS_TOLERANCE = 1e-6


def now() -> str:
    """Local time with offset, to the second, as stored in the manifest."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass
class ShardRecord:
    """A completed shard: inputs ``[first_index, first_index + num_inputs)`` of the listing, of which
    ``rows`` were written (the others failed and are in :attr:`Manifest.failed`)."""

    shard: int
    file: str
    first_index: int
    num_inputs: int
    rows: int
    bytes: int
    sha256: str
    completed: str


def file_status(path: Path, rec: ShardRecord, checksum: bool = True) -> str | None:
    """``"missing"``, ``"size"`` or ``"checksum"`` when the shard file disagrees with its manifest
    record (checked in that order, the sha256 only with ``checksum``), else None."""
    if not path.is_file():
        return "missing"
    if path.stat().st_size != rec.bytes:
        return "size"
    if checksum and sha256_file(path) != rec.sha256:
        return "checksum"
    return None


@dataclass
class FailedInput:
    """An input that was skipped, with the one-line reason."""

    index: int
    id: str
    reason: str
    shard: int


@dataclass
class Generation:
    """One batch of inputs added to a cache: listing positions ``[first_index, first_index + num_inputs)``
    in shards ``first_shard ..`` (``shard_size`` inputs each, the last one shorter).

    Generation 0 is the first extraction; each ``update=True`` run that changes what readers see adds
    one (possibly with no inputs, when it only removed or relabelled rows). ``classes`` are the class
    names the ``label`` numbers in this generation's shards refer to; ``changes`` counts what the
    update found (``added``, ``removed``, ``modified``, ``relabelled``).
    """

    generation: int
    first_index: int
    num_inputs: int
    first_shard: int
    created: str
    classes: list[str]
    changes: dict[str, int] = field(default_factory=dict)
    # The source listing's sha256 when this generation's shards were written: what their
    # ``listing_sha256`` attribute says (the reader's shard identity check compares the two).
    listing_sha256: str | None = None


@dataclass
class Manifest:
    """Everything a reader needs to know about a cache before opening a shard.

    ``source`` holds ``kind``, ``root``, ``num_inputs`` and ``listing_sha256`` (the identity of the
    input listing, checked on resume); ``split`` holds ``source`` (where per-row splits came from:
    ``"folders"``, ``"csv"`` or None) and the default hash ``fractions``; ``storage`` how maps are
    stored (dtype, compression, chunk rows).
    """

    fingerprint: dict[str, Any]
    classes: list[str]
    source: dict[str, Any]
    split: dict[str, Any]
    storage: dict[str, Any]
    shard_size: int
    shards: list[ShardRecord] = field(default_factory=list)
    failed: list[FailedInput] = field(default_factory=list)
    # Updates (docs/updates.md); all empty for a cache made in one go. ``dead``: listing positions
    # retired by an update whose rows are still in a shard file (readers skip them); ``dropped``:
    # retired positions no shard holds (compacted away, or failed inputs later removed);
    # ``relabelled``: ``[index, label, split]`` of rows whose label (in :attr:`classes`) or given
    # split changed since they were written.
    generations: list[Generation] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    relabelled: list[list[int]] = field(default_factory=list)
    created: str = field(default_factory=now)
    updated: str = field(default_factory=now)
    format: str = FORMAT_NAME
    schema_version: int = SCHEMA_VERSION
    # Commit journals (parts/part-I-of-N.journal) this manifest includes up to a byte offset, by file
    # name: ``{"id": <the journal's id>, "offset": <bytes>}``; replay starts there (see load).
    journals: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False, compare=False)
    # Shards replayed from journals on load (committed, not yet folded into manifest.json).
    journaled: list[int] = field(default_factory=list, repr=False, compare=False)
    # Rows per (label, split) of listed shards, ``shard -> [label, split, rows, label, split, rows,
    # ...]`` (flat; split as readers assign it: the source's, else by hash of the id): what
    # ``summary`` needs without opening 10,000 shards. Optional, and checked only when used
    # (:meth:`count_rows`): caches written before it, or entries that do not check, make summary read
    # the shards instead.
    counts: dict[int, list[int]] = field(default_factory=dict, repr=False, compare=False)
    # sha256 of listing.npz's first num_inputs entries (listing.entries_sha256), written with the
    # listing: load_listing refuses a listing edited since. None for caches made before it was kept.
    listing_sha256: str | None = None

    @property
    def num_inputs(self) -> int:
        """Listing positions in the plan: the source's inputs, or for an updated cache every position
        any generation added (retired ones included)."""
        if self.generations:
            g = self.generations[-1]
            return g.first_index + g.num_inputs
        return int(self.source["num_inputs"])

    def plan(self) -> list[Generation]:
        """The generations, or the single implicit one of a cache never updated."""
        if self.generations:
            return self.generations
        return [
            Generation(
                0,
                0,
                self.num_inputs,
                0,
                self.created,
                list(self.classes),
                listing_sha256=self.source.get("listing_sha256"),
            )
        ]

    @property
    def generation(self) -> int:
        """The newest generation's number (0 for a cache never updated)."""
        return self.generations[-1].generation if self.generations else 0

    @property
    def num_shards(self) -> int:
        """Shards in the plan (completed or not)."""
        if not self.generations:
            return plan_shards(int(self.source["num_inputs"]), self.shard_size)
        g = self.plan()[-1]
        return g.first_shard + plan_shards(g.num_inputs, self.shard_size)

    @property
    def rows(self) -> int:
        """Rows in completed shards (dead ones included: see :attr:`live_rows`)."""
        return sum(s.rows for s in self.shards)

    @property
    def live_rows(self) -> int:
        """Rows readers see: :attr:`rows` less the dead ones."""
        return self.rows - len(self.dead)

    def generation_of(self, shard: int) -> Generation:
        """The generation whose plan holds shard number ``shard``."""
        for g in reversed(self.plan()):
            if shard >= g.first_shard:
                return g
        raise ValueError(f"shard {shard} is in no generation")

    def listing_sha256_of(self, shard: int) -> str | None:
        """The source listing's sha256 that shard number ``shard`` was written for (its
        ``listing_sha256`` attribute), None when not recorded."""
        return self.generation_of(shard).listing_sha256

    def shard_of(self, index: int) -> int:
        """The shard number that holds listing position ``index``."""
        for g in reversed(self.plan()):
            if index >= g.first_index:
                return g.first_shard + (index - g.first_index) // self.shard_size
        raise ValueError(f"index {index} is in no generation")

    @property
    def complete(self) -> bool:
        return len(self.shards) == self.num_shards

    @property
    def missing_count(self) -> int:
        """How many planned shards are not done (without listing them: the plan may be huge)."""
        return self.num_shards - len(self.shards)

    def missing_shards(self, limit: int | None = None) -> list[int]:
        """Planned shards not done, in order; the first ``limit`` of them only when given (the loop
        then stops after ``len(shards) + limit`` steps, whatever the plan's size)."""
        done = {s.shard for s in self.shards}
        out: list[int] = []
        for k in range(self.num_shards):
            if limit is not None and len(out) >= limit:
                break
            if k not in done:
                out.append(k)
        return out

    def shard_inputs(self, shard: int) -> range:
        """Positions in the listing that shard number ``shard`` covers."""
        if not self.generations:  # the plan of a cache never updated (no Generation built: called per record)
            start = shard * self.shard_size
            return range(start, min(start + self.shard_size, int(self.source["num_inputs"])))
        g = self.generation_of(shard)
        start = g.first_index + (shard - g.first_shard) * self.shard_size
        return range(start, min(start + self.shard_size, g.first_index + g.num_inputs))

    def add_shard(
        self,
        record: ShardRecord,
        failed: list[FailedInput],
        updated: str | None = None,
        counts: list[int] | None = None,
    ) -> None:
        """Record a completed shard (replacing any record of the same number), keeping ``shards``
        sorted by shard and ``failed`` by index: O(log n) for a shard past the last one (the usual
        case: a run commits in order), O(n) otherwise."""
        at = bisect.bisect_left(self.shards, record.shard, key=lambda s: s.shard)
        if at < len(self.shards) and self.shards[at].shard == record.shard:
            self.shards[at] = record
            self.failed = [f for f in self.failed if f.shard != record.shard]
        else:
            self.shards.insert(at, record)
        for f in failed:
            self.failed.insert(bisect.bisect_right(self.failed, f.index, key=lambda x: x.index), f)
        self.counts.pop(record.shard, None)
        if counts is not None:
            self.counts[record.shard] = counts
        self.updated = updated or now()

    def count_rows(self) -> dict[tuple[int, int], int] | None:
        """Rows per ``(label, split)`` of the whole cache from :attr:`counts`, or None when they do
        not cover every listed shard, an update changed rows since, or an entry does not check
        (integers, labels in ``-1 .. classes - 1``, split codes 0..2, positive rows summing to the
        shard's ``rows``). Vectorised: milliseconds for 10,000 shards."""
        if self.generations or self.dead or self.relabelled:
            return None
        try:
            flat = [self.counts[s.shard] for s in self.shards]
        except KeyError:
            return None
        if not flat:
            return {}
        lengths = np.array([len(c) for c in flat])
        try:
            values = np.array([x for c in flat for x in c])
        except (OverflowError, ValueError, TypeError):
            return None
        if values.dtype.kind not in "iu" or (lengths % 3).any() or not lengths.all():
            return None
        t = values.reshape(-1, 3).astype(np.int64)
        if not (
            ((t[:, 0] >= -1) & (t[:, 0] < len(self.classes))).all()
            and ((t[:, 1] >= 0) & (t[:, 1] < len(SPLITS))).all()
            and (t[:, 2] > 0).all()
        ):
            return None
        per_shard = np.add.reduceat(t[:, 2], np.concatenate([[0], np.cumsum(lengths // 3)[:-1]]))
        if not np.array_equal(per_shard, [s.rows for s in self.shards]):
            return None
        keys, inverse = np.unique(t[:, :2], axis=0, return_inverse=True)
        sums = np.bincount(inverse.reshape(-1), weights=t[:, 2], minlength=len(keys))
        return {(int(a), int(b)): int(n) for (a, b), n in zip(keys, sums, strict=True)}

    def to_json(self) -> dict[str, Any]:
        d = {
            **{k: getattr(self, k) for k in ("format", "schema_version", "created", "updated", "classes")},
            **{k: getattr(self, k) for k in ("source", "split", "storage", "shard_size", "dead", "dropped")},
            "fingerprint": self.fingerprint,
            "generations": [asdict(g) for g in self.generations],
            "shards": [vars(s).copy() for s in self.shards],
            "failed": [vars(f).copy() for f in self.failed],
        }
        order = [
            "format",
            "schema_version",
            "created",
            "updated",
            "fingerprint",
            "classes",
            "source",
            "split",
            "storage",
            "shard_size",
        ]
        out = {k: d[k] for k in order}
        out.update(num_shards=self.num_shards, rows=self.rows, complete=self.complete)
        if self.generations:  # only updated caches carry these (a cache made in one go is unchanged)
            out.update(
                num_inputs=self.num_inputs,
                generation=self.generation,
                live_rows=self.live_rows,
                generations=d["generations"],
                dead=self.dead,
                dropped=self.dropped,
                relabelled=self.relabelled,
            )
        if self.listing_sha256 is not None:
            out["listing_sha256"] = self.listing_sha256
        if self.journals:
            out["journals"] = self.journals
        counts = {str(s.shard): self.counts[s.shard] for s in self.shards if s.shard in self.counts}
        if counts:
            out["counts"] = counts
        out.update(shards=d["shards"], failed=d["failed"])
        return out

    def save(self, cache_dir: Path) -> None:
        atomic_write_json(Path(cache_dir) / MANIFEST_NAME, self.to_json())

    @classmethod
    def from_json(cls, d: Any, where: str = "manifest") -> "Manifest":
        """The manifest in ``d`` (parsed JSON), checked by :func:`validate`; ``where`` names the file."""
        return validate(d, where)

    @classmethod
    def load(cls, cache_dir: str | Path, *, replay: bool = True) -> "Manifest":
        """Read ``CACHE/manifest.json`` and (unless ``replay=False``) replay the commit journals
        after it: the committed state of the cache. :class:`NotACacheError` names the file and what
        is wrong (:class:`ManifestError` when it is there but unreadable or invalid).

        A fold may replace the manifest and retire a journal between the two reads; the manifest's
        identity (inode, size, mtime) is compared before and after, and the read redone if it
        changed, so the result is always one committed state, never a mix."""
        path = Path(cache_dir) / MANIFEST_NAME
        for _ in range(LOAD_ATTEMPTS):
            before = _identity(path)
            m = cls._load_file(cache_dir, path)
            if not replay:
                return m
            replay_journals(Path(cache_dir), m)
            if _identity(path) == before:
                break
        return m

    @classmethod
    def _load_file(cls, cache_dir: str | Path, path: Path) -> "Manifest":
        if not os.path.lexists(path):
            what = "no such directory" if not Path(cache_dir).exists() else "no manifest.json"
            raise NotACacheError(f"{path}: not a featcache cache ({what})")
        try:
            raw = read_regular(path)
        except NotARegularFileError as exc:
            raise ManifestError(str(exc)) from None
        try:
            d = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ManifestError(f"{path}: manifest is not UTF-8 ({exc})") from None
        except (ValueError, RecursionError) as exc:
            raise ManifestError(f"{path}: manifest is not valid JSON ({str(exc)[:200]})") from None
        return cls.from_json(d, str(path))


# How often Manifest.load rereads when a fold replaced the manifest while it was reading.
LOAD_ATTEMPTS = 5


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def journal_names(cache_dir: Path) -> list[str]:
    """Names of the commit journals in ``CACHE/parts`` (none when ``parts`` is missing or a link)."""
    d = Path(cache_dir) / PARTS_DIR
    if d.is_symlink() or not d.is_dir():
        return []
    try:
        return sorted(p.name for p in d.iterdir() if journal.NAME_RE.match(p.name))
    except OSError:
        return []


def replay_journals(cache_dir: Path, m: "Manifest") -> int:
    """Add to ``m`` every valid record of the commit journals of ``m``'s cache that ``m`` does not
    include yet; set :attr:`Manifest.journals` to where each journal now ends and
    :attr:`Manifest.journaled` to the shards added. Returns how many were added.

    A journal is untrusted input: it is read only when its header names ``m``'s generation (its
    ``created``), each record goes through the manifest's own checks (:func:`shard_record` against
    the plan, failed inputs inside the shard's inputs, rows plus failed equal to inputs), and a
    record for a shard ``m`` already lists is skipped (the manifest wins: a fold killed before it
    retired a journal applies nothing twice). Bad records are skipped (their shards are redone)."""
    positions: dict[str, dict[str, Any]] = {}
    added = 0
    for name in journal_names(cache_dir):
        path = Path(cache_dir) / PARTS_DIR / name
        seen = m.journals.get(name)
        start = int(seen["offset"]) if seen else 0
        j = journal.scan(path, start)
        if j is not None and seen and start and j.id != seen["id"]:
            j = journal.scan(path)  # another journal under that name since: replayed from its start
        if j is None or j.generation != m.created:
            continue  # not a journal, or left from an earlier cache in this directory
        positions[name] = {"id": j.id, "offset": j.end}
        for at, value in j.records:
            if _apply_record(m, value, f"{PARTS_DIR}/{name} at byte {at}"):
                added += 1
    m.journals = positions
    return added


def _apply_record(m: "Manifest", value: Any, where: str) -> bool:
    """Add one journal record to ``m`` when it is valid and new; whether it was added."""
    if (
        not isinstance(value, dict)
        or not {"shard", "failed"} <= set(value) <= {"shard", "failed", "counts"}
        or not isinstance(value["failed"], list)
    ):
        return False
    try:
        rec = shard_record(value["shard"], f"{where}: shard", m)
        failed = [failed_input(f, f"{where}: failed[{k}]") for k, f in enumerate(value["failed"])]
    except _Invalid:
        return False
    at = bisect.bisect_left(m.shards, rec.shard, key=lambda s: s.shard)
    if at < len(m.shards) and m.shards[at].shard == rec.shard:
        return False
    inputs = m.shard_inputs(rec.shard)
    indices = {f.index for f in failed}
    if (
        len(indices) != len(failed)
        or any(f.shard != rec.shard or f.index not in inputs for f in failed)
        or rec.rows + len(failed) != rec.num_inputs
    ):
        return False
    counts = value.get("counts")
    m.add_shard(rec, failed, updated=rec.completed, counts=counts if isinstance(counts, list) else None)
    m.journaled.append(rec.shard)
    return True


class ManifestError(NotACacheError):
    """``manifest.json`` is there but unreadable, of the wrong type, or its numbers disagree: one
    line ``CACHE/manifest.json: <field>: <reason>``."""


class _Invalid(Exception):
    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _field(
    d: dict[str, Any], key: str, where: str, kind: str, *, minimum: int | None = None, optional: bool = False
) -> Any:
    """``d[key]`` checked to be of ``kind`` (``int``, ``str``, ``dict``, ``list``, ``number``,
    ``str-or-null``); ``where`` is the dotted path of ``d`` for messages."""
    if key not in d:
        if optional:
            return None
        raise _Invalid(f"{where}.{key}" if where else key, "missing")
    v = d[key]
    if not _KIND_CHECKS[kind](v):
        name = f"{where}.{key}" if where else key
        expected = {
            "int": "an integer",
            "dict": "an object",
            "list": "a list",
            "number": "a finite number",
            "str-or-null": "a string or null",
        }.get(kind, f"a {kind}")
        raise _Invalid(name, f"expected {expected}, got {_show(v)}")
    if kind == "int":
        low = 0 if minimum is None else minimum
        if not low <= v <= MAX_INT:
            raise _Invalid(f"{where}.{key}" if where else key, f"must be between {low} and {MAX_INT}, got {v}")
    return v


# One check per kind, evaluated only for the kind asked (validate runs them ~10 times per shard record).
_KIND_CHECKS = {
    "int": _is_int,
    "str": lambda v: isinstance(v, str),
    "dict": lambda v: isinstance(v, dict),
    "list": lambda v: isinstance(v, list),
    "number": lambda v: (_is_int(v) or isinstance(v, float)) and math.isfinite(v),
    "str-or-null": lambda v: v is None or isinstance(v, str),
}


# How many shard numbers a message lists before it says how many more there are.
SHARDS_LISTED = 12


def list_shards(shards: list[int], limit: int = SHARDS_LISTED) -> str:
    """``1, 3, 5`` or ``1, 3, ... and 40 more``, for messages."""
    text = ", ".join(str(k) for k in shards[:limit])
    return text + (f" and {len(shards) - limit} more" if len(shards) > limit else "")


def plan_shards(num_inputs: int, shard_size: int) -> int:
    """Shards in a plan of ``num_inputs`` inputs in shards of ``shard_size`` (integer arithmetic)."""
    return -(-num_inputs // shard_size)


_RECORD_FIELDS = {
    "shard": "int",
    "file": "str",
    "first_index": "int",
    "num_inputs": "int",
    "rows": "int",
    "bytes": "int",
    "sha256": "str",
    "completed": "str",
}
_FAILED_FIELDS = {"index": "int", "id": "str", "reason": "str", "shard": "int"}


def _object(d: Any, where: str, fields: dict[str, str]) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise _Invalid(where, f"expected an object, got {_show(d)}")
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise _Invalid(where, f"unknown field {unknown[0]!r}")
    return {k: _field(d, k, where, kind) for k, kind in fields.items()}


def shard_record(d: Any, where: str, plan: Manifest | None = None) -> ShardRecord:
    """A manifest or part-log shard record, checked: field types, its file name (only the writer's
    name for its shard number), ``rows <= num_inputs``, and with ``plan`` (the manifest, whose
    generations and shard size make the shard plan) its place in the plan. Raises ``_Invalid``."""
    rec = ShardRecord(**_object(d, where, _RECORD_FIELDS))
    problem = shard_file_problem(rec.file, rec.shard)
    if problem:
        raise _Invalid(f"{where}.file", problem)
    if rec.rows > rec.num_inputs:
        raise _Invalid(f"{where}.rows", f"{rec.rows} rows from {rec.num_inputs} inputs")
    if plan is not None:
        if rec.shard >= plan.num_shards:
            raise _Invalid(f"{where}.shard", f"{rec.shard} is past the plan's {plan.num_shards} shards")
        inputs = plan.shard_inputs(rec.shard)
        expected = (inputs.start, len(inputs))
        if (rec.first_index, rec.num_inputs) != expected:
            raise _Invalid(
                where, f"inputs {rec.first_index}+{rec.num_inputs}, the shard plan says {expected[0]}+{expected[1]}"
            )
    return rec


def failed_input(d: Any, where: str) -> FailedInput:
    """A ``failed`` entry, checked for field types (its place in the plan is checked by :func:`validate`)."""
    return FailedInput(**_object(d, where, _FAILED_FIELDS))


def _fingerprint(d: dict[str, Any]) -> dict[str, Any]:
    fp = _field(d, "fingerprint", "", "dict")
    for key in IDENTITY_KEYS:
        if key not in fp and key not in OPTIONAL_IDENTITY_KEYS:
            raise _Invalid(f"fingerprint.{key}", "missing")
    for key, length in (("input_size", 2), ("output_shape", 3)):
        v = fp[key]
        if not (isinstance(v, list) and len(v) == length and all(_is_int(x) and 0 < x <= MAX_INT for x in v)):
            raise _Invalid(f"fingerprint.{key}", f"expected {length} positive integers, got {_show(v)}")
    for key in ("backbone", "weights_sha256", "resize", "preprocessing", "compute_dtype"):
        _field(fp, key, "fingerprint", "str")
    if fp["maps_dtype"] not in MAPS_DTYPES:
        raise _Invalid(
            "fingerprint.maps_dtype", f"expected one of {', '.join(MAPS_DTYPES)}, got {_show(fp['maps_dtype'])}"
        )
    return fp


def validate(d: Any, where: str = "manifest") -> Manifest:
    """The :class:`Manifest` in ``d`` (parsed ``manifest.json``), or :class:`NotACacheError` (not a
    featcache manifest, or a newer schema) / :class:`ManifestError` (``where: field: reason``).

    Checks types and ranges of every field, then the numbers against each other: ``num_shards``
    against ``num_inputs`` and ``shard_size``; each shard record's file name and inputs against the
    plan; each failed input inside its shard's inputs; each listed shard's rows plus its failed
    inputs equal to its inputs. ``rows`` and ``complete`` are derived on load, not trusted."""
    version = _schema_version(d, where)
    try:
        created = _field(d, "created", "", "str")
        updated = _field(d, "updated", "", "str")
        plan = _plan(d)
        listing_sha256 = _field(d, "listing_sha256", "", "str-or-null", optional=True)
        shards, failed, dead, dropped = _records(d, plan)
        by_shard = {rec.shard for rec in shards}
        counts = {  # checked when used (Manifest.count_rows)
            int(k): v
            for k, v in (d.get("counts") if isinstance(d.get("counts"), dict) else {}).items()
            if isinstance(k, str) and k.isdigit() and int(k) in by_shard and isinstance(v, list)
        }
        return replace(  # the plan the records were checked against, with them
            plan,
            shards=sorted(shards, key=lambda s: s.shard),
            failed=sorted(failed, key=lambda f: f.index),
            dead=dead,
            dropped=dropped,
            relabelled=_relabelled(d, plan.num_inputs, len(plan.classes)),
            created=created,
            updated=updated,
            format=FORMAT_NAME,
            schema_version=version,
            journals=_journals(d),
            counts=counts,
            listing_sha256=listing_sha256,
        )
    except _Invalid as exc:
        raise ManifestError(f"{where}: {exc}") from None


def _schema_version(d: Any, where: str) -> int:
    """The schema version of a featcache manifest this featcache reads (else the error saying why)."""
    if not isinstance(d, dict):
        raise ManifestError(f"{where}: manifest is not a JSON object")
    if d.get("format") != FORMAT_NAME:
        raise NotACacheError(f"{where}: not a featcache manifest (format is {_show(d.get('format'))})")
    version: Any = d.get("schema_version")  # untrusted JSON, checked here
    if not _is_int(version):
        raise ManifestError(f"{where}: schema_version: expected an integer, got {_show(version)}")
    if version > SCHEMA_VERSION:
        raise NotACacheError(
            f"{where}: schema version {version!r} is newer than this featcache reads ({SCHEMA_VERSION}); "
            "upgrade featcache"
        )
    return version


def _plan(d: dict[str, Any]) -> Manifest:
    """The manifest's plan (what the shards are to hold: fingerprint, classes, source, split, storage,
    shard size, generations), every field checked; raises :class:`_Invalid`."""
    fingerprint = _fingerprint(d)
    classes = _field(d, "classes", "", "list")
    for k, c in enumerate(classes):
        if not isinstance(c, str):
            raise _Invalid(f"classes[{k}]", f"expected a string, got {_show(c)}")
    source = _field(d, "source", "", "dict")
    _field(source, "num_inputs", "source", "int")
    for key in ("kind", "root", "listing_sha256"):
        _field(source, key, "source", "str")
    split = _field(d, "split", "", "dict")
    if "source" not in split:
        raise _Invalid("split.source", "missing")
    _field(split, "source", "split", "str-or-null")
    fractions = _field(split, "fractions", "split", "dict")
    values = [_field(fractions, name, "split.fractions", "number") for name in SPLITS]
    if any(v < 0 for v in values) or abs(sum(values) - 1.0) > FRACTIONS_TOLERANCE:
        raise _Invalid("split.fractions", f"expected three non-negative numbers summing to 1, got {values}")
    storage = _field(d, "storage", "", "dict")
    if storage.get("maps_dtype") != fingerprint["maps_dtype"]:
        raise _Invalid(
            "storage.maps_dtype",
            f"{_show(storage.get('maps_dtype'))}, the fingerprint says {fingerprint['maps_dtype']!r}",
        )
    if storage.get("compression") not in COMPRESSIONS:
        raise _Invalid(
            "storage.compression",
            f"expected one of {', '.join(COMPRESSIONS)}, got {_show(storage.get('compression'))}",
        )
    _field(storage, "maps_chunk_rows", "storage", "int", minimum=1)
    shard_size = _field(d, "shard_size", "", "int", minimum=1)
    plan = Manifest(
        fingerprint=fingerprint,
        classes=list(classes),
        source=source,
        split=split,
        storage=storage,
        shard_size=shard_size,
        generations=_generations(d, shard_size),
    )
    recorded = _field(d, "num_shards", "", "int", optional=True)
    if recorded is not None and recorded != plan.num_shards:
        raise _Invalid(
            "num_shards",
            f"{recorded}, but {plan.num_inputs} inputs in shards of {shard_size} make {plan.num_shards}",
        )
    return plan


def _records(d: dict[str, Any], plan: Manifest) -> tuple[list[ShardRecord], list[FailedInput], list[int], list[int]]:
    """The shard records, failed inputs, dead and dropped positions, checked against ``plan`` and each
    other (each listed shard's rows plus its failed or dropped inputs are its inputs); raises :class:`_Invalid`."""
    num_inputs, planned = plan.num_inputs, plan.num_shards
    shards = [shard_record(r, f"shards[{k}]", plan) for k, r in enumerate(_field(d, "shards", "", "list"))]
    listed: set[int] = set()
    for k, rec in enumerate(shards):
        if rec.shard in listed:
            raise _Invalid(f"shards[{k}].shard", f"shard {rec.shard} is listed twice")
        listed.add(rec.shard)
    failed = [failed_input(f, f"failed[{k}]") for k, f in enumerate(_field(d, "failed", "", "list"))]
    gone_per_shard: dict[int, int] = {}  # inputs a shard does not hold: failed, or dropped by a compaction
    seen: set[int] = set()
    for k, f in enumerate(failed):
        if not (0 <= f.shard < planned and f.index in plan.shard_inputs(f.shard)):
            raise _Invalid(f"failed[{k}]", f"input {f.index} is not one of shard {f.shard}'s inputs")
        if f.index in seen:
            raise _Invalid(f"failed[{k}].index", f"input {f.index} is listed twice")
        seen.add(f.index)
        gone_per_shard[f.shard] = gone_per_shard.get(f.shard, 0) + 1
    dead = _positions(d, "dead", num_inputs)
    dropped = _positions(d, "dropped", num_inputs)
    for i in set(dropped) - seen:
        s = plan.shard_of(i)
        gone_per_shard[s] = gone_per_shard.get(s, 0) + 1
    for k, rec in enumerate(shards):
        gone = gone_per_shard.get(rec.shard, 0)
        if rec.rows + gone != rec.num_inputs:
            raise _Invalid(
                f"shards[{k}].rows",
                f"{rec.rows} rows and {gone} failed or dropped inputs do not add "
                f"up to the shard's {rec.num_inputs} inputs",
            )
    return shards, failed, dead, dropped


def _journals(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``journals``: how far the manifest includes each commit journal (absent when none is open)."""
    out = {}
    for name, pos in (_field(d, "journals", "", "dict", optional=True) or {}).items():
        if not journal.NAME_RE.match(name):
            raise _Invalid(f"journals.{_show(name)}", "not a journal name (part-I-of-N.journal)")
        entry = _object(pos, f"journals.{name}", {"id": "str", "offset": "int"})
        out[name] = entry
    return out


_GENERATION_FIELDS = {
    "generation": "int",
    "first_index": "int",
    "num_inputs": "int",
    "first_shard": "int",
    "created": "str",
    "classes": "list",
    "changes": "dict",
    "listing_sha256": "str-or-null",
}


def _generations(d: dict[str, Any], shard_size: int) -> list[Generation]:
    """``generations`` (absent for a cache never updated), checked to tile the listing and the shard
    numbers without gaps or overlaps: each starts where the previous one ends."""
    out: list[Generation] = []
    for k, g in enumerate(_field(d, "generations", "", "list", optional=True) or []):
        where = f"generations[{k}]"
        gen = Generation(
            **_object({"listing_sha256": None, **g} if isinstance(g, dict) else g, where, _GENERATION_FIELDS)
        )
        end_index = out[-1].first_index + out[-1].num_inputs if out else 0
        end_shard = out[-1].first_shard + plan_shards(out[-1].num_inputs, shard_size) if out else 0
        if (gen.generation, gen.first_index, gen.first_shard) != (k, end_index, end_shard) or gen.num_inputs < 0:
            raise _Invalid(
                where,
                f"generation {gen.generation} at input {gen.first_index}, shard {gen.first_shard} "
                f"({gen.num_inputs} inputs); expected generation {k} at input {end_index}, shard {end_shard}",
            )
        if not all(isinstance(c, str) for c in gen.classes):
            raise _Invalid(f"{where}.classes", "expected a list of strings")
        out.append(gen)
    return out


def _positions(d: dict[str, Any], key: str, num_inputs: int) -> list[int]:
    """A list of distinct listing positions (``dead``, ``dropped``), each in ``[0, num_inputs)``."""
    values = _field(d, key, "", "list", optional=True) or []
    for k, v in enumerate(values):
        if not (_is_int(v) and 0 <= v < num_inputs):
            raise _Invalid(f"{key}[{k}]", f"expected a listing position below {num_inputs}, got {_show(v)}")
    if len(set(values)) != len(values):
        raise _Invalid(key, "a position is listed twice")
    return [int(v) for v in values]


def _relabelled(d: dict[str, Any], num_inputs: int, num_classes: int) -> list[list[int]]:
    """``relabelled``: ``[index, label, split]`` triples (label -1 or a class number, split a code)."""
    out = []
    for k, r in enumerate(_field(d, "relabelled", "", "list", optional=True) or []):
        if not (
            isinstance(r, list)
            and len(r) == 3
            and all(_is_int(v) for v in r)
            and 0 <= r[0] < num_inputs
            and -1 <= r[1] < num_classes
            and -1 <= r[2] <= 2
        ):
            raise _Invalid(f"relabelled[{k}]", f"expected [index, label, split] in range, got {_show(r)}")
        out.append([int(v) for v in r])
    return out
