"""Updating a cache with what changed in its source, without touching the shards already written.

A cache's listing (``listing.npz``) is append-only: position ``p`` always names the same input as
it was when its row was written. An update compares the cache's *live* view of that listing (every
position not retired, with its current label and split) with the source's new listing, by id:

- **added** ids get new positions at the end, in a new :class:`~.manifest.Generation` whose shards
  come after the existing ones;
- **removed** ids retire their position: ``dead`` when a shard holds the row (readers skip it until
  :mod:`featcache.shared.cache._compact` rewrites that shard), ``dropped`` when none does (the
  input had failed);
- **modified** ids (file size or modification time changed; or, when both listings record content
  hashes (``checksum=True``), the content) retire the old position and get a new one;
- **relabelled** ids (class name or given split changed) keep their row; the manifest's
  ``relabelled`` list says what readers see instead of the stored label and split;
- the same inputs in **another order** (a CSV's rows sorted otherwise) change no row: every kept
  id keeps its position, so nothing is extracted, but the update is still recorded as a generation
  (with no new shards) so that the cache is read through its own listing from then on, never by
  the source's new positions.

Labels are compared by class *name*, so a class added to the source (which renumbers the others)
relabels nothing: each generation records the class names its shards' label numbers refer to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._manifest import Generation, Manifest, now
from .schema import UNKNOWN_LABEL

EXAMPLES = 3
CHANGE_KINDS = ("added", "removed", "modified", "relabelled")


@dataclass
class Changes:
    """Ids per kind of change, in listing order; ``reordered``: the kept ids come in another order
    than the cache's positions (no row changes for that alone)."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    relabelled: list[str] = field(default_factory=list)
    reordered: bool = False

    def counts(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in CHANGE_KINDS}

    def __bool__(self) -> bool:
        return any(self.counts().values()) or self.reordered

    def describe(self) -> str:
        """``3 added (e.g. a.jpg, ...), 1 removed (...)``; ``the same inputs in another order`` when
        only the order changed; empty when nothing changed."""
        text = ", ".join(
            f"{len(ids)} {kind} (e.g. {', '.join(ids[:EXAMPLES])})"
            for kind in CHANGE_KINDS
            if (ids := getattr(self, kind))
        )
        return text or ("the same inputs in another order" if self.reordered else "")


def class_names(labels: np.ndarray, classes: list[str]) -> np.ndarray:
    """``(n,)`` object array of class names for label numbers into ``classes`` (``""`` for -1)."""
    table = np.array([*classes, ""], dtype=object)
    labels = np.asarray(labels, dtype=np.int64)
    return table[np.where((labels >= 0) & (labels < len(classes)), labels, len(classes))]


def stored_names(m: Manifest, listing: dict[str, np.ndarray]) -> np.ndarray:
    """The class name each position's row was written with (each generation's own class list)."""
    names = np.empty(len(listing["id"]), dtype=object)
    for g in m.plan():
        sl = slice(g.first_index, g.first_index + g.num_inputs)
        names[sl] = class_names(listing["label"][sl], g.classes)
    return names


def live_view(m: Manifest, listing: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inputs readers see now: ``position``, ``id``, ``name`` (class name), ``split``, ``size``,
    ``mtime_ns``, ``sha256`` (``""`` when not recorded), one entry per live position of ``listing``
    (the cache's listing, cut to the manifest's ``num_inputs``)."""
    n = m.num_inputs
    names = stored_names(m, listing)
    split = np.asarray(listing["split"][:n], dtype=np.int8).copy()
    for index, label, sp in m.relabelled:
        names[index] = class_names(np.array([label]), m.classes)[0]
        split[index] = sp
    alive = np.ones(n, dtype=bool)
    alive[np.asarray(m.dead + m.dropped, dtype=np.int64)] = False
    pos = np.flatnonzero(alive)
    return {
        "position": pos,
        "id": np.asarray(listing["id"][:n])[pos],
        "name": names[pos],
        "split": split[pos],
        "size": np.asarray(listing["size"][:n])[pos],
        "mtime_ns": np.asarray(listing["mtime_ns"][:n])[pos],
        "sha256": hashes(listing)[:n][pos],
    }


def hashes(listing: dict[str, np.ndarray]) -> np.ndarray:
    """``(n,)`` str: the listing's content hashes, ``""`` for each it does not record."""
    if "sha256" in listing:
        return np.asarray(listing["sha256"]).astype(str)
    return np.full(len(listing["id"]), "", dtype="<U64")


def describe_live_changes(
    m: Manifest, listing: dict[str, np.ndarray], new: dict[str, np.ndarray], classes: list[str]
) -> str:
    """What an update would find, as :meth:`Changes.describe` (empty when the listings are equal)."""
    return diff(live_view(m, listing), new, classes)[0].describe()


def diff(
    live: dict[str, np.ndarray], new: dict[str, np.ndarray], classes: list[str]
) -> tuple[Changes, dict[str, int], list[int]]:
    """Compare the live view with the new listing (``classes``: the new source's class names).

    Returns the changes, the kept ids' positions (id -> position) and the positions in ``new`` of
    the inputs to extract (added and modified), in listing order."""
    changes = Changes()
    at = {str(i): int(p) for i, p in zip(live["id"].tolist(), live["position"].tolist(), strict=True)}
    row = {str(i): k for k, i in enumerate(live["id"].tolist())}
    new_names = class_names(new["label"], classes)
    new_hash, live_hash = hashes(new), live["sha256"]
    kept: dict[str, int] = {}
    extract: list[int] = []
    for j, ident in enumerate(new["id"].tolist()):
        ident = str(ident)
        k = row.get(ident)
        if k is None:
            changes.added.append(ident)
            extract.append(j)
        elif (
            live["size"][k] != new["size"][j]
            or live["mtime_ns"][k] != new["mtime_ns"][j]
            or (live_hash[k] and new_hash[j] and live_hash[k] != new_hash[j])
        ):
            changes.modified.append(ident)
            extract.append(j)
        else:
            kept[ident] = at[ident]
            if live["name"][k] != new_names[j] or live["split"][k] != new["split"][j]:
                changes.relabelled.append(ident)
    seen = set(new["id"].tolist())
    changes.removed = [str(i) for i in live["id"].tolist() if i not in seen]
    order = np.fromiter(kept.values(), dtype=np.int64, count=len(kept))  # kept positions, in the new listing's order
    changes.reordered = bool(np.any(np.diff(order) < 0))
    return changes, kept, extract


def apply_update(
    m: Manifest, listing: dict[str, np.ndarray], new: dict[str, np.ndarray], classes: list[str]
) -> tuple[Changes, dict[str, np.ndarray]]:
    """Record in ``m`` (in memory) the update from ``listing`` (the cache's listing, cut to ``m``'s
    ``num_inputs``) to the new source listing ``new`` with class names ``classes``; return the
    changes and the cache's new listing (``listing`` with the inputs to extract appended).

    ``m`` must be complete. When nothing changed, ``m`` and ``listing`` are returned as they were,
    except that content hashes ``new`` records (``checksum=True``) are recorded for the kept inputs.
    """
    n = m.num_inputs
    listing = {k: np.asarray(v)[:n] for k, v in listing.items()}
    live = live_view(m, listing)
    changes, kept, extract = diff(live, new, classes)
    if "sha256" in new:  # the kept inputs' hashes as they are now: the next checksum update compares them
        recorded = hashes(listing).astype("<U64")
        j_of = {str(i): j for j, i in enumerate(new["id"].tolist())}
        for ident, p in kept.items():
            recorded[p] = new["sha256"][j_of[ident]]
        listing["sha256"] = recorded
    if not changes:
        return changes, listing
    retired = {
        int(p) for i, p in zip(live["id"].tolist(), live["position"].tolist(), strict=True) if str(i) not in kept
    }
    failed = {f.index for f in m.failed}
    m.dead = sorted(set(m.dead) | {p for p in retired if p not in failed})
    m.dropped = sorted(set(m.dropped) | (retired & failed))
    m.failed = [f for f in m.failed if f.index not in retired]
    # relabelled: every kept row whose name or split differs from what its shard stores, in the new numbering
    stored = stored_names(m, listing)
    new_names = class_names(new["label"], classes)
    number = {c: k for k, c in enumerate(classes)}
    j_of = {str(i): j for j, i in enumerate(new["id"].tolist())}
    relabelled = []
    for ident, p in sorted(kept.items(), key=lambda kv: kv[1]):
        j = j_of[ident]
        if stored[p] != new_names[j] or listing["split"][p] != new["split"][j]:
            relabelled.append([p, number.get(new_names[j], UNKNOWN_LABEL), int(new["split"][j])])
    if not m.generations:
        m.generations = [m.plan()[0]]
    m.generations.append(
        Generation(
            generation=m.generation + 1,
            first_index=n,
            num_inputs=len(extract),
            first_shard=m.num_shards,
            created=now(),
            classes=list(classes),
            changes=changes.counts(),
        )
    )
    m.relabelled = relabelled
    m.classes = list(classes)
    m.updated = now()
    take = np.asarray(extract, dtype=np.int64)
    grown = {k: np.concatenate([listing[k], (np.asarray(new[k]) if k in new else hashes(new))[take]]) for k in listing}
    return changes, grown


__all__ = ["CHANGE_KINDS", "Changes", "apply_update", "class_names", "describe_live_changes", "live_view"]
