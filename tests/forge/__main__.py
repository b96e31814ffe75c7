"""python -m tests.forge SCENARIO --profile PROFILE --out DIR

Writes DIR/memory.raw, DIR/memory.dmp, DIR/symbols/ (pass it to ``vol -s``) and DIR/truth.json.
"""

import argparse
import sys
import time
from pathlib import Path

from .layout import BUILTIN_PROFILES, LayoutError
from .scenarios import SCENARIOS, forge_scenario


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text, 0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.forge", description="Forge a synthetic Windows memory image.")
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--profile", default="win10",
                        help=f"built-in profile ({', '.join(sorted(BUILTIN_PROFILES))}) or the path of a real kernel ISF")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--format", choices=("both", "raw", "dmp"), default="both")
    parser.add_argument("--memory-size", type=parse_size, default=0,
                        help="physical memory to pad the image to, e.g. 4G (default: just what is used)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        image = forge_scenario(args.scenario, args.profile, args.memory_size)
    except LayoutError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    paths = image.write(args.out, raw=args.format in ("both", "raw"), crash_dump=args.format in ("both", "dmp"))
    rows = image.truth["rows"]
    print(f"forged {args.scenario} on {image.truth['profile']} (build {image.truth['build']}) "
          f"in {time.monotonic() - started:.1f}s: {len(rows)} expected rows")
    for kind, path in sorted(paths.items()):
        print(f"  {kind:8} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
