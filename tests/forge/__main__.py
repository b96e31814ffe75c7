"""python -m tests.forge SCENARIO --profile PROFILE --out DIR [--format FORMATS] [--seed N] [--memory-size 4G]

Writes DIR/symbols/ (pass it to ``vol -s``), DIR/truth.json and the image in each format of
FORMATS, a comma-separated list of names from ``dump.FORMATS`` (raw, dump, bitmap, live, kernel,
kernel-user, complete), or ``all`` for every format the profile's architecture has; the default
``raw,dump`` writes memory.raw and memory.dmp (``both`` and ``dmp`` are kept as older spellings
of ``raw,dump`` and ``dump``). ``--seed`` varies the layout (frames, bases, pool placement,
noise) but not what is planted.
"""

import argparse
import sys
import time
from pathlib import Path
from typing import Tuple

from .image.dump import DEFAULT_FORMATS, FORMATS
from .memory.machine import DEFAULT_SEED
from .profiles.layout import BUILTIN_PROFILES, LayoutError
from .stories.scenarios import SCENARIOS, forge_scenario


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text, 0)


ALIASES = {"both": "raw,dump", "dmp": "dump"}


def parse_formats(text: str) -> Tuple[str, ...]:
    """``all`` or a comma-separated list of format names; raises ValueError on an unknown name."""
    text = ALIASES.get(text.strip(), text)
    if text.strip() == "all":
        return ("all",)
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in FORMATS]
    if unknown or not names:
        raise ValueError(f"unknown format {', '.join(unknown) or repr(text)}; choose from all, {', '.join(FORMATS)}")
    return names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.forge", description="Forge a synthetic Windows memory image.")
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--profile", default="win10",
                        help=f"built-in profile ({', '.join(sorted(BUILTIN_PROFILES))}) or the path of a real kernel ISF")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--format", default=",".join(DEFAULT_FORMATS),
                        help=f"comma-separated formats: {', '.join(FORMATS)}, or all (default: %(default)s)")
    parser.add_argument("--memory-size", type=parse_size, default=0,
                        help="the machine's RAM, e.g. 4G (default: what is used, grown in 2 MiB banks)")
    parser.add_argument("--seed", type=lambda text: int(text, 0), default=DEFAULT_SEED,
                        help=f"layout seed: frames, KASLR bases, pool placement, noise (default {DEFAULT_SEED})")
    args = parser.parse_args(argv)
    try:
        formats = parse_formats(args.format)
    except ValueError as error:
        parser.error(str(error))
    started = time.monotonic()
    try:
        image = forge_scenario(args.scenario, args.profile, args.memory_size, args.seed)
        if formats == ("all",):
            formats = image.formats
        paths = image.write(args.out, formats=formats)
    except (LayoutError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows = image.truth["rows"]
    print(f"forged {args.scenario} on {image.truth['profile']} (build {image.truth['build']}, seed {args.seed}) "
          f"in {time.monotonic() - started:.1f}s: {len(rows)} expected rows")
    for kind, path in sorted(paths.items()):
        print(f"  {kind:8} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
