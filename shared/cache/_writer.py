"""Writing a cache: shards under temporary names, committed one by one into the manifest.

:class:`ShardWriter` writes one shard file; :class:`CacheWriter` owns a part of the cache (all of it
for a single run) for the duration of a run (locks, resume checks, manifest updates). Both are
synchronous; the extractor runs them in a background thread so that disk work overlaps with the backbone.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from ..errors import CacheLockedError, FeatcacheError, NotACacheError, SourceMismatchError
from . import _deflate as deflate
from . import _rowindex as rowindex
from . import schema
from ._fingerprint import check_compatible, to_attr
from ._journal import JournalWriter
from ._listing import LISTING_NAME, entries_sha256, load_listing, save_listing
from ._lock import CacheLock, FileLock
from ._manifest import FailedInput, Manifest, ShardRecord, file_status, now
from ._parts import (
    LOCK_WAIT_SECONDS,
    WHOLE,
    Finalized,
    Part,
    acquire_part,
    finalize,
    fold,
    open_journal,
    parts_dir,
    remove_logs,
)
from ._paths import cache_path, shard_file_problem, shard_path
from ._shard import open_shard_file
from ._split import assign_splits
from ._update import Changes, apply_update, describe_live_changes
from .fsutil import FailSafeFile, check_regular, commit_file, remove_stale_temps, sha256_file, temp_path_for

# The per-row datasets a cache may add beyond the base ones and pooled_views, passed to append as ``extra``.
EXTRA_DATASETS = (schema.TAPS, schema.TAPS_VIEWS, schema.TOP_INPUT)

# A writer folds its journal into the manifest once it holds this many records, or as many as the
# manifest had shards at the last fold if that is more (so that folds cost O(1) per shard amortised).
FOLD_MIN_RECORDS = 256


def storage_options(compression: str, maps_dtype: str) -> dict[str, Any]:
    """The manifest's ``storage`` entry for a compression name from :data:`schema.COMPRESSIONS`."""
    if compression not in schema.COMPRESSIONS:
        raise FeatcacheError(f"unknown compression {compression!r}; choose from {', '.join(schema.COMPRESSIONS)}")
    if maps_dtype not in schema.MAPS_DTYPES:
        raise FeatcacheError(f"unknown maps dtype {maps_dtype!r}; choose from {', '.join(schema.MAPS_DTYPES)}")
    return {"maps_dtype": maps_dtype, "compression": compression, "maps_chunk_rows": schema.MAPS_CHUNK_ROWS}


class ShardWriter:
    """Writes shard ``shard`` under a dot-name; :meth:`commit` renames it into place.

    Maps are appended batch by batch (bounded memory); the small per-row datasets are kept in memory
    and written at commit.
    """

    def __init__(self, cache_dir: Path, manifest: Manifest, shard: int):
        self.shard = shard
        self.inputs = manifest.shard_inputs(shard)
        self.final = Path(cache_dir) / schema.shard_name(shard)
        self.tmp = temp_path_for(self.final)
        self._fingerprint = manifest.fingerprint
        maps_shape = tuple(manifest.fingerprint["output_shape"])
        # the listing of the shard's own generation: a shard of an earlier generation re-extracted
        # after an update (its file was lost) carries what its generation's shards carry
        self._listing_sha256 = manifest.listing_sha256_of(shard)
        comp, opts, shuffle = schema.COMPRESSIONS[manifest.storage["compression"]]
        # a stale temp file (or a link planted under its name) is unlinked, never written through
        # (O_EXCL, O_NOFOLLOW); HDF5 writes through a FailSafeFile, so that a full disk never leaves
        # HDF5 with a failed write (which crashes the process at exit): each call into h5py is
        # followed by _check, which raises the first failure naming the file
        self._out = FailSafeFile(self.tmp)
        self._closed = False
        self._file = h5py.File(self._out, "w")
        self._channels = int(maps_shape[-1])
        self._maps = None  # a cache of imported vectors has none (schema.has_maps)
        if schema.has_maps(manifest.fingerprint):
            self._maps = self._file.create_dataset(
                schema.MAPS,
                shape=(0, *maps_shape),
                maxshape=(len(self.inputs), *maps_shape),
                chunks=(schema.MAPS_CHUNK_ROWS, *maps_shape),
                dtype=manifest.storage["maps_dtype"],
                compression=comp,
                compression_opts=opts,
                shuffle=shuffle,
            )
        # gzip alone, one row per chunk: rows are compressed on all cores (see featcache.shared.cache._deflate)
        self._deflate_level = opts if self._maps is not None and deflate.is_row_gzip(self._maps) else None
        self._pooled: list[np.ndarray] = []
        self._views = schema.views_of(manifest.fingerprint)
        self._pooled_views: list[np.ndarray] = []
        # the layout's datasets beyond the base ones and pooled_views (taps, top input), kept in memory
        layout = schema.layout_of(manifest.fingerprint, manifest.storage["maps_dtype"])
        self._extra_layout = {k: v for k, v in layout.items() if k in EXTRA_DATASETS}
        self._extra: dict[str, list[np.ndarray]] = {k: [] for k in self._extra_layout}
        self._label: list[np.ndarray] = []
        self._index: list[np.ndarray] = []
        self._split: list[np.ndarray] = []
        self._ids: list[str] = []
        self._fractions = manifest.split["fractions"]
        # rows per (label, split) as readers assign them, set by commit (Manifest.counts)
        self.counts: list[int] = []

    @property
    def rows(self) -> int:
        return len(self._ids)

    def append(
        self,
        maps: np.ndarray | None,
        pooled: np.ndarray,
        label: np.ndarray,
        ids: list[str],
        index: np.ndarray,
        split: np.ndarray,
        pooled_views: np.ndarray | None = None,
        extra: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Add ``b`` rows: maps ``(b, h, w, c)`` (cast to the cache's maps dtype), pooled ``(b, c)``
        float32, label/index/split ``(b,)``, ids ``b`` strings; with views, ``pooled_views``
        ``(b, V-1, c)`` (required exactly when the fingerprint has more than one view); ``extra``: the
        layout's other datasets (``taps``, ``taps_views``, ``top_input``), each exactly when the
        fingerprint says the cache has it, of the layout's shape (cast to its dtype). ``maps`` is None
        exactly in a cache without maps (imported vectors)."""
        b = len(ids)
        if (maps is None) != (self._maps is None):
            raise ValueError("append: maps are required exactly when the cache stores maps")
        if not ((maps is None or len(maps) == b) and len(pooled) == len(label) == len(index) == len(split) == b):
            raise ValueError("append: all arrays must have the same number of rows")
        extra = extra or {}
        if set(extra) != set(self._extra_layout):
            raise ValueError(f"append: extra must hold exactly {sorted(self._extra_layout)}, got {sorted(extra)}")
        for name, (tail, _) in self._extra_layout.items():
            if tuple(extra[name].shape) != (b, *tail):
                raise ValueError(f"append: {name} must be {(b, *tail)}, got {extra[name].shape}")
        if (pooled_views is not None) != (self._views > 1):
            raise ValueError(f"append: pooled_views is required exactly when the cache has views ({self._views})")
        if pooled_views is not None:
            if pooled_views.shape[:2] != (b, self._views - 1):
                raise ValueError(f"append: pooled_views must be (b, {self._views - 1}, c), got {pooled_views.shape}")
            self._pooled_views.append(np.asarray(pooled_views, dtype=schema.POOLED_DTYPE))
        if self._maps is None or maps is None:  # checked above: both or neither
            pass
        elif self._deflate_level is not None:
            deflate.append(self._maps, maps, self._deflate_level)
        else:
            n = self._maps.shape[0]
            self._maps.resize(n + b, axis=0)
            self._maps[n : n + b] = maps.astype(self._maps.dtype, copy=False)
        self._out.raise_error()
        self._pooled.append(np.asarray(pooled, dtype=schema.POOLED_DTYPE))
        self._label.append(np.asarray(label, dtype=schema.LABEL_DTYPE))
        self._index.append(np.asarray(index, dtype=schema.INDEX_DTYPE))
        self._split.append(np.asarray(split, dtype=schema.SPLIT_DTYPE))
        for name, (_, dtype) in self._extra_layout.items():
            self._extra[name].append(np.asarray(extra[name], dtype=dtype))
        self._ids.extend(ids)

    def _cat(self, parts: list[np.ndarray], dtype: str, tail: tuple[int, ...] = ()) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros((0, *tail), dtype=dtype)

    def commit(self) -> ShardRecord:
        """Write the row datasets, close, fsync and rename into place; return the manifest record."""
        f = self._file
        channels = self._channels
        f.create_dataset(schema.POOLED, data=self._cat(self._pooled, schema.POOLED_DTYPE, (channels,)))
        if self._views > 1:
            tail = (self._views - 1, channels)
            f.create_dataset(schema.POOLED_VIEWS, data=self._cat(self._pooled_views, schema.POOLED_DTYPE, tail))
        for name, (shape, dtype) in self._extra_layout.items():
            f.create_dataset(name, data=self._cat(self._extra[name], dtype, shape))
        label = self._cat(self._label, schema.LABEL_DTYPE)
        split = self._cat(self._split, schema.SPLIT_DTYPE)
        pairs, n = np.unique(
            np.stack([label.astype(np.int64), assign_splits(self._ids, split, self._fractions).astype(np.int64)]),
            axis=1,
            return_counts=True,
        )
        self.counts = [int(x) for (a, b), c in zip(pairs.T, n, strict=True) for x in (a, b, c)]
        f.create_dataset(schema.LABEL, data=label)
        f.create_dataset(schema.INDEX, data=self._cat(self._index, schema.INDEX_DTYPE))
        f.create_dataset(schema.SPLIT, data=split)
        f.create_dataset(
            schema.ID, data=np.array(self._ids, dtype=object), dtype=h5py.string_dtype("utf-8"), shape=(len(self._ids),)
        )
        f.attrs.update(
            format=schema.FORMAT_NAME,
            schema_version=schema.SCHEMA_VERSION,
            shard=self.shard,
            first_index=self.inputs.start,
            num_inputs=len(self.inputs),
            fingerprint=to_attr(self._fingerprint),
        )
        if isinstance(self._listing_sha256, str):
            f.attrs[schema.LISTING_ATTR] = self._listing_sha256
        self._close()
        self._out.raise_error()
        # measured before the rename, so that the window in which a finished shard is in place but
        # not yet in the manifest is only the rename and the manifest's own atomic rewrite
        record = ShardRecord(
            shard=self.shard,
            file=schema.shard_name(self.shard),
            first_index=self.inputs.start,
            num_inputs=len(self.inputs),
            rows=self.rows,
            bytes=self.tmp.stat().st_size,
            sha256=sha256_file(self.tmp),
            completed=now(),
        )
        commit_file(self.tmp, self.final)
        return record

    def _close(self) -> None:
        """Close the HDF5 file once (whether or not that succeeds: h5py objects are never closed twice)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._file.close()
        finally:
            self._out.close()

    def abort(self) -> None:
        """Drop the partial file (never raises: it runs while another error is being reported)."""
        try:
            self._close()
        except Exception:  # noqa: BLE001 (the run's own error is the one to report)
            pass
        self.tmp.unlink(missing_ok=True)


class CacheWriter:
    """Owns ``part`` of the shard plan of ``cache_dir`` for one run: creates or resumes the cache,
    commits shards, and merges what was done into the manifest at the end.

    ``manifest`` describes the run about to happen (fingerprint, source, storage, shard size, no
    shards). When the directory already holds a cache, its fingerprint, listing, shard size and
    storage must agree with it (else a one-line error that says what differs), and its completed
    shards are kept; ``overwrite=True`` discards them instead (whole-cache runs only). A run of a
    run (a part, see :mod:`featcache.shared.cache._parts`; a whole run is part 0/1) appends each
    shard's record to its commit journal and folds the journals into the manifest now and then and
    on exit. :attr:`finalized` is the state after that last fold.

    ``update=True`` accepts a source whose listing changed: the change is recorded as a new
    generation (:mod:`featcache.shared.cache._update`) and :attr:`changes` says what it was; the
    new shards are then pending like any others (so parts, resume and ``finalize`` work unchanged).
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike[str],
        manifest: Manifest,
        *,
        overwrite: bool = False,
        listing: dict[str, np.ndarray] | None = None,
        part: Part = WHOLE,
        update: bool = False,
    ):
        if overwrite and not part.whole:
            raise FeatcacheError(
                f"{cache_dir}: overwrite=True with part='{part}' would let each worker delete the others' shards; "
                "delete the cache directory before starting the workers instead"
            )
        self.dir = Path(cache_dir)
        self.manifest = manifest
        self.listing = listing
        self.overwrite = overwrite
        self.part = part
        self.update = update
        self.changes: Changes | None = None
        self.resumed_shards = 0
        self.finalized: Finalized | None = None
        self._part_lock: FileLock | None = None
        self._journal: JournalWriter | None = None
        self._since_fold = 0  # records appended since the last fold
        self._folded = 0  # shards in manifest.json at the last fold
        self.bookkeeping_bytes = 0  # bytes of manifest and journal this writer wrote (bench/scale.py)

    def _cache_lock(self) -> CacheLock:
        return CacheLock(self.dir, wait=LOCK_WAIT_SECONDS)

    def __enter__(self) -> "CacheWriter":
        with warnings.catch_warnings():  # checked again under the lock, which warns
            warnings.simplefilter("ignore")
            self._check_existing()  # a refused run creates and deletes nothing
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._cache_lock():
            self._part_lock = acquire_part(self.dir, self.part)
            error: BaseException | None = None
            try:
                self._open()
            except BaseException as exc:
                self._part_lock.release()
                self._part_lock = None
                error = exc
        if error is not None:  # refused or failed under the lock: no lock of this run may stay behind
            try:
                finalize(self.dir, wait=0)  # the part's lock file goes when no part is left to run
            except Exception:  # noqa: BLE001 (the run's own error is the one to report)
                pass
            raise error
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._journal is not None:
            self.bookkeeping_bytes += self._journal.bytes
            self._journal.close()
        if self._part_lock is not None:
            self._part_lock.release()
        try:
            self.finalized = finalize(self.dir)
        except Exception:
            if exc is None:
                raise  # else the run's own error is the one to report

    def _owns_file(self, name: str) -> bool:
        """Whether ``name`` in ``shards/`` is the writer's name of a shard of this run's part."""
        shard = schema.shard_number(name)
        return shard >= 0 and shard_file_problem(f"{schema.SHARDS_DIR}/{name}") is None and self.part.owns(shard)

    def _check_existing(self) -> Manifest | None:
        """Everything that can refuse this run, read-only: the existing manifest (None when there is
        none) must be a valid featcache manifest the run may resume (unless ``overwrite``), no link
        may lead out of the cache, and every file this run would replace or delete must be
        featcache's own. Raises a one-line :class:`FeatcacheError`."""
        if not self.dir.exists():
            return None
        if not self.dir.is_dir():
            raise FeatcacheError(f"{self.dir}: not a directory")
        shards_dir = cache_path(self.dir, schema.SHARDS_DIR)
        parts_dir(self.dir)
        check_regular(self.dir / schema.LOCK_NAME)
        old = None
        if os.path.lexists(self.dir / schema.MANIFEST_NAME):
            try:
                old = Manifest.load(self.dir)
            except NotACacheError as exc:
                if not self.overwrite:
                    raise
                raise FeatcacheError(
                    f"{exc}; overwrite=True deletes only what featcache provably wrote, "
                    "and this is not a featcache manifest: extract into another directory"
                ) from None
            if not self.overwrite and not self.update:  # an update checks what changed in _apply_update
                self._check_resumable(old)
            if (
                self.update
                and not self.overwrite
                and old.source.get("listing_sha256") != self.manifest.source.get("listing_sha256")
            ):
                load_listing(self.dir, old)  # one that is not the listing the manifest records is refused here
        # Files under this run's shard names that it would replace or (overwrite=True) delete must be
        # featcache's: listed by the manifest, or carrying featcache's attributes. Resuming a valid
        # cache may replace what a killed run left under its own names in its own shards/ folder.
        if shards_dir.is_dir() and (old is None or self.overwrite):
            listed = {s.file for s in old.shards} if old is not None else set()
            for p in sorted(shards_dir.glob(schema.SHARD_GLOB)):
                rel = f"{schema.SHARDS_DIR}/{p.name}"
                if rel in listed or not self._owns_file(p.name):
                    continue  # listed: featcache's; another name or part's: never replaced nor deleted
                if not _is_featcache_shard(p):
                    raise FeatcacheError(
                        f"{p}: not a featcache shard (no featcache attributes) where this run would write one; "
                        "refusing to replace it: move it away or extract into another directory"
                    )
        return old

    def _open(self) -> None:
        old = self._check_existing()
        shards_dir = cache_path(self.dir, schema.SHARDS_DIR)
        shards_dir.mkdir(exist_ok=True)
        remove_stale_temps(shards_dir, self._owns_file)
        # the manifest's and listing's, written under the cache lock
        remove_stale_temps(self.dir, lambda name: name in (schema.MANIFEST_NAME, LISTING_NAME))
        remove_stale_temps(parts_dir(self.dir), lambda name: name.startswith(f"{self.part.stem}."))
        manifest_path = self.dir / schema.MANIFEST_NAME
        if old is not None and self.overwrite:
            # featcache's files only: the manifest parsed as ours, so are the shards it lists, the
            # listing, the row index and the commit journals; other canonical shard names carry featcache attributes
            # (checked by _check_existing); anything else in the folder is left alone
            for p in sorted(shards_dir.glob(schema.SHARD_GLOB)):
                if self._owns_file(p.name):
                    p.unlink()
            (self.dir / LISTING_NAME).unlink(missing_ok=True)
            rowindex.remove(self.dir)
            remove_logs(self.dir)
            manifest_path.unlink()
            old = None
        if old is not None:
            if self.update:
                self._apply_update(old)
            self._check_resumable(old)
            new = self.manifest
            kept = [
                s for s in old.shards if file_status(shard_path(self.dir, s.file, s.shard), s, checksum=False) is None
            ]
            new.shards = kept
            kept_ids = {s.shard for s in kept}
            new.failed = [f for f in old.failed if f.shard in kept_ids]
            new.counts = {k: c for k, c in old.counts.items() if k in kept_ids}
            new.created = old.created
            new.generations, new.dead, new.dropped, new.relabelled = (
                old.generations,
                old.dead,
                old.dropped,
                old.relabelled,
            )
            self.resumed_shards = sum(self.part.owns(s.shard) for s in kept)
            new.journals = old.journals
            new.listing_sha256 = old.listing_sha256
        elif self.listing is not None:
            save_listing(self.dir, self.listing)
            self.manifest.listing_sha256 = entries_sha256(self.listing)
        # the manifest with every journal folded in (journals of parts not running are retired),
        # then this part's fresh journal: its old one is included up to the offset just recorded
        fold(self.dir, self.manifest)
        self._record_fold()
        self._journal = open_journal(self.dir, self.part, self.manifest.created)

    def _apply_update(self, old: Manifest) -> None:
        """Record in ``old`` (and on disk: the grown listing, then the manifest) what changed in the
        source since ``old`` was written; a no-op when the listing is the same (unless it records content
        hashes, ``checksum=True``: then they are compared, and recorded for the next time). Refuses another
        identity (weights, preprocessing, dtype...), shard size, storage or split fractions, and a
        cache whose previous run is unfinished."""
        where = str(self.dir)
        new = self.manifest
        self.changes = Changes()
        checksum = self.listing is not None and "sha256" in self.listing  # content hashes compared too
        if old.source.get("listing_sha256") == new.source.get("listing_sha256") and not checksum:
            return
        check_compatible(old.fingerprint, new.fingerprint, where)
        for what, a, b in (
            ("shard size", old.shard_size, new.shard_size),
            ("storage", old.storage, new.storage),
            ("split fractions", old.split.get("fractions"), new.split.get("fractions")),
        ):
            if a != b:
                raise FeatcacheError(
                    f"{where}: {what} differs from the existing cache ({a} then, {b} now); "
                    "an update must repeat the original options"
                )
        if not old.complete:
            raise FeatcacheError(
                f"{where}: the cache is unfinished ({len(old.missing_shards())} of {old.num_shards} shards missing) "
                "and its source changed since: finish it from the source as it was, then update (or overwrite=True)"
            )
        before = load_listing(self.dir, old)  # one line if it is not the listing the manifest records
        if self.listing is None or before is None:
            raise FeatcacheError(
                f"{where}: no {LISTING_NAME} matching the manifest: this cache cannot be updated; "
                "use overwrite=True to start over"
            )
        self.changes, grown = apply_update(old, before, self.listing, new.classes)
        if old.generations:  # else the implicit generation 0 takes source.listing_sha256, set below
            old.generations[-1].listing_sha256 = new.source.get("listing_sha256")  # what its shards will carry
        old.source, old.split = new.source, new.split
        save_listing(self.dir, grown)  # first: entries beyond the manifest's num_inputs are ignored
        old.listing_sha256 = entries_sha256(grown)
        old.save(self.dir)

    def _check_resumable(self, old: Manifest) -> None:
        """Refuse to resume ``old`` with other features, inputs or options (one line). When no shard
        of it is committed, the line says so: starting over (``overwrite=True``) loses nothing."""
        try:
            self._check_same(old)
        except FeatcacheError as exc:
            if old.shards or old.generations:
                raise
            advice = " (use overwrite=True to start over, or another cache directory)"
            reason = str(exc).removesuffix(advice)
            raise type(exc)(
                f"{reason}; no shard of it is committed yet ({old.num_shards} planned, 0 written), so nothing is "
                "lost by starting over: use overwrite=True"
            ) from None

    def _check_same(self, old: Manifest) -> None:
        where = str(self.dir)
        check_compatible(old.fingerprint, self.manifest.fingerprint, where)
        new = self.manifest
        if old.source.get("listing_sha256") != new.source.get("listing_sha256"):
            before = load_listing(self.dir, old)
            changes = ""
            if before is not None and self.listing is not None:
                changes = describe_live_changes(old, before, self.listing, new.classes)
            raise SourceMismatchError(
                f"{where}: the inputs changed since the cache was made from {old.source.get('root')}: "
                + (changes or f"{old.source.get('num_inputs')} inputs then, {new.source.get('num_inputs')} now")
                + "; run with update=True to extract only what changed, overwrite=True to start over, "
                "or extract into another cache directory"
            )
        for what, a, b in (
            ("shard size", old.shard_size, new.shard_size),
            ("storage", old.storage, new.storage),
            ("classes", old.classes, new.classes),
            ("split", old.split, new.split),
        ):
            if a != b:
                raise FeatcacheError(
                    f"{where}: {what} differs from the existing cache ({a} then, {b} now); "
                    "repeat the original options or use overwrite=True"
                )

    def pending_shards(self) -> list[int]:
        """This part's shards that are not done yet, in order."""
        return [k for k in self.manifest.missing_shards() if self.part.owns(k)]

    def start_shard(self, shard: int) -> ShardWriter:
        return ShardWriter(self.dir, self.manifest, shard)

    def commit_shard(self, writer: ShardWriter, failed: list[FailedInput]) -> ShardRecord:
        """Rename ``writer``'s shard into place, then append its record to this part's commit
        journal, which makes it visible to readers: O(1), whatever the cache's size. Folds the
        journals into the manifest when this journal holds as many records as the manifest had
        shards at the last fold (at least :data:`FOLD_MIN_RECORDS`): O(1) per shard amortised."""
        if self._journal is None:
            raise FeatcacheError(f"{self.dir}: commit_shard outside the writer's with-block")
        record = writer.commit()
        self.manifest.add_shard(record, failed, counts=writer.counts)
        self._journal.append({"shard": vars(record), "failed": [vars(f) for f in failed], "counts": writer.counts})
        self._since_fold += 1
        if self._fold_due():
            self.fold()
        return record

    def _fold_due(self) -> bool:
        return self._since_fold >= max(FOLD_MIN_RECORDS, self._folded)

    def fold(self) -> bool:
        """Fold now, if the cache lock is free (else later: whether it folded). A whole run writes
        its own manifest (it holds every shard); a part reloads, to include the other parts'
        journals. Either way this part's journal is then replaced by a fresh one."""
        try:
            lock = CacheLock(self.dir, wait=0)
            lock.acquire()
        except CacheLockedError:
            return False
        try:
            if self.part.whole:
                self.manifest.journals = {}  # its only journal is replaced just below
                fold(self.dir, self.manifest)
            else:
                m, _ = fold(self.dir)
                self._folded = len(m.shards)
            self._record_fold()
            if self._journal is not None:
                self.bookkeeping_bytes += self._journal.bytes
                self._journal.close()
            self._journal = open_journal(self.dir, self.part, self.manifest.created)
        finally:
            lock.release()
        return True

    def _record_fold(self) -> None:
        self._since_fold = 0
        self._folded = max(self._folded, len(self.manifest.shards))
        self.bookkeeping_bytes += (self.dir / schema.MANIFEST_NAME).stat().st_size


def _is_featcache_shard(path: Path) -> bool:
    """Whether ``path`` is a regular file (not a link) that opens as HDF5 with featcache's ``format``
    attribute: proof enough that featcache wrote it, before replacing or deleting it."""
    try:
        with open_shard_file(path, {}, 0) as f:  # a regular file, not a link, with the HDF5 signature
            return f.attrs.get("format") == schema.FORMAT_NAME
    except Exception:  # noqa: BLE001 (whatever it is, it is not provably ours)
        return False
