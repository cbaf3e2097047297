"""The architecture and the style are enforced, not hoped for: ruff, and the import contracts.

The contracts live in ``pyproject.toml`` (``[tool.importlinter]``): the extractor and the trainer
never import each other, ``shared`` never imports either, the cache format imports neither
TensorFlow nor the backbone registry nor the inspect command. import-linter walks a package's folder,
and featcache's sub-packages live in folders beside ``featcache/`` (see ``[tool.setuptools]``), so
the check runs on a plain (non-editable) install of the project into a temporary folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    exe = BIN / name
    if not exe.exists():
        found = shutil.which(name)
        if found is None:
            pytest.skip(f"{name} is not installed (it comes with the test extra)")
        return found
    return str(exe)


def test_ruff_lint_and_format():
    lint = subprocess.run([_tool("ruff"), "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run(
        [_tool("ruff"), "format", "--check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True
    )
    assert fmt.returncode == 0, "not formatted (run `ruff format .`):\n" + fmt.stdout + fmt.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The project installed (not editable, no dependencies) into a temporary folder."""
    target = tmp_path_factory.mktemp("installed")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target)]
    p = subprocess.run([*cmd, str(REPO)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return target


def test_import_contracts(installed):
    env = {**os.environ, "PYTHONPATH": str(installed)}
    config = str(REPO / "pyproject.toml")
    p = subprocess.run(
        [_tool("lint-imports"), "--no-cache", config], cwd=installed, env=env, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "0 broken" in p.stdout


def test_a_broken_contract_is_caught(installed, tmp_path):
    """The check can fail: a cache module that imports TensorFlow breaks a contract."""
    copy = tmp_path / "site"
    shutil.copytree(installed, copy)
    bad = copy / "featcache" / "shared" / "cache" / "schema.py"
    bad.write_text(bad.read_text() + "\nimport tensorflow  # noqa\n")
    env = {**os.environ, "PYTHONPATH": str(copy)}
    config = str(REPO / "pyproject.toml")
    p = subprocess.run([_tool("lint-imports"), "--no-cache", config], cwd=copy, env=env, capture_output=True, text=True)
    assert p.returncode != 0 and "BROKEN" in p.stdout
