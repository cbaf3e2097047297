"""Every distribution featcache imports is one it declares, in the extra that needs it.

A new user installs ``.[cpu,plot]`` (README command 1), not the test extra: a module that imports a
package only the test tools bring in (click came with import-linter) works here and dies there. Two
checks catch that class of defect:

- deptry reads the imports of the product, the benchmarks and the tests and fails on a distribution
  that is missing from pyproject.toml or reached only through another package's dependencies;
- every product module is imported, and every command's ``--help`` and ``--version`` run, in a
  subprocess that can import only what an install of featcache with the given extras would bring in: the
  closure of pyproject.toml's requirements for those extras (read through the installed packages'
  metadata). Anything else raises ``ModuleNotFoundError`` as if it were not installed, so the test
  does not pass merely because this venv also holds the test extra.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
BASE_DISTRIBUTIONS = {Requirement(r).name.lower() for r in PROJECT["dependencies"]}

# Run in a subprocess: hide every module whose distribution an install of featcache[EXTRAS] would not
# bring in, then run the job given after it. argv[1]: comma-separated extras; argv[2]: JSON job.
BLOCKER = r"""
import importlib, importlib.metadata as md, json, re, sys, tomllib, traceback
from packaging.requirements import Requirement

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

extras = [e for e in sys.argv[1].split(",") if e]
project = tomllib.load(open(sys.argv[3], "rb"))["project"]
wanted = list(project["dependencies"]) + [r for e in extras for r in project["optional-dependencies"][e]]
allowed, todo = set(), [Requirement(r) for r in wanted]
while todo:
    req = todo.pop()
    if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
        continue
    name = norm(req.name)
    if name in allowed:
        continue
    allowed.add(name)
    try:
        requires = md.requires(req.name) or []
    except md.PackageNotFoundError:
        continue
    for r in map(Requirement, requires):
        if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
            todo.append(r)

hidden = {top for top, dists in md.packages_distributions().items()
          if top != "featcache" and not any(norm(d) in allowed for d in dists)}
for name in [m for m in sys.modules if m.split(".")[0] in hidden]:
    del sys.modules[name]

class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in hidden:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Hide())
job = json.loads(sys.argv[2])
if job["kind"] == "import":
    out = {}
    for module in job["modules"]:
        try:
            importlib.import_module(module)
            out[module] = "ok"
        except BaseException as exc:
            out[module] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(out))
else:
    sys.argv = job["argv"]
    module, _, attr = job["entry"].partition(":")
    getattr(importlib.import_module(module), attr)()
"""


def _product_modules() -> list[str]:
    """Every module of the installed package ``featcache`` (its folders as pyproject.toml maps them),
    ``__main__`` modules left out (importing one runs its command)."""
    folders = PYPROJECT["tool"]["setuptools"]["package-dir"]
    modules = []
    for package, folder in folders.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            if parts[-1] == "__main__":
                continue
            dotted = ".".join((package, *parts))
            modules.append(dotted.removesuffix(".__init__"))
    return modules


def _run(extras: str, job: dict, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER, extras, json.dumps(job), str(REPO / "pyproject.toml")],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


def _readme_extras() -> str:
    """The extras README command 1 installs (``pip install -q -e '.[cpu,plot]'`` -> ``cpu,plot``)."""
    first = (REPO / "README.md").read_text().split("```bash\n", 1)[1].splitlines()[0]
    return re.search(r"-e '\.\[([a-z,]+)\]'", first)[1]


def test_deptry_finds_every_imported_distribution_declared():
    p = subprocess.run([sys.executable, "-m", "deptry", "."], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def test_the_blocker_hides_what_the_extras_do_not_bring():
    """The check itself can fail: a distribution of the test extra (pytest) is hidden without it."""
    p = _run("", {"kind": "import", "modules": ["pytest", "numpy", "h5py", "typer", "tqdm"]})
    got = json.loads(p.stdout)
    assert got["pytest"].startswith("ModuleNotFoundError"), got
    assert {got[m] for m in ("numpy", "h5py", "typer", "tqdm")} == {"ok"}, got
    p = _run("test", {"kind": "import", "modules": ["pytest"]})
    assert json.loads(p.stdout) == {"pytest": "ok"}


@pytest.mark.parametrize("extras", ["", "cpu", "plot,viz,ray"])
def test_every_module_imports_with_only_its_declared_dependencies(extras):
    """Without TensorFlow a module that needs it says which extra installs it; with the extra, all import."""
    modules = _product_modules()
    assert "featcache.trainer.cli" in modules and "featcache.shared.cache._reader" in modules
    p = _run(extras, {"kind": "import", "modules": modules})
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout)
    failed = {m: why for m, why in got.items() if why != "ok"}
    if "cpu" in extras.split(","):
        assert not failed, failed
    for module, why in failed.items():
        assert why.startswith("FeatcacheError") and "pip install 'featcache[cpu]'" in why, (module, why)
    # The cache format and inspection never need TensorFlow.
    assert not [m for m in failed if m.startswith(("featcache.shared.cache", "featcache.shared.inspection"))]


@pytest.mark.parametrize("script", sorted(PROJECT["scripts"]))
def test_commands_answer_help_and_version_with_the_readme_extras(script):
    extras = _readme_extras()
    assert "test" not in extras.split(",")
    entry = PROJECT["scripts"][script]
    for flag, expected in (("--help", "Usage"), ("--version", f"featcache {PROJECT['version']}")):
        p = _run(extras, {"kind": "command", "entry": entry, "argv": [script, flag]})
        assert p.returncode == 0 and expected in p.stdout, (script, flag, p.stdout[-500:], p.stderr[-2000:])


def _imports_outside_functions(tree: ast.Module) -> list[tuple[int, str]]:
    """Absolute imports executed when the module is imported (not inside a function, nor for type
    checkers only)."""
    found = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.If) and ast.unparse(child.test) == "TYPE_CHECKING":
                continue
            if isinstance(child, ast.Import):
                found.extend((child.lineno, a.name.split(".")[0]) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.lineno, child.module.split(".")[0]))
            visit(child)

    visit(tree)
    return found


def test_optional_packages_are_imported_only_inside_the_code_that_needs_them():
    """An AST walk: at import time, product modules reach only the standard library, the base
    dependencies and TensorFlow/Keras (which :func:`import_tensorflow` guards with the extra's name)."""
    base_modules = {"numpy", "h5py", "tqdm", "typer", "featcache", "__future__"}
    assert BASE_DISTRIBUTIONS == {"numpy", "h5py", "tqdm", "typer"}
    tf = {"tensorflow", "keras"}
    folders = PYPROJECT["tool"]["setuptools"]["package-dir"].values()
    bad = []
    for folder in set(folders):
        for path in (REPO / folder).rglob("*.py"):
            for line, top in _imports_outside_functions(ast.parse(path.read_text())):
                if top in sys.stdlib_module_names or top in base_modules:
                    continue
                if top in tf and "import_tensorflow()" in path.read_text():
                    continue
                bad.append(f"{path.relative_to(REPO)}:{line}: {top}")
    assert not bad, bad
