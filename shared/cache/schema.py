"""The on-disk layout of a featcache cache, stated once.

A cache is a directory::

    CACHE/
      manifest.json          # the only index a reader trusts (see docs/cache-format.md)
      .lock                  # held (flock) briefly by whoever creates the cache or rewrites the manifest
      listing.npz            # the input listing the cache was made from (what changed, on a refused resume)
      rows.h5                # every shard's label/id/index/split in one file, once complete (rowindex.py)
      shards/shard-00000.h5  # complete shards only; partial ones live under a dot-name
      parts/                 # while workers fill it: per-part locks and logs (see shared/parts.py)

Every shard file holds, for its ``n`` rows (``n`` may be 0 when all its inputs failed):

========  =====================  ========  ===============================================
dataset   shape                  dtype     meaning
========  =====================  ========  ===============================================
maps      (n, H, W, C)           float16   backbone feature maps (float32 on request)
pooled    (n, C)                 float32   spatial mean of the float32 maps, before any cast
label     (n,)                   int32     class number, -1 where unknown
id        (n,)                   utf-8 str image path relative to the source root (or as in the CSV)
index     (n,)                   int64     the input's position in the source listing
split     (n,)                   int8      0 train, 1 val, 2 test, -1 not given by the source
========  =====================  ========  ===============================================

For MobileNetV2 at 224x224, ``(H, W, C) = (7, 7, 1280)``.

A cache extracted with ``V > 1`` views (fingerprint key ``augment``) adds, additively (readers that
do not know it still work, on view 0):

============  =====================  ========  ===========================================
pooled_views  (n, V-1, C)            float32   pooled vectors of views 1..V-1 of each row
============  =====================  ========  ===========================================

A cache of **imported vectors** (``featcache.import_embeddings``: CLIP, DINOv2, any model's pooled
vectors, no images) has no ``maps`` dataset: its fingerprint says ``"maps": false`` (see
:func:`has_maps`) and ``output_shape`` is ``(1, 1, C)``; every other dataset is as above.
A cache extracted with layer taps (fingerprint key ``taps``: the layers, in order, and their widths)
or with the top input kept (fingerprint key ``top_input``) adds, additively as well:

============  =====================  ========  ===========================================
taps          (n, T)                 float32   spatial means of the tapped layers' float32
                                               outputs, concatenated in the fingerprint's order
                                               (T = the sum of their widths)
taps_views    (n, V-1, T)            float32   the same for views 1..V-1 (caches with views)
top_input     (n, h, w, c)           float16   the input tensor of the backbone's last block
                                               (MobileNetV2: block_16_project_BN, 7x7x320, the
                                               input of Conv_1), for heads that fine-tune it
============  =====================  ========  ===========================================
"""

from __future__ import annotations

from typing import Any

FORMAT_NAME = "featcache"
SCHEMA_VERSION = 1

MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".lock"
ROW_INDEX_NAME = "rows.h5"
SHARDS_DIR = "shards"
PARTS_DIR = "parts"
TMP_PREFIX = "."  # partial files are dot-files: never matched by SHARD_GLOB
SHARD_GLOB = "shard-*.h5"
# Shard attribute naming the cache a shard was written for: the manifest's source.listing_sha256
# (the same for every cache of the same inputs, so caches stay byte-identical across runs and parts).
LISTING_ATTR = "listing_sha256"

# Dataset names inside a shard.
MAPS = "maps"
POOLED = "pooled"
LABEL = "label"
ID = "id"
INDEX = "index"
SPLIT = "split"
DATASETS = (MAPS, POOLED, LABEL, ID, INDEX, SPLIT)
POOLED_VIEWS = "pooled_views"  # only in caches with views (see views_of)
TAPS = "taps"  # only in caches with layer taps (see taps_of)
TAPS_VIEWS = "taps_views"  # only in caches with taps and views
TOP_INPUT = "top_input"  # only in caches extracted with the top input kept (see top_input_of)

POOLED_DTYPE = "float32"
TAPS_DTYPE = "float32"
TOP_INPUT_DTYPE = "float16"
LABEL_DTYPE = "int32"
INDEX_DTYPE = "int64"
SPLIT_DTYPE = "int8"
ID_DTYPE = "object"  # h5py's variable-length UTF-8 string, read back as Python objects
# The per-row scalars every shard holds beside its features (the row index copies them): name -> dtype.
ROW_COLUMNS = {LABEL: LABEL_DTYPE, ID: ID_DTYPE, INDEX: INDEX_DTYPE, SPLIT: SPLIT_DTYPE}
MAPS_DTYPES = ("float16", "float32")
DEFAULT_MAPS_DTYPE = "float16"


def row_layout(
    output_shape: tuple[int, ...] | list[int],
    maps_dtype: str,
    views: int,
    taps: int = 0,
    top_input: tuple[int, ...] | list[int] | None = None,
    *,
    maps: bool = True,
) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every per-row dataset a shard of a cache holds (the table above): name -> (shape of one row,
    dtype). ``output_shape`` is the backbone's ``(H, W, C)``, ``maps_dtype`` the cache's, ``views``
    from :func:`views_of`, ``taps`` the width of the taps (0: none), ``top_input`` the shape of one
    row's top input (None: not kept), ``maps`` from :func:`has_maps` (False: the maps-less layout of
    imported vectors); :func:`layout_of` reads them all from a fingerprint. Each dataset's first axis is
    the shard's rows, so what copies, checks or filters rows (verify, compact) takes its list from here
    and carries datasets added later."""
    h, w, c = (int(v) for v in output_shape)
    out: dict[str, tuple[tuple[int, ...], str]] = {
        **({MAPS: ((h, w, c), maps_dtype)} if maps else {}),
        POOLED: ((c,), POOLED_DTYPE),
    }
    out.update({name: ((), dtype) for name, dtype in ROW_COLUMNS.items()})
    if views > 1:
        out[POOLED_VIEWS] = ((views - 1, c), POOLED_DTYPE)
    if taps:
        out[TAPS] = ((int(taps),), TAPS_DTYPE)
        if views > 1:
            out[TAPS_VIEWS] = ((views - 1, int(taps)), TAPS_DTYPE)
    if top_input is not None:
        out[TOP_INPUT] = (tuple(int(v) for v in top_input), TOP_INPUT_DTYPE)
    return out


def layout_of(fingerprint: dict[str, Any], maps_dtype: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """:func:`row_layout` of a cache with this fingerprint and maps dtype (the manifest's storage)."""
    top = top_input_of(fingerprint)
    return row_layout(
        fingerprint["output_shape"],
        maps_dtype,
        views_of(fingerprint),
        sum(w for _, w in taps_of(fingerprint)),
        None if top is None else top["shape"],
        maps=has_maps(fingerprint),
    )


UNKNOWN_LABEL = -1

# Split codes stored in the ``split`` dataset and returned by the reader.
SPLITS = ("train", "val", "test")
SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}
NO_SPLIT = -1
# Folder names accepted as a source's own split (all map to the names above).
SPLIT_FOLDER_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
DEFAULT_SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}

DEFAULT_SHARD_SIZE = 1024

# Maps storage. One row per chunk: reading a single row decompresses ~125 KB, and a block read
# touches exactly the rows it needs (8-row chunks measured no smaller). The default, gzip level 1
# without the byte shuffle, was chosen with bench/storage.py on real-weights features (~85-89% exact
# zeros from ReLU6): 25.5 KB/row and ~1.0 ms/row to write on the sample images, 31.5 KB/row on
# natural photo crops, against 30.6 KB/row and 1.2 ms/row with the shuffle (which only helps dense
# data) and 33.5 KB/row at 0.7 ms/row for lzf. gzip is built into every HDF5 library; lzf is built
# into h5py only (other readers need its plugin). gzip-9 is not offered: 30-70x slower to write
# than gzip-4 for ~6% fewer bytes. Numbers and the command: docs/cache-format.md.
MAPS_CHUNK_ROWS = 1
DEFAULT_COMPRESSION = "gzip-1"
# name -> (h5py compression, compression_opts, shuffle)
COMPRESSIONS: dict[str, tuple[str | None, int | None, bool]] = {
    "none": (None, None, False),
    "gzip-1": ("gzip", 1, False),
    "gzip-4": ("gzip", 4, False),
    "lzf": ("lzf", None, False),
}


def shard_name(shard: int) -> str:
    """File name of shard number ``shard``, relative to the cache directory."""
    return f"{SHARDS_DIR}/shard-{shard:05d}.h5"


def compacted_shard_name(shard: int, version: int) -> str:
    """File name of shard ``shard`` rewritten by its ``version``-th compaction (``version`` >= 1): a
    new name, so that the manifest's atomic rewrite is the one moment the new file replaces the old."""
    return shard_name(shard) if version == 0 else f"{SHARDS_DIR}/shard-{shard:05d}-c{version}.h5"


def _shard_name_parts(file_name: str) -> tuple[int, int]:
    stem = file_name.rsplit("/", 1)[-1]
    if not (stem.startswith("shard-") and stem.endswith(".h5")):
        return -1, -1
    number, _, version = stem[6:-3].partition("-c")
    if number.isdigit() and (version.isdigit() if version else "-c" not in stem):
        return int(number), int(version or 0)
    return -1, -1


def shard_number(file_name: str) -> int:
    """The shard number in a shard's file name (``shard-00007.h5`` or ``shard-00007-c2.h5`` -> 7), -1
    if there is none."""
    return _shard_name_parts(file_name)[0]


def compaction_version(file_name: str) -> int:
    """How many times the shard in ``file_name`` was compacted (0 for ``shard-00007.h5``), -1 if not a shard name."""
    return _shard_name_parts(file_name)[1]


# Fingerprint key of a cache without maps (imported vectors): ``"maps": false``. Absent: maps are stored.
MAPS_KEY = "maps"
# Fingerprint ``backbone`` of imported vectors: ``external:<name>``.
EXTERNAL_PREFIX = "external:"


def has_maps(fingerprint: dict[str, Any]) -> bool:
    """Whether the shards of a cache with this fingerprint hold ``maps`` (False for imported vectors)."""
    return fingerprint.get(MAPS_KEY, True) is not False


def views_of(fingerprint: dict[str, Any]) -> int:
    """Views per row of a cache with this fingerprint: 1 unless its ``augment`` says more."""
    return int((fingerprint.get("augment") or {}).get("views", 1))


def taps_of(fingerprint: dict[str, Any]) -> list[tuple[str, int]]:
    """The tapped layers of a cache with this fingerprint, in the order of the ``taps`` dataset's
    columns, with their widths: ``[]`` when it has none (caches made before taps existed, or with
    ``taps="none"``)."""
    taps = fingerprint.get("taps") or {}
    return [(str(n), int(w)) for n, w in zip(taps.get("layers", ()), taps.get("widths", ()), strict=True)]


def top_input_of(fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """What a cache with this fingerprint keeps of its backbone's last block, or None: ``layer`` (the
    layer whose output is stored), ``shape`` (one row's), ``top`` (the layers it feeds, in order, up to
    the maps)."""
    top = fingerprint.get("top_input")
    return dict(top) if top else None
