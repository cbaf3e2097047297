"""Print featcache's module graph by rooms, and the measures issue #25 names, for any checkout.

    .venv/bin/python docs/module_graph.py [CHECKOUT]      # default: this repository

A *room* is a folder of product code (``featcache/``, ``extractor/``, ``trainer/``, ``trainer/heads/``,
``shared/cache/``, ``shared/backbones/``, ``shared/inspection/``, the rest of ``shared/``). For each room the
page lists the rooms it imports (with how many of their modules), the modules of ``shared/cache`` other rooms
import (the cache's front door: its package namespace, ``schema`` and ``fsutil``, or its insides), the import cycles,
where h5py is imported and HDF5 files opened, the functions over 100 lines and where
``FEATCACHE_WEIGHTS`` is read. Nothing is imported or run: the code is read as text (``ast``), so the
script works on old checkouts too (``git worktree add /tmp/old <commit>``), which is how a move is shown
before and after. ``tests/test_architecture.py`` uses :func:`module_imports` for its import rules.
"""

from __future__ import annotations

import argparse
import ast
import tomllib
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ("featcache", "shared", "extractor", "trainer")
LONG = 100  # lines: a function longer than this is several ideas
# sub-packages drawn as rooms of their own (a checkout without one simply has no such room)
SUBROOMS = {("shared", "cache"), ("shared", "inspection"), ("shared", "backbones"), ("trainer", "heads")}


def module_files(root: Path) -> dict[str, Path]:
    """featcache's modules (dotted names, as pyproject's ``package-dir`` maps the folders) -> their files."""
    dirs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    files = {}
    for pkg, folder in dirs.items():
        for p in (root / folder).rglob("*.py"):
            parts = p.relative_to(root / folder).with_suffix("").parts
            files[".".join((pkg, *parts)).removesuffix(".__init__")] = p
    return files


def module_imports(root: Path = REPO) -> dict[str, set[str]]:
    """Each featcache module -> the featcache modules it imports anywhere in its body (a function's lazy import
    counts: it is still a dependency), except under ``if TYPE_CHECKING:`` (never run). ``from pkg import name``
    counts as importing ``pkg.name`` when that is a module, else ``pkg``."""
    files = module_files(root)

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


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """The modules that reach themselves through their imports (sorted)."""
    out = []
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m == start:
                out.append(start)
                break
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
    return sorted(out)


def room(module: str) -> str:
    """The folder a module lives in, as a reader of the tree names it."""
    parts = module.split(".")[1:]
    if not parts:
        return "featcache"
    if len(parts) > 1 and (parts[0], parts[1]) in SUBROOMS:
        return f"{parts[0]}/{parts[1]}"
    return parts[0]


def long_functions_in(source: str, where: str, limit: int = LONG) -> list[str]:
    """``where:name (lines)`` for every function or method (nested ones too) of ``source`` longer than
    ``limit`` lines, counted from its ``def`` line to its last (decorators excluded: a typer command's
    options are in its signature, which counts)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > limit:
                out.append(f"{where}:{node.name} ({lines})")
    return out


def long_functions(root: Path, limit: int = LONG) -> list[str]:
    """:func:`long_functions_in` over every product file of the checkout ``root``."""
    files = sorted(p for d in PRODUCT for p in (root / d).rglob("*.py"))
    return [hit for p in files for hit in long_functions_in(p.read_text(), str(p.relative_to(root)), limit)]


def _files_where(root: Path, test) -> list[str]:  # noqa: ANN001
    return sorted(
        str(p.relative_to(root)) for d in PRODUCT for p in (root / d).rglob("*.py") if test(p, ast.parse(p.read_text()))
    )


def _imports_h5py(p: Path, tree: ast.AST) -> bool:
    return any(
        (isinstance(n, ast.Import) and any(a.name.split(".")[0] == "h5py" for a in n.names))
        or (isinstance(n, ast.ImportFrom) and not n.level and (n.module or "").split(".")[0] == "h5py")
        for n in ast.walk(tree)
    )


def _opens_hdf5(p: Path, tree: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) and ast.unparse(n.func) == "h5py.File" for n in ast.walk(tree))


def _reads_weights_variable(p: Path, tree: ast.AST) -> bool:
    return any(isinstance(n, ast.Constant) and n.value == "FEATCACHE_WEIGHTS" for n in ast.walk(tree))


def report(root: Path) -> str:
    """The page this script prints, as Markdown."""
    graph = module_imports(root)
    rooms: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    cache_used: dict[str, set[str]] = defaultdict(set)
    for mod, deps in graph.items():
        for dep in deps:
            if room(dep) != room(mod):
                rooms[room(mod)][room(dep)].add(dep)
                if room(dep) == "shared/cache":
                    cache_used[room(mod)].add(dep.removeprefix("featcache.shared.cache").lstrip(".") or "(package)")
    lines = [f"# module graph of {root.name} ({len(graph)} modules)", "", "| room | imports (room: modules used) |"]
    lines.append("|---|---|")
    for r in sorted({room(m) for m in graph}):
        used = ", ".join(f"{d}: {len(ms)}" for d, ms in sorted(rooms[r].items())) or "-"
        lines.append(f"| {r} ({sum(room(m) == r for m in graph)} modules) | {used} |")
    lines += ["", "| room | shared/cache modules it imports |", "|---|---|"]
    for r, mods in sorted(cache_used.items()):
        lines.append(f"| {r} | {len(mods)}: {', '.join(sorted(mods))} |")
    h5 = [f for f in _files_where(root, _imports_h5py) if not f.startswith("shared/cache/")]
    measures = {
        "import cycles (modules on one)": cycles(graph),
        "h5py imported outside shared/cache": h5,
        "files calling h5py.File": _files_where(root, _opens_hdf5),
        f"functions over {LONG} lines": long_functions(root),
        "files naming FEATCACHE_WEIGHTS": _files_where(root, _reads_weights_variable),
    }
    lines += ["", "| measure | count | where |", "|---|---:|---|"]
    lines += [f"| {k} | {len(v)} | {', '.join(v) or '-'} |" for k, v in measures.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", nargs="?", type=Path, default=REPO, help="a featcache checkout (default: this one)")
    print(report(parser.parse_args().checkout.resolve()))


if __name__ == "__main__":
    main()
