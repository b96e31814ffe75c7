"""Plugin directory for ``vol -p volatility3_plugins``, and the ``vol-callbackobjects`` command.

Volatility imports the modules below this folder as ``volatility3.plugins.*``; files whose name
starts with ``__`` are skipped by its loader, so the command can live here without being
mistaken for a plugin.

``vol-callbackobjects stack ...`` and ``vol-callbackobjects sweep ...`` are the fleet commands
(:mod:`.fleet.cli`); anything else is Volatility's own command line with this folder added.

Packages, each importing only those below it (``tests/unit/test_layering.py`` checks it):
``windows/kernelread`` (reading the kernel, for any plugin), ``windows/kernelpool`` (the pool
allocators and the pool-scan engine), ``windows/callback_objects`` (what is callback-specific),
the plugin ``windows/callbackobjects.py`` on top; ``schema`` (what the output means, standard
library only) beside them, the only package ``fleet`` imports; ``layers`` (the crash-dump
layer) takes only the page size and the warn-once of ``kernelread``.
"""

import os
import sys
from typing import List, Optional

PLUGIN_DIRECTORY = os.path.dirname(os.path.abspath(__file__))
#: First arguments that select a fleet command instead of Volatility.
FLEET_COMMANDS = ("stack", "sweep")


def _with_plugin_directory(argv: List[str]) -> List[str]:
    """Volatility's arguments with this folder added to any plugin directories already given."""
    args = list(argv)
    for index, arg in enumerate(args):
        if arg in ("-p", "--plugin-dirs") and index + 1 < len(args):
            args[index + 1] = f"{args[index + 1]};{PLUGIN_DIRECTORY}"
            return args
        if arg.startswith("--plugin-dirs="):
            args[index] = f"{arg};{PLUGIN_DIRECTORY}"
            return args
    return ["-p", PLUGIN_DIRECTORY] + args


def _merge_repeated_baselines(argv: List[str]) -> List[str]:
    """``--baseline A --baseline B`` as ``--baseline A B``: Volatility's command line keeps only
    the last occurrence of a list option, which would silently drop known-good outputs."""
    merged: List[str] = []
    values: List[str] = []
    position: Optional[int] = None
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--baseline" or arg.startswith("--baseline="):
            if position is None:
                position = len(merged)
            if arg != "--baseline":
                values.append(arg.split("=", 1)[1])
            index += 1
            while index < len(argv) and not argv[index].startswith("-"):
                values.append(argv[index])
                index += 1
            continue
        merged.append(arg)
        index += 1
    if position is None:
        return list(argv)
    return merged[:position] + ["--baseline"] + values + merged[position:]


def main(argv: Optional[List[str]] = None) -> None:
    """``vol`` with this project's plugins available: ``vol-callbackobjects -f IMAGE windows.callbackobjects``;
    ``vol-callbackobjects stack|sweep ...``: the fleet commands."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] in FLEET_COMMANDS:
        from .fleet import cli as fleet_cli

        sys.exit(fleet_cli.main(args))
    from volatility3 import cli

    sys.argv = ["vol"] + _with_plugin_directory(_merge_repeated_baselines(args))
    cli.main()
