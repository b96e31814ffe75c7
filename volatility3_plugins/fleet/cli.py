"""``vol-callbackobjects stack`` and ``vol-callbackobjects sweep``: the fleet commands.

Exit status: 0 when every image (or output) was read, 1 when some were refused, failed or could
not be read (the rest is still written), 3 when every image gave rows but some with degraded
evidence (a sweep), 2 when the command cannot run at all (bad arguments, no image, an
unreadable baseline, an unreachable scheduler).
"""

import argparse
import os
import sys
from typing import List, Optional, Sequence, Tuple

from ..schema import baseline, outputs, verdict_line
from . import executors, paths, stack, sweep

PROG = "vol-callbackobjects"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def local_cores() -> int:
    """The cores this process may run on (a container's or taskset's limit included)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def stack_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} stack",
        description="Stack the JSON outputs of windows.callbackobjects from many images: every distinct "
        "registration (object, module, symbol) with the number of images it is on, rarest first.",
    )
    parser.add_argument("outputs", nargs="+", metavar="OUTPUT",
                        help="a JSON output (-r json), a folder of them (a sweep's output folder), a glob, "
                        "or @FILE listing any of these")
    parser.add_argument("-r", "--renderer", choices=("text", "json"), default="text",
                        help="text table (default) or JSON for scripts (every image of every registration)")
    parser.add_argument("--rare", type=_positive, default=3,
                        help="name the images of registrations carried by at most this many (default %(default)s)")
    return parser


def read_outputs(arguments: Sequence[str]) -> Tuple[List[Tuple[str, outputs.Output]], List[Tuple[str, str]]]:
    """Named outputs, and (name, reason) of those that cannot be read."""
    found = [path for path in paths.expand(arguments, outputs.is_output_name)
             if outputs.is_output_name(os.path.basename(path))]
    if not found:
        raise paths.PathError("no JSON output among the arguments (sidecars *.meta.json and stack.json are not)")
    names = paths.unique_names(found, strip=outputs.OUTPUT_SUFFIX)
    read, unreadable = [], []
    for path in found:
        try:
            read.append((names[path], outputs.read_output(path)))
        except outputs.OutputError as error:
            unreadable.append((names[path], str(error)))
    return read, unreadable


def run_stack(argv: Sequence[str]) -> int:
    args = stack_parser().parse_args(argv)
    try:
        read, unreadable = read_outputs(args.outputs)
    except paths.PathError as error:
        print(f"{PROG} stack: {error}", file=sys.stderr)
        return 2
    for name, reason in unreadable:
        print(f"{PROG} stack: skipped {name}: {reason}", file=sys.stderr)
    found = stack.build(read, unreadable)
    sys.stdout.write(stack.render_json(found) if args.renderer == "json" else stack.render_text(found, args.rare))
    return 1 if unreadable else 0


def sweep_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} sweep",
        usage=f"{PROG} sweep IMAGE... --out DIR [options] [-- VOLATILITY_OPTIONS...]",
        description="Run windows.callbackobjects on many memory images, one Volatility process per image, "
        "and stack the outputs. Writes DIR/NAME.json (the plugin's JSON output) and DIR/NAME.meta.json "
        "(image, build, status, verdict) per image, then DIR/stack.txt and DIR/stack.json. Images already "
        "swept with the same options are skipped, so an interrupted sweep resumes. Volatility's own "
        "options (-s SYMBOLS, --offline, --cache-path DIR, ...) go after --.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="a memory image, a folder (searched for " + ", ".join(paths.IMAGE_SUFFIXES)
                        + "), a glob, or @FILE listing any of these")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument("--jobs", type=_positive, default=local_cores(),
                        help="images at a time (default: the local cores, %(default)s)")
    parser.add_argument("--baseline", nargs="+", action="extend", metavar="PATH",
                        help="known-good JSON outputs, or folders of them (a sweep of golden images): passed to "
                        "the plugin, which flags registrations none of them has not_in_baseline")
    parser.add_argument("--no-scan", action="store_true", help="the plugin's --no-scan (no pool scanning)")
    parser.add_argument("--full-scan", action="store_true", help="the plugin's --full-scan")
    parser.add_argument("--timeout", type=_seconds, metavar="SECONDS",
                        help="stop an image's Volatility process after this long (default: no limit)")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="run the per-image tasks on this Dask distributed scheduler (tcp://HOST:8786; its "
                        "workers need this package, and the images, symbols and baseline at the same paths), or 'local' for a Dask "
                        "cluster of --jobs workers on this machine")
    parser.add_argument("--rare", type=_positive, default=3,
                        help="stack.txt names the images of registrations carried by at most this many "
                        "(default %(default)s)")
    return parser


def split_volatility_options(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(the sweep's arguments, Volatility's options after ``--``)."""
    argv = list(argv)
    if "--" in argv:
        index = argv.index("--")
        return argv[:index], argv[index + 1:]
    return argv, []


def plugin_options(args: argparse.Namespace) -> List[str]:
    options = []
    if args.no_scan:
        options.append("--no-scan")
    if args.full_scan:
        options.append("--full-scan")
    if args.baseline:
        options += ["--baseline"] + [os.path.abspath(path) for path in args.baseline]
    return options


def run_sweep(argv: Sequence[str]) -> int:
    own, volatility_options = split_volatility_options(argv)
    args = sweep_parser().parse_args(own)
    try:
        images = paths.expand(args.images, paths.image_filter())
        if args.baseline:
            # Checked here once, not refused by every image's run.
            baseline.load([os.path.abspath(path) for path in args.baseline])
        settings = sweep.Settings(
            out_dir=os.path.abspath(args.out),
            workers=args.jobs,
            options=sweep.RunOptions(tuple(volatility_options), tuple(plugin_options(args)), args.timeout),
            scheduler=args.scheduler,
            rare=args.rare,
        )
        outcomes = sweep.sweep(images, settings)
    except (paths.PathError, outputs.OutputError, sweep.SweepError, executors.ExecutorError) as error:
        print(f"{PROG} sweep: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"{PROG} sweep: {error.filename or ''}: {error.strerror or error}", file=sys.stderr)
        return 2
    sys.stdout.write(sweep.summary(outcomes, args.out))  # the folder as the user wrote it
    statuses = {outcome.meta.get("status") for outcome in outcomes}
    if statuses <= {sweep.OK}:
        return 0
    return verdict_line.DEGRADED_EXIT_STATUS if statuses <= set(sweep.WITH_ROWS) else 1


COMMANDS = {"stack": run_stack, "sweep": run_sweep}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``argv``: the command name, then its arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: {PROG} {{{','.join(COMMANDS)}}} ... (or Volatility's own arguments)", file=sys.stderr)
        return 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except KeyboardInterrupt:
        print(f"\n{PROG} {argv[0]}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
