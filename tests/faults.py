"""Fault injection: kill -9 the extractor at random moments, resume, and check that nothing is lost.

    .venv/bin/python tests/faults.py                   # the full run: 20 kills on 300 images (~2 min)
    .venv/bin/python tests/faults.py --kills 3 --images 48   # what CI runs (tests/test_faults.py)
    .venv/bin/python tests/faults.py --parts 3               # 3 workers per cache (--part I/3), killed at random
    .venv/bin/python tests/faults.py --update                # kill an update (--update) of a cache instead
    .venv/bin/python tests/faults.py --commits --parts 2     # kill commits and folds (synthetic writer, fast)

Each round extracts the same images into a fresh cache, killing the extractor (SIGKILL) at a random
moment after it has started work (listing, TensorFlow start-up, decoding, inference, writing a
shard, replacing the manifest: wherever the moment falls) and running it again, until a run
completes. After every kill: the manifest parses and every shard it lists verifies (size, sha256,
structure, content). At the end of a round: the cache equals a cache made without interruption
(ids, labels, splits, index, pooled and maps, byte for byte), ``verify`` passes, and no partial file
is left. The run stops by itself after ``--kills`` kills or ``--max-seconds``; it prints a table and
exits 1 if anything failed.

With ``--update``, every round starts from a copy of a complete cache of the images as they were, and
the killed command is ``--update`` from the images as they are now (some removed, some modified,
some added); the end state must read, by id, as a cache made from scratch from the new images.

With ``--commits``, the killed processes are synthetic writers (bench/scale.py's: no backbone, tiny
rows, so almost all their time is bookkeeping) that fold their commit journal every 2 records: kills
land in journal appends, folds (manifest replaced, journals retired) and shard renames. After every
kill: every shard a writer had reported committed is still committed (a kill loses at most the shard
in flight), featcache's replay and a plain reader following docs/cache-format.md see the same shards,
and each verifies (size and sha256); at the end of a round the cache equals a single run's.

The extractor runs the ``tiny`` backbone (same pipeline, writer and cache code as MobileNetV2, ten
times faster), in shards of 8 rows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from cachefiles import committed_shards, differing, differing_by_id, extract_command, read_shards, same_cache  # noqa: E402

from featcache.shared.cache import schema  # noqa: E402
from featcache.shared.cache._manifest import Manifest, file_status  # noqa: E402
from featcache.shared.cache._paths import shard_path  # noqa: E402
from featcache.shared.inspection.verify import verify  # noqa: E402


@dataclass
class Stats:
    kills: int = 0
    kills_mid_run: int = 0
    rounds: int = 0
    rounds_equal: int = 0
    verify_failures: list[str] = field(default_factory=list)
    partial_files_left: int = 0
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            not self.verify_failures
            and not self.mismatches
            and not self.partial_files_left
            and self.rounds_equal == self.rounds
        )


UPDATE = ["--update"]


def command(src: Path, cache: Path, *extra: str) -> list[str]:
    return extract_command(src, cache, *extra, shard_size=8, batch_size=4)


def change_source(src: Path, new: Path, seed: int) -> None:
    """``new``: a copy of ``src`` with every 7th image removed, every 9th modified (another image's
    bytes) and images added to every class (fresh sample images under new names)."""
    shutil.copytree(src, new, copy_function=shutil.copy2)
    images = sorted(p for p in new.rglob("*") if p.is_file())
    data = [p.read_bytes() for p in images]
    for k, p in enumerate(images):
        if k % 7 == 3:
            p.unlink()
        elif k % 9 == 4:
            p.write_bytes(data[(k + 1) % len(images)])
    sys.path.insert(0, str(REPO / "data"))
    from make_sample import make_sample

    extra = new.parent / f"{new.name}-extra"
    make_sample(extra, per_class=2, classes=len([d for d in src.iterdir() if d.is_dir()]), seed=seed + 100)
    for p in extra.rglob("*"):
        if p.is_file():
            shutil.copy2(p, new / p.parent.name / f"new_{p.name}")
    shutil.rmtree(extra)


def start(src: Path, cache: Path, parts: int, extra: list[str] | None = None) -> list[subprocess.Popen]:
    """One extractor, or ``parts`` workers of one cache side by side (``--part I/N``); the first
    one's stderr is a pipe (for :func:`wait_for_work`)."""
    per_part = [[]] if parts == 1 else [["--part", f"{i}/{parts}"] for i in range(parts)]
    return [
        subprocess.Popen(
            command(src, cache, *(extra or [])) + e,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE if i == 0 else subprocess.DEVNULL,
            text=True,
        )
        for i, e in enumerate(per_part)
    ]


def finish(src: Path, cache: Path, parts: int, extra: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run to completion without kills (all parts together), then ``--finalize``."""
    for proc in start(src, cache, parts, extra):
        proc.communicate()
    return subprocess.run(
        [*command(src, cache)[:3], str(cache), "--finalize"], capture_output=True, text=True, cwd=REPO
    )


def wait_for_work(proc: subprocess.Popen) -> bool:
    """Until the extractor says its backbone is built (the pipeline starts next); False if it ended."""
    for line in proc.stderr:
        if line.startswith("backbone "):
            return True
    return False


def campaign(
    src: Path, work: Path, kills: int, max_seconds: float, seed: int, log=print, parts: int = 1, update: bool = False
) -> Stats:
    """With ``parts`` > 1, every attempt starts that many workers of one cache at once and kills a
    random non-empty subset of them at the chosen moment; the others run on. With ``update``, each
    round updates a copy of a cache of ``src`` to a changed copy of it (:func:`change_source`)."""
    rng = random.Random(seed)
    stats = Stats()
    extra = UPDATE if update else []
    base = work / "base"
    if update:
        if subprocess.run(command(src, base), cwd=REPO, capture_output=True).returncode != 0:
            raise SystemExit("the cache to update could not be made")
        change_source(src, work / "src-new", seed)
        src = work / "src-new"
    reference = work / "reference"
    ref = subprocess.Popen(command(src, reference), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_work(ref)
    t0 = time.monotonic()
    ref.stdout.readline()  # the summary line, printed once the last shard is committed
    work_seconds = time.monotonic() - t0  # from "backbone built" to "all written"
    ref.communicate()
    if ref.returncode != 0:
        raise SystemExit(f"the uninterrupted run failed (exit {ref.returncode})")
    want = read_shards(reference)
    deadline = time.monotonic() + max_seconds
    while stats.kills < kills and time.monotonic() < deadline:
        stats.rounds += 1
        cache = work / f"round-{stats.rounds}"
        if update:
            shutil.copytree(base, cache, copy_function=shutil.copy2)
        while stats.kills < kills and time.monotonic() < deadline:
            procs = start(src, cache, parts, extra)
            if rng.random() < 0.15:  # now and then during start-up (listing, lock, TensorFlow import)
                time.sleep(rng.uniform(0, 2.0))
            elif wait_for_work(procs[0]):  # mostly while decoding, computing and writing
                time.sleep(rng.uniform(0, work_seconds / parts))
            victims = rng.sample(procs, rng.randint(1, len(procs)))
            mid_run = any(proc.poll() is None for proc in victims)
            for proc in victims:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
            for proc in procs:
                proc.wait()
            procs[0].stderr.close()
            if not (cache / schema.MANIFEST_NAME).exists():  # killed before it took the cache
                stats.kills += 1
                stats.kills_mid_run += mid_run
                log(f"kill {stats.kills:>3} (round {stats.rounds}): before the cache was created")
                continue
            stats.kills += 1
            stats.kills_mid_run += mid_run
            report = verify(cache, sample_rows=4)
            if report.problems:
                stats.verify_failures += [f"round {stats.rounds} kill {stats.kills}: {p}" for p in report.problems]
            done = json.loads((cache / schema.MANIFEST_NAME).read_text())
            log(
                f"kill {stats.kills:>3} (round {stats.rounds}): {'mid-run' if mid_run else 'after the end'}, "
                f"{len(done['shards'])}/{done['num_shards']} shards done, "
                f"verify {'ok' if not report.problems else 'FAILED'}"
            )
            if done["complete"] and (not update or done.get("generation")):
                break
        final = finish(src, cache, parts, extra)
        if final.returncode != 0:
            stats.mismatches.append(f"round {stats.rounds}: final run failed: {final.stderr.strip().splitlines()[-1:]}")
            continue
        diff = differing_by_id(reference, cache) if update else differing(want, read_shards(cache))
        if diff:
            stats.mismatches.append(f"round {stats.rounds}: {', '.join(diff)} differ from the uninterrupted cache")
        else:
            stats.rounds_equal += 1
        report = verify(cache)
        if report.problems:
            stats.verify_failures += [f"round {stats.rounds} final: {p}" for p in report.problems]
        stats.partial_files_left += sum(p.name.startswith(".") for p in (cache / schema.SHARDS_DIR).iterdir())
        stats.partial_files_left += (cache / schema.PARTS_DIR).exists()  # a complete cache has no parts/ left
    return stats


COMMIT_SHARDS, COMMIT_ROWS, FOLD_EVERY = 24, 5, 2


def commit_command(cache: Path, part: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--commit-child", str(cache), "--part", part]


def commit_child(cache: Path, part: str) -> None:
    """Write the synthetic cache's shards of ``part``, folding every ``FOLD_EVERY`` records and
    printing ``committed K`` once ``commit_shard`` returned for shard K."""
    sys.path.insert(0, str(REPO / "bench"))
    from scale import fill, synthetic_manifest

    from featcache.shared.cache._parts import Part
    from featcache.shared.cache._writer import CacheWriter

    CacheWriter._fold_due = lambda self: self._since_fold >= FOLD_EVERY
    with CacheWriter(cache, synthetic_manifest(cache, COMMIT_SHARDS, COMMIT_ROWS), part=Part.parse(part)) as cw:
        fill(cw, cw.pending_shards(), lambda k, _: print("committed", k, flush=True))


def commit_campaign(work: Path, kills: int, max_seconds: float, seed: int, log=print, parts: int = 2) -> Stats:
    """Kill synthetic writers (``parts`` of them side by side) at random moments; see the module doc."""
    from featcache.shared.cache._parts import finalize

    rng = random.Random(seed)
    stats = Stats()
    names = ["0/1"] if parts == 1 else [f"{i}/{parts}" for i in range(parts)]
    reference = work / "reference"
    t0 = time.monotonic()
    subprocess.run(commit_command(reference, "0/1"), cwd=REPO, check=True, capture_output=True)
    span = time.monotonic() - t0
    deadline = time.monotonic() + max_seconds
    while stats.kills < kills and time.monotonic() < deadline:
        stats.rounds += 1
        cache = work / f"commits-{stats.rounds}"
        while stats.kills < kills and time.monotonic() < deadline:
            procs = [
                subprocess.Popen(commit_command(cache, n), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                for n in names
            ]
            time.sleep(rng.uniform(0.3, span))  # start-up (imports) takes some of it
            victims = rng.sample(procs, rng.randint(1, len(procs)))
            stats.kills_mid_run += any(p.poll() is None for p in victims)
            for p in victims:
                if p.poll() is None:
                    p.send_signal(signal.SIGKILL)
            reported = {int(line.split()[1]) for p in procs for line in p.communicate()[0].decode().splitlines()}
            stats.kills += 1
            if not (cache / schema.MANIFEST_NAME).exists():
                continue
            m = Manifest.load(cache)
            listed = [s.shard for s in m.shards]
            if reported - set(listed):
                stats.mismatches.append(f"round {stats.rounds}: committed shards {sorted(reported - set(listed))} lost")
            if committed_shards(cache) != listed:
                stats.mismatches.append(f"round {stats.rounds}: a plain reader sees other shards than featcache")
            for rec in m.shards:
                if (why := file_status(shard_path(cache, rec.file, rec.shard), rec)) is not None:
                    stats.verify_failures.append(f"round {stats.rounds}: {rec.file}: {why}")
            log(f"kill {stats.kills:>3} (round {stats.rounds}): {len(listed)}/{m.num_shards} shards committed")
            if m.complete:
                break
        for p in [subprocess.Popen(commit_command(cache, n), cwd=REPO, stdout=subprocess.DEVNULL) for n in names]:
            p.wait()
        finalize(cache)
        diff = same_cache(reference, cache)
        if diff:
            stats.mismatches.append(f"round {stats.rounds}: {', '.join(diff)} differ from the single run's cache")
        else:
            stats.rounds_equal += 1
        stats.partial_files_left += sum(p.name.startswith(".") for p in (cache / schema.SHARDS_DIR).iterdir())
        stats.partial_files_left += (cache / schema.PARTS_DIR).exists()
    return stats


def table(stats: Stats) -> str:
    rows = [
        ("kills (SIGKILL)", stats.kills),
        ("  of which mid-run", stats.kills_mid_run),
        ("rounds (fresh cache, killed until complete, then resumed)", stats.rounds),
        ("rounds equal to the uninterrupted cache", stats.rounds_equal),
        ("verify problems after a kill or at the end", len(stats.verify_failures)),
        ("partial files left at the end of a round", stats.partial_files_left),
        ("other failures", len(stats.mismatches)),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value:>5}" for name, value in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20, help="how many times to kill the extractor (default 20)")
    ap.add_argument("--images", type=int, default=300, help="sample images to extract, a multiple of 10 (default 300)")
    ap.add_argument(
        "--max-seconds", type=float, default=600, help="stop starting new kills after this long (default 600)"
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default 0)")
    ap.add_argument(
        "--parts", type=int, default=1, help="workers filling each cache side by side, --part I/N (default 1)"
    )
    ap.add_argument("--update", action="store_true", help="kill updates (--update) of a cache instead of first runs")
    ap.add_argument("--commits", action="store_true", help="kill synthetic writers' commits and folds instead")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (printed) for inspection")
    ap.add_argument("--commit-child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--part", default="0/1", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.commit_child:
        return commit_child(args.commit_child, args.part)
    sys.path.insert(0, str(REPO / "data"))
    from make_sample import make_sample

    work = Path(tempfile.mkdtemp(prefix="featcache-faults-"))
    try:
        if args.commits:
            stats = commit_campaign(work, args.kills, args.max_seconds, args.seed, parts=args.parts)
        else:
            make_sample(work / "src", per_class=max(1, args.images // 10), classes=10, seed=args.seed)
            stats = campaign(
                work / "src", work, args.kills, args.max_seconds, args.seed, parts=args.parts, update=args.update
            )
        print(table(stats))
        for line in stats.verify_failures + stats.mismatches:
            print(f"FAILED: {line}")
        print(f"command: {' '.join([os.path.relpath(sys.executable), *sys.argv])}")
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if stats.ok else 1)


if __name__ == "__main__":
    main()
