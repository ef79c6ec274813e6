"""The import graph of maxq/ is one-way: no module imports, at the top or inside a function
(a lazy import), a module that imports it back, directly or through others."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "maxq"

#: lazy imports that may still close a cycle (none left; a new one is not to be added here but
#: broken by moving what both sides share below them). Shrink-only: an entry whose edge is
#: gone, or no longer closes a cycle, fails the test.
KNOWN_BACK_EDGES: set[tuple[str, str]] = set()


def _module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: the maxq modules it imports}``, every import statement counted (top level,
    in functions, under ``if TYPE_CHECKING`` alike); ``from maxq import x`` names module ``x``
    when ``maxq/x.py`` exists, else the package."""
    files = {_module_name(p, package): p for p in sorted(package.rglob("*.py"))
             if "__pycache__" not in p.parts}
    root = package.name
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.split(".")[0] == root)
            elif isinstance(node, ast.ImportFrom):
                if node.level:                       # relative: resolve against this module
                    base = name.split(".")[: len(name.split(".")) - node.level + is_package]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                if module.split(".")[0] != root:
                    continue
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    targets.add(sub if sub in files else module)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or [] when it has none (depth-first)."""
    state: dict[str, int] = {}               # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def _without(graph: dict[str, set[str]], edges) -> dict[str, set[str]]:
    return {a: {b for b in targets if (a, b) not in edges} for a, targets in graph.items()}


def test_the_package_imports_are_acyclic():
    cycle = find_cycle(_without(import_graph(), KNOWN_BACK_EDGES))
    assert cycle == [], "import cycle: " + " -> ".join(cycle)


def test_the_known_back_edges_still_close_a_cycle():
    """The allow-list only shrinks: every entry is still an import that makes a cycle."""
    graph = import_graph()
    for edge in sorted(KNOWN_BACK_EDGES):
        assert edge[1] in graph[edge[0]], f"{edge}: no longer imported; remove the entry"
        assert find_cycle(_without(graph, KNOWN_BACK_EDGES - {edge})), \
            f"{edge}: no longer closes a cycle; remove the entry"


def test_the_graph_sees_lazy_and_relative_imports(tmp_path):
    """The checker itself: a cycle made only by a function-level import is found."""
    pkg = tmp_path / "maxq"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from maxq import b\n")
    (pkg / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "c.py").write_text("import maxq.a\n")
    graph = import_graph(pkg)
    assert graph["maxq.a"] == {"maxq.b"} and graph["maxq.b"] == {"maxq.c"}
    assert find_cycle(graph) == ["maxq.a", "maxq.b", "maxq.c", "maxq.a"]
    (pkg / "c.py").write_text("import numpy\n")
    assert find_cycle(import_graph(pkg)) == []
