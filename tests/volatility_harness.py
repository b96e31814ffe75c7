"""Running Volatility 3 on forged images, the way a user would and from inside Python.

``run_vol`` runs the real command line in a subprocess (the user's view: automagic, renderers,
exit code); ``kernel_context`` runs the same automagic in-process so tests can call
Volatility's own helpers (object headers, type maps) on a forged image; ``plugin_rows`` runs a
plugin in-process and gives its rows as ``-r json`` would, without the second of start-up
(importing Volatility and every plugin) a ``vol`` process pays: the row-by-row matrices run
hundreds of plugins.
"""

import contextlib
import json
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
PLUGIN_DIR = REPO / "volatility3_plugins"
SHARED_ISF_DIR = REPO.parent / "shared" / "isf" / "windows" / "ntkrnlmp.pdb"
VOL = [sys.executable, "-c", "import sys; from volatility3.cli import main; sys.argv[0] = 'vol'; main()"]


def real_isfs() -> List[Path]:
    return sorted(SHARED_ISF_DIR.glob("*.json.xz")) if SHARED_ISF_DIR.is_dir() else []


def run_vol(
    image: Path,
    symbols: Path,
    plugin: str,
    *plugin_args: str,
    renderer: str = "json",
    cache: Path,
    plugin_dir: Optional[Path] = PLUGIN_DIR,
    timeout: int = 300,
    options: Sequence[str] = (),
) -> subprocess.CompletedProcess:
    """``vol`` on ``image``; ``options`` are more of Volatility's own options (e.g. ``-v``)."""
    cache.mkdir(parents=True, exist_ok=True)
    command = list(VOL) + ["-q", *options, "-r", renderer, "--offline", "--cache-path", str(cache), "-s", str(symbols),
                           "-f", str(image)]
    if plugin_dir is not None:
        command += ["-p", str(plugin_dir)]
    command += [plugin, *plugin_args]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def vol_json(image: Path, symbols: Path, plugin: str, *plugin_args: str, cache: Path) -> List[Dict[str, Any]]:
    result = run_vol(image, symbols, plugin, *plugin_args, cache=cache)
    if result.returncode != 0:
        raise AssertionError(f"vol {plugin} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout)


def _prepare(symbols: Path, cache: Path, ours: bool = True) -> None:
    """Volatility configured as ``vol --offline -s SYMBOLS --cache-path CACHE`` would, its plugins
    (ours included, unless ``ours`` is False) imported."""
    import volatility3.plugins
    import volatility3.symbols
    from volatility3 import framework
    from volatility3.framework import constants

    cache.mkdir(parents=True, exist_ok=True)
    constants.CACHE_PATH = str(cache)
    constants.OFFLINE = True
    volatility3.symbols.__path__ = [str(symbols)] + [p for p in constants.SYMBOL_BASEPATHS]
    # As ``vol -p``: our folder first on the plugin path; Volatility's own modules may have
    # imported volatility3.plugins.windows already, so its path gets our windows folder too.
    if not ours:
        framework.import_files(volatility3.plugins, True)
        return
    if str(PLUGIN_DIR) not in volatility3.plugins.__path__:
        volatility3.plugins.__path__.insert(0, str(PLUGIN_DIR))
    windows = sys.modules.get("volatility3.plugins.windows")
    if windows is not None and str(PLUGIN_DIR / "windows") not in windows.__path__:
        windows.__path__.insert(0, str(PLUGIN_DIR / "windows"))
    framework.import_files(volatility3.plugins, True)


def _in_process(image: Path, symbols: Path, cache: Path, plugin_class: Any, options: Dict[str, Any], ours: bool = True) -> Any:
    """A constructed plugin on ``image`` (automagic as ``vol`` runs it, offline)."""
    from volatility3.framework import automagic, contexts
    from volatility3.framework.plugins import construct_plugin

    _prepare(symbols, cache, ours)
    context = contexts.Context()
    context.config["automagic.LayerStacker.single_location"] = Path(image).resolve().as_uri()
    for name, value in options.items():
        context.config[f"plugins.{plugin_class.__name__}.{name}"] = value
    chosen = automagic.choose_automagic(automagic.available(context), plugin_class)
    return construct_plugin(context, chosen, plugin_class, "plugins", None, None)


def kernel_context(image: Path, symbols: Path, cache: Path) -> Tuple[Any, str]:
    """A Volatility context with the kernel of ``image`` found by automagic (once per image)."""
    context, config_path = _image_context(image, symbols, cache)
    return context, context.config[f"{config_path}.kernel"]


def _image_context(image: Path, symbols: Path, cache: Path) -> Tuple[Any, str]:
    """(context, config path of windows.callbackobjects on it), automagic run once per image."""
    _prepare(symbols, cache)
    from volatility3.plugins.windows.callbackobjects import CallbackObjects

    key = (str(Path(image).resolve()), str(symbols))
    if key not in _CONTEXTS:
        constructed = _in_process(image, symbols, cache, CallbackObjects, {})
        _CONTEXTS[key] = (constructed.context, constructed.config_path)
        while len(_CONTEXTS) > _MAX_CONTEXTS:
            _CONTEXTS.popitem(last=False)
    _CONTEXTS.move_to_end(key)
    return _CONTEXTS[key]


def kernel_context_without_our_plugins(image: Path, symbols: Path, cache: Path) -> Tuple[Any, str]:
    """As :func:`kernel_context`, with Volatility's own ``windows.modules`` for the automagic and
    none of our plugins imported: for tests of what another plugin can use of our packages."""
    _prepare(symbols, cache, ours=False)
    from volatility3.plugins.windows import modules

    constructed = _in_process(image, symbols, cache, modules.Modules, {}, ours=False)
    return constructed.context, constructed.context.config[f"{constructed.config_path}.kernel"]


def module_rows(image: Path, symbols: Path, cache: Path) -> List[Tuple[str, int, int]]:
    """(name, base, size) of each module Volatility's ``windows.modules`` lists, in-process."""
    from volatility3.plugins.windows import modules

    context, kernel = kernel_context(image, symbols, cache)
    found = []
    for entry in modules.Modules.list_modules(context, kernel):
        found.append((entry.BaseDllName.get_string(), int(entry.DllBase) & ((1 << 48) - 1), int(entry.SizeOfImage)))
    return found


#: Contexts whose automagic already ran, by image: its layers and kernel serve every run of the
#: plugin on that image (automagic is most of a run's cost, the DTB scan of a 32-bit image above
#: all). A few images at a time: the matrices run each image's runs one after the other.
_CONTEXTS: "OrderedDict[Tuple[str, str], Any]" = OrderedDict()
_MAX_CONTEXTS = 4


def plugin_rows(image: Path, symbols: Path, cache: Path, **options: Any) -> Tuple[List[Dict[str, Any]], List[str]]:
    """``windows.callbackobjects`` run in-process: (its rows as ``-r json`` gives them, the
    warnings it logged). ``options`` are the plugin's (``no_scan=True``, ``full_scan=True``).
    Automagic runs once per image; each call constructs the plugin anew on that context."""
    _prepare(symbols, cache)
    from volatility3.plugins.windows.callbackobjects import CallbackObjects

    with collected_warnings() as records:
        context, config_path = _image_context(image, symbols, cache)
        for name in ("no_scan", "full_scan", "suspicious"):
            context.config[f"{config_path}.{name}"] = options.get(name, False)
        rows = grid_rows(CallbackObjects(context, config_path).run())
    return rows, records


@contextlib.contextmanager
def collected_warnings() -> Iterator[List[str]]:
    """The messages Volatility and our plugins log at warning level or above, while in the block."""
    import logging

    records: List[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Collect(logging.WARNING)
    logger = logging.getLogger("volatility3")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def grid_rows(grid: Any) -> List[Dict[str, Any]]:
    """A plugin's TreeGrid as ``-r json`` gives it: column name -> value, absent values None."""
    from volatility3.framework import interfaces

    names = [column.name for column in grid.columns]
    rows: List[Dict[str, Any]] = []

    def visit(node: Any, accumulator: Any) -> Any:
        values = [None if isinstance(v, interfaces.renderers.BaseAbsentValue) else v for v in node.values]
        rows.append({name: (int(value) if isinstance(value, int) and not isinstance(value, bool) else value)
                     for name, value in zip(names, values)})
        return accumulator

    grid.populate(visit, None)
    return rows


def volatility_plugin_rows(image: Path, symbols: Path, cache: Path, plugin: str,
                           **options: Any) -> Tuple[List[Dict[str, Any]], List[str]]:
    """A plugin (``windows.driverscan.DriverScan``, ``windows.poolmap.PoolMap``: a module and a
    class of ``volatility3.plugins``) run in-process on the image's cached context, with
    ``options`` (unset options: their defaults): its rows as ``-r json`` gives them, and the
    warnings it logged."""
    import importlib

    context, kernel = kernel_context(image, symbols, cache)  # imports Volatility's plugins first
    module_name, _, class_name = plugin.rpartition(".")
    plugin_class = getattr(importlib.import_module(f"volatility3.plugins.{module_name}"), class_name)
    config_path = f"plugins.{class_name}"
    context.config[f"{config_path}.kernel"] = kernel
    for requirement in plugin_class.get_requirements():
        if requirement.name != "kernel":
            context.config[f"{config_path}.{requirement.name}"] = options.get(requirement.name, requirement.default)
    with collected_warnings() as records:
        rows = grid_rows(plugin_class(context, config_path).run())
    return rows, records


def driverscan_rows(image: Path, symbols: Path, cache: Path) -> List[Dict[str, Any]]:
    """Volatility's own ``windows.driverscan`` run in-process on the image's cached context."""
    return volatility_plugin_rows(image, symbols, cache, "windows.driverscan.DriverScan")[0]


def read_directory(context: Any, kernel_name: str, path: Sequence[str]) -> Dict[str, str]:
    """Names and type names of the objects in an object directory, read with Volatility's
    own ``_OBJECT_HEADER`` helpers (``get_name``, ``get_object_type``) and ``Handles`` type map."""
    from volatility3.framework import exceptions
    from volatility3.plugins.windows import handles

    kernel = context.modules[kernel_name]
    type_map = handles.Handles.get_type_map(context, kernel_name)
    cookie = handles.Handles.find_cookie(context, kernel_name)
    cookie_value = int(cookie) if cookie is not None else None
    body_offset = kernel.get_type("_OBJECT_HEADER").relative_child_offset("Body")
    root = kernel.object("pointer", offset=kernel.get_symbol("ObpRootDirectoryObject").address)
    directory = kernel.object("_OBJECT_DIRECTORY", offset=int(root), absolute=True)

    def entries(directory_object) -> Dict[str, Tuple[str, Any]]:
        found: Dict[str, Tuple[str, Any]] = {}
        for bucket in directory_object.HashBuckets:
            entry = bucket
            seen = set()
            while entry and int(entry) not in seen and len(seen) < 1000:
                seen.add(int(entry))
                entry_object = entry.dereference()
                try:
                    header = kernel.object("_OBJECT_HEADER", offset=int(entry_object.Object) - body_offset, absolute=True)
                    name = header.get_name()
                    type_name = header.get_object_type(type_map, cookie_value)
                except exceptions.InvalidAddressException:
                    name, type_name = None, None
                if name is not None:
                    found[name] = (type_name, entry_object.Object)
                entry = entry_object.ChainLink
        return found

    for component in path:
        type_name, body = entries(directory)[component]
        assert type_name == "Directory", f"{component} is a {type_name}"
        directory = kernel.object("_OBJECT_DIRECTORY", offset=int(body), absolute=True)
    return {name: type_name for name, (type_name, _) in entries(directory).items()}
