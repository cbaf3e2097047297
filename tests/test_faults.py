"""The reduced fault-injection run for CI: two kill -9 at random moments of two parts side by side,
then resume; three kills of synthetic writers' commits and folds (a single worker killed and resumed:
tests/test_kill.py; the full runs: `python tests/faults.py`, with `--parts 3` for workers, `--update`
for updates and `--commits` for commits and folds)."""

from __future__ import annotations

import pytest
from conftest import make_sample
from faults import campaign, commit_campaign


@pytest.mark.parametrize("parts,kills", [(2, 2)])
def test_random_kills_then_resume_lose_nothing(parts, kills, tmp_path):
    make_sample(tmp_path / "src", per_class=6, classes=8, seed=3)
    stats = campaign(tmp_path / "src", tmp_path, kills=kills, max_seconds=120, seed=1, log=lambda m: None, parts=parts)
    assert stats.kills == kills and stats.rounds >= 1
    assert stats.ok, (stats.verify_failures, stats.mismatches, stats.partial_files_left)


def test_kills_during_commits_and_folds_lose_no_committed_shard(tmp_path):
    """Synthetic writers (no backbone) of two parts folding every 2 records, killed at random:
    every shard reported committed survives, a plain reader agrees, the end equals a single run."""
    stats = commit_campaign(tmp_path, kills=3, max_seconds=60, seed=2, log=lambda m: None, parts=2)
    assert stats.kills == 3 and stats.rounds >= 1
    assert stats.ok, (stats.verify_failures, stats.mismatches, stats.partial_files_left)
