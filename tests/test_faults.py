"""The reduced fault-injection run for CI: a few kill -9 at random moments, then resume (the full
run, 20 kills on 300 images: `python tests/faults.py`)."""

from __future__ import annotations

from conftest import make_sample
from faults import campaign


def test_random_kills_then_resume_lose_nothing(tmp_path):
    make_sample(tmp_path / "src", per_class=6, classes=8, seed=3)
    stats = campaign(tmp_path / "src", tmp_path, kills=3, max_seconds=120, seed=1, log=lambda m: None)
    assert stats.kills == 3 and stats.rounds >= 1
    assert stats.ok, (stats.verify_failures, stats.mismatches, stats.partial_files_left)
