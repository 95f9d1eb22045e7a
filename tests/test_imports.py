"""The imports of src/ flow one way: no module reaches itself through others (a function-level
import counts: it is the same dependency, only later), no module imports one of a higher layer
(LAYERS), and src/errors.py, which every module may raise from, imports nothing of the project."""

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


# src/'s modules from the bottom up: a module imports modules of its own layer or of lower ones,
# never of a higher one (a reader of results never reaches into training, the statistics never
# into matplotlib). A new module takes its place here.
LAYERS = {
    "names and pure helpers": {"errors", "signals", "schema", "intervals", "distributed", "models", "optim", "progress"},
    "foundations": {"files", "processes", "gns", "schedules", "noise_schedules", "batching", "stores", "data", "devices"},
    "config, commands' errors, logging": {"config", "cli", "tracking", "sweep_record"},
    "training": {"step", "profiling", "build", "checkpoint", "train", "evaluate", "run"},
    "reading runs back": {"runs", "groups", "studies"},
    "statistics and verdicts": {"verdict", "noise_dial", "claims", "ablation"},
    "figures and reports": {"plots", "summary_plots", "report", "reproduction_doc"},
    "report commands": {"figures", "reproduce"},
}


def layer_of(module: str) -> int:
    """The rank of `module` (src.x) in LAYERS, 0 at the bottom."""
    name = module.removeprefix("src.")
    ranks = [rank for rank, members in enumerate(LAYERS.values()) if name in members]
    assert ranks, f"src/{name}.py has no layer: add it to tests/test_imports.py's LAYERS"
    return ranks[0]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a module of a higher layer, as 'importer -> imported'."""
    return [f"{module} -> {imported}" for module, imports in sorted(graph.items()) for imported in sorted(imports)
            if layer_of(imported) > layer_of(module)]


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


def test_the_layer_check_finds_an_upward_import():
    assert upward_imports({"src.runs": {"src.schema"}, "src.verdict": {"src.runs"}}) == []
    assert upward_imports({"src.verdict": {"src.plots"}}) == ["src.verdict -> src.plots"]


def test_every_module_has_one_layer():
    names = [name for members in LAYERS.values() for name in members]
    assert len(names) == len(set(names)), "a module in two layers"
    for module in import_graph():
        layer_of(module)


def test_src_imports_no_module_of_a_higher_layer():
    assert upward_imports(import_graph()) == []


def test_the_statistics_load_no_matplotlib():
    """src.verdict (and what it imports) is what a reader of the numbers needs: no figures."""
    import subprocess
    import sys

    code = "import sys, src.verdict, src.claims; print('matplotlib' in sys.modules)"
    shown = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert shown.stdout.strip() == "False", shown.stderr
