"""The house rules that keep each part in one room, checked on the source: imports point down the package's floors
(FLOORS), at most 8 modules loose in it, the config readable without loss code and the study tools without torch; no
function of the package longer than 100 lines, no module reading another object's underscore attributes, no import
circle in the package, one meaning per public name; entry points that import the installed package (no ``sys.path``
edits) and re-execute for the allocator settings before anything imports torch."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "yolo_loss"
ENTRY_POINTS = sorted(REPO.glob("scripts/*.py")) + [REPO / "train.py", REPO / "eval.py"]
MAX_FUNCTION_LINES = 100
# Public names that two modules define today, each for a different thing; a new one should get a name of its own.
SHARED_NAMES = {"evaluate": {"yolo_loss.train.engine", "yolo_loss.studies.findings"},  # a model on a loader / claims
                "Claim": {"yolo_loss.studies.findings", "yolo_loss.studies.run_locks"}}  # a published claim / a lock


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
    """The package modules a module imports, at the top, inside a function or under ``if TYPE_CHECKING:`` (a circle
    hidden in a function or in the annotations is still a dependency both ways)."""
    found = set()
    for node in ast.walk(tree):
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


# The package's floors, lowest first: a module may import its own folder and the floors below its own, never a
# folder of its own floor or above (each folder's __init__ docstring says what it owns and may import).
FLOORS = (
    {"allocator", "boxes", "checkpoint"},  # shared leaves: geometry, safe files
    {"config"},  # what a run may be told (the decode rules too); the loss components' declarations (no loss code)
    {"decode"},  # the one decode of head outputs, by the rules the config declares
    {"head"},  # the head description the loss, the evaluation and the model share
    {"losses", "model", "data", "eval"},  # independent of one another
    {"tensorboard", "darknet"},
    {"train"},
    {"studies"},  # reads run folders through train.run_folder and launches train.py; never imports the trainer
)
MAX_LOOSE_MODULES = 8


def floor_of(module: str) -> tuple[int, str]:
    """``(floor, folder)`` of a dotted module of the package: its first name under ``yolo_loss``."""
    part = module.split(".")[1] if "." in module else "__init__"
    for number, folder in enumerate(FLOORS):
        if part in folder:
            return number, part
    raise AssertionError(f"{module}: in no floor of FLOORS; add its folder there")


def test_imports_point_down_the_floors():
    trees = modules()
    wrong = []
    for name, tree in trees.items():
        if name == "yolo_loss":
            continue
        floor, folder = floor_of(name)
        for target in imported_modules(tree, name, set(trees)):
            if target == "yolo_loss":
                continue
            target_floor, target_folder = floor_of(target)
            if target_folder != folder and target_floor >= floor:
                wrong.append(f"{name} -> {target}")
    assert not wrong, wrong


def test_the_schema_loads_no_loss_code():
    """Reading a config (as the data transforms do) imports the components' declarations, not their functions."""
    code = ("import sys, yolo_loss.config.load, yolo_loss.data.transforms; "
            "print(sorted(m for m in sys.modules if m.startswith(('yolo_loss.losses', 'yolo_loss.model'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", (done.stdout, done.stderr)


def test_the_study_tools_load_no_torch():
    """A launcher, ``ablate.py --status`` and ``report.py`` read configs and run folders: they start without torch
    (3-4 s of a new process on two cores, importing it and tearing it down)."""
    code = ("import sys, yolo_loss.studies.runner, yolo_loss.studies.report, yolo_loss.config.load; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", (done.stdout, done.stderr)


def test_at_most_eight_modules_lie_loose_in_the_package():
    loose = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(loose) <= MAX_LOOSE_MODULES, loose


def test_no_two_modules_define_the_same_public_name():
    """Two ``write_run_info`` (a run folder's config.yaml and command.txt; a study run's run.json) read as one."""
    defined = defaultdict(set)
    for name, tree in modules().items():
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                defined[node.name].add(name)
    shared = {name: owners for name, owners in defined.items() if len(owners) > 1}
    assert shared == SHARED_NAMES, shared


def test_entry_points_import_the_installed_package():
    """``make setup`` installs the package (``pip install -e .``): no script puts the repository on ``sys.path``."""
    edits = [f"{path.relative_to(REPO)}:{node.lineno}" for path in ENTRY_POINTS
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Attribute) and ast.unparse(node) == "sys.path"]
    assert not edits, edits


def test_entry_points_re_exec_before_anything_imports_torch():
    """The glibc allocator settings are read at start-up: a script that re-executes itself with them
    (``if __name__ == "__main__":`` at the top) imports only the standard library and ``yolo_loss.allocator``
    before it, and neither the package's ``__init__`` nor ``allocator`` imports more."""
    def imports(tree: ast.Module) -> list[str]:
        return [alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names] + \
            [node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.module]

    def allowed(module: str) -> bool:
        return module.split(".")[0] in sys.stdlib_module_names or module in ("yolo_loss", "yolo_loss.allocator")

    early = {}
    for path in ENTRY_POINTS:
        tree = ast.parse(path.read_text())
        if "reexec_with_allocator_settings" not in path.read_text():
            continue
        main = next(index for index, node in enumerate(tree.body)
                    if isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'")
        early[path.name] = [module for module in imports(ast.Module(tree.body[:main], [])) if not allowed(module)]
    for module in ("yolo_loss/__init__.py", "yolo_loss/allocator.py"):
        early[module] = [name for name in imports(ast.parse((REPO / module).read_text())) if not allowed(name)]
    assert len(early) >= 7 and not any(early.values()), early  # train.py, eval.py and the benchmarks


def test_a_script_starts_from_any_folder_without_pythonpath(tmp_path: Path):
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "report.py"), "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "usage: report.py" in done.stdout, done.stderr
