"""``manifest.json``: the index of a cache, and the only thing a reader trusts.

A shard exists for readers once the manifest lists it; the manifest is replaced atomically after each
shard is renamed into place, so a crash between the two leaves a shard file that no manifest names
(it is recomputed on resume), never a manifest naming a missing or partial file.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import NotACacheError
from .fsutil import atomic_write_json, sha256_file
from .schema import FORMAT_NAME, MANIFEST_NAME, SCHEMA_VERSION


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
        return [Generation(0, 0, self.num_inputs, 0, self.created, list(self.classes))]

    @property
    def generation(self) -> int:
        """The newest generation's number (0 for a cache never updated)."""
        return self.generations[-1].generation if self.generations else 0

    @property
    def num_shards(self) -> int:
        """Shards in the plan (completed or not)."""
        g = self.plan()[-1]
        return g.first_shard + math.ceil(g.num_inputs / self.shard_size)

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

    def shard_of(self, index: int) -> int:
        """The shard number that holds listing position ``index``."""
        for g in reversed(self.plan()):
            if index >= g.first_index:
                return g.first_shard + (index - g.first_index) // self.shard_size
        raise ValueError(f"index {index} is in no generation")

    @property
    def complete(self) -> bool:
        return len(self.shards) == self.num_shards

    def missing_shards(self) -> list[int]:
        done = {s.shard for s in self.shards}
        return [k for k in range(self.num_shards) if k not in done]

    def shard_inputs(self, shard: int) -> range:
        """Positions in the listing that shard number ``shard`` covers."""
        g = self.generation_of(shard)
        start = g.first_index + (shard - g.first_shard) * self.shard_size
        return range(start, min(start + self.shard_size, g.first_index + g.num_inputs))

    def add_shard(self, record: ShardRecord, failed: list[FailedInput]) -> None:
        self.shards = sorted([s for s in self.shards if s.shard != record.shard] + [record], key=lambda s: s.shard)
        self.failed = sorted([f for f in self.failed if f.shard != record.shard] + failed, key=lambda f: f.index)
        self.updated = now()

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        order = ["format", "schema_version", "created", "updated", "fingerprint", "classes", "source", "split",
                 "storage", "shard_size"]
        out = {k: d[k] for k in order}
        out.update(num_shards=self.num_shards, rows=self.rows, complete=self.complete)
        if self.generations:  # only updated caches carry these (a cache made in one go is unchanged)
            out.update(num_inputs=self.num_inputs, generation=self.generation, live_rows=self.live_rows,
                       generations=d["generations"], dead=self.dead, dropped=self.dropped,
                       relabelled=self.relabelled)
        out.update(shards=d["shards"], failed=d["failed"])
        return out

    def save(self, cache_dir: Path) -> None:
        atomic_write_json(Path(cache_dir) / MANIFEST_NAME, self.to_json())

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str = "manifest") -> "Manifest":
        if d.get("format") != FORMAT_NAME:
            raise NotACacheError(f"{where}: not a featcache manifest (format is {d.get('format')!r})")
        version = d.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise NotACacheError(
                f"{where}: schema version {version!r} is newer than this featcache reads ({SCHEMA_VERSION}); upgrade featcache"
            )
        try:
            return cls(
                fingerprint=d["fingerprint"],
                classes=list(d["classes"]),
                source=d["source"],
                split=d["split"],
                storage=d["storage"],
                shard_size=int(d["shard_size"]),
                shards=[ShardRecord(**s) for s in d["shards"]],
                failed=[FailedInput(**f) for f in d["failed"]],
                generations=[Generation(**g) for g in d.get("generations", [])],
                dead=[int(i) for i in d.get("dead", [])],
                dropped=[int(i) for i in d.get("dropped", [])],
                relabelled=[[int(v) for v in r] for r in d.get("relabelled", [])],
                created=d["created"],
                updated=d["updated"],
                format=d["format"],
                schema_version=version,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise NotACacheError(f"{where}: manifest is missing or has a malformed field ({exc})") from None

    @classmethod
    def load(cls, cache_dir: str | Path) -> "Manifest":
        """Read ``CACHE/manifest.json``; :class:`NotACacheError` names the file and what is wrong."""
        path = Path(cache_dir) / MANIFEST_NAME
        if not path.is_file():
            what = "no such directory" if not Path(cache_dir).exists() else "no manifest.json"
            raise NotACacheError(f"{path}: not a featcache cache ({what})")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise NotACacheError(f"{path}: manifest is not valid JSON ({exc})") from None
        if not isinstance(d, dict):
            raise NotACacheError(f"{path}: manifest is not a JSON object")
        return cls.from_json(d, str(path))
