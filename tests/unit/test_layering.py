"""The package layering: dependencies point one way, and there is no cycle between packages.

Every module of ``volatility3_plugins`` is parsed (not imported) and each of its imports of our
own modules, relative or absolute, at module level or inside a function, is checked against
:data:`ALLOWED`. The common package, the schema and the run diagnostics must import the standard
library only (or one another's standard-library-only modules).
"""

import ast
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[2] / "volatility3_plugins"
TOP = "volatility3_plugins"

#: Package -> the packages of ours it may import (its own modules always). From the bottom up.
ALLOWED: Dict[str, Set[str]] = {
    # Standard-library facts shared by the crash-dump layer and the kernel reader (page size,
    # warn-once, crash-dump headers): the bottom, so that the layer imports nothing in windows/
    # (volshell imports Volatility's own windows package before our folder is added).
    "common": set(),
    "schema": set(),
    "windows.kernelread": {"common"},
    "windows.kernelpool": {"windows.kernelread", "common"},
    "windows.callback_objects": {"windows.kernelread", "windows.kernelpool", "schema", "common"},
    "windows.plugins": {"windows.kernelread", "windows.kernelpool", "windows.callback_objects", "schema", "common"},
    # The pool map plugin reads the pool for any purpose: nothing of callbacks or of the schema.
    "windows.poolmap": {"windows.kernelread", "windows.kernelpool", "common"},
    "fleet": {"schema"},
    "layers": {"common"},
    "windows": set(),  # the package marker that merges plugin folders
    # the vol-callbackobjects command; "windows": volshell's plugin package, which it extends
    "entry": {"fleet", "schema", "windows"},
}
#: Plugins with a row of their own in :data:`ALLOWED` (the others share ``windows.plugins``).
PLUGIN_PACKAGES = ("windows.poolmap",)
#: Modules of ours that a module of a package may import when not all of that package is allowed.
ONLY_MODULES: Dict[str, Set[str]] = {}
#: Modules that must import nothing but the standard library.
STANDARD_LIBRARY_ONLY = ("common", "schema", "windows.kernelread.addresses", "windows.kernelread.diagnostics")


def module_name(path: Path) -> str:
    """``windows.kernelread.context`` for ``volatility3_plugins/windows/kernelread/context.py``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_of(module: str) -> str:
    """The layer a module belongs to (a key of :data:`ALLOWED`)."""
    parts = module.split(".") if module else []
    if not parts or parts[0] in ("__main__",):
        return "entry"
    if parts[0] == "windows":
        if len(parts) == 1:
            return "windows"
        if len(parts) >= 2 and (ROOT / "windows" / parts[1]).is_dir():
            return f"windows.{parts[1]}"
        if module in PLUGIN_PACKAGES:
            return module
        return "windows.plugins"
    return parts[0]


def is_ours(module: str) -> bool:
    """Whether a dotted name (relative to ``volatility3_plugins``) is a module or package of ours."""
    path = ROOT.joinpath(*module.split(".")) if module else ROOT
    return path.is_dir() or path.with_suffix(".py").is_file()


def modules() -> Iterator[Tuple[str, Path]]:
    for path in sorted(ROOT.rglob("*.py")):
        yield module_name(path), path


def _package(module: str, path: Path) -> str:
    """The package a relative import starts from."""
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def imports(module: str, path: Path) -> Iterator[Tuple[int, Optional[str], str]]:
    """(line, our module it imports or None, the name as written) of every import."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, _ours(alias.name), alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package(module, path).split(".") if _package(module, path) else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    candidate = f"{target}.{alias.name}" if target else alias.name
                    yield node.lineno, candidate if is_ours(candidate) else target, "." * node.level + (node.module or "")
            else:
                name = node.module or ""
                for alias in node.names:
                    ours = _ours(f"{name}.{alias.name}")
                    if ours is None and (name == TOP or name.startswith(TOP + ".")):
                        ours = _ours(name)  # a name defined in a module of ours
                    yield node.lineno, ours, name


def _ours(name: str) -> Optional[str]:
    """Our module for an absolute name (``volatility3_plugins.x`` or, as Volatility imports our
    folder, ``volatility3.plugins.x`` when ``x`` is ours); None for anything else."""
    for prefix in (TOP + ".", "volatility3.plugins."):
        if name.startswith(prefix) and is_ours(name[len(prefix):]):
            return name[len(prefix):]
    return "" if name == TOP else None


def dependencies() -> Dict[str, Dict[str, List[str]]]:
    """Package -> package it imports -> where (``module:line``)."""
    found: Dict[str, Dict[str, List[str]]] = {}
    for module, path in modules():
        source = package_of(module)
        for line, target, _written in imports(module, path):
            if target is None:
                continue
            destination = package_of(target)
            if destination != source:
                found.setdefault(source, {}).setdefault(destination, []).append(f"{module}:{line} -> {target}")
    return found


def test_every_module_belongs_to_a_declared_package():
    assert {package_of(module) for module, _path in modules()} <= set(ALLOWED)


def test_no_package_imports_one_it_may_not():
    wrong = []
    for source, targets in dependencies().items():
        for destination, where in targets.items():
            if destination not in ALLOWED[source]:
                wrong += [f"{source} may not import {destination}: {place}" for place in where]
            elif source in ONLY_MODULES:
                wrong += [f"{source} may import only {sorted(ONLY_MODULES[source])}: {place}" for place in where
                          if place.rpartition(" -> ")[2] not in ONLY_MODULES[source]]
    assert wrong == []


def test_no_cycle_between_packages():
    graph = {source: set(targets) for source, targets in dependencies().items()}
    state: Dict[str, int] = {}

    def visit(node: str, trail: List[str]) -> None:
        state[node] = 1
        for following in sorted(graph.get(node, ())):
            if state.get(following) == 1:
                path = trail + [node]
                pytest.fail("package cycle: " + " -> ".join(path[path.index(following):] + [following]))
            if following not in state:
                visit(following, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


@pytest.mark.skipif(sys.version_info < (3, 10), reason="sys.stdlib_module_names is Python 3.10+")
@pytest.mark.parametrize("prefix", STANDARD_LIBRARY_ONLY)
def test_standard_library_only(prefix):
    wrong = []
    for module, path in modules():
        if module != prefix and not module.startswith(prefix + "."):
            continue
        for line, target, written in imports(module, path):
            top = written.lstrip(".").split(".")[0]
            # Our own standard-library-only modules count as standard library too.
            inside = target is not None and any(target == other or target.startswith(other + ".")
                                                for other in STANDARD_LIBRARY_ONLY)
            if written.startswith(".") and inside:
                continue
            if not written.startswith(".") and top in sys.stdlib_module_names:
                continue
            wrong.append(f"{module}:{line} imports {written}")
    assert wrong == []
