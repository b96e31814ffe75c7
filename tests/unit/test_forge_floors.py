"""The forge's floors point one way, and its classes stay readable.

The forge (``tests/forge``) is a library in floors, one sub-package each; a module imports from
its own floor and the floors below it, never from one above:

    profiles <- memory <- allocators <- kernel <- plants <- image <- stories <- fleet

with the public entries (``forge.py``, ``scenarios.py``, ``__main__.py``, ``tools/``) above them
all. The checks read the source with ``ast`` (nothing is imported), so that an import inside a
function or under ``if TYPE_CHECKING:`` counts as much as one at the top:

- every import of a forge module points to the importer's floor or one below it;
- no cycle of imports that run (an import under ``TYPE_CHECKING`` is for annotations only and
  may point sideways within a floor, never up);
- no class longer than ``CLASS_LINES`` unless its docstring says why (a paragraph ``Size: ...``).

Each check is also run on a small tree that breaks it, which it must reject.
"""

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set

import pytest

FORGE = Path(__file__).resolve().parents[1] / "forge"
PACKAGE = "tests.forge"
FLOORS = ("profiles", "memory", "allocators", "kernel", "plants", "image", "stories", "fleet")
ENTRIES = ("__init__", "__main__", "forge", "scenarios", "tools")  # above every floor
CLASS_LINES = 250


@dataclass(frozen=True)
class Import:
    importer: str  # dotted name below the forge package, e.g. "kernel.modules"
    target: str
    line: int
    type_checking: bool  # under ``if TYPE_CHECKING:``: never runs


def modules(root: Path) -> Dict[str, Path]:
    """Every module of the tree, by dotted name below it (a package by its own name)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports_in(tree: ast.Module) -> Iterator[tuple]:
    """(node, under TYPE_CHECKING) for every import statement, however deep."""
    def walk(node: ast.AST, type_checking: bool) -> Iterator[tuple]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, type_checking
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for statement in child.body:
                    yield from walk(ast.Module(body=[statement], type_ignores=[]), True)
                for statement in child.orelse:
                    yield from walk(ast.Module(body=[statement], type_ignores=[]), type_checking)
            else:
                yield from walk(child, type_checking)
    yield from walk(tree, False)


def imports(root: Path, package: str = PACKAGE) -> List[Import]:
    """The imports of forge modules by forge modules, relative or by the package's full name."""
    known = modules(root)
    found = []
    for name, path in known.items():
        is_package = path.name == "__init__.py"
        here = name.split(".") if name != "__init__" else []
        base = here if is_package else here[:-1]
        for node, type_checking in _imports_in(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif node.level:
                start = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                module = ".".join(start + ([node.module] if node.module else []))
                candidates = [f"{module}.{alias.name}" if module else alias.name for alias in node.names] + [module]
            else:
                module = node.module or ""
                candidates = [f"{module}.{alias.name}" for alias in node.names] + [module]
            targets = set()
            for candidate in candidates:
                if isinstance(node, ast.Import) or node.level == 0:
                    if not candidate.startswith(package + "."):
                        continue
                    candidate = candidate[len(package) + 1:]
                if candidate in known:
                    targets.add(candidate)
            # ``from .pkg import name`` names pkg.name when that is a module, else pkg itself.
            for target in sorted(targets):
                if any(other != target and other.startswith(target + ".") for other in targets):
                    continue
                found.append(Import(name, target, node.lineno, type_checking))
    return found


def floor_of(module: str) -> Optional[int]:
    """A module's floor (its index in FLOORS; the entries rank above them all), or None."""
    top = module.split(".")[0]
    if top in FLOORS:
        return FLOORS.index(top)
    if top in ENTRIES:
        return len(FLOORS)
    return None


def upward_imports(root: Path, package: str = PACKAGE) -> List[str]:
    problems = []
    for module in modules(root):
        if floor_of(module) is None:
            problems.append(f"{module}: in no floor (FLOORS) and not an entry (ENTRIES)")
    for edge in imports(root, package):
        importer, target = floor_of(edge.importer), floor_of(edge.target)
        if importer is not None and target is not None and target > importer:
            problems.append(f"{edge.importer}:{edge.line} imports {edge.target}, a floor above it")
    return problems


def import_cycles(root: Path, package: str = PACKAGE) -> List[List[str]]:
    """Cycles among the imports that run (Tarjan's strongly connected components)."""
    graph: Dict[str, Set[str]] = {module: set() for module in modules(root)}
    for edge in imports(root, package):
        if not edge.type_checking and edge.target != edge.importer:
            graph[edge.importer].add(edge.target)
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    cycles: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for following in sorted(graph[node]):
            if following not in index:
                visit(following)
                low[node] = min(low[node], low[following])
            elif following in stack:
                low[node] = min(low[node], index[following])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def long_classes(root: Path) -> List[str]:
    problems = []
    for module, path in modules(root).items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                lines = node.end_lineno - node.lineno + 1
                reason = "\nSize:" in "\n" + (ast.get_docstring(node) or "")
                if lines > CLASS_LINES and not reason:
                    problems.append(f"{module}.{node.name}: {lines} lines, and no 'Size:' paragraph saying why")
    return problems


# -- the forge -------------------------------------------------------------------------------


def test_every_floor_exists():
    present = {module.split(".")[0] for module in modules(FORGE)}
    assert set(FLOORS) <= present


def test_imports_point_down_the_floors():
    assert upward_imports(FORGE) == []


def test_no_import_cycle():
    assert import_cycles(FORGE) == []


def test_no_class_too_long_without_a_reason():
    assert long_classes(FORGE) == []


def test_the_checker_sees_the_forge_imports():
    """A sanity check on the parser: edges it must find in the real tree."""
    edges = {(edge.importer, edge.target, edge.type_checking) for edge in imports(FORGE)}
    assert ("kernel.machine", "allocators.segment_heap", False) in edges
    assert ("stories.busy", "stories.baseline", False) in edges
    assert ("image.truth", "image.forge", True) in edges


# -- the checks reject what they are for ---------------------------------------------------------


def write_tree(root: Path, files: Dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for directory in {path.parent for path in root.rglob("*.py")} | {root}:
        (directory / "__init__.py").touch()
    return root


@pytest.mark.parametrize("statement", [
    "from ..kernel.objects import ObjectManager\n",
    "from tests.forge.kernel.objects import ObjectManager\n",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..kernel import objects\n",
    "def late():\n    from ..kernel.objects import ObjectManager\n",
    "from ..forge import ImageForge\n",
])
def test_an_upward_import_is_rejected(tmp_path, statement):
    root = write_tree(tmp_path, {"memory/physical.py": statement, "kernel/objects.py": "ObjectManager = 1\n",
                                 "forge.py": "ImageForge = 1\n"})
    problems = upward_imports(root)
    assert len(problems) == 1 and problems[0].startswith("memory.physical:")


def test_a_module_outside_the_floors_is_rejected(tmp_path):
    root = write_tree(tmp_path, {"helpers.py": "", "memory/physical.py": ""})
    assert upward_imports(root) == ["helpers: in no floor (FLOORS) and not an entry (ENTRIES)"]


def test_a_cycle_is_rejected_even_through_a_late_import(tmp_path):
    root = write_tree(tmp_path, {
        "stories/scenarios.py": "def busy():\n    from .busy import busy\n",
        "stories/busy.py": "from .scenarios import busy\n",
        "stories/damage.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .baseline import Story\n",
        "stories/baseline.py": "from .damage import Damage\n",
    })
    assert import_cycles(root) == [["stories.busy", "stories.scenarios"]]


def test_a_long_class_needs_a_reason(tmp_path):
    body = "    x = 1\n" * CLASS_LINES
    root = write_tree(tmp_path, {"memory/a.py": f"class Long:\n    '''Too long.'''\n{body}",
                                 "memory/b.py": f"class Explained:\n    '''Long.\n\n    Size: one table.'''\n{body}"})
    assert [problem.split(":")[0] for problem in long_classes(root)] == ["memory.a.Long"]
