"""The import graph of longctx/ (every import, at the top or inside a function) has no cycles, so every module
stands on a floor above all it imports and no arrow runs back up."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "longctx"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the longctx modules it imports (`from pkg import mod` counts as importing pkg.mod)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                targets.add(base)
                targets |= {f"{base}.{a.name}" for a in node.names}
        graph[name] = {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
    return graph


def test_longctx_imports_have_no_cycles():
    graph = import_graph()
    floor: dict[str, int] = {}
    visiting: list[str] = []

    def visit(module: str) -> int:
        if module in visiting:
            cycle = visiting[visiting.index(module):] + [module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module not in floor:
            visiting.append(module)
            floor[module] = 1 + max((visit(t) for t in graph[module]), default=0)
            visiting.pop()
        return floor[module]

    for module in sorted(graph):
        visit(module)
    for module, targets in graph.items():  # a DAG: every arrow runs down
        assert all(floor[t] < floor[module] for t in targets), module


def test_evals_subpackages_import_one_way():
    """suite/cli -> report -> tasks -> run: what runs cells knows no task, and no task knows the report."""
    order = {"longctx.evals.run": 0, "longctx.evals.tasks": 1, "longctx.evals.report": 2}
    for module, targets in import_graph().items():
        here = next((rank for prefix, rank in order.items() if module.startswith(prefix)), None)
        if here is None:
            continue
        for target in targets:
            there = next((rank for prefix, rank in order.items() if target.startswith(prefix)), None)
            assert there is None or there <= here, f"{module} imports {target}: an arrow back up"
            assert not target.startswith(("longctx.evals.suite", "longctx.evals.cli")), f"{module} imports {target}"


MAX_LINES = 400


def test_no_longctx_module_passes_400_lines():
    """A module a reader can hold: none under longctx/ runs past 400 lines (`wc -l`); a longer one is split where
    its parts already divide (definitions / generators / runner, renderer / writer)."""
    counts = {str(p.relative_to(PACKAGE.parent)): p.read_bytes().count(b"\n") for p in PACKAGE.rglob("*.py")}
    over = {path: n for path, n in sorted(counts.items()) if n > MAX_LINES}
    assert not over, f"over {MAX_LINES} lines: " + ", ".join(f"{path} ({n})" for path, n in over.items())
