"""The commands hide TensorFlow's C++ start-up INFO lines (TF 2.21 prints them whatever
TF_CPP_MIN_LOG_LEVEL says) and nothing else; --verbose shows them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import os, sys
from featcache.shared.quiet import hide_native_info
assert hide_native_info()
for line in sys.argv[1:]:
    os.write(2, (line + "\n").encode())   # as native code writes: straight to descriptor 2
sys.stderr.write("python-side warning\n")
"""

LINES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796618423.830465   15489 port.cc:153] oneDNN custom operations are on.",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow",
    "W0000 00:00:1796618423.830465   15489 gpu_device.cc:12] Cannot dlopen some GPU libraries.",
    "E0000 00:00:1796618423.830465   15489 cuda_executor.cc:7] failed call to cuInit",
    "F0000 00:00:1796618423.830465   15489 check.cc:1] Check failed: x == y",
    "Fatal Python error: Segmentation fault",
    "I am not a log line",
]


def test_only_info_lines_and_their_preface_are_dropped():
    p = subprocess.run([sys.executable, "-c", CHILD, *LINES], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    # the filter's lines and Python's own reach the terminal by two paths: their order may differ
    assert sorted(p.stderr.splitlines()) == sorted([*LINES[3:], "python-side warning"])


def test_verbose_keeps_everything():
    env = {**os.environ, "FEATCACHE_VERBOSE": "1"}
    code = CHILD.replace("assert hide_native_info()", "assert not hide_native_info()")
    p = subprocess.run([sys.executable, "-c", code, *LINES], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0 and sorted(p.stderr.splitlines()) == sorted([*LINES, "python-side warning"])


def test_the_extractor_command_is_quiet_unless_verbose(sample_dir, tmp_path):
    exe = Path(sys.executable).with_name("featcache-extract")
    base = [str(exe), str(sample_dir), "--backbone", "tiny", "--weights", "random", "--no-progress"]
    quiet = subprocess.run([*base[:2], str(tmp_path / "a"), *base[2:]], capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert "I0000" not in quiet.stderr and "absl::InitializeLog" not in quiet.stderr
    assert "RANDOM weights" in quiet.stderr  # featcache's own warnings stay
    loud = subprocess.run(
        [*base[:2], str(tmp_path / "b"), *base[2:], "--verbose"], capture_output=True, text=True, timeout=300
    )
    assert loud.returncode == 0 and "oneDNN custom operations" in loud.stderr
