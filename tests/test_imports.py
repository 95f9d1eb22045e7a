"""The imports of src/ flow one way: no module reaches itself through others (a function-level
import counts: it is the same dependency, only later), and src/errors.py, which every module may
raise from, imports nothing of the project."""

import ast
from pathlib import Path

from helpers.configs import ROOT

SRC = ROOT / "src"


def project_imports(path: Path) -> set[str]:
    """The src.* modules a file imports anywhere in it (`from src import schema` is src.schema)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "src"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "src":
                found |= {f"src.{alias.name}" for alias in node.names}
            elif node.module.startswith("src."):
                found.add(node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    return {f"src.{path.stem}": project_imports(path) for path in SRC.glob("*.py") if path.stem != "__init__"}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, str] = {}  # "open" while on the path, "done" once every import is explored

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == "open":
                return [*path[path.index(imported):], imported]
            if imported not in state:
                found = visit(imported, [*path, imported])
                if found:
                    return found
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module, [module])
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_src_has_no_import_cycle():
    found = cycle(import_graph())
    assert found is None, " -> ".join(found)


def test_errors_imports_nothing_of_the_project():
    assert project_imports(SRC / "errors.py") == set()
