"""The Ray runner: a work queue of small parts, pulled by long-lived Ray actors.

Static partitioning (one task per part of ``N``) lets one slow node hold up the whole job. Here the
shard plan is cut into ``items`` fine-grained parts ``Part(i, items)`` (the shards ``k`` with
``k % items == i``), several per worker, and one actor per GPU (or per ``cpus_per_worker`` CPUs) pulls
them from the driver one at a time until none are left: a slow node simply takes fewer items, and a
dead one delays only the item it had in flight. Each item is run by
:func:`featcache.extractor.runner.run_extract` as ``--part i/items`` would be, so its commits, its lock
and its merge go through the cache's part mechanism, and the result is the single run's cache.

An actor builds the backbone once (:class:`~featcache.extractor.runner.Mappers`) and keeps it for all
its items. When an actor dies (its node lost, the process killed), its item is put back at the head
of the queue and resumed by whichever actor is free next (its finished shards kept: the new run
takes over the dead one's stale part lock), and the driver starts a new actor in its place (up to
``max_retries`` times per actor); an item lost more than ``max_retries`` times is reported as
failed. An error raised by featcache itself (a bad input with ``strict=True``, a full disk, a cache
made otherwise) fails its item without a retry and stops the queue: it would fail again. The
driver only needs the cache directory (on a filesystem every node mounts) and finalises it when the
queue is empty.

The trade-off of ``items``: more items balance finer (the last item in flight is smaller) but each
costs a start (listing the source, opening the cache), a merge of the manifest and two small files
in ``parts/`` while the job runs. The default, :data:`ITEMS_PER_WORKER` per worker, keeps a slow
worker's tail to about a quarter of its share.

``ray`` is an optional extra (``pip install 'featcache[ray]'``); every node needs featcache
installed (or a ``runtime_env`` that provides it).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..shared.cache import Finalized, Part, finalize, list_shards
from ..shared.errors import FeatcacheError
from .launch import follow
from .runner import ExtractConfig, Mappers, run_extract

Log = Callable[[str], None]
DEFAULT_MAX_RETRIES = 3
ITEMS_PER_WORKER = 4


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise FeatcacheError(
            f"the Ray runner needs ray ({exc}); install it with: pip install 'featcache[ray]'"
        ) from None
    return ray


@dataclass
class Faults:
    """Faults to inject, for tests and failure drills. ``slow``: actor number -> seconds it sleeps
    when it starts and after each shard it commits (a slow node). ``die_once``: a file path; the first actor to commit
    a shard while that file does not exist creates it and exits at once (``os._exit``), as a node
    lost in the middle of an item (exactly once, even across actor restarts)."""

    slow: dict[int, float] = field(default_factory=dict)
    die_once: str | None = None


@dataclass
class QueueReport:
    """What the queue did: per actor number, the items and shards it finished; ``requeued`` counts
    items put back after their actor died."""

    items: int
    items_by_actor: list[int]
    shards_by_actor: list[int]
    requeued: int = 0

    def summary(self) -> str:
        per = ", ".join(
            f"actor {a}: {n} items, {s} shards"
            for a, (n, s) in enumerate(zip(self.items_by_actor, self.shards_by_actor, strict=True))
        )
        return f"queue of {self.items} items: {per}" + (f"; {self.requeued} put back" if self.requeued else "")


class QueueWorker:
    """One Ray actor: set its thread environment before TensorFlow is imported, then run work items
    (parts) with one backbone built for all of them."""

    def __init__(self, number: int, env: dict[str, str], faults: Faults | None = None) -> None:
        os.environ.update(env)
        self.number = number
        self.faults = faults or Faults()
        self.mappers = Mappers()
        time.sleep(self.faults.slow.get(number, 0.0))

    def run(self, cfg: ExtractConfig) -> tuple[str, int]:
        """Run the item ``cfg.part``; return its one-line report and the shards it wrote."""
        import sys

        prefix = f"[actor {self.number} item {cfg.part}] "
        report = run_extract(
            cfg,
            log=lambda msg: print(prefix + msg, file=sys.stderr, flush=True),
            mappers=self.mappers,
            on_shard=self._shard_done,
        )
        return report.summary().split("\n")[0], report.shards_written

    def _shard_done(self, shard: int) -> None:
        if self.faults.die_once:
            try:
                os.close(os.open(self.faults.die_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os._exit(1)
        if self.number in self.faults.slow:
            time.sleep(self.faults.slow[self.number])


def run_ray(
    cfg: ExtractConfig,
    *,
    address: str | None = None,
    workers: int | None = None,
    items: int | None = None,
    cpus_per_worker: int = 1,
    max_retries: int = DEFAULT_MAX_RETRIES,
    faults: Faults | None = None,
    log: Log = print,
) -> tuple[Finalized, list[str], QueueReport]:
    """Fill ``cfg.cache`` with ``workers`` Ray actors (default: one per GPU of the cluster, else one
    per ``cpus_per_worker`` CPUs) pulling ``items`` work items (default ``ITEMS_PER_WORKER`` per
    worker), then finalise.

    ``address`` is a running cluster (``auto``, ``ray://host:10001``, ...); None uses the Ray instance
    this process already started, or starts a local one for the duration of the call. Returns the
    state of the cache, one line per item that failed, and what each actor did."""
    if cfg.overwrite:
        raise FeatcacheError(
            f"{cfg.cache}: overwrite=True cannot be combined with several workers; delete the cache directory first"
        )
    if items is not None and items < 1:
        raise FeatcacheError(f"items={items}: expected a positive count of work items")
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        local = {} if address else {"num_cpus": os.cpu_count() or 1}
        ray.init(address=address, include_dashboard=False, configure_logging=False, log_to_driver=True, **local)
    actors: list[Any] = []
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if workers is None:
            workers = gpus or max(1, int(resources.get("CPU", 1)) // cpus_per_worker)
        count = items or ITEMS_PER_WORKER * workers
        log(
            f"ray: {int(resources.get('CPU', 0))} CPUs and {gpus} GPUs in the cluster; {workers} actors, "
            f"{'1 GPU' if gpus else f'{cpus_per_worker} CPUs'} each, pulling {count} work items; "
            f"a lost actor replaced up to {max_retries} times"
        )
        threads = str(cpus_per_worker)
        env = {} if gpus else {"TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": threads}
        actor_class = ray.remote(QueueWorker).options(
            num_gpus=1 if gpus else 0, num_cpus=cpus_per_worker, max_restarts=0, max_task_retries=0
        )
        queue = _Queue(ray, lambda a: actor_class.remote(a, env, faults), workers, cfg, count, max_retries, log)
        actors = queue.actors
        bar = threading.Thread(target=follow, args=(cfg.cache, queue.busy, cfg.progress), daemon=True)
        bar.start()
        queue.drain()
        bar.join()
        log(queue.report.summary())
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
        if started:
            ray.shutdown()
    return finalize(cfg.cache), queue.failed, queue.report


class _Queue:
    """The driver's side: hand items to idle actors, collect results, put back the item of an actor
    that died and start a new actor in its place (Ray's own actor restarts are not used: calls to
    a restarting actor fail at once, which would lose items for nothing)."""

    def __init__(
        self,
        ray: Any,
        spawn: Callable[[int], Any],
        workers: int,
        cfg: ExtractConfig,
        count: int,
        max_retries: int,
        log: Log,
    ):
        self.ray, self.spawn, self.cfg, self.log = ray, spawn, cfg, log
        self.count, self.max_retries = count, max_retries
        self.actors = [spawn(a) for a in range(workers)]
        self.todo: deque[int] = deque(range(count))
        self.in_flight: dict[Any, tuple[int, int]] = {}  # ref -> (actor, item)
        self.alive = set(range(workers))
        self.deaths = [0] * workers
        self.losses = [0] * count
        self.failed: list[str] = []
        self.report = QueueReport(count, [0] * workers, [0] * workers)
        self.stopped = ""  # why no further items are handed out (a featcache error would recur)
        self.drained = False

    def busy(self) -> bool:
        """Whether :meth:`drain` is still going (the progress bar follows until it returns)."""
        return not self.drained

    def _feed(self) -> None:
        if self.stopped:
            return
        idle = self.alive - {a for a, _ in self.in_flight.values()}
        for a in sorted(idle):
            if not self.todo:
                return
            item = self.todo.popleft()
            cfg = replace(self.cfg, part=Part(item, self.count), progress=False)
            self.in_flight[self.actors[a].run.remote(cfg)] = (a, item)

    def drain(self) -> None:
        """Run the queue until no item is in flight; then every item is done, failed or not run."""
        try:
            self._drain()
        finally:
            self.drained = True

    def _drain(self) -> None:
        lost = self.ray.exceptions.RayActorError
        self._feed()
        while self.in_flight:
            (ref,), _ = self.ray.wait(list(self.in_flight), num_returns=1)
            a, item = self.in_flight.pop(ref)
            part = Part(item, self.count)
            try:
                line, shards = self.ray.get(ref)
            except lost as exc:
                self.deaths[a] += 1
                self.losses[item] += 1
                self.ray.kill(self.actors[a], no_restart=True)  # gone, or unreachable: it must not write on
                if self.deaths[a] > self.max_retries:
                    self.alive.discard(a)
                    self.log(f"actor {a} died {self.deaths[a]} times: not restarted")
                else:
                    self.actors[a] = self.spawn(a)
                if self.losses[item] > self.max_retries:
                    times = self.losses[item]
                    self.failed.append(f"item {part}: lost with its actor {times} times ({_last_line(exc)})")
                    self.log(f"[item {part}] failed: {self.failed[-1]}")
                else:
                    self.todo.appendleft(item)
                    self.report.requeued += 1
                    self.log(f"[item {part}] actor {a} died ({_last_line(exc)}); the item is put back")
            except Exception as exc:  # featcache's own error: it would fail again
                cause = getattr(exc, "cause", None) or exc
                self.failed.append(f"item {part}: {type(cause).__name__}: {_last_line(cause)}")
                self.log(f"[item {part}] failed: {self.failed[-1]}; no further items are started")
                self.stopped = f"stopped after item {part} failed"
            else:
                self.report.items_by_actor[a] += 1
                self.report.shards_by_actor[a] += shards
                self.log(f"[actor {a}] {line}")
            self._feed()
        if self.todo:
            why = self.stopped or "every actor died"
            self.failed.append(f"items {list_shards(sorted(self.todo))} of {self.count}: not run ({why})")


def _last_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__
