"""A fixed handful of tests/hostile.py's variants, run in the suite (the random corpus, every
command on every variant: ``python tests/hostile.py --seed N --variants N``).

Each variant is a damaged copy of one small cache and one sweep run made from it, with a decoy
folder beside them; each command runs in its own process under the script's resource limits, and
must exit 0 with correct output or 1/2 with one ``error:`` line and no traceback, in time, leaving
everything outside the cache, the run and its output folder unchanged (tests/hostile.py: judge).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from conftest import extract, make_sample
from hostile import Base, run_variant

from featcache.trainer.api import train

INSPECT = ["summary", "ls", "show", "export", "verify"]

# (mutators, as "name:kind" where the kind matters; commands)
CASES = {
    "control": ([], [*INSPECT, "neighbours", "train report"]),
    "links-and-fifos": (["planted:fifo", "shard_file:fifo"], [*INSPECT, "verify --fix"]),
    "paths-outside": (["shard_entry:dotdot", "part_log:outside"], ["summary", "export", "verify --fix"]),
    "shard-to-decoy": (["shard_file:decoy-link", "planted:link"], ["show", "export", "verify --fix"]),
    "forged-content": (["non_finite:pooled", "labels"], ["export", "neighbours", "verify"]),
    "bad-manifest": (["manifest_bytes:deep", "listing:wrong-length"], ["summary", "verify"]),
    "bad-run": (["run_results:heads-link"], ["train report"]),
    "hostile-source": (["source_folder:fifo"], ["extract fresh"]),
}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Base:
    """The script's base, made in-process (TensorFlow is already loaded by the suite): the same
    sample, shard size and backbone as tests/hostile.py's build_base."""
    root = tmp_path_factory.mktemp("hostile")
    make_sample(root / "src", per_class=4, classes=3, seed=1)
    extract(root / "src", root / "cache", batch_size=4)
    run = train(root / "cache", epochs=1, runs=root / "runs", progress=False).run_dir
    return Base(root / "src", root / "cache", Path(run))


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_variant_every_command_survives(base, tmp_path, case):
    mutations, commands = CASES[case]
    number = 0 if case == "control" else 1
    outcomes = run_variant(base, tmp_path, number, mutations, commands, random.Random(0), log=lambda m: None)
    assert sorted(o.command for o in outcomes) == sorted(commands)
    failed = [f"{o.command}: {o.result}" for o in outcomes if o.failed]
    assert not failed, failed
    if case == "control":
        assert all(o.result == "ok" for o in outcomes)
