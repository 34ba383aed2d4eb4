"""No import cycles among the modules of rollbackd/daemon/, rollbackd/probes/ and rollbackd/policies/.

Imports are read with `ast`, not by importing: every `import` and `from ... import` statement
counts, at module level, inside functions and under `if TYPE_CHECKING:` alike, since each one
is a dependency a reader has to hold in mind (a lazy import only hides a cycle from Python, not
from the reader). A cycle is a strongly connected component of two or more modules, or a module
that imports itself.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("rollbackd/daemon", "rollbackd/probes", "rollbackd/policies")
# The sample app's source is copied into a deployment, never imported as part of rollbackd/daemon/.
NOT_MODULES = (ROOT / "rollbackd" / "daemon" / "demo" / "sampleapp" / "template",)


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if any(path.is_relative_to(skip) for skip in NOT_MODULES):
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _known(name: str, modules: Mapping[str, Path]) -> str | None:
    """The module itself, or the nearest enclosing package of ours (None: not ours)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str, path: Path, modules: Mapping[str, Path]) -> set[str]:
    """Our modules that `name` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join([*base, node.module] if node.module else base)
            else:
                prefix = node.module or ""
            # `from pkg import mod` imports the submodule; `from mod import func`, the module.
            targets = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in modules else prefix
                       for alias in node.names]
        else:
            continue
        found.update(m for t in targets if (m := _known(t, modules)) is not None)
    found.discard(name)  # a package naming its own attributes: no dependency
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of two or more modules (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(start: str) -> None:
        # Iterative, so a long chain of imports cannot reach the recursion limit.
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component: list[str] = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return sorted(found)


def test_the_finder_sees_a_cycle_under_type_checking_and_in_a_function(tmp_path: Path) -> None:
    """The finder itself: a cycle closed only by a TYPE_CHECKING import, another closed only by
    a function-level relative import; a one-way import is no cycle."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import thing\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\n"
                              "if TYPE_CHECKING:\n    from pkg import a\n")
    (pkg / "c.py").write_text("import pkg.d\n")
    (pkg / "d.py").write_text("def f():\n    from .c import g\n")
    (pkg / "e.py").write_text("from pkg.a import thing\n")
    modules = {n: pkg / f"{n.split('.')[-1]}.py" for n in ("pkg.a", "pkg.b", "pkg.c", "pkg.d",
                                                          "pkg.e")}
    modules["pkg"] = pkg / "__init__.py"
    graph = {n: imports_of(n, p, modules) for n, p in modules.items()}
    assert graph["pkg.b"] == {"pkg.a"}
    assert graph["pkg.d"] == {"pkg.c"}
    assert cycles(graph) == [["pkg.a", "pkg.b"], ["pkg.c", "pkg.d"]]


def _shown(found: list[list[str]]) -> str:
    return "\n".join(" <-> ".join(c) for c in found)


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 100  # the walk found the tree, not an empty folder
    found = cycles(graph)
    assert found == [], _shown(found)
