"""Checking a cache against its manifest, and moving bad shards aside so the extractor redoes them.

Every check reads only what it needs: sizes first, then checksums, then the datasets. Each problem is
one line naming the shard and what is wrong; a bad shard is reported once with its first problem.
An invalid ``manifest.json`` or ``listing.npz`` is a problem too (``--fix`` leaves it to a person).
Every path comes from :mod:`featcache.shared.cache._paths`: nothing outside the cache is read or moved,
and every loop is bounded by what is on disk (the shards the manifest lists, the files in ``shards/``),
never by a planned count.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cache import (
    LISTING_NAME,
    FeatureCache,
    Manifest,
    ManifestError,
    Shard,
    ShardError,
    ShardRecord,
    UnsafePathError,
    awaiting_merge,
    cache_layout,
    cache_path,
    describe_holder,
    exclusive,
    file_status,
    hash_unit,
    holder_gone,
    label_problem,
    load_listing,
    now,
    open_shard_file,
    recorded_holders,
    remove_logs,
    rowindex,
    schema,
    shard_file_problem,
    shard_path,
    split_problem,
)
from ..cache.fsutil import fsync_dir
from ..errors import FeatcacheError

QUARANTINE_DIR = "quarantine"
DEFAULT_SAMPLE_ROWS = 64
# |pooled - mean(maps)| allowed per element: float16 maps round each value by up to 2**-11 of it
# (ReLU6 values are at most 6), float32 maps only by the order of summation.
POOLED_TOLERANCE = {"float16": 4e-3, "float32": 1e-5}
MAPS_BLOCK_ROWS = 256
FINALIZE_WRITES = "featcache-extract CACHE --finalize writes it"
# A shard whose ids are not the listing's: with the listing's sha256 recorded (and checked) the shard is
# at fault and --fix moves it; without, either may be, and --fix leaves both to a person.
IDS_DIFFER = "ids differ from"


@dataclass
class Problem:
    """Something wrong with one shard (``shard`` is None for a file the manifest does not list);
    ``movable`` is False for what ``fix`` must leave in place (the manifest, the listing)."""

    file: str
    reason: str
    shard: int | None = None
    movable: bool = True

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


@dataclass
class VerifyReport:
    """What :func:`verify` found: each problem (a file, the reason, whether ``--fix`` may move it aside), notes
    that are not problems, and how many shards and sampled rows were read."""

    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    shards_checked: int = 0
    rows_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def check_shard(
    cache_dir: Path,
    m: Manifest,
    rec: ShardRecord,
    sample_rows: int,
    rng: np.random.Generator,
    failed: set[int] | None = None,
    listing_ids: np.ndarray | None = None,
) -> str | None:
    """The first thing wrong with shard ``rec``, or None. Reads the whole shard once. ``failed``:
    the shard's failed input indices (computed from the manifest when None); ``listing_ids``:
    ``(num_inputs,)`` str, the cache's ``listing.npz`` ids, which each row's ``id`` must equal at its
    ``index`` (not checked when None)."""
    plan = m.shard_inputs(rec.shard)
    version = schema.compaction_version(rec.file)
    expected_file = schema.compacted_shard_name(rec.shard, max(version, 0))
    if (rec.file, rec.first_index, rec.num_inputs) != (expected_file, plan.start, len(plan)):
        return (
            f"manifest record says file {rec.file}, inputs {rec.first_index}+{rec.num_inputs}; the shard plan "
            f"says {schema.shard_name(rec.shard)}, inputs {plan.start}+{len(plan)}"
        )
    try:
        path = shard_path(cache_dir, rec.file, rec.shard)
    except UnsafePathError as exc:
        return str(exc)
    if path.exists() and not path.is_file():
        return "not a regular file"
    status = file_status(path, rec)
    if status == "missing":
        return "missing (listed in the manifest)"
    if status == "size":
        return f"size {path.stat().st_size} bytes, manifest says {rec.bytes} (truncated or rewritten)"
    if status == "checksum":
        return "sha256 differs from the manifest (the file was modified or corrupted)"
    try:
        f = open_shard_file(path, cache_layout(m), rec.rows)
    except ShardError as exc:
        return exc.reason
    with f:
        problem = f.problem(m, rec, path.stat().st_size)
        if problem is not None:
            return problem.reason
        return _rows_problem(f, m, rec, sample_rows, rng, failed, listing_ids)


def _rows_problem(
    f: Shard,
    m: Manifest,
    rec: ShardRecord,
    sample_rows: int,
    rng: np.random.Generator,
    failed: set[int] | None,
    listing_ids: np.ndarray | None,
) -> str | None:
    """The first thing wrong with the rows of shard ``rec``, open as ``f`` and identity-checked: its
    index against the plan, ids against the listing, labels, splits, finite values, and ``pooled``
    against the mean of the maps on ``sample_rows`` rows."""
    if failed is None:
        failed = {x.index for x in m.failed if x.shard == rec.shard}
    # retired inputs no shard holds: compacted away, or failed and removed since
    plan = m.shard_inputs(rec.shard)
    gone = failed | {i for i in m.dropped if plan.start <= i < plan.stop}
    expected_index = [i for i in range(rec.first_index, rec.first_index + rec.num_inputs) if i not in gone]
    index = f.read(schema.INDEX)
    if index.tolist() != expected_index:
        return (
            f"index is not inputs {rec.first_index}..{rec.first_index + rec.num_inputs - 1} "
            f"less the {len(failed)} failed and {len(gone) - len(failed)} dropped ones"
        )
    if listing_ids is not None and rec.rows:
        stored = f.read(schema.ID).astype(str)
        differ = np.flatnonzero(stored != listing_ids[index].astype(str))
        if len(differ):
            k = int(differ[0])
            return (
                f"{len(differ)} rows' {IDS_DIFFER} {LISTING_NAME}'s (row {k}: {str(stored[k])[:80]!r}, "
                f"listed at index {index[k]} as {str(listing_ids[index[k]])[:80]!r})"
            )
    # stored labels number the classes of the generation that wrote the shard
    bad_label = label_problem(f.read(schema.LABEL), len(m.generation_of(rec.shard).classes))
    if bad_label:
        return bad_label
    bad_split = split_problem(f.read(schema.SPLIT))
    if bad_split:
        return bad_split
    pooled = f.read(schema.POOLED)
    if not np.isfinite(pooled).all():
        return f"pooled has {int((~np.isfinite(pooled)).sum())} NaN/Inf values"
    for name in (schema.POOLED_VIEWS, schema.TAPS, schema.TAPS_VIEWS, schema.TOP_INPUT):
        if f.has(name) and not np.isfinite(f.read(name)).all():
            return f"{name} has NaN/Inf values"
    if not f.has(schema.MAPS):  # imported vectors: no maps to check the pooled vectors against
        return None
    maps = f.dataset(schema.MAPS)
    for start in range(0, rec.rows, MAPS_BLOCK_ROWS):
        block = maps[start : start + MAPS_BLOCK_ROWS]
        if not np.isfinite(block).all():
            bad = start + int(np.flatnonzero(~np.isfinite(block).reshape(len(block), -1).all(axis=1))[0])
            return f"maps of row {bad} (index {index[bad]}) have NaN/Inf values"
    if rec.rows:
        rows = np.sort(rng.choice(rec.rows, size=min(sample_rows, rec.rows), replace=False))
        mean = maps[rows].astype(np.float32).mean(axis=(1, 2))
        err = np.abs(mean - pooled[rows]).max(axis=1)
        tol = POOLED_TOLERANCE.get(m.storage["maps_dtype"], 4e-3)
        if (err > tol).any():
            bad = int(rows[np.argmax(err)])
            return (
                f"pooled of row {bad} (index {index[bad]}) differs from the mean of its maps by "
                f"{err.max():.3g} (> {tol:g}): rows and maps do not match"
            )
    return None


def _check_shards_dir(cache_dir: Path, m: Manifest, report: VerifyReport) -> None:
    """The files in ``shards/`` the manifest does not list, into ``report``: a shard file no record or
    journal names is a problem; other versions of listed shards (an interrupted compaction), shards an
    interrupted run wrote before recording them, commit journals not folded yet and partial files are notes."""
    try:
        shards_dir = cache_path(cache_dir, schema.SHARDS_DIR)
    except UnsafePathError as exc:
        report.problems.append(Problem(schema.SHARDS_DIR, str(exc).split(": ", 1)[-1], movable=False))
        return
    if not shards_dir.is_dir():
        return
    listed = {rec.file for rec in m.shards}
    done = {rec.shard for rec in m.shards}
    logged = set(awaiting_merge(cache_dir, m))
    unlisted_pending = others = superseded = 0
    for p in sorted(shards_dir.glob(schema.SHARD_GLOB)):
        rel = f"{schema.SHARDS_DIR}/{p.name}"
        k = schema.shard_number(p.name)
        if shard_file_problem(rel) is not None:
            others += 1  # not a name featcache writes: not its business
        elif rel in listed or k in logged:
            continue
        elif k in done:
            superseded += 1  # the other version of a shard being compacted: no manifest names it
        elif k < m.num_shards:  # a run stopped before recording it: redone on resume
            unlisted_pending += 1
        else:
            report.problems.append(Problem(rel, "shard file the manifest does not list"))
    if superseded:
        report.notes.append(
            f"{superseded} shard files are other versions of listed shards (left by an interrupted "
            "compaction; readers ignore them, the next compact removes them)"
        )
    if others:
        report.notes.append(f"{others} files in {schema.SHARDS_DIR}/ are not named like featcache shards (left alone)")
    if logged:
        report.notes.append(
            f"{len(logged)} committed shards are in commit journals, not yet folded into manifest.json "
            "(readers see them; featcache-extract CACHE --finalize folds them)"
        )
    if unlisted_pending:
        report.notes.append(
            f"{unlisted_pending} shard files for shards not yet done are not in the manifest "
            "(left by an interrupted run; readers ignore them, the next extract redoes them)"
        )
    temps = [p.name for p in shards_dir.iterdir() if p.name.startswith(schema.TMP_PREFIX)]
    if temps:
        holders = recorded_holders(cache_dir)
        live = {part: h for part, h in holders.items() if not holder_gone(h)}
        if live:
            state = f"a writer is running: {describe_holder(next(iter(live.values())))}"
        elif holders:
            state = (
                f"left by a writer that is gone ({describe_holder(next(iter(holders.values())))}; its lock is "
                "stale): the next extract removes them"
            )
        else:
            state = "left by an interrupted run; the next extract removes them"
        report.notes.append(f"{len(temps)} partial shard files ({state})")


def verify(
    cache_dir: str | Path, *, sample_rows: int = DEFAULT_SAMPLE_ROWS, seed: int = 0, progress=None
) -> VerifyReport:
    """Check every listed shard, then look for files the manifest does not know.

    ``progress(record)`` is called before each shard (for a progress bar).
    """
    cache_dir = Path(cache_dir)
    report = VerifyReport()
    try:
        m = Manifest.load(cache_dir)
    except ManifestError as exc:
        prefix = f"{cache_dir / schema.MANIFEST_NAME}: "
        said = str(exc)[len(prefix) :] if str(exc).startswith(prefix) else str(exc)
        report.problems.append(Problem(schema.MANIFEST_NAME, said, movable=False))
        return report
    ids = None  # the listing's ids, to compare each shard's with
    try:
        listing = load_listing(cache_dir, m)  # its count and sha256 against the manifest's record
    except FeatcacheError as exc:
        report.problems.append(Problem(LISTING_NAME, str(exc).split(": ", 1)[-1], movable=False))
    else:
        if listing is not None:
            ids = listing["id"]
            if m.listing_sha256 is None:
                report.notes.append(
                    f"the manifest records no sha256 of {LISTING_NAME} (a cache made before it was kept): "
                    "its ids are checked against the shards'"
                )
    rng = np.random.default_rng(seed)
    failed: dict[int, set[int]] = {}
    for x in m.failed:
        failed.setdefault(x.shard, set()).add(x.index)
    for rec in m.shards:
        if progress is not None:
            progress(rec)
        reason = check_shard(cache_dir, m, rec, sample_rows, rng, failed.get(rec.shard, set()), ids)
        report.shards_checked += 1
        if reason:
            movable = m.listing_sha256 is not None or IDS_DIFFER not in reason
            report.problems.append(Problem(rec.file, reason, rec.shard, movable=movable))
        else:
            report.rows_checked += rec.rows
    _check_shards_dir(cache_dir, m, report)
    if not m.complete:
        report.notes.append(f"incomplete: {m.missing_count} of {m.num_shards} planned shards not written yet")
    check_row_index(cache_dir, m, {p.shard for p in report.problems if p.shard is not None}, report)
    report.problems += [Problem(schema.MANIFEST_NAME, reason) for reason in check_updates(m)]
    if m.generations:
        report.notes.append(
            f"generation {m.generation}: {m.live_rows} live rows, {len(m.dead)} dead rows awaiting compaction "
            f"(featcache-inspect compact), {len(m.relabelled)} relabelled"
        )
    return report


def check_row_index(cache_dir: Path, m: Manifest, bad: set[int], report: VerifyReport) -> None:
    """Compare the row index (``rows.h5``) with the shards it copies, when it is current: a row that
    differs is a problem (``fix`` deletes the index and writes it anew from the shards). A stale or
    missing index is a note: readers ignore it and read the shards."""
    name = schema.ROW_INDEX_NAME
    if not os.path.lexists(cache_dir / name):
        if m.complete and m.shards:
            report.notes.append(f"no {name}: readers open every shard for labels and ids ({FINALIZE_WRITES})")
        return
    stored = rowindex.load(cache_dir, m, (*rowindex.COLUMNS, rowindex.SPLIT_UNIT))
    if stored is None:
        report.notes.append(
            f"{name} is not current (the shards changed since it was written, or it is unreadable): readers "
            f"ignore it ({FINALIZE_WRITES})"
        )
        return
    fc = FeatureCache(cache_dir, row_index=False)
    offsets = stored[rowindex.OFFSETS]
    for k, rec in enumerate(m.shards):
        if rec.shard in bad or rec.rows == 0:
            continue
        columns = fc.shard_columns(rec, rowindex.COLUMNS)
        columns[rowindex.SPLIT_UNIT] = hash_unit(columns[schema.ID])
        for key in columns:
            if not np.array_equal(stored[key][offsets[k] : offsets[k + 1]], columns[key]):
                report.problems.append(Problem(name, f"its {key} rows of {rec.file} differ from the shard's"))
                return


def check_updates(m: Manifest) -> list[str]:
    """What is inconsistent in an updated manifest's records: every dead row must be held by a
    shard (not failed, not dropped), and every relabelled row must be live."""
    problems = []
    failed = {f.index for f in m.failed}
    dead, dropped = set(m.dead), set(m.dropped)
    bad = sorted(i for i in dead if not 0 <= i < m.num_inputs or i in failed or i in dropped)
    if bad:
        problems.append(f"dead rows {bad[:5]} are out of range, failed or dropped")
    bad = sorted(r[0] for r in m.relabelled if r[0] in dead or r[0] in dropped or not 0 <= r[0] < m.num_inputs)
    if bad:
        problems.append(f"relabelled rows {bad[:5]} are not live")
    return problems


def fix(cache_dir: str | Path, report: VerifyReport) -> list[str]:
    """Move each bad or unknown shard file into ``CACHE/quarantine/`` and drop bad shards from the
    manifest, so that re-running the extractor recomputes exactly those shards. Deletes nothing.

    Returns one line per action. Takes the cache lock, and refuses while a worker is writing; the
    commit journals are folded into the manifest first and then dropped, so that no journal can
    bring a moved shard back.
    """
    cache_dir = Path(cache_dir)
    actions: list[str] = []
    kept = [p for p in report.problems if not p.movable]
    if kept:
        return [
            f"nothing moved: {kept[0].file} is invalid; correct or remove it by hand "
            "(verify --fix never rewrites what it cannot read)"
        ]
    with exclusive(cache_dir, "run verify with fix=True when no extractor is running") as (m, merged):
        if merged:
            actions.append(f"folded {merged} journaled shards into manifest.json")
        remove_logs(cache_dir)
        bad = {p.shard for p in report.problems if p.shard is not None}
        quarantine = cache_path(cache_dir, QUARANTINE_DIR)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for p in report.problems:
            if p.file == schema.ROW_INDEX_NAME:  # derived from the shards: written anew on leaving
                rowindex.remove(cache_dir)
                actions.append(f"removed {p.file} (written anew from the shards)")
                continue
            src = shard_path(cache_dir, p.file)  # checked again: only the cache's own shard files move
            if os.path.lexists(src):
                quarantine.mkdir(exist_ok=True)
                dst = quarantine / f"{src.name}.{stamp}"
                os.replace(src, dst)
                actions.append(f"moved {p.file} to {dst.relative_to(cache_dir)}")
        if bad:
            m.shards = [s for s in m.shards if s.shard not in bad]
            m.failed = [f for f in m.failed if f.shard not in bad]
            m.updated = now()
            m.save(cache_dir)
            actions.append(f"removed shards {sorted(bad)} from the manifest: re-run the extractor to recompute them")
        if quarantine.is_dir():
            fsync_dir(quarantine)
        fsync_dir(cache_path(cache_dir, schema.SHARDS_DIR))
    return actions
