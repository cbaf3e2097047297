"""The architecture and the style are enforced, not hoped for: ruff, the import contracts and mypy.

The contracts live in ``pyproject.toml`` (``[tool.importlinter]``): the extractor and the trainer
never import each other, ``shared`` never imports either, the cache format imports neither
TensorFlow nor the backbone registry nor the inspect command. import-linter walks a package's folder,
and featcache's sub-packages live in folders beside ``featcache/`` (see ``[tool.setuptools]``), so
the check runs on a plain (non-editable) install of the project into a temporary folder; so does
mypy's (``[tool.mypy]``), which resolves ``featcache.*`` the same way.

Rules of our own follow, each shown able to fail on a planted violation: h5py only in the cache format,
one reader of ``$FEATCACHE_WEIGHTS``, one lazy TensorFlow import in the backbone package, one
error-to-exit translation for the three CLIs.
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


def _not_sources(folder: str, names: list[str]) -> list[str]:
    """What a copy of the tree to install from leaves out: build output, caches, runs, dot folders (.venv)."""
    top = Path(folder) == REPO
    generated = [n for n in names if n == "__pycache__" or n.endswith(".egg-info")]
    return generated + [n for n in names if top and (n.startswith(".") or n in ("build", "cache", "runs"))]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The project installed (not editable, no dependencies) into a temporary folder."""
    target = tmp_path_factory.mktemp("installed")
    # from a copy of the tree without build/: setuptools would otherwise install a moved module's stale copy
    source = tmp_path_factory.mktemp("source") / "featcache"
    shutil.copytree(REPO, source, ignore=_not_sources)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target)]
    p = subprocess.run([*cmd, str(source)], capture_output=True, text=True)
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


def _module_graph():  # noqa: ANN202
    """docs/module_graph.py, the one reading of the import graph (it prints it by rooms for any checkout)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("module_graph", REPO / "docs" / "module_graph.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _module_imports() -> dict[str, set[str]]:
    """featcache's modules and the featcache modules each imports (lazy imports count, ``TYPE_CHECKING``
    ones do not): :func:`module_graph.module_imports`."""
    return _module_graph().module_imports(REPO)


def test_no_import_cycle():
    """No module imports (directly or through others) a module that imports it back: a cycle means two
    modules that can only be understood, changed and tested together."""
    graph = _module_imports()
    # the walk sees lazy imports (_reader -> _stream inside dataset()) and skips TYPE_CHECKING ones
    assert "featcache.shared.cache._stream" in graph["featcache.shared.cache._reader"]
    assert "featcache.shared.cache._blocks" in graph["featcache.shared.cache._stream"]
    assert "featcache.shared.cache._reader" not in graph["featcache.shared.cache._stream"]
    cycles = _module_graph().cycles(graph)
    assert _module_graph().cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == ["a", "b"]  # it sees one
    assert not cycles, f"modules on an import cycle: {sorted(cycles)}"


CACHE = "featcache.shared.cache"
# The cache's front door: its package namespace (shared/cache/__init__.py), the layout and the safe file operations.
CACHE_SURFACE = {CACHE, f"{CACHE}.schema", f"{CACHE}.fsutil"}


def _behind_the_front_door(graph: dict[str, set[str]]) -> list[str]:
    """``importer -> module`` for every import of a cache module other than :data:`CACHE_SURFACE` from outside
    the cache."""
    return sorted(
        f"{mod} -> {dep}"
        for mod, deps in graph.items()
        if not mod.startswith(CACHE)
        for dep in deps
        if dep.startswith(CACHE + ".") and dep not in CACHE_SURFACE
    )


def test_the_cache_is_used_through_its_public_surface():
    """Extractor, trainer, inspection and the API import ``featcache.shared.cache`` (its ``__all__``), ``schema``
    and ``fsutil``, never a private ``_`` module: the inside of the cache can change without touching them."""
    graph = _module_imports()
    private = {m for m in graph if m.startswith(CACHE + ".")} - CACHE_SURFACE
    assert private and all(m.rsplit(".", 1)[1].startswith("_") for m in private), sorted(private)
    assert not _behind_the_front_door(graph)
    # the rule sees a private import when there is one
    planted = {**graph, "featcache.trainer.planted": {f"{CACHE}._reader", CACHE}}
    assert _behind_the_front_door(planted) == [f"featcache.trainer.planted -> {CACHE}._reader"]


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
    only through ``_shard.open_shard_file``, with every check), so a check added there covers every reader."""
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
    # shards through the one opener; rows.h5, the row index, is derived data _rowindex.py checks itself
    assert readers == ["shared/cache/_rowindex.py", "shared/cache/_shard.py"], readers


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


def test_no_function_over_100_lines():
    """No function or method of the product code is over 100 lines: a longer one does several things
    that want names of their own (one function per part of a page, per phase of a job)."""
    graph = _module_graph()
    long = graph.long_functions(REPO)
    assert not long, f"functions over {graph.LONG} lines (split them into named parts): {long}"


def test_a_long_function_is_caught():
    """The check can fail: a generated function and a method of 101 lines are named with their length;
    one of exactly 100 lines is not."""

    def function(name: str, lines: int, indent: str = "") -> str:
        body = "".join(f"{indent}    x{i} = {i}\n" for i in range(lines - 2))
        return f"{indent}def {name}():\n{body}{indent}    return 0\n"

    source = function("fits", 100) + "\n\n" + function("too_long", 101)
    source += "\n\nclass Thing:\n" + function("method", 101, indent="    ")
    assert _module_graph().long_functions_in(source, "pkg/mod.py") == [
        "pkg/mod.py:too_long (101)",
        "pkg/mod.py:method (101)",
    ]


PRODUCT = ("featcache", "shared", "extractor", "trainer")
BACKBONES = Path("shared") / "backbones"
WEIGHTS_READER = BACKBONES / "weights.py"  # the one reader of $FEATCACHE_WEIGHTS
LAZY_TF = BACKBONES / "_tf.py"  # the one module of the backbone package that imports TensorFlow


def _weights_env_readers(root: Path) -> list[str]:
    """The product files under ``root`` that name the weights variable, read it from the environment
    (``os.environ[...]``, ``os.environ.get``, ``os.getenv`` of ``WEIGHTS_ENV``) or take an option from the
    environment behind the API's back (typer's ``envvar=``), other than :data:`WEIGHTS_READER`."""
    import ast

    found = []
    for p in sorted(q for d in PRODUCT for q in (root / d).rglob("*.py")):
        rel = p.relative_to(root)
        text = p.read_text()
        reads = "FEATCACHE_WEIGHTS" in text
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.keyword) and node.arg == "envvar":
                reads = True
            elif isinstance(node, (ast.Call, ast.Subscript)):
                target = ast.unparse(node.func if isinstance(node, ast.Call) else node.value)
                args = node.args if isinstance(node, ast.Call) else [node.slice]
                if target in ("os.environ", "os.environ.get", "os.getenv", "environ.get", "getenv") and any(
                    ast.unparse(a).endswith("WEIGHTS_ENV") for a in args
                ):
                    reads = True
        if reads and rel != WEIGHTS_READER:
            found.append(str(rel))
    return found


def test_one_reader_of_the_weights_variable(tmp_path):
    """``--weights auto`` means ``$FEATCACHE_WEIGHTS`` in one place, ``shared/backbones/weights.py``, so
    the command line, the API and the workers agree on it; no command reads an option from the
    environment (typer's ``envvar=``). The check can fail: a planted read is found."""
    assert "WEIGHTS_ENV" in (REPO / WEIGHTS_READER).read_text()
    assert _weights_env_readers(REPO) == []
    copy = tmp_path / "repo"
    for d in PRODUCT:
        shutil.copytree(REPO / d, copy / d, ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / "extractor" / "options.py").open("a") as f:
        f.write("\nimport os\n\nFROM_ENV = os.environ.get(WEIGHTS_ENV)\n")
    with (copy / "trainer" / "cli.py").open("a") as f:
        f.write('\nWHERE = typer.Option("imagenet", envvar="X")\n')
    with (copy / "shared" / "quiet.py").open("a") as f:
        f.write('\nNAME = "FEATCACHE_WEIGHTS"\n')
    assert _weights_env_readers(copy) == ["extractor/options.py", "shared/quiet.py", "trainer/cli.py"]


def _tensorflow_importers(folder: Path) -> list[str]:
    """The modules under ``folder`` that import TensorFlow or Keras anywhere in their body (a function's
    lazy import counts; an ``if TYPE_CHECKING:`` import, never run, does not)."""
    import ast

    def imports(node: ast.AST) -> set[str]:
        names: set[str] = set()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test) == "TYPE_CHECKING":
                continue
            if isinstance(child, ast.Import):
                names.update(a.name.split(".")[0] for a in child.names)
            elif isinstance(child, ast.ImportFrom) and not child.level and child.module:
                names.add(child.module.split(".")[0])
            names |= imports(child)
        return names

    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*.py")
        if imports(ast.parse(p.read_text())) & {"tensorflow", "keras"}
    )


def test_the_backbone_package_imports_tensorflow_in_one_place(tmp_path):
    """Every module of ``shared/backbones/`` that needs TensorFlow or Keras asks ``_tf.py`` for it (TensorFlow
    then starts with featcache's defaults, and only when a model is built). The check can fail."""
    assert _tensorflow_importers(REPO / BACKBONES) == [LAZY_TF.name]
    copy = tmp_path / "backbones"
    shutil.copytree(REPO / BACKBONES, copy, ignore=shutil.ignore_patterns("__pycache__"))
    zoo = copy / "zoo.py"
    zoo.write_text(zoo.read_text() + "\n\ndef _planted():\n    from keras import layers\n\n    return layers\n")
    assert _tensorflow_importers(copy) == [LAZY_TF.name, "zoo.py"]


def _imports_tensorflow(site: Path, module: str) -> list[str]:
    """The TensorFlow and Keras modules loaded by ``import module`` from ``site``, in a fresh interpreter."""
    loaded = "[m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')]"
    code = f"import sys, {module}\nprint(' '.join({loaded}))"
    env = {**os.environ, "PYTHONPATH": str(site)}
    p = subprocess.run([sys.executable, "-c", code], cwd=site, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p.stdout.split()


def test_importing_the_backbone_package_loads_no_tensorflow(installed, tmp_path):
    """``import featcache.shared.backbones`` loads neither TensorFlow nor Keras (the inspection commands
    and the trainer's numpy heads import the registry). The check can fail: a planted top-level import
    of Keras in one module of the package is seen."""
    assert _imports_tensorflow(installed, "featcache.shared.backbones") == []
    copy = tmp_path / "site"
    shutil.copytree(installed, copy)
    spec = copy / "featcache" / "shared" / "backbones" / "spec.py"
    spec.write_text(spec.read_text() + "\nimport keras  # noqa\n")
    assert "keras" in _imports_tensorflow(copy, "featcache.shared.backbones")


CLIS = (Path("extractor") / "cli.py", Path("trainer") / "cli.py", Path("shared") / "inspection" / "cli.py")


def _cli_stragglers(root: Path) -> list[str]:
    """What in the command-line modules under ``root`` escapes ``shared/cli.run_cli``, the one place an
    error becomes a message and an exit code: a command (``@app.command`` or ``app.command()(f)``) whose
    body never calls ``run_cli``, or an ``except`` that raises (its own translation)."""
    import ast

    found = []
    for rel in CLIS:
        tree = ast.parse((root / rel).read_text())
        functions = {f.name: f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}
        commands = {
            f.name for f in functions.values() for d in f.decorator_list if ast.unparse(d).startswith("app.command")
        }
        commands |= {
            ast.unparse(c.args[0])
            for c in ast.walk(tree)
            if isinstance(c, ast.Call) and isinstance(c.func, ast.Call) and ast.unparse(c.func.func) == "app.command"
        }
        for name in sorted(commands):
            calls = [ast.unparse(c.func) for c in ast.walk(functions[name]) if isinstance(c, ast.Call)]
            if "run_cli" not in calls:
                found.append(f"{rel}: {name} does not call run_cli")
        for handler in [h for h in ast.walk(tree) if isinstance(h, ast.ExceptHandler)]:
            if any(isinstance(n, ast.Raise) for n in ast.walk(handler)):
                found.append(f"{rel}:{handler.lineno}: an except that raises")
    return found


def test_every_command_goes_through_run_cli(tmp_path):
    """One error-to-exit translation for all three CLIs (``run_cli``: one line, exit 2, flags spelled as the
    command's own). The check can fail: a command without it and an ``except`` of its own are found."""
    assert _cli_stragglers(REPO) == []
    for rel in CLIS:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, tmp_path / rel)
    with (tmp_path / CLIS[1]).open("a") as f:
        f.write('\n\n@app.command()\ndef planted() -> None:\n    """Planted."""\n')
    with (tmp_path / CLIS[2]).open("a") as f:
        f.write(
            "\n\ndef _planted() -> None:\n    try:\n        pass\n    except KeyError:\n        raise typer.Exit(2)\n"
        )
    found = _cli_stragglers(tmp_path)
    assert found[0] == "trainer/cli.py: planted does not call run_cli" and len(found) == 2, found
    assert found[1].startswith("shared/inspection/cli.py:") and found[1].endswith("an except that raises"), found
