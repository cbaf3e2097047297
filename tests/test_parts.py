"""Many workers filling one cache (--part I/N, --finalize, --workers): the result must be the cache
a single run makes, file for file. The Ray runner's queue is tested in test_ray_queue.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from cachefiles import extract_command, kill_after_first_shard, same_cache
from conftest import REPO, extract

from featcache.shared.cache._listing import load_listing
from featcache.shared.cache._parts import Part, finalize, part_lock
from featcache.shared.cache._reader import FeatureCache
from featcache.shared.errors import CacheLockedError, FeatcacheError, SourceMismatchError
from featcache.shared.inspection.verify import fix, verify

SHARD = 2  # the 15 sample images make 8 shards


def finalize_command(cache: Path) -> list[str]:
    return [sys.executable, "-m", "featcache.extractor", str(cache), "--finalize"]


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def single(sample_dir, tmp_path_factory) -> Path:
    """The reference: one uninterrupted run."""
    cache = tmp_path_factory.mktemp("single") / "c"
    extract(sample_dir, cache, shard_size=SHARD)
    return cache


def test_part_parsing_and_overlap():
    assert Part.parse("2/5") == Part(2, 5) and str(Part(2, 5)) == "2/5"
    assert Part(1, 3).shards(8) == [1, 4, 7]
    assert Part(1, 2).inputs(11, 3).tolist() == [3, 4, 5, 9, 10] and Part(3, 4).inputs(9, 3).size == 0
    for bad in ("3/3", "1", "-1/2", "a/b", "0/0"):
        with pytest.raises(FeatcacheError, match="expected I/N"):
            Part.parse(bad)
    assert not Part(0, 2).overlaps(Part(1, 2)) and Part(0, 2).overlaps(Part(0, 2))
    assert Part(0, 1).overlaps(Part(3, 4))  # a whole run overlaps every part
    assert not Part(1, 4).overlaps(Part(0, 2)) and Part(1, 4).overlaps(Part(1, 2))
    assert Part(0, 2).overlaps(Part(1, 3))  # shard 4


@pytest.mark.parametrize("n", [2, 3])
def test_parts_running_together_make_the_single_run_cache(n, sample_dir, single, tmp_path):
    cache = tmp_path / "c"
    procs = [
        subprocess.Popen(
            extract_command(sample_dir, cache, "--part", f"{i}/{n}", shard_size=SHARD, batch_size=3),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * n, [o[1] for o in outs]
    # every worker merged on its way out; the last one completed the cache and removed parts/
    assert any("complete, 8/8 shards, 15 rows" in o[0] for o in outs), outs
    assert not (cache / "parts").exists()
    assert same_cache(single, cache) == []
    assert verify(cache).ok
    again = run(*finalize_command(cache))
    assert again.returncode == 0 and "complete, 8/8 shards" in again.stdout  # safe to run twice


def test_missing_part_is_named_and_the_rest_is_usable(sample_dir, single, tmp_path):
    cache = tmp_path / "c"
    extract(sample_dir, cache, shard_size=SHARD, part=Part(0, 3))
    report = extract(sample_dir, cache, shard_size=SHARD, part=Part(2, 3))
    assert "INCOMPLETE, 5/8 shards done" in report.summary()
    state = finalize(cache)
    assert state.missing == [1, 4, 7]
    assert "3 missing: part 1/3: shards 1, 4, 7 (not running: rerun it with --part 1/3)" in state.summary()
    p = run(*finalize_command(cache))
    assert p.returncode == 1 and "part 1/3: shards 1, 4, 7" in p.stdout

    # what is there is a valid cache: verify passes, readers see the 5 finished shards
    v = verify(cache)
    assert v.ok, v.problems
    assert any("incomplete: 3 of 8" in n for n in v.notes)
    c = FeatureCache(cache)
    assert [s.shard for s in c.shards] == [0, 2, 3, 5, 6]
    with pytest.raises(FeatcacheError, match=r"3 of 8 shards missing \(1, 4, 7\).*allow_partial=True"):
        c.require_complete()
    train = [
        sys.executable,
        "-m",
        "featcache.trainer",
        str(cache),
        "--runs",
        str(tmp_path / "runs"),
        "--head",
        "linear",
        "--epochs",
        "2",
    ]
    t = run(*train)
    assert t.returncode == 2 and "cache is incomplete: 3 of 8 shards missing" in t.stderr, t.stderr
    t = run(*train, "--allow-partial")
    assert t.returncode == 0, t.stderr

    extract(sample_dir, cache, shard_size=SHARD, part=Part(1, 3))  # the missing worker, run at last
    assert finalize(cache).complete and same_cache(single, cache) == []


def test_adopting_worker_walks_no_folder_and_its_job_keeps_the_inputs_first_listed(
    sample_dir, single, tmp_path, monkeypatch
):
    """Worker 0/2 lists the folder and publishes listing.npz; an image added to the folder after
    that is not part of the job: worker 1/2 builds its source from the listing (no folder of the
    source is scanned, only the source's own top level, to tell its kind) and the job makes the
    single run's cache of the 15 images first listed, compared with plain h5py. An input of worker
    1's part modified after publication is still found, and refused as before."""
    import shutil

    from featcache.extractor.runner import ExtractConfig, run_extract

    src, cache = tmp_path / "src", tmp_path / "c"
    shutil.copytree(sample_dir, src)  # copy2: the same sizes and modification times, so the same listing
    extract(src, cache, shard_size=SHARD, part=Part(0, 2))
    first = sorted(src.glob("*/*"))[0]
    shutil.copy(first, first.with_name("zz-added" + first.suffix))
    theirs = src / str(load_listing(cache)["id"][2])  # in shard 1: worker 1's, which stats it
    was = theirs.stat().st_mtime_ns
    os.utime(theirs, ns=(was, was + 1))
    with pytest.raises(SourceMismatchError, match=r"the inputs changed since .*: 1 added .*, 1 modified \("):
        extract(src, cache, shard_size=SHARD, part=Part(1, 2))  # as before: its own listing sees all changes
    os.utime(theirs, ns=(was, was))

    scanned: list[Path] = []
    real_scandir = os.scandir

    def scandir(path=".", *args):
        if isinstance(path, (str, bytes, os.PathLike)):
            scanned.append(Path(os.fsdecode(path)).resolve())
        return real_scandir(path, *args)

    monkeypatch.setattr(os, "scandir", scandir)  # os.walk and os.listdir-like helpers go through it
    logs: list[str] = []
    cfg = ExtractConfig(
        source=src, cache=cache, backbone="tiny", weights="random", shard_size=SHARD, batch_size=3, progress=False
    )
    report = run_extract(replace(cfg, part=Part(1, 2)), log=logs.append)
    monkeypatch.undo()
    root = src.resolve()
    # no folder below the source is read; its top level twice (is it an image folder; which layout)
    assert [p for p in scanned if root in p.parents] == [] and scanned.count(root) <= 2, scanned
    assert any(m.startswith("listing: adopted the job's listing.npz without walking") for m in logs), logs
    assert report.rows == 7 and report.finalized.complete  # shards 1, 3, 5, 7 of 15 inputs
    assert same_cache(single, cache) == []


def test_same_or_overlapping_part_is_refused_while_running(sample_dir, tmp_path):
    cache = tmp_path / "c"
    extract(sample_dir, cache, shard_size=SHARD, max_shards=1, part=Part(0, 2))
    with part_lock(cache, Part(1, 2)):  # as held by a running worker of part 1/2
        with pytest.raises(CacheLockedError, match=rf"part 1/2 is being written by pid {os.getpid()} on host"):
            extract(sample_dir, cache, shard_size=SHARD, part=Part(1, 2))
        with pytest.raises(CacheLockedError, match=r"part 0/3 overlaps part 1/2, which is being written by pid"):
            extract(sample_dir, cache, shard_size=SHARD, part=Part(0, 3))
        with pytest.raises(CacheLockedError, match=r"the whole cache .* overlaps part 1/2"):
            extract(sample_dir, cache, shard_size=SHARD)
        report = extract(sample_dir, cache, shard_size=SHARD, part=Part(0, 2))  # a disjoint part runs
        assert report.shards_written == 3 and report.shards_kept == 1
        assert "part 1/2: shards 1, 3, 5, 7 (running: pid" in finalize(cache).summary()
        with pytest.raises(CacheLockedError, match="part 1/2 is being written by pid .* with fix=True when no"):
            fix(cache, verify(cache))
    with pytest.raises(FeatcacheError, match="overwrite=True with part='1/2' would let each worker delete"):
        extract(sample_dir, cache, shard_size=SHARD, part=Part(1, 2), overwrite=True)


def test_killed_worker_is_rerun_and_the_cache_is_the_same(sample_dir, single, tmp_path):
    cache = tmp_path / "c"
    cmd = lambda i: extract_command(sample_dir, cache, "--part", f"{i}/2", shard_size=SHARD, batch_size=1)  # noqa: E731
    done = kill_after_first_shard(cmd(1), cache, REPO)  # once a shard is committed
    assert 1 <= done < 4  # really interrupted
    v = verify(cache)  # its committed shards are in its journal, not folded yet: checked, and a note
    assert (
        v.ok
        and v.shards_checked == done
        and any(f"{done} committed shards are in commit journals" in n for n in v.notes)
    ), v
    s = run(sys.executable, "-m", "featcache.shared", "summary", str(cache))
    assert "1/2 (pid" in s.stdout and f"{done} committed shards not folded" in s.stdout
    assert f"{2 * done} rows from 15 inputs, {done}/8 shards" in s.stdout  # readers see them already

    other = run(*cmd(0))
    assert other.returncode == 0, other.stderr
    assert "part 1/2: shards" in other.stdout and "(not running: rerun it with --part 1/2)" in other.stdout
    rerun = run(*cmd(1))
    assert rerun.returncode == 0, rerun.stderr
    assert f"{done} shards already done" in rerun.stdout and "complete, 8/8 shards" in rerun.stdout
    assert same_cache(single, cache) == []
    assert not [p for p in (cache / "shards").iterdir() if p.name.startswith(".")]


def test_local_workers_make_the_single_run_cache(sample_dir, single, tmp_path):
    cache = tmp_path / "c"
    p = run(*extract_command(sample_dir, cache, "--workers", "2", shard_size=SHARD, batch_size=3))
    assert p.returncode == 0, p.stderr
    assert f"worker 0/2 on {max(1, len(os.sched_getaffinity(0)) // 2)} CPU threads" in p.stderr
    assert "complete, 8/8 shards, 15 rows" in p.stdout
    assert same_cache(single, cache) == []


def test_gpu_workers_are_pinned_one_gpu_each(monkeypatch):
    from featcache.extractor.launch import choose_gpus, worker_env

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6")
    assert choose_gpus("all") == ["3", "5", "6"] and choose_gpus("2") == ["3", "5"]
    with pytest.raises(FeatcacheError, match="gpus='4': 3 GPUs visible"):
        choose_gpus("4")
    assert [worker_env(Part(i, 3), ["3", "5", "6"])["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["3", "5", "6"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(FeatcacheError, match="0 GPUs visible.*use workers=N"):
        choose_gpus("all")


def test_cluster_recipes_pass_part_and_count_consistently():
    slurm = REPO / "examples" / "slurm"
    for script in ("extract.sbatch", "submit.sh"):
        assert subprocess.run(["bash", "-n", str(slurm / script)]).returncode == 0, script
    assert '--part "${SLURM_ARRAY_TASK_ID}/${PARTS}"' in (slurm / "extract.sbatch").read_text()
    assert "--array=0-$((PARTS - 1))" in (slurm / "submit.sh").read_text()
    assert "--finalize" in (slurm / "submit.sh").read_text()
    job = (REPO / "examples" / "kubernetes" / "extract-job.yaml").read_text()
    completions = re.search(r"^\s+completions: (\d+)$", job, re.M)[1]
    assert re.search(r'--part "\$JOB_COMPLETION_INDEX/(\d+)"', job)[1] == completions
    assert "completionMode: Indexed" in job
    assert "--finalize" in (REPO / "examples" / "kubernetes" / "finalize-job.yaml").read_text()


def test_finalize_and_worker_options_give_one_line_errors(tmp_path, sample_dir):
    p = run(*finalize_command(tmp_path / "nowhere"))
    assert p.returncode == 2 and "nowhere/manifest.json: not a featcache cache (no such directory)" in p.stderr
    assert not (tmp_path / "nowhere").exists()  # nothing created
    for args, message in (
        (["--part", "3/2"], "part 3/2: expected I/N with 0 <= I < N"),
        (["--part", "0/2", "--workers", "2"], "error: --part I/N runs one worker; --workers N, --gpus all and"),
        (["--gpus", "all", "--runner", "ray"], "error: --gpus all is for local workers; with --runner ray, Ray gives"),
        (["--workers", "2", "--overwrite"], ": --overwrite cannot be combined with several workers"),
    ):
        p = run(*extract_command(sample_dir, tmp_path / "c", *args))
        assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
