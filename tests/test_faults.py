"""The reduced fault-injection run for CI: two kill -9 at random moments of two parts side by side,
then resume (a single worker killed and resumed: tests/test_kill.py; the full run, 20 kills on 300
images: `python tests/faults.py`, with `--parts 3` for workers and `--update` for updates)."""

from __future__ import annotations

import pytest
from conftest import make_sample
from faults import campaign


@pytest.mark.parametrize("parts,kills", [(2, 2)])
def test_random_kills_then_resume_lose_nothing(parts, kills, tmp_path):
    make_sample(tmp_path / "src", per_class=6, classes=8, seed=3)
    stats = campaign(tmp_path / "src", tmp_path, kills=kills, max_seconds=120, seed=1, log=lambda m: None, parts=parts)
    assert stats.kills == kills and stats.rounds >= 1
    assert stats.ok, (stats.verify_failures, stats.mismatches, stats.partial_files_left)
