"""Plugin directory for ``vol -p volatility3_plugins``, and the ``vol-callbackobjects`` command.

Volatility imports the modules below this folder as ``volatility3.plugins.*``; files whose name
starts with ``__`` are skipped by its loader, so the command can live here without being
mistaken for a plugin.

``vol-callbackobjects stack ...`` and ``vol-callbackobjects sweep ...`` are the fleet commands
(:mod:`.fleet.cli`); ``vol-callbackobjects volshell ...`` is Volatility's shell and
``vol-callbackobjects plugin-dir`` prints this folder (for ``vol -p`` or ``volshell -p``);
anything else is Volatility's own command line with this folder added, which exits
:data:`~.schema.verdict_line.DEGRADED_EXIT_STATUS` when ``windows.callbackobjects`` gave a degraded
verdict (Volatility's own ``vol`` cannot: it exits 0 whenever rows were printed).

Packages, each importing only those below it (``tests/unit/test_layering.py`` checks it):
``common`` (standard-library facts the crash-dump layer and the kernel reader share) at the
bottom; ``windows/kernelread`` (reading the kernel, for any plugin), ``windows/kernelpool`` (the
pool allocators and the pool-scan engine), ``windows/callback_objects`` (what is
callback-specific), the plugin ``windows/callbackobjects.py`` on top; ``schema`` (what the output
means, standard library only) beside them, the only package ``fleet`` imports; ``layers`` (the
crash-dump layer and the stacker that says what an unrecognised file is) takes only ``common``.
"""

import logging
import os
import sys
from typing import List, Optional

PLUGIN_DIRECTORY = os.path.dirname(os.path.abspath(__file__))
PROG = "vol-callbackobjects"
#: First arguments that select a fleet command instead of Volatility.
FLEET_COMMANDS = ("stack", "sweep")
VOLSHELL = "volshell"
PLUGIN_DIR = "plugin-dir"
#: Printed before Volatility's own help (``vol-callbackobjects -h``): what this command adds.
OVERVIEW = f"""\
{PROG}: Volatility 3 with windows.callbackobjects and the crash-dump layer of its package.
  {PROG} -f IMAGE windows.callbackobjects [--suspicious]  the plugin (any Volatility plugin runs the same way)
  {PROG} sweep IMAGE... --out DIR     the plugin over many images, in parallel (sweep -h)
  {PROG} stack OUTPUT...              registrations of a fleet ranked by rarity (stack -h)
  {PROG} volshell -f IMAGE -w         Volatility's shell, opening every dump type this package opens
  {PROG} plugin-dir                   the folder to give plain vol or volshell as -p
Exit status: 0 a complete verdict, 3 a degraded one (evidence missing: the Evidence column and the
verdict line say what), 1 refused (no verdict), 2 a command-line error.
Volatility's own help follows.

"""


class UsageError(ValueError):
    """A command line this command rejects before starting Volatility."""


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
    the last occurrence of a list option, which would silently drop known-good outputs. A
    ``--baseline`` without any path is a :class:`UsageError` (Volatility would ignore it)."""
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
    values = [value for value in values if value]
    if not values:
        raise UsageError("--baseline needs at least one path: known-good JSON outputs of the plugin, or folders of them")
    return merged[:position] + ["--baseline"] + values + merged[position:]


def _asks_for_overview(argv: List[str]) -> bool:
    """``-h`` before any plugin name (a dotted word that is no existing file): Volatility's whole
    help, which this command's overview precedes."""
    for arg in argv:
        if arg in ("-h", "--help"):
            return True
        if not arg.startswith("-") and "." in arg and not os.path.exists(arg):
            return False
    return False


class _VerdictWatch(logging.Handler):
    """Keeps the last verdict line ``windows.callbackobjects`` logged in this process."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.degraded = False

    def emit(self, record: logging.LogRecord) -> None:
        from .schema import verdict_line

        message = record.getMessage()
        if message.startswith(verdict_line.PREFIX):
            said = verdict_line.parse(message)
            self.degraded = said is not None and said.degraded


def _volatility(argv: List[str]) -> None:
    from volatility3 import cli

    from .schema import verdict_line

    if _asks_for_overview(argv):
        sys.stdout.write(OVERVIEW)
        sys.stdout.flush()
    sys.argv = ["vol"] + _with_plugin_directory(argv)
    watch = _VerdictWatch()
    root = logging.getLogger()
    root.addHandler(watch)
    try:
        cli.main()
    finally:
        root.removeHandler(watch)
    if watch.degraded:
        sys.exit(verdict_line.DEGRADED_EXIT_STATUS)


def _volshell(argv: List[str]) -> None:
    """Volatility's volshell with this folder added. Volshell imports Volatility's own
    ``windows`` plugin package before it reads ``-p``, so this folder's ``windows`` modules are
    added to that package too: the plugin's classmethods can then be used from the shell
    (``from volatility3.plugins.windows.callbackobjects import CallbackObjects``)."""
    import volatility3.plugins.windows as windows_plugins
    from volatility3.cli import volshell

    own = os.path.join(PLUGIN_DIRECTORY, "windows")
    if own not in windows_plugins.__path__:
        windows_plugins.__path__.append(own)
    sys.argv = ["volshell"] + _with_plugin_directory(argv)
    volshell.main()


def main(argv: Optional[List[str]] = None) -> None:
    """``vol`` with this project's plugins available: ``vol-callbackobjects -f IMAGE windows.callbackobjects``;
    ``vol-callbackobjects stack|sweep ...``: the fleet commands; ``volshell``, ``plugin-dir``: see
    the module docstring."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] in FLEET_COMMANDS:
        from .fleet import cli as fleet_cli

        sys.exit(fleet_cli.main(args))
    if args[:1] == [PLUGIN_DIR]:
        print(PLUGIN_DIRECTORY)
        sys.exit(0)
    if args[:1] == [VOLSHELL]:
        _volshell(args[1:])
        return
    try:
        args = _merge_repeated_baselines(args)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        sys.exit(2)
    _volatility(args)
