"""The writer: batches of features into shards, on a background thread.

Compression and disk I/O run here while the main thread feeds the backbone. The queue is bounded,
so a slow disk slows the run down instead of filling memory. A shard is committed (renamed into
place and added to the manifest) when the first batch of a later shard arrives or the run ends;
shards whose inputs all failed are committed empty, so the plan stays complete.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..shared.cache import CacheWriter, FailedInput, ShardWriter
from ..shared.cache.fsutil import write_failure
from ..shared.errors import BadInputError, FeatcacheError
from .sources import Source

_STOP = object()
QUEUE_BATCHES = 4


@dataclass
class SinkStats:
    rows: int = 0
    failed: int = 0
    shards: int = 0
    write_seconds: float = 0.0


class ShardSink:
    """Consumes ``(index (b,), maps, pooled)`` batches in listing order for the ``shards`` planned.

    ``diagnose(i)`` gives the reason input ``i`` was dropped; with ``strict`` the first dropped input
    raises :class:`BadInputError` and its shard is not committed. ``on_shard(record, failed)`` is
    called after each commit (progress reporting).
    """

    def __init__(
        self,
        cache: CacheWriter,
        source: Source,
        shards: Sequence[int],
        diagnose: Callable[[int], str],
        *,
        strict: bool = False,
        on_shard: Callable[[int, list[FailedInput]], None] | None = None,
    ):
        self.cache = cache
        self.source = source
        self.pending = list(shards)
        self.diagnose = diagnose
        self.strict = strict
        self.on_shard = on_shard
        self.stats = SinkStats()
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES)
        self._error: BaseException | None = None
        self._current: ShardWriter | None = None
        self._written: list[np.ndarray] = []
        self._thread = threading.Thread(target=self._run, name="featcache-writer", daemon=True)
        self._thread.start()

    # -- main thread -----------------------------------------------------------------------------
    def put(
        self,
        index: np.ndarray,
        maps: np.ndarray,
        pooled: np.ndarray,
        pooled_views: np.ndarray | None = None,
        extra: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Queue a batch (blocks while the queue is full); re-raises a writer error. ``pooled_views``
        ``(b, V-1, C)``: the pooled vectors of views 1.. when the cache has views; ``extra``: the
        cache's other per-row datasets (taps, top input: see :meth:`ShardWriter.append`)."""
        self._raise_if_failed()
        while True:
            try:
                self._queue.put((index, maps, pooled, pooled_views, extra), timeout=0.5)
                return
            except queue.Full:
                self._raise_if_failed()
                if not self._thread.is_alive():  # cannot happen without an error; never wait on it
                    raise FeatcacheError(f"{self.cache.dir}: the writer thread ended before the last shard") from None

    def close(self, *, finish: bool = True) -> None:
        """Commit what is left (``finish``) or drop the partial shard, then stop the thread. Never
        waits on a thread that has ended (a writer that failed stops reading the queue)."""
        while self._thread.is_alive():
            try:
                self._queue.put((_STOP, finish), timeout=0.5)
                break
            except queue.Full:
                continue
        self._thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    # -- writer thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item[0] is _STOP:
                    if item[1]:
                        while self.pending:
                            self._finish_shard()
                    break
                self._write(*item)
        except OSError as exc:  # disk full, I/O error: say which file and that finished shards are safe
            self._error = FeatcacheError(
                f"{exc.filename or self.cache.dir}: cannot write ({write_failure(exc)}); the {self.stats.shards} "
                "shards finished in this run are kept: fix the cause and run the same command to resume"
            )
        except BaseException as exc:  # handed to the main thread
            self._error = exc
        finally:
            if self._current is not None:
                try:
                    self._current.abort()
                except BaseException as exc:  # noqa: BLE001 (a failure must reach the main thread, not end this one)
                    self._error = self._error or exc
                self._current = None
            if self._error is not None:  # keep draining so that put() never blocks forever
                while True:
                    try:
                        self._queue.get_nowait()
                    except queue.Empty:
                        break

    def _write(
        self,
        index: np.ndarray,
        maps: np.ndarray,
        pooled: np.ndarray,
        pooled_views: np.ndarray | None,
        extra: dict[str, np.ndarray] | None,
    ) -> None:
        shard = self.cache.manifest.shard_of(int(index[0]))
        while self.pending and self.pending[0] != shard:
            self._finish_shard()
        t0 = time.perf_counter()
        if self._current is None:
            self._current = self.cache.start_shard(shard)
        src = self.source
        self._current.append(
            maps,
            pooled,
            src.labels[index],
            [src.ids[i] for i in index],
            index,
            src.splits[index],
            pooled_views,
            extra,
        )
        self._written.append(index)
        self.stats.write_seconds += time.perf_counter() - t0

    def _finish_shard(self) -> None:
        shard = self.pending[0]
        writer = self._current or self.cache.start_shard(shard)
        self._current = writer
        done = np.concatenate(self._written) if self._written else np.zeros(0, np.int64)
        missing = np.setdiff1d(np.arange(writer.inputs.start, writer.inputs.stop), done)
        failed = [FailedInput(int(i), self.source.ids[i], self.diagnose(int(i)), shard) for i in missing]
        if failed and self.strict:
            f = failed[0]
            where = self.source.paths[f.index].decode(errors="replace")
            if self.source.records is not None:  # a record: its container and its id
                where += f" ({f.id})"
            raise BadInputError(f"{where}: {f.reason} (strict=True)")
        t0 = time.perf_counter()
        self.cache.commit_shard(writer, failed)
        self.stats.write_seconds += time.perf_counter() - t0
        self.stats.rows += writer.rows
        self.stats.failed += len(failed)
        self.stats.shards += 1
        self._current = None
        self._written = []
        self.pending.pop(0)
        if self.on_shard is not None:
            self.on_shard(shard, failed)
