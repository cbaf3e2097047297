"""``featcache.extract``: the extraction as a Python call; ``featcache-extract`` is a thin layer over it.

Every keyword argument is the command line's option of the same name, with the same default (both
are made from :class:`~featcache.extractor.options.ExtractOptions`, where options are stated); errors
are :class:`~featcache.shared.errors.FeatcacheError` whose messages name these arguments
(``overwrite=True``), which the command line spells as flags (``--overwrite``). Importing this
module does not import TensorFlow; an extraction with work to do does.
"""

from __future__ import annotations

import inspect
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..shared.arguments import keywords, path_arg, progress_arg
from ..shared.backbones import check_feed_dtype
from ..shared.cache import SPLITS, WHOLE, FailedInput, Finalized, Manifest, Part, parse_fractions
from ..shared.errors import FeatcacheError, NotACacheError
from .options import NAMES, OPTIONS, ExtractOptions, Log
from .records import is_url
from .runner import ExtractConfig, ExtractReport


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class ExtractResult:
    """What one :func:`extract` call did.

    ``rows`` rows were written by this call in ``shards_written`` shards (``shards_kept`` were done
    before it; ``shards_left`` are left for a later call when ``max_shards`` stopped it);
    ``cache_rows`` is what the cache holds now and ``complete`` whether every shard of its plan is
    written. ``failed`` are the inputs skipped by this call (with their reasons; after a run of
    several workers, every input the cache records as failed), ``worker_failures`` one line per
    worker that died. ``seconds`` is the call's wall time. ``report`` holds the timing breakdown of a
    single-process run, ``finalized`` the merge state of a run of parts or of ``finalize=True``.
    """

    cache: Path
    rows: int = 0
    cache_rows: int = 0
    shards_written: int = 0
    shards_kept: int = 0
    shards_left: int = 0
    failed: list[FailedInput] = field(default_factory=list)
    seconds: float = 0.0
    complete: bool = False
    worker_failures: list[str] = field(default_factory=list)
    report: ExtractReport | None = None
    finalized: Finalized | None = None

    @property
    def ok(self) -> bool:
        """No worker died and the cache is complete (the command line exits 0 exactly then)."""
        return self.complete and not self.worker_failures

    def summary(self) -> str:
        """The run's one-line summary (two for a part: the run, then the whole cache)."""
        if self.report is not None:
            return self.report.summary()
        if self.finalized is not None:
            return self.finalized.summary()
        return f"{self.cache}: {self.cache_rows} rows"


def _fractions(split: str | Sequence[float] | Mapping[str, float]) -> dict[str, float]:
    """``"0.8,0.1,0.1"``, ``(0.8, 0.1, 0.1)`` or ``{"train": .., "val": .., "test": ..}`` as fractions."""
    given = split
    if isinstance(split, Mapping):
        if set(split) - set(SPLITS):
            raise FeatcacheError(f"split={given!r}: its keys must be among {', '.join(SPLITS)}")
        split = [split.get(s, 0.0) for s in SPLITS]
    if not isinstance(split, str):
        try:
            split = ",".join(str(float(v)) for v in split)
        except (TypeError, ValueError):
            raise FeatcacheError(
                f"split={given!r}: expected 'train,val,test' fractions, a sequence of three numbers or a dict"
            ) from None
    return parse_fractions(split)


def _pair(value: str | Sequence[float], name: str) -> tuple[float, float]:
    """``"0.35,1"`` or ``(0.35, 1)`` -> ``(0.35, 1.0)``."""
    try:
        low, high = (float(v) for v in (value.split(",") if isinstance(value, str) else value))
    except (TypeError, ValueError):
        raise FeatcacheError(f"{name}={value!r}: expected two numbers 'low,high'") from None
    return low, high


def _config(source: str | Path, cache: Path, opts: ExtractOptions) -> ExtractConfig:
    """The runner's configuration of one extraction: the options, parsed (split fractions, the part,
    crop ranges, the feed dtype)."""
    return ExtractConfig(
        source=str(source) if is_url(str(source)) else Path(source),
        source_format=opts.source_format,
        tfrecord_keys=opts.tfrecord_keys,
        cache=cache,
        backbone=opts.backbone,
        weights=str(opts.weights),
        layer=opts.layer,
        preprocess=opts.preprocess,
        seed=opts.seed,
        batch_size=opts.batch_size,
        shard_size=opts.shard_size,
        maps_dtype=opts.maps_dtype,
        compression=opts.compression,
        mixed_precision=opts.mixed_precision,
        xla=opts.xla,
        split_fractions=_fractions(opts.split),
        overwrite=opts.overwrite,
        update=opts.update,
        checksum=opts.checksum,
        strict=opts.strict,
        max_input_bytes=opts.max_input_bytes,
        max_pixels=opts.max_pixels,
        max_shards=opts.max_shards,
        part=opts.part if isinstance(opts.part, Part) else Part.parse(opts.part) if opts.part else WHOLE,
        progress=progress_arg(opts.progress),
        views=opts.views,
        crop_scale=_pair(opts.crop_scale, "crop_scale"),
        crop_ratio=_pair(opts.crop_ratio, "crop_ratio"),
        resize=opts.resize,
        feed_dtype=None if opts.feed_dtype is None else check_feed_dtype(opts.feed_dtype),
        taps=_taps(opts.taps),
        keep_top_input=opts.keep_top_input,
    )


def _taps(value: str | Sequence[str] | None) -> str | None:
    """``taps=`` as the config's string: None, ``"default"``, ``"none"`` or names joined by commas."""
    if value is None or (isinstance(value, str) and value):
        return value
    if isinstance(value, Sequence) and value and all(isinstance(v, str) and v and "," not in v for v in value):
        return ",".join(value)
    raise FeatcacheError(f"taps={value!r}: expected 'default', 'none', or layer names (a string or a list)")


def _rows_now(cache: Path) -> int:
    try:
        return Manifest.load(cache).rows
    except NotACacheError:
        return 0


def extract(source: str | Path, cache: str | Path | None = None, **options: Any) -> ExtractResult:
    """Compute backbone features for every image in ``source`` once, into the cache directory ``cache``.

    The cache holds, per input row, ``maps`` ``(N, 7, 7, 1280)`` (``maps_dtype``, float16 by default),
    ``pooled`` ``(N, 1280)`` float32 (the mean of the float32 maps), ``label`` int32 (-1 unknown), ``id``
    str, ``index`` int64 and ``split`` int8 (see docs/cache-format.md); read it with
    :func:`featcache.open_cache`.

    Calling again with the same arguments resumes: finished shards are kept. A source that changed
    since the cache was made is refused unless ``update=True``, which extracts only the added and
    modified inputs into new shards and records removed and relabelled ones (docs/updates.md).
    ``checksum=True`` reads every input in full and records its sha256 in the listing; with
    ``update=True`` an input whose recorded hash differs is modified even when its size and
    modification time were kept (``touch -r``), which a plain update cannot see.
    Inputs that cannot be decoded are skipped and listed in the result and the manifest, and so are
    inputs that are not regular files, files over ``max_input_bytes`` and images declaring more than
    ``max_pixels`` pixels (docs/inputs.md); ``strict=True`` raises at the first one instead.
    ``source`` is a folder of class folders (optionally under train/ val/ test/),
    a folder of unlabelled images, a CSV ``path[,label[,split]]`` or a .txt list of paths, or
    TFRecord files or WebDataset tar shards (a file, a folder of them, a glob pattern, or a list file;
    local or at a ``tf.io.gfile`` URL such as ``gs://``); ``source_format`` (``"tfrecord"``, ``"tar"``,
    ``"folder"``, ``"csv"``, ``"list"``) says which when the names do not, and ``tfrecord_keys``
    (``"image=KEY,label=KEY,text=KEY,id=KEY"``) names other Example features (docs/inputs.md).

    ``backbone``: a registered name (docs/backbones.md), ``module:attribute``, or a saved Keras model
    file, whose layer ``layer`` gives the maps and whose input ``preprocess`` says how to prepare
    (required for a model file; see :func:`featcache.shared.backbones.model_file_spec`).
    ``weights``: ``"imagenet"``, ``"auto"``, ``"random"`` or a path to an .h5 file. ``split``: train,
    val, test fractions for rows whose source gives none. Many workers: ``workers=N`` (local
    processes, or Ray actors pulling ``ray_items`` work items from a queue with ``runner="ray"``),
    ``gpus="all"`` (one process per GPU), or
    ``part="I/N"`` to be one worker of N; ``finalize=True`` (with ``source`` the cache) merges what
    parts finished. ``log`` receives notes and warnings (default: standard error).

    ``views=N`` also stores, per row, the pooled vectors of N-1 augmented views (``pooled_views``
    ``(N, N-1, 1280)``: view 1 the mirror, views 2+ random-resized crops with area fraction in
    ``crop_scale`` and aspect ratio in ``crop_ratio``, seeded by (id, view)); it costs N times the
    backbone work. ``resize``: ``"squash"``, ``"centre-crop"`` or ``"pad"`` (see docs/quality.md).
    ``feed_dtype``: ``"uint8"`` (resized images rounded to uint8, cast and preprocessed on the
    device) or ``"float32"`` (preprocessed on the host, unrounded); None keeps what an existing cache
    records and uses uint8 for a new one (see docs/performance.md).

    ``taps``: in the same forward pass, also store the spatial means of these layers' outputs per row
    (dataset ``taps``, float32, concatenated; ``taps_views`` for the other views): ``"default"`` (the
    backbone's own, for MobileNetV2 ``block_13_expand_relu`` and ``block_16_project_BN``, 896 floats),
    ``"none"``, or layer names (a comma-joined string or a sequence). ``keep_top_input=True`` also
    stores the input of the backbone's last block (MobileNetV2: the 7x7x320 output of
    ``block_16_project_BN`` that ``Conv_1`` takes) in float16, ~31 KB a row, which the trainer's
    ``top`` head fine-tunes from. None keeps what an existing cache records; a new cache gets the
    default taps and no top input (docs/cache-format.md).

    Raises :class:`FeatcacheError` (one line naming the file and the reason) on bad arguments, a
    cache made otherwise, changed inputs, a locked cache, or a cache that is complete with no row
    because every input failed; what was finished stays on disk (and the manifest lists the failures).
    """
    t0 = time.perf_counter()
    path_arg("source", source)
    path_arg("cache", cache, optional=True)
    keywords("extract", options, NAMES)
    opts = ExtractOptions(**options)
    log = opts.log or _stderr
    if opts.finalize:
        return _require_rows(_finalize(Path(cache if cache is not None else source), t0), source)
    if cache is None:
        raise FeatcacheError("missing argument cache (the cache directory to fill)")
    _refuse_conflicts(opts)
    cfg = _config(source, Path(cache), opts)
    cfg.augment  # noqa: B018  (checks views, crops and resize: a one-line error before any work)
    if opts.runner == "ray" or opts.gpus or opts.workers > 1:
        gpus = None if opts.gpus is None else str(opts.gpus)
        many = _many(cfg, opts.workers, gpus, opts.runner, opts.address, opts.max_retries, opts.ray_items, log, t0)
        return _require_rows(many, source)
    return _require_rows(_one(cfg, log, t0), source)


def _refuse_conflicts(opts: ExtractOptions) -> None:
    """A one-line error for options that each make sense alone but not together (each checked alone by
    :class:`ExtractOptions`): update and overwrite, one part and many workers, Ray's options without Ray."""
    if opts.update and opts.overwrite:
        raise FeatcacheError("update=True keeps the cache and overwrite=True discards it: choose one")
    ray = opts.runner == "ray"
    if opts.part is not None and (opts.workers > 1 or opts.gpus or ray):
        raise FeatcacheError("part='I/N' runs one worker; workers=N, gpus='all' and runner='ray' start all of them")
    if opts.ray_items is not None and not ray:
        raise FeatcacheError(f"ray_items={opts.ray_items}: a positive count of work items, for runner='ray' only")
    if opts.gpus and ray:
        raise FeatcacheError(
            "gpus='all' is for local workers; with runner='ray', Ray gives each actor one GPU of the cluster"
        )


def _one(cfg: ExtractConfig, log: Log, t0: float) -> ExtractResult:
    """One extract run in this process (the whole cache, or the one part ``cfg.part``), as its result
    (``seconds`` since ``t0``)."""
    from .runner import run_extract

    report = run_extract(cfg, log=log)
    return ExtractResult(
        cache=cfg.cache,
        rows=report.rows,
        cache_rows=report.cache_rows,
        shards_written=report.shards_written,
        shards_kept=report.shards_kept,
        shards_left=report.shards_left,
        failed=list(report.failures),
        seconds=time.perf_counter() - t0,
        complete=report.finalized.complete if report.finalized else not Manifest.load(cfg.cache).missing_shards(),
        report=report,
        finalized=report.finalized,
    )


KEYWORD = inspect.Parameter.KEYWORD_ONLY
# help(extract) and editors show every option with its type and default (the signature typer reads too)
extract.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
        *list(inspect.signature(extract).parameters.values())[:2],
        *(inspect.Parameter(f.name, KEYWORD, default=f.default, annotation=f.type) for f in OPTIONS),
    ],
    return_annotation="ExtractResult",
)


# How many failures the error about a cache with no row names.
FIRST_FAILURES = 3


def _require_rows(result: ExtractResult, source: object) -> ExtractResult:
    """``result``, unless its cache is complete and holds no row while inputs failed (files with
    image names, none of which decodes): a success that the trainer would only trip on later. Then
    one line naming the source, how many inputs failed and the first reasons (the manifest keeps
    every failure, so ``featcache-inspect summary`` lists them all)."""
    if not result.complete or result.cache_rows:
        return result
    m = Manifest.load(result.cache)
    if not m.failed:
        return result
    first = "; ".join(f"{f.id}: {f.reason}" for f in m.failed[:FIRST_FAILURES])
    more = f"; and {len(m.failed) - FIRST_FAILURES} more" if len(m.failed) > FIRST_FAILURES else ""
    raise FeatcacheError(
        f"{source}: every input failed ({len(m.failed)} inputs), so the cache has no row: {first}{more} "
        f"(all listed in {result.cache / 'manifest.json'})"
    )


def _many(
    cfg: ExtractConfig,
    workers: int,
    gpus: str | None,
    runner: str,
    address: str | None,
    max_retries: int,
    ray_items: int | None,
    log: Log,
    t0: float,
) -> ExtractResult:
    """Every part at once: local processes (one per GPU, or ``workers``), or Ray actors pulling work
    items from a queue, then the merge."""
    before = _rows_now(cfg.cache)
    if runner == "ray":
        from .ray_runner import run_ray

        state, failed, _ = run_ray(
            cfg,
            address=address,
            workers=workers if workers > 1 else None,
            items=ray_items,
            max_retries=max_retries,
            log=log,
        )
    else:
        from .launch import choose_gpus, run_local

        chosen = choose_gpus(gpus) if gpus else None
        state, failed = run_local(cfg, len(chosen) if chosen else workers, chosen, log=log)
    result = _from_state(state, t0)
    result.rows = max(0, state.rows - before)
    result.worker_failures = failed
    return result


def _from_state(state: Finalized, t0: float) -> ExtractResult:
    return ExtractResult(
        cache=state.cache,
        cache_rows=state.rows,
        shards_kept=state.done,
        shards_left=len(state.missing),
        failed=list(Manifest.load(state.cache).failed),
        seconds=time.perf_counter() - t0,
        complete=state.complete,
        finalized=state,
    )


def _finalize(cache: Path, t0: float) -> ExtractResult:
    """Merge what the workers of a partitioned run finished into ``cache``'s manifest."""
    from ..shared.cache import finalize

    return _from_state(finalize(cache), t0)
