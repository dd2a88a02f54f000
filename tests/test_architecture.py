"""The shape of the package, read from its source with `ast` (nothing is imported or run).

The floors of docs/design.md: `distill/` and `data/` (losses, mapping, the training loop, readers)
never reach Optuna, MLflow or the study package, not even through a module they use; the import
graph has no cycle; no module reaches into another's private names (Optuna's only through
`study/optuna_compat.py`); functions and modules stay small enough to read.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "distill_lab"
LOWER_FLOORS = ("distill_lab.distill", "distill_lab.data")
FORBIDDEN_BELOW = ("optuna", "mlflow", "distill_lab.study")
OPTUNA_ADAPTER = "distill_lab.study.optuna_compat"
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400
# Private-looking names that are public API: os._exit ends a forked worker without running the
# parent's atexit handlers.
PUBLIC_UNDERSCORE = {("os", "_exit")}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_sources(root: Path = PACKAGE) -> dict[str, ast.Module]:
    return {module_name(path, root): ast.parse(path.read_text(), str(path)) for path in sorted(root.rglob("*.py"))}


def imported_names(name: str, tree: ast.Module, modules: set[str]) -> set[str]:
    """Every module this one imports, at the top or inside a function, as dotted names: for
    `from X import Y`, X.Y where that is one of `modules` (the package's), else X. The parent
    packages Python imports first are left out: they are no arrow of the design."""
    is_package = any(other.startswith(name + ".") for other in modules)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from ..y import z
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return found


def import_graph(sources: dict[str, ast.Module]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between the package's modules, every import of each module, third-party ones too)."""
    modules = set(sources)
    everything = {name: imported_names(name, tree, modules) for name, tree in sources.items()}
    edges = {name: {target for target in names if target in modules} - {name} for name, names in everything.items()}
    return edges, everything


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def reachable(edges: dict[str, set[str]], starts: list[str]) -> set[str]:
    seen, todo = set(), list(starts)
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(edges.get(node, ()))
    return seen


def floor_violations(edges: dict[str, set[str]], everything: dict[str, set[str]]) -> list[str]:
    """'module imports name' for every module the lower floors reach that imports a forbidden name."""
    floors = [m for m in edges if m.startswith(LOWER_FLOORS)]
    bad = []
    for module in sorted(reachable(edges, floors)):
        for name in sorted(everything[module]):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN_BELOW):
                bad.append(f"{module} imports {name}")
    return bad


def private_reaches(name: str, tree: ast.Module) -> list[str]:
    """Uses of another module's or object's `_private` names: `from x import _y`, `obj._y`, and
    imports of Optuna's private modules (`optuna.x._y`)."""
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if any(part.startswith("_") for part in node.module.split(".")[1:]) and node.module.startswith("optuna"):
                bad.append(f"line {node.lineno}: from {node.module} import ...")
            bad.extend(f"line {node.lineno}: from {node.module} import {alias.name}" for alias in node.names
                       if alias.name.startswith("_") and not alias.name.startswith("__"))
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if owner in ("self", "cls") or (owner, node.attr) in PUBLIC_UNDERSCORE:
                continue
            bad.append(f"line {node.lineno}: {ast.unparse(node)}")
    return bad


SOURCES = package_sources()
EDGES, EVERYTHING = import_graph(SOURCES)


def test_architecture_import_graph_has_no_cycle():
    assert len(EDGES) > 40  # the walk found the package
    assert find_cycle(EDGES) is None, " -> ".join(find_cycle(EDGES) or [])


def test_architecture_lower_floors_never_reach_optuna_mlflow_or_the_study_package():
    floors = reachable(EDGES, [m for m in EDGES if m.startswith(LOWER_FLOORS)])
    assert {"distill_lab.distill.losses", "distill_lab.distill.engine", "distill_lab.data.align"} <= floors
    assert floor_violations(EDGES, EVERYTHING) == []


def test_architecture_checks_fail_on_a_cycle_and_on_a_floor_that_imports_up(tmp_path):
    # The same checks on a package made to break both rules: they must say so.
    root = tmp_path / "distill_lab"
    (root / "distill").mkdir(parents=True)
    (root / "study").mkdir()
    for folder in (root, root / "distill", root / "study"):
        (folder / "__init__.py").write_text("")
    (root / "distill" / "losses.py").write_text("from distill_lab import evaluation\n")
    (root / "evaluation.py").write_text("def f():\n    from distill_lab.study import objective\n")
    (root / "study" / "objective.py").write_text("import optuna\nfrom distill_lab.distill import losses\n")
    edges, everything = import_graph(package_sources(root))
    assert find_cycle(edges) == ["distill_lab.distill.losses", "distill_lab.evaluation",
                                 "distill_lab.study.objective", "distill_lab.distill.losses"]
    assert floor_violations(edges, everything) == [
        "distill_lab.evaluation imports distill_lab.study.objective",
        "distill_lab.study.objective imports optuna",
    ]


def test_architecture_relative_imports_resolve_to_the_package_modules():
    tree = ast.parse("from . import losses\nfrom ..data import align\n")
    modules = {"distill_lab.distill.engine", "distill_lab.distill.losses", "distill_lab.data.align"}
    assert imported_names("distill_lab.distill.engine", tree, modules) == {
        "distill_lab.distill.losses", "distill_lab.data.align"}


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_architecture_no_module_reaches_into_private_names(name):
    if name == OPTUNA_ADAPTER:  # the one adapter over Optuna's private names, pinned by its own tests
        return
    assert private_reaches(name, SOURCES[name]) == []


def test_architecture_private_reach_check_sees_the_three_forms():
    tree = ast.parse("from optuna.storages._heartbeat import x\nfrom distill_lab.a import _b\n"
                     "study._storage.get()\nself._ok = 1\nos._exit(1)\n")
    assert private_reaches("m", tree) == ["line 1: from optuna.storages._heartbeat import ...",
                                          "line 2: from distill_lab.a import _b", "line 3: study._storage"]


def test_architecture_functions_and_modules_stay_small():
    long_functions, long_modules = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            long_modules.append(f"{path.relative_to(PACKAGE)}: {lines} lines")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {length} lines")
    assert long_modules == []
    assert long_functions == []
