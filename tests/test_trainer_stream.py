"""The trainer streaming its inputs from the shards: the same results as in memory for the same seed,
chosen by the memory budget, and training a cache larger than a memory cap within it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import synthetic_cache
from test_trainer_views import views_cache

from featcache.shared.cache._reader import FeatureCache
from featcache.trainer import feed
from featcache.trainer.data import load_maps, memory_gb
from featcache.trainer.settings import Settings
from featcache.trainer.sweep import expand

SWEEP = expand({"head": ["linear", "mlp", "map"], "lr": [3e-3], "hidden": [8]})


def without_times(heads: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "group_wall_seconds"} for h in heads]


def test_streamed_training_equals_in_memory_training(tmp_path, monkeypatch):
    """Pooled, map and view-trained heads, TTA and the trained weights: bit for bit the same whether
    the inputs are held or read block by block (small blocks and windows: many of both per epoch)."""
    from featcache.trainer.data import load_dataset
    from featcache.trainer.loop import train

    for kind in ("pooled", "maps"):
        monkeypatch.setitem(feed.BLOCK_ROWS, kind, 8)
        monkeypatch.setitem(feed.WINDOW_ROWS, kind, 24)
    cache = FeatureCache(views_cache(tmp_path / "c", n=120))
    settings = Settings(epochs=2, batch_size=16, seed=4)
    held = load_dataset(cache, views=True)
    load_maps(cache, held)
    streamed = load_dataset(cache, views=True, pooled=False)
    assert streamed.train.pooled is None and streamed.train.maps is None and streamed.train.views is None
    a, b = (train(ds, SWEEP, settings, progress=False) for ds in (held, streamed))
    assert without_times(b.heads) == without_times(a.heads)
    assert any(h["val_acc_tta"] is not None for h in a.heads)  # views were used
    np.testing.assert_array_equal(a.mean_std, b.mean_std)
    for sa, sb in zip(a.states, b.states, strict=True):
        for k in range(sa.group.k):
            for name, w in sa.group.head_weights(k).items():
                np.testing.assert_array_equal(w, sb.group.head_weights(k)[name], err_msg=name)


def test_prefetch_hands_over_errors_and_closes_the_producer():
    closed = []

    def items(fail: bool):
        try:
            yield from range(5)
            if fail:
                raise OSError("disk gone")
        finally:
            closed.append(True)

    assert list(feed.prefetch(items(False), 2)) == [0, 1, 2, 3, 4]
    with pytest.raises(OSError, match="disk gone"):
        list(feed.prefetch(items(True), 2))
    it = feed.prefetch(items(False), 1)
    assert next(it) == 0
    it.close()  # the consumer stops early: the producer stops and closes its generator
    assert closed == [True, True, True]


# Runs in a subprocess: sweeps the small cache in memory and streamed (which also pays TensorFlow's,
# Keras' and matplotlib's one-time costs), measures the process's anonymous memory (RSS less
# file-backed pages: TensorFlow's shared libraries are ~400 MB of RSS that says nothing about the
# data held), then caps it at that baseline + MARGIN with a watchdog thread and sweeps the big cache
# streamed (the budget decides), then in memory, which the watchdog must stop. A watchdog, not RLIMIT_AS: TensorFlow
# reserves gigabytes of address space it never touches, and every thread it (or the deflate pool)
# starts reserves a 64 MB malloc arena, so an address-space cap measures reservations, not memory.
# RLIMIT_AS is still set, loosely, to protect the machine if the watchdog fails.
CAPPED = r"""
import json, os, resource, sys, threading, time
from dataclasses import replace
from pathlib import Path
small, big, runs, margin_mb = sys.argv[1], sys.argv[2], Path(sys.argv[3]), float(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
resource.setrlimit(resource.RLIMIT_AS, (8 << 30, hard))
from featcache.trainer.run import run_sweep
from featcache.trainer.settings import Settings
from featcache.trainer.sweep import expand

PAGE = os.sysconf("SC_PAGE_SIZE")
def anon_mb():
    size, resident, shared = open("/proc/self/statm").read().split()[:3]
    return (int(resident) - int(shared)) * PAGE / 2**20

configs = expand({"head": ["linear", "map"], "lr": [3e-3], "hidden": [8]})
settings = Settings(epochs=2, batch_size=64, seed=0, baselines=False, max_memory_gb=margin_mb / 1000)
def sweep(cache, **kw):
    return run_sweep(Path(cache), configs, replace(settings, **kw), runs, ["t"], log=print, progress=False)[1]

held = sweep(small, max_memory_gb=100.0)
small_streamed = sweep(small, stream=True)
base = anon_mb()
peak = [base]
def watch():
    while True:
        m = anon_mb()
        peak[0] = max(peak[0], m)
        if m > base + margin_mb:
            print("RESULT " + json.dumps({"over_cap": True, "mb": m, "base": base}), flush=True)
            os._exit(3)
        time.sleep(0.002)
threading.Thread(target=watch, daemon=True).start()
big_streamed = sweep(big)
print("RESULT " + json.dumps({"base": base, "peak": peak[0], "held": held["heads"], "small": small_streamed["heads"],
                               "big": big_streamed["heads"], "notes": big_streamed["notes"]}), flush=True)
sweep(big, max_memory_gb=100.0)  # in memory: must go over the cap
print("RESULT " + json.dumps({"over_cap": False, "peak": peak[0]}), flush=True)
"""
MARGIN_MB = 300


def test_a_cache_larger_than_the_memory_cap_trains_streamed_within_it(tmp_path):
    small = synthetic_cache(tmp_path / "small", n=200, maps_dtype="float16")
    big = synthetic_cache(tmp_path / "big", n=4000, maps_dtype="float16", shard_size=500)
    need_mb = memory_gb(FeatureCache(big), maps=True, views=False) * 1000
    assert need_mb > 1.7 * MARGIN_MB  # ~520 MB of inputs
    proc = subprocess.run(
        [sys.executable, "-c", CAPPED, str(small), str(big), str(tmp_path / "runs"), str(MARGIN_MB)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    results = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(results) == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    done, last = results
    assert "over_cap" not in done, done
    assert done["peak"] - done["base"] < MARGIN_MB
    assert without_times(done["small"]) == without_times(done["held"])
    assert any("max_memory_gb=0.3" in n for n in done["notes"])
    assert max(h["test_acc"] for h in done["big"]) > 0.9  # it learned
    assert last["over_cap"] and proc.returncode == 3  # the same sweep in memory does not fit


def test_memory_settings_are_checked():
    from featcache.trainer.settings import SettingError, make_settings

    assert make_settings({"max_memory_gb": 2, "stream": True}) == Settings(max_memory_gb=2.0, stream=True)
    with pytest.raises(SettingError, match=r"max_memory_gb=0: must be a number in \(0, inf\)"):
        make_settings({"max_memory_gb": 0})
    with pytest.raises(SettingError, match=r"stream='yes': must be true or false"):
        make_settings({"stream": "yes"})


@pytest.mark.parametrize("damage", ["fewer rows", "narrower", "strings"])
def test_a_shard_with_damaged_feature_shapes_is_one_line_when_streamed(tmp_path, damage):
    """A shard whose pooled dataset lost rows (or width) but whose manifest hash was redone: streamed
    training gave a numpy broadcast traceback, or trained on it without a word (fewer rows). The
    shapes are checked when the stream opens a shard, as the in-memory loader does."""
    import hashlib

    import h5py

    from featcache.shared.cache import schema
    from featcache.shared.cache._stream import BlockStream
    from featcache.shared.errors import FeatcacheError

    cache = synthetic_cache(tmp_path / "c", n=40, classes=2, shard_size=20)
    m = json.loads((cache / "manifest.json").read_text())
    rec = m["shards"][0]
    with h5py.File(cache / rec["file"], "r+") as f:
        pooled = f[schema.POOLED][()]
        del f[schema.POOLED]
        f[schema.POOLED] = {"fewer rows": pooled[:-1], "narrower": pooled[:, :3], "strings": pooled.astype("S4")}[
            damage
        ]
    data = (cache / rec["file"]).read_bytes()
    rec["bytes"], rec["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (cache / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(FeatcacheError, match=r"shard-00000.h5: cannot read dataset \(pooled is"):
        list(BlockStream(FeatureCache(cache), "train", shuffle=False).epoch())
