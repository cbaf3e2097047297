"""Compaction: rewrite the shards of an updated cache whose rows are mostly dead.

An update (docs/updates.md) never rewrites a shard: rows of removed or modified inputs stay in
their files, listed as ``dead`` in the manifest, and readers skip them. ``featcache-inspect compact``
gets the space back: each shard whose dead fraction is over a threshold is copied without its dead
rows into a file with a new name (``shard-KKKKK-cN.h5``, see :func:`schema.compacted_shard_name`);
maps are copied chunk by chunk as stored, never decompressed.

Crash safety, step by step for one shard: the new file is written under a dot-name and fsynced
(a kill leaves a partial file no manifest names); it is renamed to its new name (a kill leaves a
complete file no manifest names; readers still read the old one); the manifest is replaced
atomically to list the new file and move its dead rows to ``dropped`` (the commit point); the old
file is deleted. Whatever moment a ``kill -9`` hits, the manifest lists complete files that hold
every live row, and the next ``compact`` removes what was left over. The whole run holds the cache
lock and refuses while an extractor is writing the cache. A reader that opened the manifest before
the commit may find the old file gone: compact when no reader is running.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..errors import FeatcacheError
from . import schema
from ._manifest import Manifest, ShardRecord, now
from ._parts import exclusive
from ._paths import cache_path, shard_file_problem, shard_path
from ._shard import Layout, cache_layout, open_shard_file
from .fsutil import commit_file, fsync_dir, remove_stale_temps, sha256_file, temp_path_for

DEFAULT_COMPACT_THRESHOLD = 0.5


@dataclass
class CompactReport:
    """What a compaction did: shards rewritten, dead rows removed, bytes before and after those
    shards, shards with dead rows left (under the threshold), left-over files removed."""

    rewritten: list[int] = field(default_factory=list)
    rows_removed: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    left: int = 0
    cleaned: list[str] = field(default_factory=list)

    def summary(self, cache: Path) -> str:
        if not self.rewritten:
            line = f"{cache}: nothing to compact"
        else:
            line = (
                f"{cache}: compacted {len(self.rewritten)} shards, {self.rows_removed} dead rows removed, "
                f"{self.bytes_before / 1e6:.2f} MB -> {self.bytes_after / 1e6:.2f} MB"
            )
        if self.left:
            line += f"; {self.left} shards with dead rows under the threshold left as they are"
        if self.cleaned:
            line += f"; removed {len(self.cleaned)} files left by an interrupted compaction"
        return line


def remove_file(path: Path) -> None:
    """Delete ``path`` durably (the directory is fsynced)."""
    path.unlink(missing_ok=True)
    fsync_dir(path.parent)


def _clean(cache_dir: Path, m: Manifest) -> list[str]:
    """Partial files, and other versions of listed shards: what an interrupted compaction leaves.
    (Call with the cache lock held and no writer running.)"""
    shards_dir = cache_path(cache_dir, schema.SHARDS_DIR)
    ours = lambda name: shard_file_problem(f"{schema.SHARDS_DIR}/{name}") is None  # noqa: E731
    removed = [p.name for p in remove_stale_temps(shards_dir, ours)]
    listed = {rec.shard: Path(rec.file).name for rec in m.shards}
    for p in sorted(shards_dir.glob(schema.SHARD_GLOB)):
        if listed.get(schema.shard_number(p.name), p.name) != p.name:
            remove_file(p)
            removed.append(p.name)
    return removed


def rewrite_shard(cache_dir: Path, rec: ShardRecord, drop: np.ndarray, layout: Layout) -> ShardRecord:
    """Copy shard ``rec`` without the rows whose index is in ``drop`` into its next compacted name;
    return the new record (the file is in place; the manifest is not changed here). ``layout`` is the
    cache's :func:`schema.row_layout`: every per-row dataset it names is copied (a dataset the shard
    holds that the layout does not name is refused, never dropped). The source is opened with the
    shard opener's checks (:func:`open_shard_file`)."""
    source = shard_path(cache_dir, rec.file, rec.shard)  # a manifest path is checked before it is opened
    final = cache_path(cache_dir, schema.compacted_shard_name(rec.shard, schema.compaction_version(rec.file) + 1))
    tmp = temp_path_for(final)
    tmp.unlink(missing_ok=True)  # a link planted under the temp name is removed, not followed
    try:
        with open_shard_file(source, layout, rec.rows) as src, h5py.File(tmp, "x") as dst:
            unknown = sorted(set(src.names()) - set(layout))
            if unknown:
                raise FeatcacheError(f"{source}: holds datasets the cache format does not name ({', '.join(unknown)})")
            index = src.read(schema.INDEX)
            keep = np.flatnonzero(~np.isin(index, drop))
            for name in layout:
                if name not in (schema.MAPS, schema.ID):
                    dst.create_dataset(name, data=src.read(name)[keep])
            ids = src.read(schema.ID)[keep]
            dst.create_dataset(
                schema.ID, data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"), shape=(len(keep),)
            )
            maps = src.dataset(schema.MAPS)
            out = dst.create_dataset(
                schema.MAPS,
                shape=(len(keep), *maps.shape[1:]),
                maxshape=(max(rec.num_inputs, 1), *maps.shape[1:]),
                chunks=maps.chunks,
                dtype=maps.dtype,
                compression=maps.compression,
                compression_opts=maps.compression_opts,
                shuffle=maps.shuffle,
            )
            if maps.chunks is None or maps.chunks[0] != 1:
                raise FeatcacheError(f"{source}: maps are not stored one row per chunk")
            tail = (0,) * (maps.ndim - 1)
            for k, row in enumerate(keep.tolist()):
                mask, chunk = maps.id.read_direct_chunk((row, *tail))
                out.id.write_direct_chunk((k, *tail), chunk, mask)
            dst.attrs.update(dict(src.attrs))
        record = ShardRecord(
            shard=rec.shard,
            file=str(final.relative_to(cache_dir)),
            first_index=rec.first_index,
            num_inputs=rec.num_inputs,
            rows=len(keep),
            bytes=tmp.stat().st_size,
            sha256=sha256_file(tmp),
            completed=now(),
        )
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    commit_file(tmp, final)
    return record


def compact(cache_dir: str | Path, threshold: float = DEFAULT_COMPACT_THRESHOLD, log=None) -> CompactReport:  # noqa: ANN001
    """Rewrite every shard of ``cache_dir`` whose dead rows are more than ``threshold`` of its rows
    (0 rewrites every shard with a dead row). ``log(line)`` hears about each shard."""
    if not 0 <= threshold < 1:
        raise FeatcacheError(f"threshold={threshold}: expected a fraction of dead rows, 0 <= threshold < 1")
    cache_dir = Path(cache_dir)
    Manifest.load(cache_dir)  # not a cache: say so before the lock creates anything
    report = CompactReport()
    with exclusive(cache_dir, "compact when no extractor is running") as (m, _):
        report.cleaned = _clean(cache_dir, m)
        dead = np.asarray(m.dead, dtype=np.int64)
        layout = cache_layout(m)
        for rec in list(m.shards):
            drop = dead[(dead >= rec.first_index) & (dead < rec.first_index + rec.num_inputs)]
            if not len(drop):
                continue
            if len(drop) / rec.rows <= threshold:
                report.left += 1
                continue
            new = rewrite_shard(cache_dir, rec, drop, layout)
            m.shards = [new if s.shard == rec.shard else s for s in m.shards]
            gone = set(drop.tolist())
            m.dead = [i for i in m.dead if i not in gone]
            m.dropped = sorted(set(m.dropped) | gone)
            m.updated = now()
            m.save(cache_dir)  # the commit point: readers now read the new file
            remove_file(shard_path(cache_dir, rec.file, rec.shard))
            report.rewritten.append(rec.shard)
            report.rows_removed += len(drop)
            report.bytes_before += rec.bytes
            report.bytes_after += new.bytes
            if log is not None:
                log(f"{rec.file} -> {new.file}: {rec.rows} -> {new.rows} rows")
    return report


__all__ = ["DEFAULT_COMPACT_THRESHOLD", "CompactReport", "compact", "rewrite_shard"]
