"""The extract job: source -> reader -> mapper -> writer, and nothing else.

The runner only composes: it opens the source and the cache, asks the cache which shards are still
to do, and moves batches from the tf.data reader through the backbone mapper into the writer thread,
timing each stage so that the summary says where the time went.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from ..shared.backbones import (
    DEFAULT_CROP_RATIO,
    DEFAULT_CROP_SCALE,
    DEFAULT_FEED_DTYPE,
    DEFAULT_RESIZE,
    TAPS_DEFAULT,
    TF_DEFAULT_ENV,
    Augment,
    BackboneSpec,
    ResolvedWeights,
    check_feed_dtype,
    get_backbone,
    make_fingerprint,
    resolve_taps,
    resolve_weights,
    top_input_entry,
)
from ..shared.cache import (
    LISTING_NAME,
    WHOLE,
    CacheLock,
    CacheWriter,
    FailedInput,
    Finalized,
    Manifest,
    Part,
    describe,
    feed_dtype,
    load_listing,
    save_listing,
    schema,
    storage_options,
)
from ..shared.errors import FeatcacheError
from .inputs import DEFAULT_MAX_INPUT_BYTES, DEFAULT_MAX_PIXELS, InputLimits
from .records import close_streams
from .sources import (
    FOLDER_KINDS,
    Source,
    check_cache_outside,
    folder_from_listing,
    local_image_folder,
    open_source,
)

if TYPE_CHECKING:
    from .sink import ShardSink

Log = Callable[[str], None]


@dataclass
class ExtractConfig:
    """Everything one extract run needs; the CLI options map onto these one to one."""

    source: Path | str  # a str keeps a URL's "//" (a Path would fold it)
    cache: Path
    source_format: str | None = None  # sources.SOURCE_FORMATS; None: told by the names
    tfrecord_keys: str | None = None  # "image=KEY,label=KEY,text=KEY,id=KEY" (sources.TFRecordKeys)
    backbone: str = "mobilenet_v2"
    weights: str = "imagenet"
    layer: str | None = None  # with a model file as backbone: the layer whose output is the maps
    preprocess: str | None = None  # with a model file: what it expects (backbones.PREPROCESS_SCHEMES)
    seed: int = 0
    batch_size: int = 32
    shard_size: int = schema.DEFAULT_SHARD_SIZE
    maps_dtype: str = schema.DEFAULT_MAPS_DTYPE
    compression: str = schema.DEFAULT_COMPRESSION
    mixed_precision: bool = False
    xla: bool = False
    split_fractions: dict[str, float] = field(default_factory=lambda: dict(schema.DEFAULT_SPLIT_FRACTIONS))
    overwrite: bool = False
    update: bool = False
    checksum: bool = False  # record each input's sha256 in the listing; with update, compare them too
    strict: bool = False
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_shards: int | None = None
    part: Part = WHOLE
    progress: bool = True
    views: int = 1
    crop_scale: tuple[float, float] = DEFAULT_CROP_SCALE
    crop_ratio: tuple[float, float] = DEFAULT_CROP_RATIO
    resize: str = DEFAULT_RESIZE
    # uint8 or float32 (backbones.FEED_DTYPES); None: what the cache records, or uint8 for a new one
    feed_dtype: str | None = None
    # layer taps: "default" (the backbone's), "none" or layer names joined by commas; None: what the
    # cache records, or "default" for a new one
    taps: str | None = None
    # keep the last block's input (dataset top_input); None: what the cache records, or False for a new one
    keep_top_input: bool | None = None

    @property
    def augment(self) -> Augment:
        """Views and resize policy (checked: a bad value raises a one-line FeatcacheError)."""
        return Augment(self.views, (*self.crop_scale,), (*self.crop_ratio,), self.resize)

    def limits(self) -> InputLimits:
        """What one input may cost (raises :class:`FeatcacheError` naming a bad limit)."""
        return InputLimits(self.max_input_bytes, self.max_pixels)


@dataclass
class ExtractReport:
    """What a run did. ``seconds`` is the extraction loop's wall time (``startup_seconds`` the time
    before it: listing, TensorFlow import, model build), of which ``first_batch_seconds`` went to the
    first batch (filling the pipeline, tracing the backbone's function: a one-time cost); the other
    ``*_seconds`` are the time the main loop spent waiting for input, in the backbone, and blocked on
    a full writer queue; ``write_seconds`` is the writer thread's busy time."""

    rows: int = 0
    failed: int = 0
    first_batch_rows: int = 0
    first_batch_seconds: float = 0.0
    shards_written: int = 0
    shards_kept: int = 0
    shards_left: int = 0
    seconds: float = 0.0
    startup_seconds: float = 0.0
    input_seconds: float = 0.0
    backbone_seconds: float = 0.0
    queue_seconds: float = 0.0
    write_seconds: float = 0.0
    random_weights: bool = False
    cache_rows: int = 0
    part: Part = WHOLE
    finalized: Finalized | None = None
    failures: list[FailedInput] = field(default_factory=list)
    update: bool = False
    changes: dict[str, int] | None = None
    reordered: bool = False  # an update found the same inputs in another order (no row changes for that)
    generation: int = 0

    @property
    def images_per_second(self) -> float:
        return (self.rows + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line for this run; a part's run adds a second, the state of the whole cache."""
        line = self._run_line()
        if self.update:
            line = self._update_line() + "\n" + line
        if self.random_weights:
            line += "; RANDOM WEIGHTS: features are meaningless"
        if not self.part.whole and self.finalized is not None:
            line += "\n" + self.finalized.summary()
        return line

    def _update_line(self) -> str:
        if not self.changes or not any(self.changes.values()):
            if self.reordered:
                return f"update: the same inputs in another order, no row to extract; now generation {self.generation}"
            return f"update: nothing changed in the source since generation {self.generation}"
        counts = ", ".join(f"{n} {kind}" for kind, n in self.changes.items() if n)
        return f"update: {counts}; now generation {self.generation}"

    def _run_line(self) -> str:
        who = "" if self.part.whole else f"part {self.part}: "
        if not self.shards_written and not self.shards_left:
            return f"{who}nothing to do: all {self.shards_kept} shards were already done ({self.cache_rows} rows)"
        line = who + (
            f"wrote {self.rows} rows in {self.shards_written} shards ({self.failed} inputs failed, "
            f"{self.shards_kept} shards already done) in {self.seconds:.1f} s: {self.images_per_second:.1f} img/s "
            f"(start-up {self.startup_seconds:.1f} s); "
            f"first batch {self.first_batch_seconds:.1f} s (tracing), "
            f"input wait {self.input_seconds:.1f} s, backbone {self.backbone_seconds:.1f} s, "
            f"writer wait {self.queue_seconds:.1f} s (writer busy {self.write_seconds:.1f} s)"
        )
        if self.shards_left:
            line += f"; {self.shards_left} shards left for a later run"
        return line


def _installed_version(*dists: str) -> str | None:
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _environment() -> dict[str, object]:
    """Library versions for the fingerprint, read from package metadata so that a run with nothing
    left to do never pays for importing TensorFlow."""
    return {
        "tensorflow": _installed_version("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tf-nightly"),
        "keras": _installed_version("keras"),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", TF_DEFAULT_ENV["TF_ENABLE_ONEDNN_OPTS"]),
    }


class Mappers:
    """Backbone mappers built in this process, kept across runs: a worker that runs many work items
    (a Ray actor pulling parts from a queue) builds and traces the backbone once, not once per item.

    Keyed by what the model computes (backbone, weights, dtypes, XLA); TensorFlow is imported only
    when a mapper is first needed."""

    def __init__(self) -> None:
        self._built: dict[tuple, Any] = {}

    def get(
        self,
        spec: BackboneSpec,
        weights: ResolvedWeights,
        cfg: ExtractConfig,
        taps: tuple[tuple[str, int], ...] = (),
        top_input: str | None = None,
    ) -> Any:
        """The :class:`~featcache.extractor.mapper.BackboneMapper` for ``spec``/``weights`` under
        ``cfg``'s dtypes (with the layer ``taps`` and the ``top_input`` layer), built on first use."""
        feed = cfg.feed_dtype or DEFAULT_FEED_DTYPE
        key: tuple[Any, ...] = (spec.name, repr(spec.identity), weights.sha256, cfg.maps_dtype, cfg.mixed_precision)
        key += (cfg.xla, feed, taps, top_input)
        if key not in self._built:
            from .mapper import BackboneMapper

            self._built[key] = BackboneMapper(
                spec,
                weights,
                maps_dtype=cfg.maps_dtype,
                mixed_precision=cfg.mixed_precision,
                xla=cfg.xla,
                feed_dtype=feed,
                taps=taps,
                top_input=top_input,
            )
        return self._built[key]


ShardDone = Callable[[int], None]


def run_extract(
    cfg: ExtractConfig, log: Log = print, *, mappers: Mappers | None = None, on_shard: ShardDone | None = None
) -> ExtractReport:
    """Fill (or resume) the cache at ``cfg.cache`` from ``cfg.source``; see :class:`ExtractConfig`.

    ``mappers`` keeps built backbones across calls (default: build one for this run only);
    ``on_shard(k)`` is called in the writer thread after shard ``k`` is committed."""
    t_start = time.perf_counter()
    cfg.limits()  # bad limits fail before any work
    check_cache_outside(cfg.source, cfg.cache)  # before anything is written
    cfg = replace(cfg, feed_dtype=check_feed_dtype(cfg.feed_dtype or recorded_feed_dtype(cfg)))
    shared, source = share_listing(cfg)  # the source first: a bad one is named before any download
    for note in source.notes:
        log(f"note: {note}")
    spec = get_backbone(cfg.backbone, layer=cfg.layer, preprocess=cfg.preprocess)
    weights = resolve_weights(spec, cfg.weights, cfg.seed)
    if weights.random:
        log(
            f"WARNING: {spec.name} with RANDOM weights ({weights.sha256}): the features are meaningless; "
            "use them for smoke tests only"
        )
    taps, keep_top = recorded_taps(cfg, spec, weights)
    if shared == "listed":
        log(f"listing: listed (published as {LISTING_NAME} for the other workers of the job)")
    elif shared == "adopted" and source.kind in FOLDER_KINDS:
        log(
            f"listing: adopted the job's {LISTING_NAME} without walking {source.root} "
            "(files added since are not part of this job: update=True extracts them later)"
        )
    elif shared == "adopted":
        log(f"listing: adopted the job's {LISTING_NAME} (the same inputs; this part's files stat'ed)")
    assert cfg.feed_dtype is not None, "resolved above (check_feed_dtype)"
    manifest = Manifest(
        fingerprint=make_fingerprint(
            spec,
            weights,
            maps_dtype=cfg.maps_dtype,
            compute_dtype="mixed_float16" if cfg.mixed_precision else "float32",
            environment=_environment(),
            augment=cfg.augment,
            feed_dtype=cfg.feed_dtype,
            taps=taps,
            top_input=keep_top,
        ),
        classes=source.classes,
        source=source.describe(),
        split={"source": source.split_source, "fractions": cfg.split_fractions},
        storage=storage_options(cfg.compression, cfg.maps_dtype),
        shard_size=cfg.shard_size,
    )
    report = ExtractReport(random_weights=weights.random, part=cfg.part, update=cfg.update)
    listing = source.listing()
    if cfg.checksum:  # every input read in full: an update then sees a content change that kept size and time
        log(f"checksum: hashing the {len(source)} inputs' contents")
        listing = {**listing, "sha256": source.content_sha256()}
    cache = CacheWriter(cfg.cache, manifest, overwrite=cfg.overwrite, listing=listing, part=cfg.part, update=cfg.update)
    with cache:
        if cache.changes is not None:
            report.changes = cache.changes.counts()
            report.reordered = cache.changes.reordered
        report.generation = manifest.generation
        todo = cache.pending_shards()
        report.shards_kept = cache.resumed_shards
        if cfg.max_shards is not None:
            todo, rest = todo[: cfg.max_shards], todo[cfg.max_shards :]
            report.shards_left = len(rest)
        mine = "" if cfg.part.whole else f" (part {cfg.part}: {len(cfg.part.shards(manifest.num_shards))} of them)"
        log(
            f"{cfg.cache}: {len(source)} inputs ({source.kind}, {len(source.classes)} classes) in "
            f"{manifest.num_shards} shards of {cfg.shard_size}{mine}; {report.shards_kept} done, {len(todo)} to do; "
            f"{describe(manifest.fingerprint)}"
        )
        if todo:
            if manifest.generations:
                stored = load_listing(cfg.cache, manifest)
                if stored is None:
                    raise FeatcacheError(f"{cfg.cache}: {LISTING_NAME} is missing (an updated cache needs it)")
                source = cache_view(source, stored)
            _extract(cfg, source, spec, weights, cache, todo, report, log, t_start, mappers or Mappers(), on_shard)
        else:
            report.startup_seconds = time.perf_counter() - t_start
    report.finalized = cache.finalized
    report.cache_rows = cache.finalized.rows if cache.finalized else manifest.rows
    return report


# How long a worker waits for the first one to publish the job's listing (10 million files: minutes).
LISTING_WAIT_SECONDS = 3600.0


def share_listing(cfg: ExtractConfig) -> tuple[str, Source]:
    """One listing per job: the source of this run and how its listing was made.

    The first worker of a part-split job to take the cache lock lists the source, stats every input
    and publishes ``listing.npz`` (atomically, under the lock, which the others wait for). Every
    other worker, and every resumed worker of the job, adopts it:

    * a local folder of images (kinds :data:`~featcache.extractor.sources.FOLDER_KINDS`) is **not
      walked**: its source is built from the published listing
      (:func:`~featcache.extractor.sources.folder_from_listing`): the ids as paths under this
      worker's own resolved source folder, exactly as its walk would make them; a listing no walk
      could make, such as an id with ``..``, an absolute one or one under a symbolic link the walk
      does not follow, is refused with one line naming ``listing.npz`` before any input is touched;
    * any other source (CSV, list, TFRecord or tar files, a URL) is listed as usual (one small
      file read, or its containers scanned) and must name the same inputs, labels and splits.

    Either way the worker then stats only the inputs of its own part's shards (done or not), on
    ``sources.STAT_THREADS`` threads, and adopts the listing only when they still have the
    recorded size and modification time: each file is stat'ed once per job, by the worker of its
    shard, so a modified or removed input is found by that worker. A file **added** to a folder
    after the listing was published is not part of this job (a job's inputs are the ones its first
    worker listed); ``update=True`` extracts it later. (A CSV, list or container source that
    changed is seen by every worker's own listing, as before.)

    Anything else (a whole run, an update, overwrite, a cache that is not a plain featcache cache,
    another shard size, an unreadable listing, a changed input of this worker's part) returns
    ``"own"``: the worker lists the source and stats every input itself as before, and the usual
    resume check says what changed. Returns ``("listed" | "adopted" | "own", source)``."""

    def own() -> tuple[str, Source]:
        return "own", open_source(cfg.source, cfg.source_format, cfg.tfrecord_keys)

    if cfg.part.whole or cfg.update or cfg.overwrite:
        return own()
    cache = Path(cfg.cache)
    if cache.exists() and not cache.is_dir():
        return own()
    root = local_image_folder(cfg.source, cfg.source_format)  # None: list it as usual
    has_manifest = os.path.lexists(cache / schema.MANIFEST_NAME)
    if has_manifest:
        try:
            m = Manifest.load(cache)
        except FeatcacheError:
            return own()  # the writer refuses it with its own message
        if m.generations or m.shard_size != cfg.shard_size:
            return own()
        if m.source.get("kind") not in FOLDER_KINDS:
            root = None
    cache.mkdir(parents=True, exist_ok=True)
    with CacheLock(cache, wait=LISTING_WAIT_SECONDS):
        try:  # checked against the manifest's record when there is one: an edited listing is never adopted
            published = load_listing(cache, m if has_manifest else None)
        except FeatcacheError:
            published = None  # unreadable or edited: listed for itself below, and verify names it
        first = published is None and not has_manifest and not os.path.lexists(cache / LISTING_NAME)
        if first:  # listed and stat'ed under the lock: the other workers wait for it
            source = open_source(cfg.source, cfg.source_format, cfg.tfrecord_keys)
            save_listing(cache, source.listing())
            return "listed", source
    if published is None:
        return own()
    positions = cfg.part.inputs(len(published["id"]), cfg.shard_size)
    if root is None:
        source = open_source(cfg.source, cfg.source_format, cfg.tfrecord_keys)
    else:
        source = folder_from_listing(root, published, cache / LISTING_NAME, positions)
    return ("adopted", source) if source.adopt_listing(published, positions) else own()


def recorded_feed_dtype(cfg: ExtractConfig) -> str:
    """The feed a run without an explicit ``feed_dtype`` uses: the one the cache at ``cfg.cache``
    records (``float32`` for caches made before the choice existed), so that resuming or updating
    it computes the same features; :data:`DEFAULT_FEED_DTYPE` for a new (or overwritten) cache."""
    if not cfg.overwrite:
        try:
            return feed_dtype(Manifest.load(cfg.cache).fingerprint)
        except FeatcacheError:  # no cache yet (or a broken one, which the writer will name)
            pass
    return DEFAULT_FEED_DTYPE


def _recorded_fingerprint(cfg: ExtractConfig) -> dict[str, Any] | None:
    if cfg.overwrite:
        return None
    try:
        return Manifest.load(cfg.cache).fingerprint
    except FeatcacheError:  # no cache yet (or a broken one, which the writer will name)
        return None


def recorded_taps(
    cfg: ExtractConfig, spec: BackboneSpec, weights: ResolvedWeights
) -> tuple[tuple[tuple[str, int], ...], bool]:
    """The layer taps and whether the top input is kept for this run: as ``cfg`` says, else as the cache
    at ``cfg.cache`` records (none for caches made before taps existed), so that resuming or updating it
    computes the same datasets; for a new cache the backbone's default taps and no top input. A tap
    the backbone does not have is a one-line error naming ``taps=`` (before anything is written)."""
    fp = _recorded_fingerprint(cfg)
    if cfg.taps is not None:
        taps = resolve_taps(spec, weights, cfg.taps)
    elif fp is not None:
        taps = tuple(schema.taps_of(fp))
    else:
        taps = resolve_taps(spec, weights, TAPS_DEFAULT)
    if cfg.keep_top_input is not None:
        keep = cfg.keep_top_input
    else:
        keep = fp is not None and schema.top_input_of(fp) is not None
    if keep:
        top_input_entry(spec)  # one line for a backbone that names no last block
    return taps, keep


def cache_view(source: Source, listing: dict[str, np.ndarray]) -> Source:
    """``source`` indexed by the cache's listing positions (an updated cache's order, which appends
    new inputs after the old ones): ids, labels and splits as the listing records them, and the
    source's path (and record) for each id it still has (an empty path for the others, which are
    retired and never read again)."""
    return source.reindexed(
        [str(i) for i in listing["id"].tolist()],
        np.asarray(listing["label"], dtype=np.int32),
        np.asarray(listing["split"], dtype=np.int8),
    )


def drain(it: Any) -> None:
    """Run the tf.data iterator ``it`` (halted: no new input enters it) to its end, so that no read
    is in flight when it is dropped. Dropping an iterator frees it while holding the GIL, and its
    parallel reads (Python functions) wait for that GIL: the process hung for ever (at exit, when
    the error's traceback was collected). Waiting for the next element releases the GIL, so the
    reads in flight finish (at once: they see the run stopped) and the iterator ends."""
    if it is None:
        return
    try:
        for _ in it:
            pass
    except Exception:  # noqa: BLE001 (the run's own error is the one to report)
        pass


def _extract(
    cfg: ExtractConfig,
    source: Source,
    spec: BackboneSpec,
    weights: ResolvedWeights,
    cache: CacheWriter,
    todo: list[int],
    report: ExtractReport,
    log: Log,
    t_start: float,
    mappers: Mappers,
    shard_done: ShardDone | None,
) -> None:
    """The loop: reader -> mapper -> sink over the shards ``todo``; fills ``report``'s timings."""
    manifest = cache.manifest

    from . import mapper  # TensorFlow is imported here, and only when there is work

    taps = tuple(schema.taps_of(manifest.fingerprint))
    top = schema.top_input_of(manifest.fingerprint)
    m = mappers.get(spec, weights, cfg, taps, None if top is None else top["layer"])
    log(f"backbone {spec.name} on {mapper.devices()}, batch {cfg.batch_size}, images fed as {cfg.feed_dtype}")
    ranges = [manifest.shard_inputs(k) for k in todo]
    ds, stop = _reader(cfg, source, spec, ranges)
    bar = tqdm(total=sum(len(r) for r in ranges), unit="img", disable=not cfg.progress, dynamic_ncols=True)
    sink = _sink(cfg, source, spec, cache, todo, report, bar, shard_done)
    views = cfg.augment.views
    t_loop = time.perf_counter()
    report.startup_seconds = t_loop - t_start
    it = None
    try:
        it = iter(ds)
        _move_batches(it, m, sink, views, report, bar, t_loop)
        t0 = time.perf_counter()
        sink.close(finish=True)
        report.queue_seconds += time.perf_counter() - t0
    except BaseException:
        try:
            sink.close(finish=False)
        except BaseException:  # the first error is the one to report
            pass
        stop()
        drain(it)
        raise
    finally:
        bar.close()
        close_streams()
    report.seconds = time.perf_counter() - t_loop
    report.rows = sink.stats.rows
    report.failed = sink.stats.failed
    report.shards_written = sink.stats.shards
    report.write_seconds = sink.stats.write_seconds


def _reader(
    cfg: ExtractConfig, source: Source, spec: BackboneSpec, ranges: list[range]
) -> tuple[Any, Callable[[], None]]:
    """The tf.data reader of the inputs ``ranges`` (one range of listing positions per shard, in order):
    ``(index (b,) int64, images)`` batches, decoded and resized for ``spec``; and the function that stops
    it (no input is read after it: a failed run calls it, then :func:`drain`s the reader)."""
    from . import pipeline

    limits = cfg.limits()
    halt = pipeline.tf.Variable(False, trainable=False)
    halted = threading.Event()

    def read(i: int) -> bytes:
        if halted.is_set():  # the run failed: no more reading (the input is dropped from the pipeline)
            raise FeatcacheError("the run stopped")
        return source.read(i, limits)

    def stop() -> None:
        halted.set()
        halt.assign(True)

    ds = pipeline.make_dataset(
        read,
        ranges,
        batch_size=cfg.batch_size,
        size=spec.input_size,
        preprocess=spec.preprocess_fn(),
        ids=source.ids,
        augment=cfg.augment,
        sequential_reads=source.sequential_reads,
        feed_dtype=cfg.feed_dtype or DEFAULT_FEED_DTYPE,
        halt=halt,
    )
    return ds, stop


def _sink(
    cfg: ExtractConfig,
    source: Source,
    spec: BackboneSpec,
    cache: CacheWriter,
    todo: list[int],
    report: ExtractReport,
    bar: tqdm,
    shard_done: ShardDone | None,
) -> ShardSink:
    """The writer of the shards ``todo``: each committed shard adds its failed inputs to ``report`` and
    the progress ``bar``, then calls ``shard_done``; an input that failed in the pipeline is read again
    alone to say why (:func:`.pipeline.diagnose`)."""
    from . import pipeline
    from .sink import ShardSink

    limits = cfg.limits()

    def on_shard(shard: int, failed: list[FailedInput]) -> None:
        report.failures.extend(failed)
        bar.update(len(failed))
        bar.set_postfix(shards=f"{sink.stats.shards}/{len(todo)}", failed=len(report.failures))
        if shard_done is not None:
            shard_done(shard)

    sink = ShardSink(
        cache,
        source,
        todo,
        lambda i: pipeline.diagnose(
            source.paths[i], spec.input_size, limits, cfg.augment.resize, read=lambda: source.read(i, limits)
        ),
        strict=cfg.strict,
        on_shard=on_shard,
    )
    return sink


def _move_batches(
    it: Any, m: Any, sink: ShardSink, views: int, report: ExtractReport, bar: tqdm, t_loop: float
) -> None:
    """Every batch of the reader ``it`` through the backbone mapper ``m`` into ``sink``, each stage's
    time added to ``report`` (the first batch's, since ``t_loop``, apart: it includes tracing)."""
    while True:
        t0 = time.perf_counter()
        try:
            index, images = next(it)
        except StopIteration:
            return
        t1 = time.perf_counter()
        maps, pooled, pooled_views, extra = _backbone(m, images, views)
        t2 = time.perf_counter()
        if not report.first_batch_rows:
            report.first_batch_rows, report.first_batch_seconds = len(maps), t2 - t_loop
        sink.put(index.numpy(), maps, pooled, pooled_views, extra)
        t3 = time.perf_counter()
        report.input_seconds += t1 - t0
        report.backbone_seconds += t2 - t1
        report.queue_seconds += t3 - t2
        bar.update(len(maps))


def _backbone(m: Any, images: Any, views: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]:
    """The backbone mapper ``m`` on one batch: ``(maps, pooled, pooled_views, extra)``. With ``views`` > 1,
    ``images`` is ``(b, V, H, W, 3)`` and every view goes through the backbone in one call: the maps (and
    the top input) are view 0's, ``pooled_views (b, V-1, C)`` the other views' pooled vectors (and the
    taps are split the same way); with one view, ``pooled_views`` is None."""
    if views <= 1:
        maps, pooled, extra = m(images)
        return maps, pooled, None, extra
    from . import pipeline

    b = int(images.shape[0])
    maps, pooled, extra = m(pipeline.tf.reshape(images, [-1, *images.shape[2:]]))
    maps = maps.reshape(b, views, *maps.shape[1:])[:, 0]  # maps of view 0 only
    pooled = pooled.reshape(b, views, -1)
    pooled, pooled_views = pooled[:, 0], pooled[:, 1:]
    if schema.TAPS in extra:  # taps of every view, like the pooled vectors
        t = extra[schema.TAPS].reshape(b, views, -1)
        extra[schema.TAPS], extra[schema.TAPS_VIEWS] = t[:, 0], t[:, 1:]
    if schema.TOP_INPUT in extra:  # of view 0 only, like the maps
        t = extra[schema.TOP_INPUT]
        extra[schema.TOP_INPUT] = t.reshape(b, views, *t.shape[1:])[:, 0]
    return maps, pooled, pooled_views, extra
