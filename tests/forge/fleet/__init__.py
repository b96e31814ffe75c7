"""A forged fleet: many machines' memory images, for fleet triage (sweep, stack, baseline).

``python -m tests.forge.fleet --out DIR`` writes, by default:

- ``DIR/hosts/host01.raw`` ... ``host13.raw``: twelve Windows 10 (19041) machines booted from
  the same image, each with its own layout (``seed``), two of which (``host05``, ``host11``)
  carry the ``rootkit`` scenario's plants, and one Windows 7 (7601) machine (``host13``);
- ``DIR/golden/golden01.raw``, ``golden02.raw``: known-good Windows 10 machines (the golden
  image a responder keeps), other seeds again;
- ``DIR/symbols/``: the kernels' symbol tables, for ``vol -s DIR/symbols``;
- ``DIR/truth/NAME.json``: each image's ground truth (``truth.json`` of the forge);
- ``DIR/fleet.json``: the roster (name, role, scenario, profile, seed, build).

A seed varies the layout (physical frames, KASLR bases, pool placement), never the inventory:
the clean hosts hold the same registrations as the golden images, at other addresses, which is
what a known-good comparison must see through. Raw images only, to keep the fleet small.
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

from ..image.output import truth_text
from ..stories.scenarios import forge_scenario

HOSTS, GOLDEN = "hosts", "golden"
SYMBOLS, TRUTH, ROSTER = "symbols", "truth", "fleet.json"


@dataclasses.dataclass(frozen=True)
class Member:
    """One machine of the fleet."""

    name: str
    role: str  # HOSTS or GOLDEN: the folder it is written to
    scenario: str
    profile: str
    seed: int

    @property
    def image(self) -> str:
        return f"{self.name}.raw"


def default_members(
    hosts: int = 12, rootkits: Sequence[int] = (5, 11), golden: int = 2, other_build: str = "win7"
) -> List[Member]:
    """``hosts`` Windows 10 hosts (the numbers in ``rootkits`` with the rootkit planted), one
    host of ``other_build`` after them (none when empty), and ``golden`` known-good images."""
    members = [Member(f"host{n:02d}", HOSTS, "rootkit" if n in rootkits else "baseline", "win10", 100 + n)
               for n in range(1, hosts + 1)]
    if other_build:
        members.append(Member(f"host{hosts + 1:02d}", HOSTS, "baseline", other_build, 100 + hosts + 1))
    members += [Member(f"golden{n:02d}", GOLDEN, "baseline", "win10", 200 + n) for n in range(1, golden + 1)]
    return members


def forge_fleet(out: Path, members: Sequence[Member]) -> Dict[str, Any]:
    """Writes the fleet into ``out`` and returns its roster."""
    out = Path(out)
    roster: Dict[str, Any] = {"members": []}
    for member in members:
        image = forge_scenario(member.scenario, member.profile, seed=member.seed)
        (out / member.role).mkdir(parents=True, exist_ok=True)
        (out / TRUTH).mkdir(parents=True, exist_ok=True)
        image.write_format("raw", out / member.role / member.image)
        image.write_symbols(out / SYMBOLS)
        (out / TRUTH / f"{member.name}.json").write_text(truth_text(image.truth))
        roster["members"].append(dict(dataclasses.asdict(member), image=f"{member.role}/{member.image}",
                                      build=image.truth["build"]))
    (out / ROSTER).write_text(json.dumps(roster, indent=1) + "\n")
    return roster


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.forge.fleet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--hosts", type=int, default=12, help="Windows 10 hosts (default %(default)s)")
    parser.add_argument("--rootkits", default="5,11", help="hosts with the rootkit, comma-separated (default %(default)s)")
    parser.add_argument("--golden", type=int, default=2, help="known-good images (default %(default)s)")
    parser.add_argument("--other-build", default="win7", help="profile of one more host ('' for none; default %(default)s)")
    args = parser.parse_args(argv)
    rootkits = tuple(int(n) for n in args.rootkits.split(",") if n.strip())
    started = time.monotonic()
    roster = forge_fleet(args.out, default_members(args.hosts, rootkits, args.golden, args.other_build))
    print(f"forged {len(roster['members'])} images into {args.out} in {time.monotonic() - started:.1f}s:")
    for member in roster["members"]:
        print(f"  {member['image']:20} {member['scenario']:9} {member['profile']} (build {member['build']}, seed {member['seed']})")
    return 0

