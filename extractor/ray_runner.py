"""The Ray runner: the parts of the shard plan as Ray tasks, on a cluster or a local Ray instance.

Each task is one part (``--part I/N``) run by :func:`featcache.extractor.launch.run_part`, with one GPU when
the cluster has GPUs. Ray retries a task whose worker died (``max_retries``): the retry resumes the
part, keeping its finished shards. Errors raised by featcache itself (a bad input with
``--strict``, a full disk) are not retried: they would fail again. The driver only needs the cache
directory (on a filesystem every node mounts) and finalises it when the tasks are done.

``ray`` is an optional extra (``pip install 'featcache[ray]'``); every node needs featcache
installed (or a ``runtime_env`` that provides it).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..shared.cache.parts import Finalized, Part, finalize
from ..shared.errors import FeatcacheError
from .launch import follow, run_part
from .runner import ExtractConfig

Log = Callable[[str], None]
DEFAULT_MAX_RETRIES = 3


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise FeatcacheError(
            f"the Ray runner needs ray ({exc}); install it with: pip install 'featcache[ray]'"
        ) from None
    return ray


def _part_task(cfg: ExtractConfig, env: dict[str, str]) -> str:
    return run_part(cfg, env)


def run_ray(
    cfg: ExtractConfig,
    *,
    address: str | None = None,
    workers: int | None = None,
    cpus_per_worker: int = 1,
    max_retries: int = DEFAULT_MAX_RETRIES,
    log: Log = print,
) -> tuple[Finalized, list[str]]:
    """Fill ``cfg.cache`` with ``workers`` Ray tasks (default: one per GPU of the cluster, else one
    per ``cpus_per_worker`` CPUs), then finalise.

    ``address`` is a running cluster (``auto``, ``ray://host:10001``, ...); None starts a local Ray
    instance for the duration of the call. Returns the state of the cache and one line per part
    that failed after its retries."""
    if cfg.overwrite:
        raise FeatcacheError(
            f"{cfg.cache}: overwrite=True cannot be combined with several workers; delete the cache directory first"
        )
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        local = {} if address else {"num_cpus": os.cpu_count() or 1}
        ray.init(address=address, include_dashboard=False, configure_logging=False, log_to_driver=True, **local)
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if workers is None:
            workers = gpus or max(1, int(resources.get("CPU", 1)) // cpus_per_worker)
        log(
            f"ray: {int(resources.get('CPU', 0))} CPUs and {gpus} GPUs in the cluster; {workers} parts, "
            f"{'1 GPU' if gpus else f'{cpus_per_worker} CPUs'} each, up to {max_retries} retries"
        )
        task = ray.remote(_part_task).options(
            num_gpus=1 if gpus else 0,
            num_cpus=cpus_per_worker,
            max_retries=max_retries,
            retry_exceptions=False,
            name="featcache-part",
        )
        env = {"TF_NUM_INTRAOP_THREADS": str(cpus_per_worker), "TF_NUM_INTEROP_THREADS": str(cpus_per_worker)}
        refs = {
            task.remote(replace(cfg, part=Part(i, workers), progress=False), {} if gpus else env): Part(i, workers)
            for i in range(workers)
        }
        failed: list[str] = []
        pending = list(refs)
        bar = threading.Thread(target=follow, args=(cfg.cache, lambda: bool(pending), cfg.progress), daemon=True)
        bar.start()
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                log(ray.get(done[0]))
            except Exception as exc:  # a featcache error or a worker lost after its retries
                cause = getattr(exc, "cause", None) or exc
                failed.append(f"part {refs[done[0]]}: {type(cause).__name__}: {str(cause).strip().splitlines()[-1]}")
                log(f"[part {refs[done[0]]}] failed: {failed[-1]}")
        bar.join()
    finally:
        if started:
            ray.shutdown()
    return finalize(cfg.cache), failed
