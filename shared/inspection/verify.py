"""Checking a cache against its manifest, and moving bad shards aside so the extractor redoes them.

Every check reads only what it needs: sizes first, then checksums, then the datasets. Each problem is
one line naming the shard and what is wrong; a bad shard is reported once with its first problem.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..cache import schema
from ..cache.fingerprint import IDENTITY_KEYS, differences
from ..cache.fsutil import fsync_dir
from ..cache.lock import CacheLock, describe_holder
from ..cache.manifest import Manifest, ShardRecord, file_status, now
from ..cache.parts import LOCK_WAIT_SECONDS, awaiting_merge, merge_logs, recorded_holders, remove_logs, running_parts
from ..errors import CacheLockedError

QUARANTINE_DIR = "quarantine"
DEFAULT_SAMPLE_ROWS = 64
# |pooled - mean(maps)| allowed per element: float16 maps round each value by up to 2**-11 of it
# (ReLU6 values are at most 6), float32 maps only by the order of summation.
POOLED_TOLERANCE = {"float16": 4e-3, "float32": 1e-5}
MAPS_BLOCK_ROWS = 256


@dataclass
class Problem:
    """Something wrong with one shard (``shard`` is None for a file the manifest does not list)."""

    file: str
    reason: str
    shard: int | None = None

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    shards_checked: int = 0
    rows_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def _expected_datasets(m: Manifest, rows: int) -> dict[str, tuple[tuple[int, ...], str]]:
    shape = tuple(m.fingerprint["output_shape"])
    out = {
        schema.MAPS: ((rows, *shape), m.storage["maps_dtype"]),
        schema.POOLED: ((rows, shape[-1]), schema.POOLED_DTYPE),
        schema.LABEL: ((rows,), schema.LABEL_DTYPE),
        schema.ID: ((rows,), "object"),
        schema.INDEX: ((rows,), schema.INDEX_DTYPE),
        schema.SPLIT: ((rows,), schema.SPLIT_DTYPE),
    }
    views = schema.views_of(m.fingerprint)
    if views > 1:
        out[schema.POOLED_VIEWS] = ((rows, views - 1, shape[-1]), schema.POOLED_DTYPE)
    return out


def check_shard(
    cache_dir: Path, m: Manifest, rec: ShardRecord, sample_rows: int, rng: np.random.Generator
) -> str | None:
    """The first thing wrong with shard ``rec``, or None. Reads the whole shard once."""
    plan = m.shard_inputs(rec.shard)
    if (rec.file, rec.first_index, rec.num_inputs) != (schema.shard_name(rec.shard), plan.start, len(plan)):
        return (
            f"manifest record says file {rec.file}, inputs {rec.first_index}+{rec.num_inputs}; the shard plan "
            f"says {schema.shard_name(rec.shard)}, inputs {plan.start}+{len(plan)}"
        )
    path = cache_dir / rec.file
    status = file_status(path, rec)
    if status == "missing":
        return "missing (listed in the manifest)"
    if status == "size":
        return f"size {path.stat().st_size} bytes, manifest says {rec.bytes} (truncated or rewritten)"
    if status == "checksum":
        return "sha256 differs from the manifest (the file was modified or corrupted)"
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        return f"not a readable HDF5 file ({exc})"
    with f:
        try:
            fp = json.loads(f.attrs["fingerprint"])
        except (KeyError, ValueError):
            return "no fingerprint attribute"
        diff = differences(m.fingerprint, fp, IDENTITY_KEYS)
        if diff:
            return "made with different " + "; ".join(diff)
        for name, (shape, dtype) in _expected_datasets(m, rec.rows).items():
            if name not in f:
                return f"dataset {name!r} missing"
            d = f[name]
            got = "object" if h5py.check_string_dtype(d.dtype) else str(d.dtype)
            if d.shape != shape or got != dtype:
                return f"dataset {name!r} is {d.shape} {got}, expected {shape} {dtype}"
        failed = {x.index for x in m.failed if x.shard == rec.shard}
        expected_index = [i for i in range(rec.first_index, rec.first_index + rec.num_inputs) if i not in failed]
        index = f[schema.INDEX][()]
        if index.tolist() != expected_index:
            return (
                f"index is not inputs {rec.first_index}..{rec.first_index + rec.num_inputs - 1} "
                f"less the {len(failed)} failed ones"
            )
        pooled = f[schema.POOLED][()]
        if not np.isfinite(pooled).all():
            return f"pooled has {int((~np.isfinite(pooled)).sum())} NaN/Inf values"
        if schema.POOLED_VIEWS in f and not np.isfinite(f[schema.POOLED_VIEWS][()]).all():
            return f"{schema.POOLED_VIEWS} has NaN/Inf values"
        maps = f[schema.MAPS]
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


def verify(cache_dir: str | Path, *, sample_rows: int = DEFAULT_SAMPLE_ROWS, seed: int = 0, progress=None) -> Report:
    """Check every listed shard, then look for files the manifest does not know.

    ``progress(record)`` is called before each shard (for a progress bar).
    """
    cache_dir = Path(cache_dir)
    m = Manifest.load(cache_dir)
    report = Report()
    rng = np.random.default_rng(seed)
    for rec in m.shards:
        if progress is not None:
            progress(rec)
        reason = check_shard(cache_dir, m, rec, sample_rows, rng)
        report.shards_checked += 1
        if reason:
            report.problems.append(Problem(rec.file, reason, rec.shard))
        else:
            report.rows_checked += rec.rows
    listed = {Path(rec.file).name for rec in m.shards}
    shards_dir = cache_dir / schema.SHARDS_DIR
    if shards_dir.is_dir():
        pending = {Path(schema.shard_name(k)).name for k in m.missing_shards()}
        logged = {Path(schema.shard_name(k)).name for k in awaiting_merge(cache_dir, m)}
        unlisted_pending = 0
        for p in sorted(shards_dir.glob(schema.SHARD_GLOB)):
            if p.name in pending and p.name not in logged:  # a run stopped before recording it: redone on resume
                unlisted_pending += 1
            elif p.name not in listed and p.name not in logged:
                report.problems.append(
                    Problem(f"{schema.SHARDS_DIR}/{p.name}", "shard file the manifest does not list")
                )
        if logged:
            report.notes.append(
                f"{len(logged)} shards finished by parts are not merged into the manifest yet "
                "(featcache-extract CACHE --finalize merges them; readers ignore them until then)"
            )
        if unlisted_pending:
            report.notes.append(
                f"{unlisted_pending} shard files for shards not yet done are not in the manifest "
                "(left by an interrupted run; readers ignore them, the next extract redoes them)"
            )
        temps = [p.name for p in shards_dir.iterdir() if p.name.startswith(schema.TMP_PREFIX)]
        if temps:
            state = (
                "a writer is running"
                if recorded_holders(cache_dir)
                else "left by an interrupted run; the next extract removes them"
            )
            report.notes.append(f"{len(temps)} partial shard files ({state})")
    if not m.complete:
        report.notes.append(f"incomplete: {len(m.missing_shards())} of {m.num_shards} planned shards not written yet")
    return report


def fix(cache_dir: str | Path, report: Report) -> list[str]:
    """Move each bad or unknown shard file into ``CACHE/quarantine/`` and drop bad shards from the
    manifest, so that re-running the extractor recomputes exactly those shards. Deletes nothing.

    Returns one line per action. Takes the cache lock, and refuses while a worker is writing; the
    part logs are merged into the manifest first and then dropped, so that no log can bring a
    moved shard back.
    """
    cache_dir = Path(cache_dir)
    actions: list[str] = []
    with CacheLock(cache_dir, wait=LOCK_WAIT_SECONDS):
        running = running_parts(cache_dir)
        if running:
            part, holder = next(iter(running.items()))
            raise CacheLockedError(
                f"{cache_dir}: {part.label} is being written by {describe_holder(holder)}; "
                "run verify with fix=True when no extractor is running"
            )
        m = Manifest.load(cache_dir)
        merged = merge_logs(cache_dir, m)
        if merged:
            m.save(cache_dir)
            actions.append(f"merged {merged} shards finished by parts into the manifest (verify again to check them)")
        remove_logs(cache_dir)
        bad = {p.shard for p in report.problems if p.shard is not None}
        quarantine = cache_dir / QUARANTINE_DIR
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for p in report.problems:
            src = cache_dir / p.file
            if src.is_file():
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
        fsync_dir(cache_dir / schema.SHARDS_DIR)
    return actions
