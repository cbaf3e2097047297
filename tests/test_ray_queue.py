"""The Ray runner's work queue: actors pulling small parts make the single run's cache, survive an
actor killed in the middle of an item, and balance: a slowed actor does fewer items.

One local Ray instance for the whole file (Ray's start-up is the slow part); each run's actors are
killed when it ends, so the next run starts from the same free cluster."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cachefiles import same_cache
from conftest import extract
from typer.testing import CliRunner

from featcache.extractor.runner import ExtractConfig

ray = pytest.importorskip("ray")

SHARD = 2  # the 15 sample images make 8 shards
WORKERS = 2


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=WORKERS, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def single(sample_dir, tmp_path_factory) -> Path:
    """The reference: one uninterrupted run."""
    cache = tmp_path_factory.mktemp("single") / "c"
    extract(sample_dir, cache, shard_size=SHARD)
    return cache


def config(sample_dir: Path, cache: Path) -> ExtractConfig:
    return ExtractConfig(
        source=sample_dir,
        cache=cache,
        backbone="tiny",
        weights="random",
        shard_size=SHARD,
        batch_size=1,
        progress=False,
    )


def test_slow_actor_does_fewer_items_and_the_cache_is_the_single_run(local_ray, sample_dir, single, tmp_path):
    from featcache.extractor.ray_runner import Faults, run_ray

    lines: list[str] = []
    state, failed, queue = run_ray(
        config(sample_dir, tmp_path / "c"), workers=WORKERS, items=8, faults=Faults(slow={0: 2.0}), log=lines.append
    )
    assert failed == [] and state.complete, lines
    assert sum(queue.items_by_actor) == 8 and sum(queue.shards_by_actor) == 8  # one shard per item, each done once
    slow, fast = queue.items_by_actor
    assert fast > slow, queue.summary()  # static parts would have given each actor 4
    assert same_cache(single, tmp_path / "c") == []


def test_actor_killed_mid_item_is_replaced_and_the_cache_is_the_single_run(local_ray, sample_dir, single, tmp_path):
    from featcache.extractor.ray_runner import Faults, run_ray

    marker = tmp_path / "died"
    lines: list[str] = []
    state, failed, queue = run_ray(
        config(sample_dir, tmp_path / "c"),
        workers=WORKERS,
        items=3,
        faults=Faults(die_once=str(marker)),
        log=lines.append,
    )
    assert marker.exists()  # an actor did die after committing a shard of its item
    assert failed == [] and state.complete, lines
    assert queue.requeued == 1 and any("the item is put back" in line for line in lines), lines
    assert sum(queue.items_by_actor) == 3
    assert sum(queue.shards_by_actor) == 8 - 1  # the dead actor's committed shard was kept, not redone
    assert same_cache(single, tmp_path / "c") == []


def test_cli_ray_items_fill_the_cache(local_ray, sample_dir, single, tmp_path):
    from featcache.extractor.cli import app

    cache = tmp_path / "c"
    args = [str(sample_dir), str(cache), "--backbone", "tiny", "--weights", "random", "--shard-size", str(SHARD)]
    r = CliRunner().invoke(app, [*args, "--no-progress", "--runner", "ray", "--workers", "2", "--ray-items", "3"])
    assert r.exit_code == 0, r.output
    assert "2 actors, 1 CPUs each, pulling 3 work items" in r.output and "complete, 8/8 shards, 15 rows" in r.output
    assert same_cache(single, cache) == []
    # featcache's own error (a cache made otherwise) fails its item and stops the queue: the items not
    # yet started (at least 1 of 3 with 2 actors) are not run, instead of failing one by one
    ray_args = ["--no-progress", "--runner", "ray", "--ray-items", "3", "--feed-dtype", "float32"]
    r = CliRunner().invoke(app, [*args, *ray_args])
    failures = re.findall(r"worker failed: item \d/3: FingerprintMismatchError: .*feed_dtype", r.output)
    assert r.exit_code == 1 and 1 <= len(failures) <= 2, r.output
    assert re.search(r"worker failed: items [\d, ]+ of 3: not run \(stopped after item \d/3 failed\)", r.output)
    assert same_cache(single, cache) == []
    r = CliRunner().invoke(app, [*args, "--ray-items", "3"])
    assert r.exit_code == 2 and "error: --ray-items 3: a positive count of work items, for --runner ray only" in (
        r.output
    ), r.output
