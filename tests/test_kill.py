"""A real kill -9 in the middle of a run, then a resume: the cache equals an uninterrupted one."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cachefiles import extract_command, kill_after_first_shard, read_shards
from conftest import make_sample

REPO = Path(__file__).resolve().parents[1]


def cli(src: Path, cache: Path) -> list[str]:
    return extract_command(src, cache, shard_size=6, batch_size=4)


def test_kill_during_run_then_resume_equals_uninterrupted(tmp_path):
    src = tmp_path / "src"
    make_sample(src, per_class=12, classes=4, seed=2)  # 48 images, 8 shards
    subprocess.run(cli(src, tmp_path / "whole"), check=True, cwd=REPO, capture_output=True)

    cache = tmp_path / "killed"
    done = kill_after_first_shard(cli(src, cache), cache, REPO)  # once a shard is committed
    assert 1 <= done < 8  # really interrupted

    resumed = subprocess.run(cli(src, cache), cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{done} shards already done" in resumed.stdout
    a, b = read_shards(tmp_path / "whole"), read_shards(cache)
    for key in ("pooled", "label", "index", "split", "maps"):
        assert a[key].tobytes() == b[key].tobytes(), key
    assert a["id"].tolist() == b["id"].tolist()
    assert not [p.name for p in (cache / "shards").iterdir() if p.name.startswith(".")]
