"""Caches of vectors from anywhere: ``featcache.import_embeddings`` and ``featcache-inspect import``.

Pooled vectors computed by another model (CLIP, DINOv2, a model of one's own), with their ids and
optionally labels, splits and class names, become a cache like any other, written by the same
writer (:class:`~featcache.shared.cache._writer.CacheWriter`: shards under dot-names, fsync'd and
renamed, each committed by its journal record, then the manifest and the row index), with the
maps-less layout of :func:`schema.row_layout`: no ``maps`` dataset, ``output_shape`` ``(1, 1, C)``.

Its fingerprint says where the vectors came from: ``backbone`` ``external:<name>``, ``maps: false``,
and for ``weights_sha256`` the sha256 of the vectors themselves (float32, little-endian, row after
row): the identity of imported vectors is the vectors. Every inspect command and the trainer's pooled
heads read it; what needs maps (map heads, ``show``'s activation grid, ``export --maps``) says in one
line that the cache has none.

Everything is checked before anything is written (one line naming the argument: mismatched lengths,
NaN/Inf, duplicate or empty ids, unknown split names, labels outside the classes), so a refused
import leaves no file behind.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..arguments import bad, int_arg, path_arg, str_arg
from ..errors import FeatcacheError
from . import schema
from ._listing import entries_sha256
from ._manifest import Manifest
from ._split import SPLIT_CODES
from ._writer import CacheWriter, storage_options

SOURCE_KIND = "external"
DEFAULT_NAME = "external"
# Rows per shard of an imported cache: its rows are small (5 KB at 1280-d), so larger shards than an
# extraction's (fewer files; the readers' blocks stay bounded by their own block sizes).
DEFAULT_SHARD_SIZE = 8192
HASH_BLOCK_ROWS = 65_536


def vectors_sha256(pooled: np.ndarray) -> str:
    """sha256 of ``pooled`` ``(n, c)`` as float32 little-endian, row after row (in bounded blocks), with
    its shape first: the identity of imported vectors."""
    h = hashlib.sha256(f"{pooled.shape[0]}x{pooled.shape[1]}\n".encode())
    for start in range(0, len(pooled), HASH_BLOCK_ROWS):
        h.update(np.ascontiguousarray(pooled[start : start + HASH_BLOCK_ROWS], dtype="<f4").tobytes())
    return h.hexdigest()


def fingerprint(name: str, channels: int, sha256: str) -> dict[str, Any]:
    """The fingerprint of a cache of imported vectors (see the module docstring)."""
    return {
        "backbone": f"{schema.EXTERNAL_PREFIX}{name}",
        "weights_sha256": sha256,
        "weights_source": SOURCE_KIND,
        "random_weights": False,
        "input_size": [1, 1],
        "output_shape": [1, 1, int(channels)],
        "resize": "none",
        "preprocessing": "none",
        "compute_dtype": "float32",
        "maps_dtype": "float32",
        schema.MAPS_KEY: False,
    }


def _vectors(pooled: Any) -> np.ndarray:
    array = pooled if isinstance(pooled, np.ndarray) else np.asarray(pooled)
    if array.ndim != 2 or array.dtype.kind != "f":
        raise bad("pooled", _shape(array), "expected an (N, C) array of floats")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise bad("pooled", _shape(array), "expected at least one row and one column")
    for start in range(0, len(array), HASH_BLOCK_ROWS):
        block = array[start : start + HASH_BLOCK_ROWS]
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            row = start + int(np.flatnonzero(~finite)[0])
            count = sum(
                int((~np.isfinite(array[s : s + HASH_BLOCK_ROWS])).any(axis=1).sum())
                for s in range(start, len(array), HASH_BLOCK_ROWS)
            )
            raise bad("pooled", _shape(array), f"row {row} holds NaN or Inf ({count} rows do): vectors must be finite")
        if block.dtype.itemsize > 4 and (np.abs(block) > np.finfo(np.float32).max).any():
            raise bad("pooled", _shape(array), "values beyond float32's range: vectors are stored as float32")
    return array


class _Shape:
    def __init__(self, shape: tuple[int, ...], dtype: Any):
        self.text = f"<array {'x'.join(map(str, shape))} {dtype}>"

    def __repr__(self) -> str:
        return self.text


def _shape(array: np.ndarray) -> _Shape:
    return _Shape(array.shape, array.dtype)


def _ids(ids: Any, n: int) -> list[str]:
    if ids is None or isinstance(ids, str | bytes):
        raise bad("ids", ids, f"expected {n} strings, one per row of pooled")
    values = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
    if len(values) != n:
        raise bad("ids", f"<{len(values)} ids>", f"expected {n}, one per row of pooled ({n} rows)")
    for k, v in enumerate(values):
        if not isinstance(v, str) or not v:
            raise bad("ids", f"<ids[{k}] = {v!r}>", "every id must be a non-empty string")
        if "\x00" in v:
            raise bad("ids", f"<ids[{k}] = {v!r}>", "an id holds a NUL character")
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise bad("ids", f"<ids[{k}] = {v!r}>", "an id is not valid UTF-8 text") from None
    if len(set(values)) != n:
        seen: dict[str, int] = {}
        for k, v in enumerate(values):
            if v in seen:
                raise bad("ids", f"<ids[{k}] = {v!r}>", f"duplicate id (also ids[{seen[v]}]): ids must be unique")
            seen[v] = k
    return values


def _classes(classes: Any) -> list[str] | None:
    if classes is None:
        return None
    if isinstance(classes, str | bytes):
        raise bad("classes", classes, "expected a list of class names")
    values = classes.tolist() if isinstance(classes, np.ndarray) else list(classes)
    for k, c in enumerate(values):
        if not isinstance(c, str) or not c:
            raise bad("classes", f"<classes[{k}] = {c!r}>", "every class name must be a non-empty string")
    if len(set(values)) != len(values):
        raise bad("classes", classes, "class names must be unique")
    return values


def _labels(labels: Any, n: int, classes: list[str] | None) -> tuple[np.ndarray, list[str]]:
    if labels is None:
        return np.full(n, schema.UNKNOWN_LABEL, schema.LABEL_DTYPE), classes or []
    array = np.asarray(labels)
    if array.shape != (n,):
        raise bad("labels", f"<{array.shape[0] if array.ndim else 'scalar'} labels>", f"expected {n}, one per row")
    if n and array.dtype.kind not in "iu":
        raise bad("labels", _shape(array), "expected integers (class numbers, -1 for unknown)")
    low = int(array.min()) if n else 0
    high = int(array.max()) if n else -1
    if low < schema.UNKNOWN_LABEL:
        raise bad("labels", f"<label {low}>", "labels are class numbers from 0, or -1 for unknown")
    if classes is None:
        classes = [str(k) for k in range(high + 1)]
    elif high >= len(classes):
        raise bad(
            "labels",
            f"<label {high}>",
            f"out of range of classes ({len(classes)} names: labels 0..{len(classes) - 1}, or -1 for unknown)",
        )
    return array.astype(schema.LABEL_DTYPE), classes


def _splits(splits: Any, n: int) -> np.ndarray:
    if splits is None:
        return np.full(n, schema.NO_SPLIT, schema.SPLIT_DTYPE)
    if isinstance(splits, str | bytes):
        raise bad("splits", splits, f"expected {n} split names, one per row")
    values = splits.tolist() if isinstance(splits, np.ndarray) else list(splits)
    if len(values) != n:
        raise bad("splits", f"<{len(values)} splits>", f"expected {n}, one per row")
    codes = np.empty(n, schema.SPLIT_DTYPE)
    for k, v in enumerate(values):
        code = SPLIT_CODES.get(v) if isinstance(v, str) else None
        if code is None:
            raise bad(
                "splits", f"<splits[{k}] = {v!r}>", f"unknown split name: expected one of {', '.join(schema.SPLITS)}"
            )
        codes[k] = code
    return codes


def import_embeddings(
    cache_dir: str | os.PathLike[str],
    pooled: Any,
    *,
    ids: Sequence[str] | np.ndarray,
    labels: Sequence[int] | np.ndarray | None = None,
    splits: Sequence[str] | np.ndarray | None = None,
    classes: Sequence[str] | None = None,
    name: str = DEFAULT_NAME,
    shard_size: int = DEFAULT_SHARD_SIZE,
    overwrite: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> Manifest:
    """Write ``pooled`` ``(N, C)`` float vectors with their ``ids`` (N unique strings) into a new cache at
    ``cache_dir`` and return its manifest. ``labels``: N class numbers (-1 unknown; default all unknown);
    ``classes``: their names (default ``"0"``, ``"1"``, ... up to the largest label); ``splits``: N of
    ``"train"``, ``"val"``, ``"test"`` (default: by hash of the id, as for a source without splits);
    ``name``: what the vectors are (``clip-vit-b32``), kept in the fingerprint as ``external:<name>``.

    Re-running the same import (same vectors, ids, labels, splits) resumes or leaves the cache as it is;
    other vectors into an existing cache are refused unless ``overwrite=True``."""
    from ..arguments import bool_arg, progress_arg

    cache_dir = path_arg("cache_dir", cache_dir)
    name = str_arg("name", name)
    shard_size = int_arg("shard_size", shard_size, minimum=1)
    overwrite = bool_arg("overwrite", overwrite)
    progress = progress_arg(progress)
    if any(c in name for c in "\x00\n"):
        raise bad("name", name, "expected one line of text")
    vectors = _vectors(pooled)
    n, channels = vectors.shape
    id_list = _ids(ids, n)
    label, class_list = _labels(labels, n, _classes(classes))
    split = _splits(splits, n)
    sha = vectors_sha256(vectors)
    listing = {
        "id": np.array(id_list, dtype=str),
        "label": label,
        "split": split,
        "size": np.zeros(n, np.int64),
        "mtime_ns": np.zeros(n, np.int64),
    }
    listing_sha = entries_sha256(listing)
    manifest = Manifest(
        fingerprint=fingerprint(name, channels, sha),
        classes=class_list,
        source={"kind": SOURCE_KIND, "root": name, "num_inputs": n, "listing_sha256": listing_sha},
        split={"source": "import" if splits is not None else None, "fractions": dict(schema.DEFAULT_SPLIT_FRACTIONS)},
        storage=storage_options("none", "float32"),
        shard_size=shard_size,
    )
    from tqdm import tqdm

    with CacheWriter(cache_dir, manifest, overwrite=overwrite, listing=listing) as writer:
        pending = writer.pending_shards()
        for k in tqdm(pending, unit="shard", desc="import", disable=not progress, leave=False):
            inputs = writer.manifest.shard_inputs(k)
            sel = slice(inputs.start, inputs.stop)
            shard = writer.start_shard(k)
            try:
                shard.append(
                    None,
                    np.asarray(vectors[sel], dtype=np.float32),
                    label[sel],
                    id_list[sel],
                    np.arange(inputs.start, inputs.stop, dtype=np.int64),
                    split[sel],
                )
                writer.commit_shard(shard, [])
            except BaseException:
                shard.abort()
                raise
    if log is not None:
        log(f"{cache_dir}: {n} rows of {channels}-d vectors imported as {name!r} in {len(pending)} new shards")
    return Manifest.load(cache_dir)


# --- files of vectors (the command line's source formats) ------------------------------------------

FILE_KINDS = (".npz", ".parquet")
POOLED_COLUMNS = ("pooled", "vector", "embedding")  # the first one present is the vectors


def read_embeddings(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The arguments of :func:`import_embeddings` (``pooled``, ``ids``, ``labels``, ``splits``,
    ``classes``) from a ``.npz`` (arrays ``pooled``, ``id``, optionally ``label``, ``split``,
    ``classes``: what ``featcache-inspect export`` writes) or a ``.parquet`` file (columns ``id``,
    ``pooled`` as a list of floats, optionally ``label``, ``class``, ``split``: what ``export --format
    parquet`` writes; needs pyarrow). A file that is not one of these is one line naming it."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _read_npz(path)
    if suffix == ".parquet":
        from ._columnar import read_parquet_embeddings

        return read_parquet_embeddings(path, POOLED_COLUMNS)
    raise FeatcacheError(f"{path}: expected a .npz or .parquet file of vectors (id, pooled, label, split)")


def _read_npz(path: Path) -> dict[str, Any]:
    import zipfile

    from .fsutil import open_named_input

    fd = open_named_input(path)
    try:
        with os.fdopen(fd, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            names = set(z.files)
            key = next((k for k in POOLED_COLUMNS if k in names), None)
            if key is None or "id" not in names:
                raise FeatcacheError(
                    f"{path}: needs arrays 'pooled' (N, C) and 'id' (N,) (optionally label, split, classes); "
                    f"it has {', '.join(sorted(names)) or 'none'}"
                )
            out: dict[str, Any] = {
                "pooled": z[key],
                "ids": z["id"].astype(str) if z["id"].dtype.kind == "U" else z["id"],
            }
            out["labels"] = z["label"] if "label" in names else None
            out["splits"] = z["split"] if "split" in names else None
            out["classes"] = z["classes"] if "classes" in names else None
    except FeatcacheError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise FeatcacheError(
            f"{path}: not a readable .npz of vectors ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    for key in ("ids", "splits", "classes"):
        v = out[key]
        if isinstance(v, np.ndarray) and v.dtype.kind == "U":
            out[key] = v.tolist()
    if out["classes"] is not None and isinstance(out["classes"], np.ndarray) and out["classes"].size == 0:
        out["classes"] = []
    return out


__all__ = ["DEFAULT_SHARD_SIZE", "fingerprint", "import_embeddings", "read_embeddings", "vectors_sha256"]
