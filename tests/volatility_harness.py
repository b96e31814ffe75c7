"""Running Volatility 3 on forged images, the way a user would and from inside Python.

``run_vol`` runs the real command line in a subprocess (the user's view: automagic, renderers,
exit code); ``kernel_context`` runs the same automagic in-process so tests can call
Volatility's own helpers (object headers, type maps) on a forged image.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

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


def kernel_context(image: Path, symbols: Path, cache: Path) -> Tuple[Any, str]:
    """A Volatility context with the kernel of ``image`` found by automagic."""
    import volatility3.plugins
    import volatility3.symbols
    from volatility3 import framework
    from volatility3.framework import automagic, constants, contexts
    from volatility3.framework.plugins import construct_plugin

    cache.mkdir(parents=True, exist_ok=True)
    constants.CACHE_PATH = str(cache)
    constants.OFFLINE = True
    volatility3.symbols.__path__ = [str(symbols)] + [p for p in constants.SYMBOL_BASEPATHS]
    framework.import_files(volatility3.plugins, True)
    from volatility3.plugins.windows import modules

    context = contexts.Context()
    context.config["automagic.LayerStacker.single_location"] = Path(image).resolve().as_uri()
    chosen = automagic.choose_automagic(automagic.available(context), modules.Modules)
    plugin = construct_plugin(context, chosen, modules.Modules, "plugins", None, None)
    return context, plugin.config["kernel"]


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
