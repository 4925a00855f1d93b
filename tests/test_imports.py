"""Imports inside ``rmkd/`` point one way: no module imports, even from inside a
function, a module that (directly or not) imports it back.

The graph is read from the source with :mod:`ast` (nothing is imported), so a
cycle that only a function-level import closes is found too.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import rmkd

PACKAGE = Path(rmkd.__file__).parent


def module_names(root: Path, package: str) -> dict[str, Path]:
    """``{"rmkd.run": path, "rmkd.analysis": path/__init__.py, ...}`` for every file under ``root``."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _known(name: str, modules: dict) -> str | None:
    """The longest prefix of dotted ``name`` that is a module of the package (None if outside it)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def _targets(node: ast.AST, module: str, is_package: bool, modules: dict) -> list[str]:
    """The package modules an ``import`` / ``from ... import`` node loads (before parents are added)."""
    if isinstance(node, ast.Import):
        return [m for m in (_known(a.name, modules) for a in node.names) if m]
    base = module.split(".")
    if node.level:  # relative: the importer's package, then one level up per extra dot
        base = base if is_package else base[:-1]
        base = base[: len(base) - (node.level - 1)]
    else:
        base = []
    stem = ".".join(base + ([node.module] if node.module else []))
    found = []
    for alias in node.names:
        # `from pkg import sub` loads the submodule when there is one, else the name from pkg
        sub = f"{stem}.{alias.name}"
        found.append(sub if sub in modules else _known(stem, modules))
    return [m for m in found if m]


def import_graph(root: Path, package: str) -> dict[str, dict[str, int]]:
    """``{importer: {imported: first line}}`` over every import of every module, at any depth.

    Importing ``a.b.c`` also runs the ``__init__`` of ``a.b``; that edge is kept unless
    the importer lives inside ``a.b`` (its package is then already being imported).
    """
    modules = module_names(root, package)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        own = {module} | {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        edges = graph.setdefault(module, {})
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _targets(node, module, is_package, modules):
                parents = {".".join(target.split(".")[:i]) for i in range(1, target.count(".") + 1)}
                for name in {target} | (parents & modules.keys()):
                    if name not in own:
                        edges.setdefault(name, node.lineno)
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle ``[a, b, ..., a]`` per strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(graph, g) for g in groups]


def _cycle_in(graph: dict[str, dict[str, int]], group: set[str]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    return paths[v] + [start]
                if w in group and w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {group}")  # pragma: no cover


def describe(graph: dict[str, dict[str, int]], cycle: list[str], modules: dict[str, Path]) -> str:
    """``a (a.py:12) -> b (b.py:40) -> a``: each arrow with the line that makes it."""
    steps = [f"{a} ({modules[a].name}:{graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return " -> ".join(steps + [cycle[-1]])


def test_no_import_cycle_inside_rmkd():
    graph = import_graph(PACKAGE, "rmkd")
    modules = module_names(PACKAGE, "rmkd")
    cycles = [describe(graph, c, modules) for c in find_cycles(graph)]
    assert not cycles, "import cycles inside rmkd/:\n" + "\n".join(cycles)


def test_the_graph_sees_the_imports_that_matter():
    """Known edges of rmkd itself: a relative, a function-level and a package-parent one."""
    graph = import_graph(PACKAGE, "rmkd")
    assert "rmkd.distributed" in graph["rmkd.run"]  # from . import distributed, engine
    assert "rmkd.run" in graph["rmkd.cli"]  # from .run import train, inside main()
    assert "rmkd.models" in graph["rmkd.distill"]  # from .models import dense_forward
    assert "rmkd.data.coco" in graph["rmkd.evaluate"]  # absolute: from rmkd.data.coco import
    assert "rmkd.analysis" in graph["rmkd.run"]  # from .analysis.hooks import: runs analysis/__init__
    assert "rmkd.analysis" not in graph["rmkd.analysis.collect"]  # its own package is not an edge


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return root


def test_a_cycle_closed_by_a_function_level_import_is_found_and_named(tmp_path):
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from .b import helper\n",
            "b.py": "def helper():\n    from . import a\n    return a\n",
            "c.py": "from .a import helper\n",  # imports into the cycle, is not part of it
        },
    )
    graph = import_graph(root, "pkg")
    cycles = find_cycles(graph)
    assert cycles == [["pkg.a", "pkg.b", "pkg.a"]]
    assert describe(graph, cycles[0], module_names(root, "pkg")) == "pkg.a (a.py:1) -> pkg.b (b.py:2) -> pkg.a"


def test_a_cycle_through_a_package_init_is_found(tmp_path):
    """``x`` imports ``sub.leaf``, which runs ``sub/__init__``, which imports ``x`` back."""
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "x.py": "import pkg.sub.leaf\n",
            "sub/__init__.py": "from ..x import thing\n",
            "sub/leaf.py": "from . import other\n",  # its own package: no edge back
            "sub/other.py": "",
        },
    )
    cycles = find_cycles(import_graph(root, "pkg"))
    assert cycles == [["pkg.sub", "pkg.x", "pkg.sub"]]
