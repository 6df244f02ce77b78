"""The layout shows the architecture: io < layers < r2dns < models < engine < tasks < cli.

Read from the source with ``ast`` (nothing is imported), so a new module is checked
as soon as it exists.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "tdaf"
TASK_PACKAGES = ("tdaf.classification", "tdaf.detection", "tdaf.pose", "tdaf.video")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        parts = module.split(".")
        keep = len(parts) - node.level + (1 if is_package else 0)
        base = ".".join(parts[:keep] + ([node.module] if node.module else []))
    # "from . import x" may name submodules
    return [base] + [f"{base}.{a.name}" for a in node.names]


def _imports() -> dict[str, list[tuple[str, bool]]]:
    """tdaf module -> [(imported tdaf module, imported inside a function)]."""
    graph: dict[str, list[tuple[str, bool]]] = {}
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        local_nodes = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for n in ast.walk(f)}
        edges = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                targets = _resolve(name, path.name == "__init__.py", node)
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                if t in files and t != name:
                    edges.append((t, id(node) in local_nodes))
        graph[name] = edges
    return graph


GRAPH = _imports()


def _top_level(module: str) -> set[str]:
    return {t for t, local in GRAPH[module] if not local}


def test_no_import_cycles():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(_top_level(m)):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                # a package's __init__ importing its own submodules is how packages work
                if not all(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(cycle, cycle[1:])):
                    pytest.fail("import cycle: " + " -> ".join(cycle))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_no_hidden_tdaf_imports_outside_the_cli():
    hidden = [f"{m} imports {t} inside a function" for m, edges in GRAPH.items() for t, local in edges
              if local and not m.startswith("tdaf.cli")]
    assert hidden == []


@pytest.mark.parametrize("lower, forbidden", [
    ("tdaf.io", ("tdaf.layers", "tdaf.r2dns", "tdaf.models", "tdaf.engine", "tdaf.data", "tdaf.cli") + TASK_PACKAGES),
    ("tdaf.layers", ("tdaf.r2dns", "tdaf.models", "tdaf.engine", "tdaf.data", "tdaf.cli") + TASK_PACKAGES),
    ("tdaf.r2dns", ("tdaf.models", "tdaf.engine", "tdaf.data", "tdaf.cli") + TASK_PACKAGES),
    ("tdaf.models", ("tdaf.engine", "tdaf.data", "tdaf.cli") + TASK_PACKAGES),
    ("tdaf.data", ("tdaf.engine", "tdaf.cli") + TASK_PACKAGES),
    ("tdaf.engine", ("tdaf.cli",) + TASK_PACKAGES),
])
def test_layers(lower, forbidden):
    wrong = [f"{m} -> {t}" for m, edges in GRAPH.items() if m == lower or m.startswith(lower + ".")
             for t, _ in edges if any(t == f or t.startswith(f + ".") for f in forbidden)]
    assert wrong == []


def test_tasks_do_not_import_each_other():
    wrong = [f"{m} -> {t}" for m, edges in GRAPH.items() for t, _ in edges for a in TASK_PACKAGES
             for b in TASK_PACKAGES if a != b and (m == a or m.startswith(a + ".")) and (t == b or t.startswith(b + "."))]
    assert wrong == []


# Commands of other branches of issue 22 that still import a task package by name (they move to
# the task registry there); empty this set as they are merged.


def _in(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_cli_and_the_tasks_do_not_import_each_other():
    # The commands find tasks through the task registry; tasks know nothing of the commands.
    wrong = [f"{m} -> {t}" for m, edges in GRAPH.items() for t, _ in edges
             if (_in(m, ("tdaf.cli",)) and _in(t, TASK_PACKAGES))
             or (_in(m, TASK_PACKAGES) and _in(t, ("tdaf.cli",)))]
    assert wrong == []
    assert [p for p in PACKAGE.glob("*/cli.py")] == []  # no task keeps a command module of its own


def _code_words(path: Path) -> set[str]:
    """Identifiers and string constants of a module, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    words: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name):
            words.add(n.id)
        elif isinstance(n, ast.Attribute):
            words.add(n.attr)
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings:
            words.update(n.value.replace(",", " ").split())
    return words


def test_the_engine_names_no_task_and_no_metric():
    # The engine's only word about tasks is the default of ``task:`` ("classification").
    for path in (PACKAGE / "engine").rglob("*.py"):
        words = _code_words(path)
        for name in ("detection", "pose", "video", "ClassificationTask", "top1", "top5", "digits"):
            assert name not in words, f"{path.name} mentions {name!r}"
