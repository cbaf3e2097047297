"""Parquet files of pooled vectors: what ``featcache-inspect export --format parquet`` writes and
``featcache-inspect import`` reads (pyarrow, the optional extra ``parquet``).

One row per cache row: ``id`` (string), ``index`` (int64 listing position), ``label`` (int32, -1
unknown), ``class`` (string, null when unlabelled), ``split`` (string) and ``pooled`` (a fixed-size
list of float32, ``C`` values): readable by pandas, polars and DuckDB. The cache is read shard by
shard and written in row groups of at most :data:`ROW_GROUP_ROWS` rows, so memory stays at about one
row group whatever the cache's size. The class names are also in the file's metadata
(``featcache.classes``, a JSON list), so that classes without rows survive a round trip.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FeatcacheError
from . import schema
from ._reader import FeatureCache
from ._split import split_names

ROW_GROUP_ROWS = 16_384  # 84 MB of 1280-d float32 vectors
CLASSES_KEY = b"featcache.classes"
EXTRA = "parquet"


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401 (the submodule is used as pyarrow.parquet)
    except ImportError:
        raise FeatcacheError(
            f"Parquet needs pyarrow: pip install 'featcache[{EXTRA}]' (or write .npz, which needs nothing more)"
        ) from None
    return pyarrow


def _blocks(cache: FeatureCache, rows: int) -> Iterator[dict[str, np.ndarray]]:
    """The cache's columns in blocks of about ``rows`` rows (whole shards, split where larger)."""
    held: list[dict[str, np.ndarray]] = []
    count = 0
    columns = (schema.POOLED, schema.LABEL, schema.ID, schema.INDEX, schema.SPLIT)
    for block in cache.iter_columns(columns):
        block[schema.SPLIT] = cache.splits(block[schema.ID], block[schema.SPLIT])
        held.append(block)
        count += len(block[schema.INDEX])
        while count >= rows:
            joined = {k: np.concatenate([b[k] for b in held]) for k in columns}
            yield {k: v[:rows] for k, v in joined.items()}
            rest = {k: v[rows:] for k, v in joined.items()}
            count -= rows
            held = [rest] if count else []
    if count:
        yield {k: np.concatenate([b[k] for b in held]) for k in columns}


def write_parquet(cache: FeatureCache, path: Path, row_group_rows: int = ROW_GROUP_ROWS) -> int:
    """Write every row of ``cache`` to the Parquet file ``path`` (atomically: a temporary name, then a
    rename); return the number of rows."""
    pa = _pyarrow()
    channels = int(cache.maps_shape[-1])
    classes = list(cache.classes)
    class_table = np.array([*classes, None], dtype=object)
    arrow_schema = pa.schema(
        [
            ("id", pa.string()),
            ("index", pa.int64()),
            ("label", pa.int32()),
            ("class", pa.string()),
            ("split", pa.string()),
            ("pooled", pa.list_(pa.float32(), channels)),
        ],
        metadata={CLASSES_KEY: json.dumps(classes).encode("utf-8")},
    )
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    total = 0
    try:
        with pa.parquet.ParquetWriter(tmp, arrow_schema) as out:
            for b in _blocks(cache, row_group_rows):
                label = b[schema.LABEL]
                names = class_table[np.where((label >= 0) & (label < len(classes)), label, len(classes))]
                pooled = np.ascontiguousarray(b[schema.POOLED], dtype=np.float32)
                vectors = pa.FixedSizeListArray.from_arrays(pa.array(pooled.reshape(-1)), channels)
                table = pa.Table.from_arrays(
                    [
                        pa.array(b[schema.ID].tolist(), pa.string()),
                        pa.array(b[schema.INDEX], pa.int64()),
                        pa.array(label.astype(np.int32), pa.int32()),
                        pa.array(names.tolist(), pa.string()),
                        pa.array(split_names(b[schema.SPLIT]).tolist(), pa.string()),
                        vectors,
                    ],
                    schema=arrow_schema,
                )
                out.write_table(table, row_group_size=row_group_rows)
                total += len(label)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return total


def read_parquet_embeddings(path: Path, pooled_columns: tuple[str, ...]) -> dict[str, Any]:
    """The arguments of ``import_embeddings`` from a Parquet file (see the module docstring): column
    ``id``, the first of ``pooled_columns`` present (a list of floats per row), optionally ``label``,
    ``class`` (names; without ``label`` they number the classes in sorted order), ``split``."""
    pa = _pyarrow()
    from .fsutil import open_named_input

    fd = open_named_input(path)
    try:
        with os.fdopen(fd, "rb") as fh:
            table = pa.parquet.read_table(fh)
    except FeatcacheError:
        raise
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise FeatcacheError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {str(exc)[:200]})") from None
    names = set(table.column_names)
    key = next((k for k in pooled_columns if k in names), None)
    if key is None or "id" not in names:
        raise FeatcacheError(
            f"{path}: needs columns 'id' and 'pooled' (a list of floats per row; optionally label, class, "
            f"split); it has {', '.join(table.column_names)}"
        )
    column = table.column(key).combine_chunks()
    if not (pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type)) or not pa.types.is_floating(
        column.type.value_type
    ):
        raise FeatcacheError(f"{path}: column {key!r} is {column.type}, expected a list of floats per row")
    if column.null_count:
        raise FeatcacheError(f"{path}: column {key!r} has {column.null_count} null rows")
    lengths = np.asarray(column.value_lengths()) if pa.types.is_list(column.type) else None
    width = int(column.type.list_size) if lengths is None else int(lengths[0]) if len(lengths) else 0
    if lengths is not None and (lengths != width).any():
        row = int(np.flatnonzero(lengths != width)[0])
        raise FeatcacheError(f"{path}: column {key!r}: row {row} has {lengths[row]} values, row 0 has {width}")
    values = column.flatten().to_numpy(zero_copy_only=False)
    out: dict[str, Any] = {"pooled": values.reshape(len(column), width), "ids": table.column("id").to_pylist()}
    meta = (table.schema.metadata or {}).get(CLASSES_KEY)
    classes = None
    if meta is not None:
        try:
            classes = json.loads(meta.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise FeatcacheError(f"{path}: metadata {CLASSES_KEY.decode()} is not a JSON list of names") from None
    out["labels"] = table.column("label").to_numpy(zero_copy_only=False) if "label" in names else None
    if out["labels"] is not None and out["labels"].dtype.kind == "f":
        raise FeatcacheError(f"{path}: column 'label' has nulls or fractions; expected integers (-1 for unknown)")
    if "class" in names and out["labels"] is None:
        given = table.column("class").to_pylist()
        classes = classes or sorted({c for c in given if c is not None})
        number = {c: k for k, c in enumerate(classes)}
        out["labels"] = np.array([number.get(c, -2) if c is not None else -1 for c in given], np.int64)
    out["classes"] = classes
    out["splits"] = table.column("split").to_pylist() if "split" in names else None
    return out


__all__ = ["ROW_GROUP_ROWS", "read_parquet_embeddings", "write_parquet"]
