"""Wall time of one cache filled by 1 worker, by N local worker processes, and by N Ray actors.

Rerun from the repo root (about 40 s with the sample data, 90 s with 2,000 images, on 2 cores):

    .venv/bin/python bench/parts.py                          # data/sample (made if missing), 2 workers
    .venv/bin/python bench/parts.py --images DIR --workers 2 --repeats 2

Each contender is the command a user types, run as a subprocess into a fresh cache, timed from
start to exit (so start-up counts: each worker imports TensorFlow and builds the model), run in
turn and the best of ``--repeats`` kept:

* ``1 worker``: ``featcache-extract SRC CACHE``;
* ``N local workers``: ``featcache-extract SRC CACHE --workers N`` (one process per part, each with
  an equal share of the cores);
* ``N Ray actors``: ``featcache-extract SRC CACHE --runner ray --workers N`` on a local Ray instance
  started by the command, the actors pulling the default 4 work items each from the queue (skipped
  when ray is not installed).

Every result is checked to be complete. On a machine with fewer cores than workers x the cores one
backbone call can use, expect no speed-up: the workers share the same cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import DEFAULT_WEIGHTS, REPO, WEIGHTS_REL, command_line, ensure_sample, table  # noqa: E402  (puts the repo on sys.path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, help="image folder (default: data/sample, generated if missing)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--weights", default=str(DEFAULT_WEIGHTS) if DEFAULT_WEIGHTS.is_file() else "random")
    ap.add_argument("--shard-size", type=int, default=64, help="small enough that every worker has shards")
    args = ap.parse_args()
    src = args.images or ensure_sample()
    if args.weights == "random":
        print("NOTE: real weights not found; random weights (speed does not depend on their values)")
    exe = Path(sys.executable).with_name("featcache-extract")
    base = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "featcache.extractor"])]
    common = ["--weights", args.weights, "--shard-size", str(args.shard_size), "--no-progress"]
    n = args.workers
    contenders = {"1 worker": [], f"{n} local workers": ["--workers", str(n)]}
    if importlib.util.find_spec("ray") is not None:
        contenders[f"{n} Ray actors"] = ["--runner", "ray", "--workers", str(n)]
    else:
        print("ray is not installed: the Ray row is skipped (pip install -e '.[ray]')")
    best = {name: float("inf") for name in contenders}
    images = 0
    with tempfile.TemporaryDirectory(prefix="featcache-bench-parts-") as tmp:
        for _ in range(args.repeats):
            for name, extra in contenders.items():
                cache = Path(tmp) / "cache"
                shutil.rmtree(cache, ignore_errors=True)
                t0 = time.perf_counter()
                p = subprocess.run(
                    [*base, str(src), str(cache), *common, *extra], capture_output=True, text=True, cwd=REPO
                )
                seconds = time.perf_counter() - t0
                if p.returncode != 0:
                    sys.exit(f"{name} failed ({p.returncode}):\n{p.stderr[-2000:]}")
                m = json.loads((cache / "manifest.json").read_text())
                assert m["complete"], f"{name}: cache not complete"
                images = m["source"]["num_inputs"]
                best[name] = min(best[name], seconds)
    one = best["1 worker"]
    rows = [[name, f"{s:.1f}", f"{images / s:.1f}", f"{one / s:.2f}"] for name, s in best.items()]
    print(f"\n{images} images from {src}, shards of {args.shard_size}, {os.cpu_count()} cores, best of {args.repeats}")
    print(table(["contender", "wall s", "img/s", "speed-up"], rows))
    weights = WEIGHTS_REL if args.weights == str(DEFAULT_WEIGHTS) else args.weights
    print(f"\n{command_line()}  (weights: {weights})")


if __name__ == "__main__":
    main()
