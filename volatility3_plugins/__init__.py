"""Plugin directory for ``vol -p volatility3_plugins``, and the ``vol-callbackobjects`` command.

Volatility imports the modules below this folder as ``volatility3.plugins.*``; files whose name
starts with ``__`` are skipped by its loader, so the command can live here without being
mistaken for a plugin.
"""

import os
import sys
from typing import List, Optional

PLUGIN_DIRECTORY = os.path.dirname(os.path.abspath(__file__))


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


def main(argv: Optional[List[str]] = None) -> None:
    """``vol`` with this project's plugins available: ``vol-callbackobjects -f IMAGE windows.callbackobjects``."""
    from volatility3 import cli

    sys.argv = ["vol"] + _with_plugin_directory(sys.argv[1:] if argv is None else argv)
    cli.main()
