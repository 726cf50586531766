"""The layering holds: no module imports a higher layer (not even lazily inside a function), and the import graph of
top-level imports has no cycle (the report and its HTML page, the Bayesian gates and the VIB gate used to import
each other)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "robustprune"

#: docs/architecture.md: cli / api -> study -> deploy / methods -> train / sparsity / objectives -> attacks / models / data
LAYER = {
    "errors": 0, "registry": 0, "utils": 0, "provenance": 0, "_version": 0, "precision": 0, "rates": 0,
    "data": 1, "models": 1,
    "attacks": 2,
    "objectives": 3, "sparsity": 3, "metrics": 3, "checkpoint": 3,
    "train": 4, "evaluation": 4,
    "methods": 5, "analysis": 5, "deploy": 5, "checkpoint_import": 5,
    "study": 6,
    "api": 7, "cli": 7, "__init__": 7, "__main__": 7,
}


def _module(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("robustprune"):
            out.add(node.module)
            for a in node.names:  # "from robustprune.methods import interface" names a module too
                out.add(f"{node.module}.{a.name}")
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("robustprune"))
    return out


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYER[parts[1] if len(parts) > 1 else "__init__"]


def test_no_module_imports_a_higher_layer():
    bad = []
    for path in SRC.rglob("*.py"):
        me = _module(path)
        for imp in _imports(path, top_level_only=False):
            target = imp.split(".")
            if len(target) > 1 and target[1] not in LAYER:
                continue
            if _layer(imp) > _layer(me):
                bad.append(f"{me} -> {imp}")
    assert not bad, bad


def test_top_level_imports_have_no_cycle():
    modules = {_module(p): p for p in SRC.rglob("*.py")}
    graph = {m: {i for i in _imports(p, top_level_only=True) if i in modules and i != m} for m, p in modules.items()}
    # a package's __init__ importing its own submodules is how packages re-export: not a cycle between modules
    for m in graph:
        graph[m] = {i for i in graph[m] if not i.startswith(m + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in graph[m]:
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
