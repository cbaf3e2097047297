"""Writing a cache: shards under temporary names, committed one by one into the manifest.

:class:`ShardWriter` writes one shard file; :class:`CacheWriter` owns the cache directory for the
duration of a run (lock, resume checks, manifest updates). Both are synchronous; the extractor runs
them in a background thread so that disk work overlaps with the backbone.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from . import schema
from .errors import FeatcacheError, SourceMismatchError
from .fingerprint import check_compatible, to_attr
from .fsutil import commit_file, remove_stale_temps, sha256_file, temp_path_for
from .listing import LISTING_NAME, describe_changes, load_listing, save_listing
from .lock import CacheLock
from .manifest import FailedInput, Manifest, ShardRecord, now


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
        comp, opts, shuffle = schema.COMPRESSIONS[manifest.storage["compression"]]
        self._file = h5py.File(self.tmp, "w")
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
        self._pooled: list[np.ndarray] = []
        self._label: list[np.ndarray] = []
        self._index: list[np.ndarray] = []
        self._split: list[np.ndarray] = []
        self._ids: list[str] = []

    @property
    def rows(self) -> int:
        return len(self._ids)

    def append(
        self,
        maps: np.ndarray,
        pooled: np.ndarray,
        label: np.ndarray,
        ids: list[str],
        index: np.ndarray,
        split: np.ndarray,
    ) -> None:
        """Add ``b`` rows: maps ``(b, h, w, c)`` (cast to the cache's maps dtype), pooled ``(b, c)``
        float32, label/index/split ``(b,)``, ids ``b`` strings."""
        b = len(ids)
        if not (len(maps) == len(pooled) == len(label) == len(index) == len(split) == b):
            raise ValueError("append: all arrays must have the same number of rows")
        n = self._maps.shape[0]
        self._maps.resize(n + b, axis=0)
        self._maps[n : n + b] = maps.astype(self._maps.dtype, copy=False)
        self._pooled.append(np.asarray(pooled, dtype=schema.POOLED_DTYPE))
        self._label.append(np.asarray(label, dtype=schema.LABEL_DTYPE))
        self._index.append(np.asarray(index, dtype=schema.INDEX_DTYPE))
        self._split.append(np.asarray(split, dtype=schema.SPLIT_DTYPE))
        self._ids.extend(ids)

    def _cat(self, parts: list[np.ndarray], dtype: str, tail: tuple[int, ...] = ()) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros((0, *tail), dtype=dtype)

    def commit(self) -> ShardRecord:
        """Write the row datasets, close, fsync and rename into place; return the manifest record."""
        f = self._file
        channels = self._maps.shape[-1]
        f.create_dataset(schema.POOLED, data=self._cat(self._pooled, schema.POOLED_DTYPE, (channels,)))
        f.create_dataset(schema.LABEL, data=self._cat(self._label, schema.LABEL_DTYPE))
        f.create_dataset(schema.INDEX, data=self._cat(self._index, schema.INDEX_DTYPE))
        f.create_dataset(schema.SPLIT, data=self._cat(self._split, schema.SPLIT_DTYPE))
        f.create_dataset(schema.ID, data=np.array(self._ids, dtype=object), dtype=h5py.string_dtype("utf-8"),
                         shape=(len(self._ids),))
        f.attrs.update(
            format=schema.FORMAT_NAME,
            schema_version=schema.SCHEMA_VERSION,
            shard=self.shard,
            first_index=self.inputs.start,
            num_inputs=len(self.inputs),
            fingerprint=to_attr(self._fingerprint),
        )
        f.close()
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

    def abort(self) -> None:
        """Drop the partial file."""
        try:
            self._file.close()
        finally:
            self.tmp.unlink(missing_ok=True)


class CacheWriter:
    """Owns ``cache_dir`` for one run: takes the lock, creates or resumes, commits shards.

    ``manifest`` describes the run about to happen (fingerprint, source, storage, shard size, no
    shards). When the directory already holds a cache, its fingerprint, listing, shard size and
    storage must agree with it (else a one-line error that says what differs), and its completed
    shards are kept; ``overwrite=True`` discards them instead.
    """

    def __init__(self, cache_dir: str | os.PathLike[str], manifest: Manifest, *, overwrite: bool = False,
                 listing: dict[str, np.ndarray] | None = None):
        self.dir = Path(cache_dir)
        self.manifest = manifest
        self.listing = listing
        self.overwrite = overwrite
        self.resumed_shards = 0
        self._lock = CacheLock(self.dir)

    def __enter__(self) -> "CacheWriter":
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        try:
            self._open()
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._lock.release()

    def _open(self) -> None:
        shards_dir = self.dir / schema.SHARDS_DIR
        shards_dir.mkdir(exist_ok=True)
        remove_stale_temps(shards_dir)
        remove_stale_temps(self.dir)
        manifest_path = self.dir / schema.MANIFEST_NAME
        if manifest_path.exists() and self.overwrite:
            for p in shards_dir.glob(schema.SHARD_GLOB):
                p.unlink()
            (self.dir / LISTING_NAME).unlink(missing_ok=True)
            manifest_path.unlink()
        if manifest_path.exists():
            old = Manifest.load(self.dir)
            self._check_resumable(old)
            new = self.manifest
            kept = [s for s in old.shards if (self.dir / s.file).is_file() and (self.dir / s.file).stat().st_size == s.bytes]
            new.shards = kept
            kept_ids = {s.shard for s in kept}
            new.failed = [f for f in old.failed if f.shard in kept_ids]
            new.created = old.created
            self.resumed_shards = len(kept)
        elif self.listing is not None:
            save_listing(self.dir, self.listing)
        self.manifest.save(self.dir)

    def _check_resumable(self, old: Manifest) -> None:
        where = str(self.dir)
        check_compatible(old.fingerprint, self.manifest.fingerprint, where)
        new = self.manifest
        if old.source.get("listing_sha256") != new.source.get("listing_sha256"):
            before = load_listing(self.dir)
            changes = describe_changes(before, self.listing) if before is not None and self.listing is not None else ""
            raise SourceMismatchError(
                f"{where}: the inputs changed since the cache was made from {old.source.get('root')}: "
                + (changes or f"{old.source.get('num_inputs')} inputs then, {new.source.get('num_inputs')} now")
                + "; run with --overwrite to start over, or extract into another cache directory"
            )
        for what, a, b in (
            ("shard size", old.shard_size, new.shard_size),
            ("storage", old.storage, new.storage),
            ("classes", old.classes, new.classes),
            ("split", old.split, new.split),
        ):
            if a != b:
                raise FeatcacheError(f"{where}: {what} differs from the existing cache ({a} then, {b} now); "
                                     "repeat the original options or use --overwrite")

    def pending_shards(self) -> list[int]:
        return self.manifest.missing_shards()

    def start_shard(self, shard: int) -> ShardWriter:
        return ShardWriter(self.dir, self.manifest, shard)

    def commit_shard(self, writer: ShardWriter, failed: list[FailedInput]) -> ShardRecord:
        """Make ``writer``'s shard visible: rename it into place, then rewrite the manifest."""
        record = writer.commit()
        self.manifest.add_shard(record, failed)
        self.manifest.save(self.dir)
        return record
