"""What tests and tests/faults.py share: the extractor's command line as a user types it, and a
cache's shards read back with plain h5py (not featcache's reader)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import h5py
import numpy as np

from featcache.shared.cache import schema


def read_shards(cache: Path) -> dict[str, np.ndarray]:
    """Every dataset of every shard listed in the manifest, concatenated, ids as str."""
    manifest = json.loads((Path(cache) / schema.MANIFEST_NAME).read_text())
    parts: dict[str, list] = {k: [] for k in schema.DATASETS}
    for s in manifest["shards"]:
        with h5py.File(Path(cache) / s["file"], "r") as f:
            for k in schema.DATASETS:
                parts[k].append(f[k].asstr()[()] if k == schema.ID else f[k][()])
    return {k: np.concatenate(v) for k, v in parts.items()}


def differing(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> list[str]:
    """Names of the datasets that are not equal byte for byte (ids: as strings)."""
    return [
        k
        for k in schema.DATASETS
        if (a[k].tolist() != b[k].tolist() if k == schema.ID else a[k].tobytes() != b[k].tobytes())
    ]


def extract_command(src: Path, cache: Path, *extra: str, shard_size: int = 6, batch_size: int = 4) -> list[str]:
    """``python -m featcache.extractor SRC CACHE`` with the tiny test backbone, no progress bar, and ``extra``."""
    return [
        sys.executable,
        "-m",
        "featcache.extractor",
        str(src),
        str(cache),
        "--backbone",
        "tiny",
        "--weights",
        "random",
        "--shard-size",
        str(shard_size),
        "--batch-size",
        str(batch_size),
        "--no-progress",
        *extra,
    ]


def committed_shards(cache: Path) -> list[int]:
    """The shards committed in ``cache``, read as docs/cache-format.md tells a plain reader to (json
    and zlib only, independent of featcache's code): ``manifest.json``'s, plus the records of each
    ``parts/*.journal`` (not a link) whose header names the manifest's ``created``, from the offset
    the manifest's ``journals`` entry gives for that journal's id, skipping lines without their
    newline or whose CRC-32 does not match, records outside the shard plan, and shards already listed."""
    try:
        m = json.loads((Path(cache) / schema.MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return []
    done = [s["shard"] for s in m["shards"]]
    size, num_inputs = m["shard_size"], m["source"]["num_inputs"]

    def in_plan(r: object) -> bool:
        if not (isinstance(r, dict) and isinstance(r.get("shard"), dict) and isinstance(r.get("failed"), list)):
            return False
        s, k = r["shard"], r["shard"].get("shard")
        return (
            isinstance(k, int)
            and 0 <= k < m["num_shards"]
            and s.get("file") == f"shards/shard-{k:05d}.h5"
            and s.get("first_index") == k * size
            and s.get("num_inputs") == min(size, num_inputs - k * size)
            and s.get("rows", -1) + len(r["failed"]) == s["num_inputs"]
            and all(isinstance(f, dict) and f.get("shard") == k for f in r["failed"])
        )

    parts = Path(cache) / schema.PARTS_DIR
    for j in sorted(parts.glob("part-*-of-*.journal")) if parts.is_dir() else []:
        if j.is_symlink():
            continue
        lines = j.read_bytes().split(b"\n")[:-1]  # the last piece has no newline: torn or empty
        good = [json.loads(x[9:]) if x[:9] == b"%08x " % zlib.crc32(x[9:]) else None for x in lines]
        if not good or not isinstance(good[0], dict) or good[0].get("generation") != m["created"]:
            continue
        seen = m.get("journals", {}).get(j.name, {})
        start = seen.get("offset", 0) if seen.get("id") == good[0]["id"] else 0
        at = 0
        for line, value in zip(lines, good, strict=True):
            if at >= start and in_plan(value) and value["shard"]["shard"] not in done:
                done.append(value["shard"]["shard"])
            at += len(line) + 1
    return sorted(done)


def kill_after_first_shard(cmd: list[str], cache: Path, cwd: Path, timeout: float = 120) -> int:
    """Start ``cmd``, ``kill -9`` it as soon as ``cache`` has a committed shard (in the manifest or a
    commit journal: :func:`committed_shards`), and return how many it has then."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if committed_shards(cache):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return len(committed_shards(cache))


def same_cache(a: Path, b: Path) -> list[str]:
    """What differs between two caches of the same inputs: datasets, shard file bytes, or manifest
    fields other than times (an empty list when they are the same cache)."""
    diffs = differing(read_shards(a), read_shards(b))
    ma, mb = (json.loads((Path(c) / schema.MANIFEST_NAME).read_text()) for c in (a, b))
    for k in ma:
        if k in ("created", "updated", "shards", "source"):
            continue
        if ma[k] != mb.get(k):
            diffs.append(f"manifest {k}")
    untimed = lambda m: [{k: v for k, v in s.items() if k != "completed"} for s in m["shards"]]  # noqa: E731
    if untimed(ma) != untimed(mb):
        diffs.append("manifest shards")
    if {k: v for k, v in ma["source"].items() if k != "root"} != {k: v for k, v in mb["source"].items() if k != "root"}:
        diffs.append("manifest source")
    for s in ma["shards"]:
        if (Path(a) / s["file"]).read_bytes() != (Path(b) / s["file"]).read_bytes():
            diffs.append(f"bytes of {s['file']}")
    return diffs


def differing_by_id(a: Path, b: Path) -> list[str]:
    """What readers see differently in two caches of the same inputs, compared by id (row order and
    shard layout may differ, as between an updated cache and one made from scratch): ids, labels,
    splits, pooled and maps; an empty list when they read the same."""
    from featcache.shared.cache._reader import FeatureCache

    ca, cb = FeatureCache(a), FeatureCache(b)
    ra, rb = ca.load_pooled(), cb.load_pooled()
    oa, ob = np.argsort(ra.id.astype(str)), np.argsort(rb.id.astype(str))
    if ra.id[oa].tolist() != rb.id[ob].tolist():
        return ["ids"]
    diffs = [k for k in ("label", "split", "pooled") if getattr(ra, k)[oa].tobytes() != getattr(rb, k)[ob].tobytes()]
    if ca.classes != cb.classes:
        diffs.append("classes")
    ma = {int(i): m for index, maps in ca.iter_maps() for i, m in zip(index, maps, strict=True)}
    mb = {int(i): m for index, maps in cb.iter_maps() for i, m in zip(index, maps, strict=True)}
    if len(ma) != len(ra) or any(
        ma[i].tobytes() != mb[j].tobytes() for i, j in zip(ra.index[oa].tolist(), rb.index[ob].tolist(), strict=True)
    ):
        diffs.append("maps")
    return diffs
