"""The architecture and the style are enforced, not hoped for: ruff, the import contracts and mypy.

The contracts live in ``pyproject.toml`` (``[tool.importlinter]``): the extractor and the trainer
never import each other, ``shared`` never imports either, the cache format imports neither
TensorFlow nor the backbone registry nor the inspect command. import-linter walks a package's folder,
and featcache's sub-packages live in folders beside ``featcache/`` (see ``[tool.setuptools]``), so
the check runs on a plain (non-editable) install of the project into a temporary folder; so does
mypy's (``[tool.mypy]``), which resolves ``featcache.*`` the same way.
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


def _mypy(site: Path, cache_dir: Path) -> subprocess.CompletedProcess:
    """mypy over the package installed in ``site``, configured by pyproject.toml's ``[tool.mypy]``,
    with the test interpreter's libraries (numpy's and typer's types)."""
    cmd = [_tool("mypy"), "-p", "featcache", "--config-file", str(REPO / "pyproject.toml")]
    cmd += ["--python-executable", sys.executable, "--cache-dir", str(cache_dir), "--no-error-summary"]
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    return subprocess.run(cmd, cwd=site, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory) -> Path:
    """One mypy cache for the module's runs: the second checks only what changed."""
    return tmp_path_factory.mktemp("mypy_cache")


def test_types(installed, mypy_cache):
    """The product code passes mypy (``[tool.mypy]`` in pyproject.toml)."""
    p = _mypy(installed, mypy_cache)
    assert p.returncode == 0, p.stdout + p.stderr


def test_a_type_error_is_caught(installed, mypy_cache, tmp_path):
    """The check can fail: a function that returns a str where it says int."""
    copy = tmp_path / "site"
    shutil.copytree(installed, copy)
    bad = copy / "featcache" / "shared" / "cache" / "schema.py"
    bad.write_text(bad.read_text() + '\n\ndef _broken() -> int:\n    return "not an int"\n')
    p = _mypy(copy, mypy_cache)
    assert p.returncode == 1 and "schema.py" in p.stdout and "[return-value]" in p.stdout, p.stdout + p.stderr


def _module_imports() -> dict[str, set[str]]:
    """featcache's modules (dotted names, as pyproject's package-dir maps the folders) and the featcache
    modules each one imports anywhere in its body (a function's lazy import counts: it is still a
    dependency), except under ``if TYPE_CHECKING:`` (never run)."""
    import ast
    import tomllib

    dirs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    files = {}
    for pkg, folder in dirs.items():
        for p in (REPO / folder).rglob("*.py"):
            parts = p.relative_to(REPO / folder).with_suffix("").parts
            files[".".join((pkg, *parts)).removesuffix(".__init__")] = p

    def known(name: str) -> str | None:
        while name not in files and "." in name:
            name = name.rsplit(".", 1)[0]
        return name if name in files else None

    def visit(node: ast.AST, package: str, edges: set[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test) == "TYPE_CHECKING":
                continue
            if isinstance(child, ast.Import):
                edges.update(filter(None, (known(a.name) for a in child.names)))
            elif isinstance(child, ast.ImportFrom):
                base = package
                for _ in range(child.level - 1):
                    base = base.rsplit(".", 1)[0]
                target = child.module if not child.level else ".".join(filter(None, (base, child.module)))
                for a in child.names:
                    edges.update(filter(None, [known(f"{target}.{a.name}") or known(target)]))
            visit(child, package, edges)

    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        edges: set[str] = set()
        visit(ast.parse(path.read_text()), mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0], edges)
        graph[mod] = edges - {mod}
    return graph


def test_no_import_cycle():
    """No module imports (directly or through others) a module that imports it back: a cycle means two
    modules that can only be understood, changed and tested together."""
    graph = _module_imports()
    # the walk sees lazy imports (reader -> tfdata inside dataset()) and skips TYPE_CHECKING ones
    assert "featcache.shared.cache.tfdata" in graph["featcache.shared.cache.reader"]
    assert "featcache.shared.cache.blocks" in graph["featcache.shared.cache.tfdata"]
    assert "featcache.shared.cache.reader" not in graph["featcache.shared.cache.tfdata"]
    cycles = []
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m == start:
                cycles.append(start)
                break
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
    assert not cycles, f"modules on an import cycle: {sorted(cycles)}"


def _third_party_imports(path: Path) -> set[str]:
    """Top-level names of the modules ``path`` imports anywhere in its body (absolute imports only)."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_cache_format_imports_h5py():
    """The cache has one front door: HDF5 files are opened only in ``shared/cache/`` (shards for reading
    only through ``shard.open_shard_file``, with every check), so a check added there covers every reader."""
    product = [p for d in ("featcache", "shared", "extractor", "trainer") for p in (REPO / d).rglob("*.py")]
    outside = sorted(
        str(p.relative_to(REPO))
        for p in product
        if "h5py" in _third_party_imports(p) and not p.is_relative_to(REPO / "shared" / "cache")
    )
    assert not outside, f"h5py imported outside shared/cache: {outside}"
    readers = sorted(
        str(p.relative_to(REPO)) for p in (REPO / "shared" / "cache").rglob("*.py") if _opens_for_reading(p)
    )
    # shards through the one opener; rows.h5, the row index, is derived data rowindex.py checks itself
    assert readers == ["shared/cache/rowindex.py", "shared/cache/shard.py"], readers


def _opens_for_reading(path: Path) -> bool:
    """Whether ``path`` calls ``h5py.File(..., "r")``."""
    import ast

    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and ast.unparse(node.func) == "h5py.File"
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value == "r"
        ):
            return True
    return False


PRODUCT = ("featcache", "shared", "extractor", "trainer")
MAX_FUNCTION_LINES = 100


def _long_functions(source: str, where: str, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``where:name (lines)`` for every function or method (nested ones too) of ``source`` longer than
    ``limit`` lines, counted from its ``def`` line to its last (decorators excluded: a typer command's
    options are in its signature, which counts)."""
    import ast

    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > limit:
                out.append(f"{where}:{node.name} ({lines})")
    return out


def test_no_function_over_100_lines():
    """No function or method of the product code is over 100 lines: a longer one does several things
    that want names of their own (one function per part of a page, per phase of a job)."""
    files = sorted(p for d in PRODUCT for p in (REPO / d).rglob("*.py"))
    long = [hit for p in files for hit in _long_functions(p.read_text(), str(p.relative_to(REPO)))]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them into named parts): {long}"


def test_a_long_function_is_caught():
    """The check can fail: a generated function and a method of 101 lines are named with their length;
    one of exactly 100 lines is not."""

    def function(name: str, lines: int, indent: str = "") -> str:
        body = "".join(f"{indent}    x{i} = {i}\n" for i in range(lines - 2))
        return f"{indent}def {name}():\n{body}{indent}    return 0\n"

    source = function("fits", 100) + "\n\n" + function("too_long", 101)
    source += "\n\nclass Thing:\n" + function("method", 101, indent="    ")
    assert _long_functions(source, "pkg/mod.py") == ["pkg/mod.py:too_long (101)", "pkg/mod.py:method (101)"]
