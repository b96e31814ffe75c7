"""Frequency stacking: every distinct registration of a fleet with the number of images it is on.

The rarest first: what one or two machines of a thousand have and the others do not is where a
responder looks first (the "least frequency of occurrence" of process and service stacking).
Registrations are keyed as the known-good comparison keys them (:mod:`..schema.baseline`: object
name, every unnamed object alike; module and symbol or module-relative offset; never an
address), over the rows that are evidence of a live registration (freed
blocks, blocks of unknown state and unreadable memory are history or noise, not registrations).
A routine in no module is stacked per object as ``(no module)``: shellcode on ``PowerState`` on
two machines shows as one line carried by two images.
"""

import dataclasses
import json
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ..schema import baseline, columns, flags, outputs

#: Shown for the module of a routine in no module, and its symbol.
NO_MODULE = "(no module)"
NO_SYMBOL = "-"
#: The format of ``stack.json``, for the scripts that read it.
JSON_FORMAT = "callbackobjects-stack/1"


@dataclasses.dataclass
class StackedImage:
    """One image whose output was stacked."""

    name: str
    output: str
    image: Optional[str]
    build: Optional[int]
    rows: int
    suspicious_rows: int
    #: ``complete``, ``degraded`` (the image lacked evidence: what it lacks proves nothing), or
    #: None (an output that does not say).
    evidence: Optional[str] = None


@dataclasses.dataclass
class StackEntry:
    """One distinct registration and the images that carry it."""

    key: baseline.RegistrationKey
    object: str
    module: str
    symbol: str
    images: List[str]
    suspicious_flags: List[str]
    builds: List[int]

    @property
    def count(self) -> int:
        return len(self.images)


@dataclasses.dataclass
class Stack:
    images: List[StackedImage]
    #: Rarest first; among equally rare ones, those with suspicious flags first.
    entries: List[StackEntry]
    #: Images that are not in the stack, with the reason (refused by the plugin, unreadable).
    not_stacked: List[Tuple[str, str]] = dataclasses.field(default_factory=list)


def _display_object(name: Optional[str]) -> str:
    return name if name else "(unnamed)"


def build(named_outputs: Sequence[Tuple[str, outputs.Output]], not_stacked: Iterable[Tuple[str, str]] = ()) -> Stack:
    """The stack of ``(name, output)`` pairs, one per image."""
    images: List[StackedImage] = []
    entries: Dict[baseline.RegistrationKey, StackEntry] = {}
    for name, output in named_outputs:
        views = [baseline.RowView.from_json(row) for row in output.rows]
        suspicious_rows = sum(1 for view in views if view.suspicious)
        images.append(StackedImage(name, output.path, output.image, output.build, len(views), suspicious_rows,
                                   output.evidence))
        for view, key in zip(views, baseline.keys(views)):
            if key is None:
                continue
            entry = entries.get(key)
            if entry is None:
                entry = entries[key] = StackEntry(
                    key,
                    _display_object(view.name),
                    view.module if key.comparable and view.module else NO_MODULE,
                    view.symbol if key.comparable and view.symbol else NO_SYMBOL,
                    [],
                    [],
                    [],
                )
            if name not in entry.images:
                entry.images.append(name)
            entry.suspicious_flags = flags.sort_flags(
                entry.suspicious_flags + [flag for flag in view.flags if flags.is_suspicious(flag)]
            )
            if output.build is not None and output.build not in entry.builds:
                entry.builds.append(output.build)
    for entry in entries.values():
        entry.images.sort()
        entry.builds.sort()
    ordered = sorted(entries.values(), key=lambda e: (e.count, not e.suspicious_flags, e.key))
    return Stack(images, ordered, list(not_stacked))


def to_json(stack: Stack) -> Dict[str, Any]:
    """The stack as ``stack.json`` holds it (every entry with every image that carries it)."""
    return {
        "format": JSON_FORMAT,
        "images": [dataclasses.asdict(image) for image in stack.images],
        "not_stacked": [{"name": name, "reason": reason} for name, reason in stack.not_stacked],
        "registrations": [
            {
                "object": entry.object,
                "module": None if entry.module == NO_MODULE else entry.module,
                "symbol": None if entry.symbol == NO_SYMBOL else entry.symbol,
                "key": dataclasses.asdict(entry.key),
                "count": entry.count,
                "images": entry.images,
                "suspicious_flags": entry.suspicious_flags,
                "builds": entry.builds,
            }
            for entry in stack.entries
        ],
    }


def render_json(stack: Stack) -> str:
    return json.dumps(to_json(stack), indent=2, sort_keys=True) + "\n"


def _builds_summary(images: Sequence[StackedImage]) -> str:
    counts: Dict[str, int] = {}
    for image in images:
        label = str(image.build) if image.build is not None else "unknown"
        counts[label] = counts.get(label, 0) + 1
    return ", ".join(f"{build} x{count}" for build, count in sorted(counts.items(), key=lambda item: -item[1]))


def _carried_by(entry: StackEntry, total: int, rare: int) -> str:
    if entry.count == total and total > 1:
        return f"all {total}"
    if entry.count <= rare:
        return ", ".join(entry.images)
    return f"{entry.count} images"


def render_text(stack: Stack, rare: int = 3) -> str:
    """A table, rarest first; the images carrying a registration are named when at most
    ``rare`` carry it (``stack.json`` names them always)."""
    total = len(stack.images)
    lines = [
        f"{total} images stacked (builds: {_builds_summary(stack.images) or 'none'}); "
        f"{len(stack.entries)} distinct registrations, rarest first."
    ]
    degraded = [image.name for image in stack.images if image.evidence == columns.DEGRADED]
    if degraded:
        lines.append("Stacked with degraded evidence (a registration missing there proves nothing): " + ", ".join(degraded))
    for name, reason in stack.not_stacked:
        lines.append(f"Not stacked: {name}: {reason}")
    header = ("Images", "Object", "Module", "Symbol", "Suspicious flags", "Builds", "Carried by")
    table = [header] + [
        (
            str(entry.count),
            entry.object,
            entry.module,
            entry.symbol,
            ",".join(entry.suspicious_flags) or "-",
            ",".join(str(build) for build in entry.builds) or "-",
            _carried_by(entry, total, rare),
        )
        for entry in stack.entries
    ]
    widths = [max(len(row[column]) for row in table) for column in range(len(header) - 1)]
    lines.append("")
    for row in table:
        cells = [row[0].rjust(widths[0])] + [cell.ljust(width) for cell, width in zip(row[1:-1], widths[1:])]
        lines.append("  ".join(cells + [row[-1]]).rstrip())
    return "\n".join(lines) + "\n"
