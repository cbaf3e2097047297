"""A cache's rows as plain files for other tools: ``.npz`` arrays and a ``.csv`` of labels and ids, or a
folder for TensorBoard's embedding projector (:func:`projector`).

``np.load(OUT.npz)`` needs no pickle: ids, class names and split names are fixed-width unicode.
The output is checked before anything is read (:func:`output_paths`): never inside the cache (an
export must not replace the cache's own ``listing.npz``), never an existing folder.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from ..cache import FeatureCache, schema, split_names
from ..errors import FeatcacheError
from .picture import write_png


def parse_range(text: str) -> tuple[int, int]:
    """``"A:B"`` -> ``(A, B)``: listing positions ``A <= index < B``."""
    try:
        a, b = (int(v) for v in text.split(":"))
    except ValueError:
        raise FeatcacheError(f"row range {text!r}: expected START:STOP, e.g. 0:1000") from None
    if not 0 <= a < b:
        raise FeatcacheError(f"row range {text!r}: need 0 <= START < STOP")
    return a, b


def output_paths(cache_dir: Path, out: Path) -> tuple[Path, Path]:
    """``(OUT.npz, OUT.csv)`` for the output path ``out`` (``.npz`` added unless it ends so), or a
    one-line :class:`FeatcacheError`: ``out`` must name a file, outside the cache ``cache_dir``,
    and neither output may be an existing folder or sit under a file."""
    out = Path(out)
    if out.name in ("", ".", "..") or str(out).endswith(os.sep):
        raise FeatcacheError(
            f"{out}: export needs a file name (e.g. features, which writes features.npz and features.csv)"
        )
    npz = out if out.suffix == ".npz" else out.with_name(out.name + ".npz")
    table = npz.with_suffix(".csv")
    root = os.path.realpath(cache_dir)
    for path in (npz, table):
        real = os.path.realpath(path)
        if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
            raise FeatcacheError(
                f"{path}: inside the cache {cache_dir}; export writes outside it (it must never "
                "replace the cache's own files)"
            )
        if path.is_dir():
            raise FeatcacheError(f"{path}: is a folder; give another output name")
    parent = npz.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise FeatcacheError(f"{npz}: {parent} is not a folder")
    return npz, table


FORMATS = ("npz", "parquet")


def export_parquet(cache: FeatureCache, out: Path) -> list[Path]:
    """Write ``OUT.parquet`` (``.parquet`` added unless it ends so): id, index, label, class, split and
    the pooled vector as a fixed-size list, in row groups (:mod:`featcache.shared.cache._columnar`;
    needs pyarrow); return its path. Checked as :func:`output_paths`."""
    from ..cache import write_parquet

    out = Path(out)
    target = out if out.suffix == ".parquet" else out.with_name(out.name + ".parquet")
    output_paths(cache.path, target.with_suffix(".npz"))  # the same checks: a file name, outside the cache
    if target.is_dir():
        raise FeatcacheError(f"{target}: is a folder; give another output name")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_parquet(cache, target)
    return [target]


def export(cache: FeatureCache, out: Path, maps_range: tuple[int, int] | None = None) -> list[Path]:
    """Write ``OUT.npz`` and ``OUT.csv``; return their paths.

    The npz holds ``pooled (N, C) float32``, ``label (N,) int32``, ``id (N,) str``, ``index (N,) int64``,
    ``split (N,) str`` and ``classes (K,) str``; with ``maps_range`` also ``maps (M, h, w, c)`` in the
    stored dtype and ``maps_index (M,)`` for the rows whose index is in the range.
    """
    npz, table = output_paths(cache.path, out)
    if maps_range is not None:
        cache.require_maps(f"maps_range={maps_range!r}: there are no maps to export")
    rows = cache.load_pooled()
    names = split_names(rows.split).astype(str)
    arrays: dict[str, np.ndarray] = {
        "pooled": rows.pooled,
        "label": rows.label,
        "id": rows.id.astype(str),
        "index": rows.index,
        "split": names,
        "classes": np.array(cache.classes, dtype=str),
    }
    if maps_range is not None:
        wanted = rows.index[(rows.index >= maps_range[0]) & (rows.index < maps_range[1])]
        parts = list(cache.iter_maps(indices=wanted))
        arrays["maps_index"] = np.concatenate([i for i, _ in parts]) if parts else np.zeros(0, schema.INDEX_DTYPE)
        arrays["maps"] = (
            np.concatenate([m for _, m in parts])
            if parts
            else np.zeros((0, *cache.maps_shape), cache.manifest.storage["maps_dtype"])
        )
    npz.parent.mkdir(parents=True, exist_ok=True)
    # numpy 2's stub checks **kwds against savez's allow_pickle: bool too (not numpy 1.26's)
    np.savez(npz, **arrays)  # type: ignore[arg-type, unused-ignore]
    classes = cache.classes
    with open(table, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "id", "label", "class", "split"])
        for i, ident, lab, sp in zip(
            rows.index.tolist(), rows.id.tolist(), rows.label.tolist(), names.tolist(), strict=False
        ):
            w.writerow([i, ident, lab, classes[lab] if 0 <= lab < len(classes) else "", sp])
    return [npz, table]


PROJECTOR_MAX_ROWS = 10_000  # rows in a projector folder (a random sample beyond; the projector is for looking)
SPRITE_PX = 32  # one thumbnail's side in the sprite
PROJECTOR_CONFIG = """embeddings {{
  tensor_name: "pooled"
  tensor_path: "tensors.tsv"
  metadata_path: "metadata.tsv"
{sprite}}}
"""


def _tsv_cell(value: object) -> str:
    return str(value).replace("\t", " ").replace("\n", " ").replace("\r", " ")


def projector(
    cache: FeatureCache, folder: Path, max_rows: int = PROJECTOR_MAX_ROWS, seed: int = 0
) -> tuple[list[Path], str | None]:
    """Write TensorBoard's embedding-projector files for ``cache`` into ``folder`` (``tensorboard
    --logdir FOLDER``, or load ``tensors.tsv`` and ``metadata.tsv`` into projector.tensorflow.org):
    ``tensors.tsv`` (one pooled vector a line), ``metadata.tsv`` (id, class, split, index: a header and a
    line a row, in the same order), ``sprite.png`` (every row's source image, :data:`SPRITE_PX` square, in
    that order; drawn as the report's thumbnails are, grey where an image cannot be read) and
    ``projector_config.pbtxt``. Beyond ``max_rows`` rows a random sample of that many (``seed``). Returns
    the files written and why the sprite was not drawn (Pillow missing), or None."""
    from .picture import load_source

    folder = Path(folder)
    root = os.path.realpath(cache.path)
    real = os.path.realpath(folder)
    if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
        raise FeatcacheError(f"{folder}: inside the cache {cache.path}; export writes outside it")
    if folder.exists() and not folder.is_dir():
        raise FeatcacheError(f"{folder}: not a folder; the projector export writes a folder of files")
    rows = cache.load_pooled()
    pick = np.arange(len(rows))
    if len(rows) > max_rows:
        pick = np.sort(np.random.default_rng(seed).choice(len(rows), max_rows, replace=False))
    names = split_names(rows.split)
    classes = cache.classes
    folder.mkdir(parents=True, exist_ok=True)
    tensors, metadata = folder / "tensors.tsv", folder / "metadata.tsv"
    np.savetxt(tensors, rows.pooled[pick], fmt="%.6g", delimiter="\t")
    with open(metadata, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("id\tclass\tsplit\tindex\n")
        for i in pick.tolist():
            label = int(rows.label[i])
            cls = classes[label] if 0 <= label < len(classes) else ""
            fh.write("\t".join(_tsv_cell(v) for v in (rows.id[i], cls, names[i], rows.index[i])) + "\n")
    written, skipped, sprite = [tensors, metadata], None, ""
    try:
        import PIL.Image  # noqa: F401  (thumbnails need Pillow)
    except ImportError:
        skipped = "Pillow is not installed (pip install 'featcache[viz]'): no sprite"
    if skipped is None:
        side = int(np.ceil(np.sqrt(len(pick)))) or 1
        grid = np.full((side * SPRITE_PX, side * SPRITE_PX, 3), 255, np.uint8)
        for k, i in enumerate(pick.tolist()):
            img, _ = load_source(cache.manifest.source, str(rows.id[i]), (SPRITE_PX, SPRITE_PX))
            r, c = divmod(k, side)
            grid[r * SPRITE_PX : (r + 1) * SPRITE_PX, c * SPRITE_PX : (c + 1) * SPRITE_PX] = img
        write_png(folder / "sprite.png", grid)
        written.append(folder / "sprite.png")
        dims = f"    single_image_dim: {SPRITE_PX}\n" * 2
        sprite = f'  sprite {{\n    image_path: "sprite.png"\n{dims}  }}\n'
    config = folder / "projector_config.pbtxt"
    config.write_text(PROJECTOR_CONFIG.format(sprite=sprite))
    written.append(config)
    return written, skipped
