"""The house rules that keep each part in one room, checked on the source: no function of the package longer than
100 lines, no module reading another object's underscore attributes, no import circle in the package."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "yolo_loss"
MAX_FUNCTION_LINES = 100


def modules() -> dict[str, ast.Module]:
    """``{dotted module name: its syntax tree}`` for every module of the package."""
    trees = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        trees[name] = ast.parse(path.read_text(), filename=str(path))
    return trees


def test_no_function_is_longer_than_100_lines():
    long = [f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
            for name, tree in modules().items() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long


def test_no_module_reads_another_objects_underscore_attributes():
    """``x._name`` only on ``self`` or ``cls``; dunders (``__name__``, ``super().__init__``) are public."""
    reads = [f"{name}:{node.lineno}: {ast.unparse(node)}" for name, tree in modules().items()
             for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
             and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))]
    assert not reads, reads


def imported_modules(tree: ast.Module, name: str, known: set[str]) -> set[str]:
    """The package modules a module imports, at the top or inside a function (a circle hidden in a function is
    still a circle), but not under ``if TYPE_CHECKING:`` (annotations only, never executed)."""
    found = set()
    type_checking = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                     and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                     for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {module for module in found if module in known and module != name}


def test_the_package_has_no_import_circle():
    trees = modules()
    graph = {name: imported_modules(tree, name, set(trees)) for name, tree in trees.items()}
    circles = set()

    def visit(node: str, path: list[str]) -> None:
        for child in graph[node]:
            if child in path:
                circles.add(" -> ".join(path[path.index(child):] + [child]))
            else:
                visit(child, path + [child])

    for start in graph:
        visit(start, [start])
    assert not [c for c in circles if "yolo_loss.data" in c], sorted(c for c in circles if "yolo_loss.data" in c)[:5]
    assert not circles, sorted(circles)[:5]
