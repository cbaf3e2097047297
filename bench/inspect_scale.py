"""Inspection at scale: near-duplicates and leaks, one row's neighbours, label-noise suspects and outliers on
caches made with ``featcache.import_embeddings``, each command timed as a user runs it, beside the exact
search where it finishes.

Synthetic pooled vectors like MobileNetV2's (non-negative, sparse-ish, 1280-d) around 200 cluster centres,
labelled with 10 classes (cluster number mod 10), with planted rows: ``--pairs`` near-duplicate pairs (a row
and a copy with 0.3% noise, cosine ~0.9999; every third pair straddles train and test: ``--pairs 300``
plants 100 leaks), ``--planted`` outliers far from every centre and ``--flips`` rows whose label is changed
to another class. For each size the vectors are imported (``featcache.import_embeddings``, timed), then
each command runs in a child process (``python -m featcache.shared ...``, wall time and the child's own
peak resident memory from ``wait4``):

- ``neighbours CACHE --duplicates``: pairs found among the planted ones, by id, and planted leaks marked
  ``LEAK``; beside it (up to ``--exact-max`` rows) the exact all-pairs search in a child of its own, and
  whether both found the same pairs;
- ``neighbours CACHE ID -k 10``: one row's neighbours (every row compared: exact at any size);
- ``suspects CACHE --json``: planted flips among the ``2 x --flips`` most suspect rows (recall); beside it
  (up to ``--exact-max``) the classifier cross-validated on every row instead of a sample;
- ``outliers CACHE --json``: planted outliers among the ``--planted`` most isolated rows.

The commands keep their neighbour index in the cache (``neighbours.npz``, docs/inspect.md): "dup s" is
the first search (no index kept), "dup again s" the same command reusing the kept index; "suspects s"
starts without one again (it builds and keeps it), and "outliers s" reuses the one suspects kept.

    .venv/bin/python bench/inspect_scale.py --rows 50000,200000,1000000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import command_line, table

import featcache
from featcache.shared.inspection import similarity

DIMS = 1280
CLASSES = 10
THRESHOLD = similarity.DEFAULT_DUPLICATE_THRESHOLD


def synthetic(n: int, pairs: int, planted: int, flips: int, seed: int) -> dict:
    """The vectors, ids, labels (with ``flips`` planted errors), splits, and what was planted."""
    rng = np.random.default_rng(seed)
    centres = rng.gamma(0.5, 1.0, (200, DIMS)).astype(np.float32)
    x = np.empty((n, DIMS), np.float32)
    cluster = rng.integers(0, 200, n)
    for start in range(0, n, 50_000):  # bounded temporaries
        stop = min(n, start + 50_000)
        x[start:stop] = centres[cluster[start:stop]]
        x[start:stop] += rng.gamma(0.5, 0.3, (stop - start, DIMS)).astype(np.float32)
    chosen = rng.choice(n, 2 * pairs + planted + flips, replace=False)
    a, b = chosen[:pairs], chosen[pairs : 2 * pairs]
    far, flipped = chosen[2 * pairs : 2 * pairs + planted], chosen[2 * pairs + planted :]
    x[b] = x[a] * (1 + 0.003 * rng.standard_normal((pairs, DIMS)).astype(np.float32))
    x[far] = rng.gamma(0.5, 1.0, (planted, DIMS)).astype(np.float32) * (rng.random((planted, DIMS)) < 0.05)
    label = cluster % CLASSES
    label[b] = label[a]
    label[flipped] = (label[flipped] + rng.integers(1, CLASSES, flips)) % CLASSES
    split = np.where(rng.random(n) < 0.8, "train", "test").astype(object)
    split[a], split[b] = "train", "train"
    split[b[::3]] = "test"  # every third pair: a leak
    ids = np.array([f"img/{k:07d}.jpg" for k in range(n)], dtype=object)
    return {
        "x": x,
        "ids": ids,
        "label": label,
        "split": split,
        "pairs": {frozenset((ids[i], ids[j])) for i, j in zip(a, b, strict=True)},
        "leaks": {frozenset((ids[i], ids[j])) for i, j in zip(a[::3], b[::3], strict=True)},
        "far": set(ids[far].tolist()),
        "flipped": set(ids[flipped].tolist()),
    }


def child(argv: list[str]) -> tuple[float, float, str]:
    """Run ``argv`` and return ``(seconds, its peak resident GB, its standard output)`` (and say so on
    standard error as it ends: a long run shows its progress)."""
    t0 = time.perf_counter()
    out = tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    out.seek(0)
    text = out.read().decode()
    shown = " ".join(a if len(a) < 40 else "..." for a in argv[1:5])
    print(f"  {shown}: {seconds:.1f} s, {usage.ru_maxrss / 1e6:.1f} GB", file=sys.stderr, flush=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv)}: exit {proc.returncode}\n{text[-2000:]}")
    return seconds, usage.ru_maxrss / 1e6, text


def inspect(*args: str) -> tuple[float, float, str]:
    return child([sys.executable, "-m", "featcache.shared", *args])


def snippet(code: str, cache: Path) -> tuple[float, float, str]:
    return child([sys.executable, "-c", code, str(cache)])


EXACT_DUPLICATES = """
import json, sys
import featcache
from featcache.shared.inspection import similarity
rows = featcache.open_cache(sys.argv[1]).load_pooled()
unit = similarity.normalize(rows.pooled)
print(json.dumps([[rows.id[p.a], rows.id[p.b]] for p in similarity.near_duplicates(unit, %r)]))
"""
EXACT_SUSPECTS = """
import json, sys
import featcache
from featcache.shared.inspection import report, suspects
cache = featcache.open_cache(sys.argv[1])
suspects.FIT_MAX_ROWS = cache.num_rows  # the classifier cross-validated on every row
ranked, _ = report.find_suspects(cache, cache.load_pooled(), neighbours=False)
print(json.dumps([d["id"] for d in ranked[:%d]]))
"""


def duplicate_pairs(text: str) -> tuple[set, set]:
    """``(pairs, pairs marked LEAK)`` by id from ``neighbours --duplicates``' output."""
    lines = text.splitlines()
    pairs, leaks = set(), set()
    for k, line in enumerate(lines):
        if re.match(r"^[01]\.\d{5}", line):
            pair = frozenset(lines[k + j].split()[-1] for j in (1, 2))
            pairs.add(pair)
            if "LEAK" in line:
                leaks.add(pair)
    return pairs, leaks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="50000,200000", help="comma-separated cache sizes")
    ap.add_argument("--pairs", type=int, default=300, help="near-duplicate pairs planted (every third a leak)")
    ap.add_argument("--planted", type=int, default=100, help="outliers planted in each cache")
    ap.add_argument("--flips", type=int, default=500, help="labels changed to another class in each cache")
    ap.add_argument("--exact-max", type=int, default=50_000, help="largest size also searched exactly")
    ap.add_argument("--dir", type=Path, default=None, help="where the caches are made (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the caches")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)  # a folder named on the command line may not exist yet
    base = Path(tempfile.mkdtemp(prefix="inspect-scale-", dir=args.dir))
    out = []
    try:
        for n in (int(v) for v in args.rows.split(",")):
            s = synthetic(n, args.pairs, args.planted, args.flips, args.seed)
            cache = base / f"cache-{n}"
            t0 = time.perf_counter()
            featcache.import_embeddings(
                cache, s.pop("x"), ids=s["ids"], labels=s["label"], splits=s["split"].tolist(), progress=False
            )
            import_s = time.perf_counter() - t0
            print(f"{n:,} rows imported in {import_s:.1f} s", file=sys.stderr, flush=True)
            kept = cache / "neighbours.npz"  # the neighbour index the commands keep in the cache
            kept.unlink(missing_ok=True)
            dup_s, dup_gb, text = inspect("neighbours", str(cache), "--duplicates")
            found, marked = duplicate_pairs(text)
            again_s, _, _ = inspect("neighbours", str(cache), "--duplicates")
            nb_s, nb_gb, _ = inspect("neighbours", str(cache), str(s["ids"][n // 2]), "-k", "10")
            top = 2 * args.flips
            kept.unlink(missing_ok=True)  # suspects from scratch: its neighbour search builds the index again
            sus_s, sus_gb, text = inspect("suspects", str(cache), "--json", "--top", str(top))
            sus_recall = len({d["id"] for d in json.loads(text)} & s["flipped"]) / max(len(s["flipped"]), 1)
            out_s, out_gb, text = inspect("outliers", str(cache), "--json", "--top", str(args.planted), "--no-progress")
            out_recall = len({d["id"] for d in json.loads(text)} & s["far"]) / max(len(s["far"]), 1)
            exact = ["-", "-", "-", "-"]
            if n <= args.exact_max:
                ex_s, ex_gb, text = snippet(EXACT_DUPLICATES % THRESHOLD, cache)
                exact_pairs = {frozenset(p) for p in json.loads(text)}
                same = "yes" if exact_pairs == found else f"{len(found & exact_pairs)}/{len(exact_pairs)}"
                es_s, es_gb, text = snippet(EXACT_SUSPECTS % top, cache)
                es_recall = len(set(json.loads(text)) & s["flipped"]) / max(len(s["flipped"]), 1)
                exact = [f"{ex_s:.1f}", same, f"{es_s:.1f}", f"{es_recall:.3f}"]
            peak = max(dup_gb, nb_gb, sus_gb, out_gb)
            out.append(
                [
                    f"{n:,}",
                    f"{import_s:.1f}",
                    f"{dup_s:.1f}",
                    f"{again_s:.1f}",
                    f"{len(found & s['pairs'])}/{len(s['pairs'])}",
                    f"{len(marked & s['leaks'])}/{len(s['leaks'])}",
                    f"{nb_s:.1f}",
                    f"{sus_s:.1f}",
                    f"{sus_recall:.3f}",
                    f"{out_s:.1f}",
                    f"{out_recall:.3f}",
                    *exact,
                    f"{peak:.1f}",
                ]
            )
            print(out[-1], flush=True)
            if not args.keep:
                shutil.rmtree(cache)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    headers = [
        "rows",
        "import s",
        "dup s",
        "dup again s",
        "pairs found",
        "leaks marked",
        "neighbours s",
        "suspects s",
        "flip recall",
        "outliers s",
        "outlier recall",
        "exact dup s",
        "same pairs",
        "exact suspects s",
        "exact flip recall",
        "peak GB",
    ]
    print(table(headers, out))
    print("peak GB: the largest resident size of one command (each runs in a process of its own)")
    print(command_line())


if __name__ == "__main__":
    main()
