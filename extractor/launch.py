"""Several workers on one machine: one process per part, pinned to a GPU each when there are GPUs.

Processes rather than ``tf.distribute.MirroredStrategy``: inference needs no synchronisation
between replicas, and at GPU speeds the input pipeline (JPEG decode, resize) and the writer's
compression are the bottleneck; separate processes give each GPU its own pipeline, its own writer
and its own Python interpreter (no GIL shared across GPUs), and a crash of one is a rerun of one
part. Each worker is exactly ``featcache-extract SRC CACHE --part I/N`` (see :mod:`featcache.shared.cache._parts`),
so what works here works the same under Slurm, Kubernetes or Ray.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from ..shared.cache import Finalized, Manifest, Part, finalize
from ..shared.cores import usable_cores
from ..shared.errors import FeatcacheError
from .runner import ExtractConfig

Log = Callable[[str], None]
POLL_SECONDS = 1.0


def visible_gpus() -> list[str]:
    """The GPUs a worker can be pinned to, as ``CUDA_VISIBLE_DEVICES`` entries, without importing
    TensorFlow: the ones ``CUDA_VISIBLE_DEVICES`` already names, else those ``nvidia-smi`` lists."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g.strip() for g in given.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def choose_gpus(request: str) -> list[str]:
    """``gpus``: ``all`` or a count, checked against :func:`visible_gpus`."""
    gpus = visible_gpus()
    if request == "all":
        wanted = len(gpus)
    elif request.isdigit() and int(request) > 0:
        wanted = int(request)
    else:
        raise FeatcacheError(f"gpus={request!r}: expected 'all' or a positive count")
    if not gpus or wanted > len(gpus):
        raise FeatcacheError(
            f"gpus={request!r}: {len(gpus)} GPUs visible (CUDA_VISIBLE_DEVICES or nvidia-smi); "
            "use workers=N for CPU worker processes"
        )
    return gpus[:wanted]


def worker_env(part: Part, gpus: list[str] | None) -> dict[str, str]:
    """Environment of one worker: its GPU, or on CPU an equal share of the cores, so that N
    TensorFlow processes do not each start a thread per core."""
    if gpus:
        return {"CUDA_VISIBLE_DEVICES": gpus[part.index]}
    threads = str(max(1, usable_cores() // part.count))
    return {
        "CUDA_VISIBLE_DEVICES": "-1",
        "TF_NUM_INTRAOP_THREADS": threads,
        "OMP_NUM_THREADS": threads,
        "TF_NUM_INTEROP_THREADS": threads,
    }


def run_part(cfg: ExtractConfig, env: dict[str, str]) -> str:
    """Run one part in this process (a fresh worker: the environment must be set before
    TensorFlow is imported); return its one-line report. Used by the local runner."""
    os.environ.update(env)
    from .runner import run_extract

    prefix = f"[part {cfg.part}] "
    report = run_extract(cfg, log=lambda msg: print(prefix + msg, file=sys.stderr, flush=True))
    return report.summary().split("\n")[0]


def _child(cfg: ExtractConfig, env: dict[str, str]) -> None:
    import typer

    from ..shared.cli import run_cli

    try:
        run_cli(lambda: print(run_part(cfg, env), flush=True))
    except typer.Exit as exc:  # run_cli's exit code, without a traceback from multiprocessing
        sys.exit(exc.exit_code)


def shards_done(cache_dir: Path) -> tuple[int, int]:
    """(finished shards, planned shards), commit journals replayed; (0, 0) before set-up."""
    try:
        m = Manifest.load(cache_dir)
    except FeatcacheError:
        return 0, 0
    return len(m.shards), m.num_shards


def follow(cache_dir: Path, still_running: Callable[[], bool], progress: bool) -> None:
    """A progress bar over the cache's shards, updated until ``still_running()`` is false."""
    bar = tqdm(unit="shard", disable=not progress, dynamic_ncols=True, desc="shards")
    try:
        while True:
            running = still_running()
            done, total = shards_done(cache_dir)
            if total:
                bar.total, bar.n = total, done
                bar.refresh()
            if not running:
                return
            time.sleep(POLL_SECONDS)
    finally:
        bar.close()


def run_local(
    cfg: ExtractConfig, workers: int, gpus: list[str] | None = None, log: Log = print
) -> tuple[Finalized, list[str]]:
    """Run parts ``0/workers`` .. as processes side by side, then finalise.

    Returns the state of the cache and one line per worker that failed (a failed part keeps its
    finished shards; rerunning the same command redoes only what is missing)."""
    if cfg.overwrite:
        raise FeatcacheError(
            f"{cfg.cache}: overwrite=True cannot be combined with several workers; delete the cache directory first"
        )
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no TensorFlow state inherited
    procs = []
    for i in range(workers):
        part = Part(i, workers)
        env = worker_env(part, gpus)
        where = f"GPU {env['CUDA_VISIBLE_DEVICES']}" if gpus else f"{env['TF_NUM_INTRAOP_THREADS']} CPU threads"
        log(f"worker {part} on {where}")
        p = ctx.Process(
            target=_child, args=(replace(cfg, part=part, progress=False), env), name=f"featcache-{part.stem}"
        )
        p.start()
        procs.append((part, p))
    try:
        follow(cfg.cache, lambda: any(p.is_alive() for _, p in procs), cfg.progress)
    except BaseException:
        for _, p in procs:
            p.terminate()
        for _, p in procs:
            p.join()
        raise
    for _, p in procs:
        p.join()
    failed = [f"part {part}: exit code {p.exitcode}" for part, p in procs if p.exitcode != 0]
    return finalize(cfg.cache), failed
