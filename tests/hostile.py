"""A corpus of hostile caches, run directories and inputs that every command must survive (issue #17).

    .venv/bin/python tests/hostile.py                        # 40 random variants, every command (~15 min)
    .venv/bin/python tests/hostile.py --seed 3 --variants 10
    .venv/bin/python tests/hostile.py --commands summary,verify,ls --variants 100   # inspect only: fast
    .venv/bin/python tests/hostile.py --list                 # the mutators and commands

It starts from one small valid cache (the ``tiny`` backbone, ``--weights random``, 12 images in
shards of 4) and a valid run directory (a 1-epoch sweep on it). Each variant is a fresh copy of
both, with a decoy folder beside them, damaged by one to three mutators chosen at random (seeded):
hand-edited manifests (wrong types, ranges, huge or negative numbers, NaN, null, deep nesting,
non-UTF-8 bytes, truncated JSON), shard entries and files that lead outside or are not files,
links and FIFOs planted as lock, part-log and temporary names, corrupt listings, non-finite
features with the checksums forged to match, out-of-range labels, corrupt run results, and hostile
source folders and CSVs (FIFOs, PNG bombs, non-UTF-8 names, junk folders, odd headers, huge labels,
one file under two spellings).

Every command then runs on the variant in its own process under ``resource`` limits
(RLIMIT_AS, RLIMIT_CPU, RLIMIT_FSIZE) and a wall timeout. A run passes when it

- exits 0 with correct output (checked per command: what it wrote reads back and agrees with the
  cache), or exits 1 or 2 with stderr whose last line starts with ``error:`` and no ``Traceback``
  (``verify`` may instead exit 1 listing its problems);
- is not killed (timeout, RLIMIT, signal);
- leaves every file outside the variant's cache, run directory and output folder as it was: the
  decoy folder (including the files planted links point to), the source images, the base cache.

It prints a table (variant, command, outcome) and the mutations of each variant, and exits 1 if
any run failed. Variant 0 is always the undamaged control: every command must succeed on it.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from cachefiles import extract_command  # noqa: E402

from featcache.shared.cache import schema  # noqa: E402
from featcache.shared.cache.fsutil import sha256_file  # noqa: E402

BIN = Path(sys.executable).parent
GB = 1024**3
# RLIMIT_AS: TensorFlow reserves address space far beyond what it uses (a 1-epoch sweep of the tiny
# backbone fails to start under 2 GB and runs under 3 GB; tests/hostile.py --measure); the inspect
# commands never import it and run in a fraction of that.
TF_ADDRESS_SPACE = 4 * GB
INSPECT_ADDRESS_SPACE = 2 * GB
CPU_SECONDS = 300  # RLIMIT_CPU: every command here needs well under a minute of CPU
FILE_BYTES = 1 * GB  # RLIMIT_FSIZE: no command should write a file anywhere near this
WALL_SECONDS = 240.0  # per command, on a loaded 2-core machine
SHARD_SIZE = 4
DECOY_SECRET = "secret.txt"


# ------------------------------------------------------------------------------------------ the base


@dataclass
class Base:
    """The undamaged originals every variant copies: ``src`` (3 classes x 4 images), ``cache``
    (extracted from it in shards of 4) and ``run`` (a 1-epoch sweep of a linear head on it)."""

    src: Path
    cache: Path
    run: Path


def tiny_extract(src: Path, cache: Path, *extra: str) -> list[str]:
    return extract_command(src, cache, *extra, shard_size=SHARD_SIZE, batch_size=4)


def train_command(cache: Path, runs: Path) -> list[str]:
    return [str(BIN / "featcache-train"), str(cache), "--epochs", "1", "--runs", str(runs), "--no-progress"]


def build_base(work: Path, run: Path | None = None, cache: Path | None = None) -> Base:
    """Make the sample, the cache and the run (each given one is used as it is, not rebuilt)."""
    sys.path.insert(0, str(REPO / "data"))
    from make_sample import make_sample

    src = work / "base-src"
    make_sample(src, per_class=4, classes=3, seed=1)
    if cache is None:
        cache = work / "base-cache"
        subprocess.run(tiny_extract(src, cache), check=True, capture_output=True, env=child_env())
    if run is None:
        runs = work / "base-runs"
        subprocess.run(train_command(cache, runs), check=True, capture_output=True, env=child_env())
        run = next(p for p in runs.iterdir() if not p.name.startswith("."))
    return Base(src, cache, run)


def child_env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONHASHSEED": "0"}


# -------------------------------------------------------------------------------------- a variant


@dataclass
class Variant:
    """One damaged copy: ``root/cache``, ``root/run`` (its results name ``root/cache``),
    ``root/src`` (a source for a fresh extract), ``root/decoy`` (someone else's files) and
    ``root/out`` (where commands write)."""

    number: int
    root: Path
    mutations: list[str] = field(default_factory=list)
    # set by mutators: verify must report a problem (the damage is one verify is there to catch)
    verify_must_fail: bool = False
    # "mutator:kind" given by the caller: that mutator applies that kind instead of a random one
    forced: dict[str, str] = field(default_factory=dict)
    applying: str = ""

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def src(self) -> Path:
        return self.root / "src"

    @property
    def decoy(self) -> Path:
        return self.root / "decoy"

    @property
    def out(self) -> Path:
        return self.root / "out"

    def manifest(self) -> dict:
        return json.loads((self.cache / schema.MANIFEST_NAME).read_bytes())

    def write_manifest(self, m: object) -> None:
        (self.cache / schema.MANIFEST_NAME).write_text(json.dumps(m, allow_nan=True))

    def shard_files(self) -> list[Path]:
        return sorted((self.cache / schema.SHARDS_DIR).glob("shard-*.h5"))

    def forge_checksums(self) -> None:
        """Make the manifest's ``bytes`` and ``sha256`` match the shard files (a thorough forger)."""
        m = self.manifest()
        for rec in m["shards"]:
            p = self.cache / rec["file"]
            if p.is_file():
                rec["bytes"], rec["sha256"] = p.stat().st_size, sha256_file(p)
        self.write_manifest(m)


def make_variant(base: Base, root: Path, number: int) -> Variant:
    v = Variant(number, root)
    root.mkdir(parents=True)
    shutil.copytree(base.cache, v.cache, symlinks=True)
    shutil.copytree(base.run, v.run, symlinks=True)
    results = json.loads((v.run / "results.json").read_text())
    results["cache"]["path"] = str(v.cache)  # the run's cache, moved: identity checks still apply
    (v.run / "results.json").write_text(json.dumps(results))
    shutil.copytree(base.src, v.src, symlinks=True)
    v.decoy.mkdir()
    (v.decoy / DECOY_SECRET).write_bytes(b"someone else's file\n")
    (v.decoy / "notes").mkdir()
    (v.decoy / "notes" / "todo.txt").write_bytes(b"do not touch\n")
    v.out.mkdir()
    return v


def snapshot(*roots: Path) -> dict[str, str]:
    """Every entry under ``roots``, without following links: files by sha256 (FIFOs and devices by
    kind), links by target, folders by name. Never opens anything but a regular file."""
    out: dict[str, str] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                st = os.lstat(p)
                if os.path.islink(p):
                    out[p] = "link->" + os.readlink(p)
                elif os.path.isdir(p):
                    out[p] = "dir"
                elif os.path.isfile(p):
                    out[p] = f"{st.st_mode:o}:" + sha256_file(Path(p))
                else:
                    out[p] = f"special {st.st_mode:o}"
    return out


# ---------------------------------------------------------------------------------------- mutators

Mutator = Callable[[Variant, random.Random], str]
MUTATORS: dict[str, Mutator] = {}


def mutator(fn: Mutator) -> Mutator:
    MUTATORS[fn.__name__] = fn
    return fn


DEEP = "__deeply nested__"  # written as 100000 nested JSON lists (json.dumps cannot produce them)
DEEP_JSON = "[" * 100000 + "0" + "]" * 100000


def pick(v: Variant, rng: random.Random, kinds: list[str]) -> str:
    """The kind of damage the mutator being applied does: the forced one, else a random one."""
    forced = v.forced.get(v.applying)
    if forced is not None and forced not in kinds:
        raise ValueError(f"{v.applying} has no kind {forced!r} (one of {', '.join(kinds)})")
    return forced or rng.choice(kinds)


HOSTILE_VALUES: list[tuple[str, object]] = [
    ("a string", "12"),
    ("a float", 4.5),
    ("negative", -1),
    ("huge", 10**30),
    ("2**63", 2**63),
    ("NaN", math.nan),
    ("inf", math.inf),
    ("null", None),
    ("a list", [1, 2]),
    ("an object", {"a": 1}),
    ("true", True),
    ("zero", 0),
    ("nested 100000 deep", DEEP),
]

MANIFEST_FIELDS = [
    "schema_version",
    "shard_size",
    "num_shards",
    "rows",
    "complete",
    "classes",
    "shards",
    "failed",
    "source.num_inputs",
    "source.listing_sha256",
    "source.root",
    "fingerprint",
    "fingerprint.backbone",
    "fingerprint.output_shape",
    "fingerprint.maps_dtype",
    "storage.maps_dtype",
    "storage.compression",
    "split.fractions.train",
    "shards.0.shard",
    "shards.0.rows",
    "shards.0.first_index",
    "shards.0.num_inputs",
    "shards.0.bytes",
    "shards.0.sha256",
    "shards.1",
    "classes.0",
]


def _set_path(d: object, path: str, value: object) -> bool:
    keys = path.split(".")
    for k in keys[:-1]:
        d = d[int(k)] if isinstance(d, list) else d.get(k) if isinstance(d, dict) else None
        if d is None:
            return False
    last = keys[-1]
    if isinstance(d, list):
        if int(last) >= len(d):
            return False
        d[int(last)] = value
    else:
        d[last] = value
    return True


@mutator
def manifest_field(v: Variant, rng: random.Random) -> str:
    """One manifest field set to a value of the wrong type or range."""
    m = v.manifest()
    key = rng.choice(MANIFEST_FIELDS)
    name, value = rng.choice(HOSTILE_VALUES)
    if not _set_path(m, key, value):
        return f"manifest {key}: not present"
    text = json.dumps(m, allow_nan=True).replace(json.dumps(DEEP), DEEP_JSON)
    (v.cache / schema.MANIFEST_NAME).write_text(text)
    return f"manifest {key} = {name}"


@mutator
def manifest_bytes(v: Variant, rng: random.Random) -> str:
    """manifest.json truncated, non-UTF-8, empty, a JSON scalar, or deeply nested."""
    p = v.cache / schema.MANIFEST_NAME
    data = p.read_bytes()
    kind = pick(v, rng, ["truncated", "non-utf8", "empty", "scalar", "deep", "bom", "duplicate-keys"])
    if kind == "truncated":
        p.write_bytes(data[: rng.randrange(1, len(data))])
    elif kind == "non-utf8":
        at = data.index(b'"classes"')
        p.write_bytes(data[:at] + b'"cl\xff\xfeasses"' + data[at + 9 :])
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "scalar":
        p.write_bytes(rng.choice([b"null", b"42", b'"featcache"', b"[]", b"NaN"]))
    elif kind == "deep":
        p.write_bytes(b"[" * 200000 + b"]" * 200000)
    elif kind == "bom":
        p.write_bytes(b"\xef\xbb\xbf" + data)
    else:  # the last of duplicate keys wins in Python's json: the manifest still reads as it was
        p.write_bytes(b'{"shards": 1, ' + data[1:])
    v.verify_must_fail = kind != "duplicate-keys"
    return f"manifest.json {kind}"


@mutator
def shard_entry(v: Variant, rng: random.Random) -> str:
    """A shard record's ``file`` leading outside the cache, absolute, or to a planted link."""
    m = v.manifest()
    rec = rng.choice(m["shards"])
    secret = v.decoy / DECOY_SECRET
    kind = pick(v, rng, ["dotdot", "absolute", "other-shard", "link-name", "trailing-slash", "dot-segment"])
    if kind == "dotdot":
        rec["file"] = f"../decoy/{DECOY_SECRET}"
    elif kind == "absolute":
        rec["file"] = str(secret)
    elif kind == "other-shard":
        rec["file"] = schema.shard_name(rec["shard"] + 1)
    elif kind == "link-name":
        (v.cache / "shards" / "shard-99999.h5").symlink_to(secret)
        rec["file"] = "shards/shard-99999.h5"
    elif kind == "trailing-slash":
        rec["file"] = rec["file"] + "/"
    else:
        rec["file"] = "shards/./" + Path(rec["file"]).name
    v.write_manifest(m)
    v.verify_must_fail = True
    return f"shard {rec['shard']} file entry {kind}"


@mutator
def shard_file(v: Variant, rng: random.Random) -> str:
    """A listed shard file truncated, swapped with another, or replaced by a directory, a FIFO,
    a link to /dev/zero, to a decoy file, or to a folder outside."""
    files = v.shard_files()
    p = rng.choice(files)
    kind = pick(v, rng, ["truncated", "swapped", "directory", "fifo", "dev-zero", "decoy-link", "empty", "garbage"])
    if kind == "truncated":
        data = p.read_bytes()
        p.write_bytes(data[: rng.randrange(0, len(data))])
    elif kind == "swapped":
        q = rng.choice([f for f in files if f != p])
        tmp = p.with_name("swap")
        p.rename(tmp)
        q.rename(p)
        tmp.rename(q)
    elif kind == "directory":
        p.unlink()
        p.mkdir()
        (p / "x").write_bytes(b"x")
    elif kind == "fifo":
        p.unlink()
        os.mkfifo(p)
    elif kind == "dev-zero":
        p.unlink()
        p.symlink_to("/dev/zero")
    elif kind == "decoy-link":
        p.unlink()
        p.symlink_to(v.decoy / DECOY_SECRET)
    elif kind == "empty":
        p.write_bytes(b"")
    else:
        p.write_bytes(os.urandom(4096))
    if rng.random() < 0.5 and kind in ("truncated", "swapped", "garbage", "empty"):
        v.forge_checksums()
        kind += " (checksums forged)"
    v.verify_must_fail = True
    return f"{p.name} {kind}"


@mutator
def shards_dir(v: Variant, rng: random.Random) -> str:
    """``shards/`` itself a link to a copy outside the cache, or a file."""
    d = v.cache / schema.SHARDS_DIR
    if rng.random() < 0.5:
        outside = v.decoy / "shards-copy"
        shutil.copytree(d, outside)
        shutil.rmtree(d)
        d.symlink_to(outside)
        kind = "a link to a folder outside"
    else:
        shutil.rmtree(d)
        d.write_bytes(b"not a folder")
        kind = "a file"
    v.verify_must_fail = True
    return f"shards/ is {kind}"


@mutator
def planted(v: Variant, rng: random.Random) -> str:
    """A link (to the decoy file) or a FIFO planted as the lock, a part lock or log, a temporary
    shard or manifest name, listing.npz or quarantine/."""
    m = v.manifest()
    last = m["shards"][-1]["shard"]
    pid = rng.choice([os.getpid(), 1, 99999])
    names = [
        ".lock",
        "parts/part-0-of-1.lock",
        "parts/part-0-of-1.json",
        f"shards/.{Path(schema.shard_name(last)).name}.tmp-{pid}",
        f".manifest.json.tmp-{pid}",
        "quarantine",
        "listing.npz",
    ]
    name = rng.choice(names)
    p = v.cache / name
    if p.exists() or p.is_symlink():
        p.unlink()
    p.parent.mkdir(exist_ok=True)
    kind = pick(v, rng, ["link", "fifo", "dir-link"])
    if kind == "link":
        p.symlink_to(v.decoy / DECOY_SECRET)
    elif kind == "dir-link":
        p.symlink_to(v.decoy / "notes")
    else:
        os.mkfifo(p)
    if name == "listing.npz":
        v.verify_must_fail = True
    return f"{name} planted as {kind}"


@mutator
def part_log(v: Variant, rng: random.Random) -> str:
    """A part log (regular file) whose shard records lead outside or lie."""
    m = v.manifest()
    (v.cache / schema.PARTS_DIR).mkdir(exist_ok=True)
    rec = dict(m["shards"][0])
    kind = pick(v, rng, ["outside", "absolute", "huge", "not-json", "wrong-types"])
    if kind == "outside":
        rec["file"] = f"../decoy/{DECOY_SECRET}"
    elif kind == "absolute":
        rec["file"] = str(v.decoy / DECOY_SECRET)
    elif kind == "huge":
        rec["shard"] = 10**18
    log: object = {
        "format": "featcache-part-log",
        "part": "0/1",
        "generation": m["created"],
        "updated": m["updated"],
        "shards": [rec],
        "failed": [],
    }
    if kind == "wrong-types":
        log = {"format": "featcache-part-log", "part": [0, 1], "generation": None, "shards": {"a": 1}, "failed": 7}
    text = "{not json" if kind == "not-json" else json.dumps(log)
    (v.cache / schema.PARTS_DIR / "part-0-of-1.json").write_text(text)
    return f"part log {kind}"


@mutator
def listing(v: Variant, rng: random.Random) -> str:
    """listing.npz corrupt, empty, of the wrong length, or with wrong dtypes."""
    p = v.cache / "listing.npz"
    kind = pick(v, rng, ["garbage", "truncated", "wrong-length", "wrong-dtype", "pickle"])
    if kind == "garbage":
        p.write_bytes(os.urandom(512))
    elif kind == "truncated":
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    else:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if kind == "wrong-length":
            arrays = {k: (a[:-3] if a.ndim else a) for k, a in arrays.items()}
        elif kind == "wrong-dtype":
            arrays = {k: (a.astype(np.float64) if a.dtype.kind in "iu" else a) for k, a in arrays.items()}
        else:
            arrays = {k: (a.astype(object) if a.ndim else a) for k, a in arrays.items()}
        with open(p, "wb") as f:
            np.savez(f, **arrays)
    return f"listing.npz {kind}"


def _edit_dataset(v: Variant, rng: random.Random, dataset: str, edit: Callable[[np.ndarray], None]) -> str:
    p = rng.choice(v.shard_files())
    with h5py.File(p, "r+") as f:
        a = f[dataset][()]
        edit(a)
        f[dataset][...] = a
    v.forge_checksums()
    return p.name


@mutator
def non_finite(v: Variant, rng: random.Random) -> str:
    """NaN or inf written into a row's pooled vector (or its maps), checksums forged to match."""
    dataset = rng.choice(["pooled", "maps"])
    value = rng.choice([np.nan, np.inf, -np.inf])

    def edit(a: np.ndarray) -> None:
        a[rng.randrange(len(a))].flat[rng.randrange(a[0].size)] = value

    name = _edit_dataset(v, rng, dataset, edit)
    v.verify_must_fail = True
    return f"{name} {dataset} has {value} (checksums forged)"


@mutator
def labels(v: Variant, rng: random.Random) -> str:
    """A label out of range (huge, negative below -1, or just past the classes), checksums forged."""
    value = rng.choice([3, 100, -2, 2**31 - 1, -(2**31)])

    def edit(a: np.ndarray) -> None:
        a[rng.randrange(len(a))] = value

    name = _edit_dataset(v, rng, "label", edit)
    v.verify_must_fail = True
    return f"{name} label = {value} (checksums forged)"


@mutator
def split_and_index(v: Variant, rng: random.Random) -> str:
    """A split code out of range or an index outside the shard, checksums forged."""
    kinds = {
        "split-high": ("split", 7),
        "split-low": ("split", -100),
        "index-huge": ("index", 10**12),
        "index-negative": ("index", -5),
    }
    dataset, value = kinds[pick(v, rng, list(kinds))]

    def edit(a: np.ndarray) -> None:
        a[rng.randrange(len(a))] = value

    name = _edit_dataset(v, rng, dataset, edit)
    v.verify_must_fail = True
    return f"{name} {dataset} = {value} (checksums forged)"


@mutator
def run_results(v: Variant, rng: random.Random) -> str:
    """The run's results.json or heads.npz corrupted, or a run file replaced by a link or FIFO."""
    kind = pick(
        v,
        rng,
        [
            "results-truncated",
            "results-field",
            "results-not-object",
            "heads-garbage",
            "heads-missing-key",
            "heads-wrong-shape",
            "heads-link",
            "results-fifo",
            "best-missing",
            "heads-nan",
        ],
    )
    results_path, heads_path = v.run / "results.json", v.run / "heads.npz"
    results = json.loads(results_path.read_text())
    if kind == "results-truncated":
        data = results_path.read_bytes()
        results_path.write_bytes(data[: len(data) // 2])
    elif kind == "results-field":
        key = rng.choice(["classes", "best", "heads", "settings", "cache", "best_head_file", "heads_file"])
        results[key] = rng.choice(HOSTILE_VALUES[:12])[1]
        results_path.write_text(json.dumps(results))
        kind += f" {key}"
    elif kind == "results-not-object":
        results_path.write_text("[1, 2, 3]")
    elif kind == "best-missing":
        results["best"] = "no-such-head"
        results_path.write_text(json.dumps(results))
    elif kind == "results-fifo":
        results_path.unlink()
        os.mkfifo(results_path)
    elif kind == "heads-link":
        heads_path.unlink()
        heads_path.symlink_to(v.decoy / DECOY_SECRET)
    elif kind == "heads-garbage":
        heads_path.write_bytes(os.urandom(300))
    else:
        with np.load(heads_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        victim = rng.choice(sorted(arrays))
        if kind == "heads-missing-key":
            del arrays[victim]
        elif kind == "heads-wrong-shape":
            arrays[victim] = np.zeros((2, 3, 5), np.float32)
        else:
            arrays[victim] = (
                np.full_like(arrays[victim], np.nan) if arrays[victim].dtype.kind == "f" else arrays[victim]
            )
        np.savez(heads_path, **arrays)
        kind += f" {victim}"
    return f"run {kind}"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(path: Path, side: int) -> None:
    """A few hundred bytes of PNG declaring ``side`` x ``side`` gray pixels."""
    rows = zlib.compress(b"\x00" * (side + 1) * 16)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", rows))


@mutator
def source_folder(v: Variant, rng: random.Random) -> str:
    """The fresh-extract source gets a FIFO, a PNG bomb, a non-UTF-8 name, junk folders, a link
    to the decoy, an empty file or an unreadable file."""
    cls = rng.choice(sorted(d for d in v.src.iterdir() if d.is_dir()))
    kind = pick(v, rng, ["fifo", "bomb", "non-utf8", "junk", "link", "empty", "unreadable", "dev-link"])
    if kind == "fifo":
        os.mkfifo(cls / "pipe.png")
    elif kind == "bomb":
        png_bomb(cls / "bomb.png", 200000)
    elif kind == "non-utf8":
        shutil.copy(next(cls.iterdir()), os.path.join(os.fsencode(cls), b"caf\xe9-\xff.jpg"))
        os.mkdir(os.path.join(os.fsencode(v.src), b"cl\xe9ss"))
        shutil.copy(next(cls.iterdir()), os.path.join(os.fsencode(v.src), b"cl\xe9ss", b"a.jpg"))
    elif kind == "junk":
        for junk in ("__MACOSX", ".ipynb_checkpoints", ".git"):
            (v.src / junk).mkdir()
            (v.src / junk / "._x.jpg").write_bytes(b"\x00\x05\x16\x07junk")
    elif kind == "link":
        (cls / "decoy.jpg").symlink_to(v.decoy / DECOY_SECRET)
    elif kind == "dev-link":
        (cls / "zero.jpg").symlink_to("/dev/zero")
    elif kind == "empty":
        (cls / "empty.jpg").write_bytes(b"")
    else:
        p = cls / "locked.jpg"
        shutil.copy(next(q for q in cls.iterdir() if q.is_file()), p)
        p.chmod(0)
    return f"source {cls.name}/ {kind}"


@mutator
def source_csv(v: Variant, rng: random.Random) -> str:
    """The fresh-extract source is a CSV with an odd header, huge labels, duplicate spellings."""
    images = sorted(p for p in v.src.rglob("*") if p.is_file())
    kind = pick(v, rng, ["odd-header", "huge-labels", "two-spellings", "non-utf8", "ragged", "bom"])
    rows = [[str(p.relative_to(v.src)), p.parent.name] for p in images]
    header = ["path", "label"]
    if kind == "odd-header":
        header = rng.choice([["PATH ", " Label"], ["label", "path"], ["", ""], ["path", "path"], ["x"] * 5])
    elif kind == "huge-labels":
        rows = [[r[0], str(rng.choice([10**30, 2**63, -(10**18), 7]))] for r in rows]
    elif kind == "two-spellings":
        rows += [["./" + r[0], r[1]] for r in rows[:3]] + [[str(v.src / r[0]), r[1]] for r in rows[3:5]]
    elif kind == "ragged":
        rows = [r + ["x"] * rng.randrange(0, 4) for r in rows]
    text = "\n".join(",".join(r) for r in [header, *rows]) + "\n"
    data = text.encode()
    if kind == "non-utf8":
        data = data.replace(b"checker", b"check\xffer", 1)
    elif kind == "bom":
        data = b"\xef\xbb\xbf" + data
    (v.src / "list.csv").write_bytes(data)
    return f"source CSV {kind}"


# ---------------------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class Command:
    name: str
    argv: Callable[[Variant, Base], list[str]]
    tensorflow: bool = False


def _inspect(*args: str) -> Callable[[Variant, Base], list[str]]:
    return lambda v, b: [str(BIN / "featcache-inspect"), args[0], str(v.cache), *args[1:]]


def _fresh_source(v: Variant) -> Path:
    return v.src / "list.csv" if (v.src / "list.csv").exists() else v.src


COMMANDS: list[Command] = [
    Command("summary", _inspect("summary")),
    Command("summary --json", _inspect("summary", "--json")),
    Command("ls", _inspect("ls")),
    Command("show", _inspect("show", "0")),
    Command("neighbours", _inspect("neighbours", "0", "-k", "3")),
    Command("duplicates", _inspect("neighbours", "--duplicates")),
    Command("export", lambda v, b: [str(BIN / "featcache-inspect"), "export", str(v.cache), str(v.out / "export")]),
    Command(
        "report",
        lambda v, b: [
            str(BIN / "featcache-inspect"),
            "report",
            str(v.cache),
            str(v.out / "report.html"),
            "--embedding",
            "pca",
            "--folds",
            "2",
        ],
    ),
    Command("verify", _inspect("verify", "--no-progress")),
    Command(
        "train predict",
        lambda v, b: [str(BIN / "featcache-train"), "predict", str(v.run), str(v.out / "pred.csv"), "--split", "all"],
        tensorflow=True,
    ),
    Command(
        "train report",
        lambda v, b: [str(BIN / "featcache-train"), "report", str(v.run), str(v.out / "run.html")],
    ),
    Command("train", lambda v, b: train_command(v.cache, v.out / "runs"), tensorflow=True),
    Command("verify --fix", _inspect("verify", "--fix", "--no-progress")),
    Command("extract resume", lambda v, b: tiny_extract(b.src, v.cache), tensorflow=True),
    Command("extract fresh", lambda v, b: tiny_extract(_fresh_source(v), v.out / "fresh"), tensorflow=True),
]
COMMAND_NAMES = [c.name for c in COMMANDS]


def limits(address_space: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
        resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS))
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_BYTES, FILE_BYTES))
        os.setsid()

    return apply


@dataclass
class Outcome:
    variant: int
    command: str
    result: str  # "ok", "error: ..." (a one-line refusal), "problems" (verify) or "FAIL: ..."
    seconds: float

    @property
    def failed(self) -> bool:
        return self.result.startswith("FAIL")


def run_command(v: Variant, base: Base, cmd: Command, wall: float = WALL_SECONDS) -> tuple[int | None, str, str]:
    argv = cmd.argv(v, base)
    proc = subprocess.Popen(
        argv,
        cwd=v.out,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
        preexec_fn=limits(TF_ADDRESS_SPACE if cmd.tensorflow else INSPECT_ADDRESS_SPACE),
    )
    try:
        out, err = proc.communicate(timeout=wall)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        return None, "", ""
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def judge(v: Variant, base: Base, cmd: Command, rc: int | None, out: str, err: str) -> str:
    """The outcome of one run (see the module docstring)."""
    if rc is None:
        return "FAIL: timeout"
    if rc < 0:
        return f"FAIL: killed by signal {-rc}"
    if "Traceback" in err or "Traceback" in out:
        return "FAIL: traceback: " + _last_line(err)
    if rc == 0:
        if cmd.name == "verify" and v.verify_must_fail:
            return "FAIL: verify passed a damaged cache"
        problem = check_output(v, base, cmd, out)
        return f"FAIL: exit 0 but {problem}" if problem else "ok"
    if cmd.name.startswith("verify") and rc == 1 and _last_line(err) == "":
        return "problems" if out.strip() else "FAIL: verify exit 1 with nothing said"
    if rc in (1, 2) and _last_line(err).startswith("error:"):
        if v.number == 0:
            return "FAIL: the control failed: " + _last_line(err)
        return _last_line(err)[:90]
    return f"FAIL: exit {rc}: {_last_line(err)[:200]}"


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def check_output(v: Variant, base: Base, cmd: Command, out: str) -> str | None:
    """Why a run that exited 0 did not do its job, or None. What it wrote must read back and agree
    with the undamaged cache where the two share rows (ids, labels, pooled)."""
    from cachefiles import read_shards

    want = read_shards(base.cache)
    by_id = {i: k for k, i in enumerate(want["id"].tolist())}
    nclasses = len(json.loads((base.cache / schema.MANIFEST_NAME).read_text())["classes"])
    if cmd.name in ("summary", "ls", "show", "neighbours", "verify", "verify --fix") and not out.strip():
        return "printed nothing"
    if cmd.name == "summary --json":
        try:
            json.loads(out)
        except ValueError as exc:
            return f"stdout is not JSON ({exc})"
    if cmd.name == "export":
        with np.load(v.out / "export.npz", allow_pickle=False) as z:
            ids, lab, pooled = z["id"].astype(str).tolist(), z["label"], z["pooled"]
        with open(v.out / "export.csv", newline="") as f:
            rows = list(csv.reader(f))[1:]
        if len(rows) != len(ids) or len(set(ids)) != len(ids):
            return f"export: {len(rows)} CSV rows, {len(ids)} ids ({len(set(ids))} distinct)"
        if not np.all(np.isfinite(pooled)):
            return "export: non-finite pooled values exported"
        for i, k in enumerate(ids):
            if (
                k not in by_id
                or lab[i] != want["label"][by_id[k]]
                or not np.array_equal(pooled[i], want["pooled"][by_id[k]])
            ):
                return f"export: row {k!r} differs from the cache it came from"
        if v.number == 0 and len(ids) != len(want["id"]):
            return "export: rows missing"
    if cmd.name == "train predict":
        with open(v.out / "pred.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        if v.number == 0 and len(rows) != len(want["id"]):
            return f"predict: {len(rows)} rows, not {len(want['id'])}"
        for r in rows:
            probs = [float(x) for k, x in r.items() if k.startswith("p_") or k.startswith("prob")]
            if probs and (not all(math.isfinite(p) for p in probs) or abs(sum(probs) - 1) > 1e-3):
                return f"predict: probabilities of {r.get('id')!r} are {probs}"
    if cmd.name == "train":
        runs = [p for p in (v.out / "runs").iterdir() if not p.name.startswith(".")]
        if len(runs) != 1 or not (runs[0] / "results.json").is_file():
            return "train: no run directory with results.json"
        best = json.loads((runs[0] / "results.json").read_text())["best"]
        if not isinstance(best, dict | str) or best is None:
            return "train: no best head"
    if cmd.name in ("extract resume", "extract fresh"):
        cache = v.cache if cmd.name == "extract resume" else v.out / "fresh"
        from featcache.shared.inspection.verify import verify

        report = verify(cache, sample_rows=4)
        if report.problems:
            return f"{cmd.name}: the cache it left fails verify: {report.problems[0]}"
        if cmd.name == "extract resume":
            got = read_shards(cache)
            if sorted(got["id"].tolist()) != sorted(want["id"].tolist()):
                return "extract resume: the resumed cache's ids are not the source's"
            if any(int(lab) >= nclasses for lab in got["label"]):
                return "extract resume: labels out of range"
    if cmd.name in ("report", "train report"):
        page = v.out / ("report.html" if cmd.name == "report" else "run.html")
        if not page.is_file() or b"</html>" not in page.read_bytes()[-200:].lower():
            return f"{cmd.name}: no complete HTML page"
    return None


# ------------------------------------------------------------------------------------- the campaign


def choose(rng: random.Random, number: int, allowed: list[str]) -> list[str]:
    """The mutators of variant ``number``: none for the control (0), else one to three."""
    if number == 0:
        return []
    chosen = rng.sample(allowed, rng.choice([1, 1, 2, 3]))
    # content first: the mutators that forge checksums read the manifest, which others may break
    return sorted(chosen, key=lambda name: name.startswith("manifest"))


def run_variant(
    base: Base, work: Path, number: int, mutations: list[str], commands: list[str], rng: random.Random, log=print
) -> list[Outcome]:
    v = make_variant(base, work / f"v{number:03d}", number)
    for spec in mutations:
        name, _, kind = spec.partition(":")
        v.applying = name
        if kind:
            v.forced[name] = kind
        try:
            v.mutations.append(MUTATORS[name](v, rng))
        except Exception as exc:  # a mutator that cannot apply (an earlier one removed what it edits)
            v.mutations.append(f"{name}: not applied ({type(exc).__name__}: {exc})")
    outside = (v.decoy, v.src, base.src, base.cache, base.run)
    before = snapshot(*outside)
    outcomes = []
    for cmd in (c for c in COMMANDS if c.name in commands):
        t0 = time.monotonic()
        rc, out, err = run_command(v, base, cmd)
        result = judge(v, base, cmd, rc, out, err)
        after = snapshot(*outside)
        if after != before:
            changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            result = f"FAIL: changed outside the cache: {', '.join(os.path.relpath(c, work) for c in changed[:3])}"
            before = after
        outcomes.append(Outcome(number, cmd.name, result, time.monotonic() - t0))
        log(f"v{number:<3} {cmd.name:<15} {time.monotonic() - t0:6.1f}s  {result}")
    log(f"v{number:<3} mutations: {'; '.join(v.mutations) or 'none (control)'}")
    return outcomes


def table(outcomes: list[Outcome]) -> str:
    counts: dict[str, dict[str, int]] = {}
    for o in outcomes:
        kind = "FAIL" if o.failed else "ok" if o.result == "ok" else "problems" if o.result == "problems" else "error"
        counts.setdefault(o.command, {"ok": 0, "error": 0, "problems": 0, "FAIL": 0})[kind] += 1
    lines = [f"{'command':<16}{'ok':>6}{'error:':>8}{'verify':>8}{'FAIL':>6}"]
    for name, c in counts.items():
        lines.append(f"{name:<16}{c['ok']:>6}{c['error']:>8}{c['problems']:>8}{c['FAIL']:>6}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0, help="seed of the mutators' choices (default 0)")
    ap.add_argument("--variants", type=int, default=40, help="damaged variants, besides the control (default 40)")
    ap.add_argument("--commands", default=",".join(COMMAND_NAMES), help="comma-separated commands (default: all)")
    ap.add_argument("--mutators", default=",".join(MUTATORS), help="comma-separated mutators (default: all)")
    ap.add_argument("--list", action="store_true", help="list the mutators and commands, then stop")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (printed) for inspection")
    args = ap.parse_args()
    if args.list:
        for name, fn in MUTATORS.items():
            print(f"mutator {name:<16} {(fn.__doc__ or '').splitlines()[0]}")
        print("commands: " + ", ".join(COMMAND_NAMES))
        return
    commands = [c.strip() for c in args.commands.split(",")]
    mutators = [m.strip() for m in args.mutators.split(",")]
    unknown = sorted(set(commands) - set(COMMAND_NAMES)) + sorted(
        {m.partition(":")[0] for m in mutators} - set(MUTATORS)
    )
    if unknown:
        ap.error(f"unknown: {', '.join(unknown)}")
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="featcache-hostile-"))
    outcomes: list[Outcome] = []
    try:
        base = build_base(work)
        for number in range(args.variants + 1):
            outcomes += run_variant(base, work, number, choose(rng, number, mutators), commands, rng)
        print(table(outcomes))
        for o in outcomes:
            if o.failed:
                print(f"FAILED: v{o.variant} {o.command}: {o.result}")
        print(f"command: {' '.join([os.path.relpath(sys.executable), *sys.argv])}")
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            for p in work.rglob("*"):  # unreadable files planted by the source mutator
                if not p.is_symlink() and p.is_file():
                    p.chmod(0o644)
            shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if any(o.failed for o in outcomes) else 0)


if __name__ == "__main__":
    main()
