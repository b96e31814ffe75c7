"""The verdict line every run of ``windows.callbackobjects`` ends with: its fields, its writer and
its parser, in one place.

The plugin writes it (at warning level, so it is seen without ``-v``); a fleet sweep reads it back
from Volatility's standard error into each image's sidecar (the kernel build and PDB above all:
known-good images of another build compare badly). Analysts and their scripts read it too, so its
text never changes shape::

    Verdict: build 19041, kernel PDB AEF5...D6DE-1; 31 callback objects; 49 registrations and 8
    loose; 11 suspicious rows (outside_modules 2, ...); evidence complete; informational: freed
    7, ...; baseline: 12 registrations from 3 known-good outputs; routes: module list complete
    (14 modules), ...

(one line). ``and N loose`` is there when the pool scan ran, ``informational`` when some row has
an informational flag, ``baseline`` with ``--baseline``. ``evidence degraded (CAUSE, ...)`` says
why the evidence is incomplete (the file is shorter than it should be, a route did not close or
could not run), each cause with how much is missing: then ``0 suspicious rows`` is no clean
bill, and ``vol-callbackobjects`` exits with :data:`DEGRADED_EXIT_STATUS`. Lines written before
the evidence was said (no ``evidence`` part) still parse, with ``evidence`` None. :func:`parse`
reads back exactly what :func:`format` writes.

A refusal (no verdict at all) is an error whose message starts with :data:`REFUSAL`.
"""

import dataclasses
import re
from typing import Dict, List, Optional, Tuple

from . import flags as flag_names

PREFIX = "Verdict: "
#: How the plugin's refusal of an image starts (Volatility prints it inside its own explanation).
REFUSAL = "windows.callbackobjects cannot give a verdict on this image: "
#: The exit status of ``vol-callbackobjects`` (and ``python -m volatility3_plugins``) when the
#: verdict is degraded: 0 is a complete verdict, 1 and 2 are Volatility's own (a refusal, a
#: command-line error). Plain ``vol`` cannot set it: its exit status is 0 whenever rows were printed.
DEGRADED_EXIT_STATUS = 3
_ROUTES = "; routes: "
_EVIDENCE = re.compile(r"evidence (complete|degraded \((.+)\))")
_IDENTITY = re.compile(r"build (\d+|unknown)(?:, kernel PDB ([0-9A-Fa-f]+)-(\d+))?")
_OBJECTS = re.compile(r"(\d+) callback objects")
_REGISTRATIONS = re.compile(r"(\d+) registrations(?: and (\d+) loose)?")
_SUSPICIOUS = re.compile(r"(\d+) suspicious rows(?: \((.+)\))?")
_INFORMATIONAL = re.compile(r"informational: (.+)")
_BASELINE = re.compile(r"baseline: (\d+) registrations from (\d+) known-good outputs?")
_FLAG_COUNT = re.compile(r"(\S+) (\d+)")


@dataclasses.dataclass(frozen=True)
class VerdictLine:
    """What the verdict line says about one image."""

    #: The kernel's build number; None when it could not be read.
    build: Optional[int]
    #: (GUID in upper case, age) of the kernel's PDB; None when its symbol table does not say.
    kernel_pdb: Optional[Tuple[str, int]]
    objects: int
    registrations: int
    #: Loose registrations; None when the pool scan did not run (there can be none to tell).
    loose: Optional[int]
    suspicious_rows: int
    #: Rows carrying each flag (suspicious and informational alike); flags on no row are absent.
    flags: Dict[str, int] = dataclasses.field(default_factory=dict)
    #: (registrations, known-good outputs) of the ``--baseline`` compared with; None without one.
    baseline: Optional[Tuple[int, int]] = None
    #: Each route and the module list with its state, as ``module list complete (14 modules)``.
    routes: Tuple[str, ...] = ()
    #: Why the evidence is incomplete, one cause each; empty when complete; None when the line
    #: does not say (written before it did).
    evidence: Optional[Tuple[str, ...]] = None

    @property
    def degraded(self) -> bool:
        return bool(self.evidence)


def _flag_counts(counts: Dict[str, int], suspicious: bool) -> str:
    """``flag count, ...`` of one group, most severe first."""
    chosen = [flag for flag in flag_names.sort_flags(counts) if flag_names.is_suspicious(flag) == suspicious]
    return ", ".join(f"{flag} {counts[flag]}" for flag in chosen)


def format(line: VerdictLine) -> str:
    """The text of a verdict line."""
    identity = f"build {line.build if line.build is not None else 'unknown'}"
    if line.kernel_pdb is not None:
        identity += f", kernel PDB {line.kernel_pdb[0]}-{line.kernel_pdb[1]}"
    suspicious = _flag_counts(line.flags, True)
    informational = _flag_counts(line.flags, False)
    parts = [
        identity,
        f"{line.objects} callback objects",
        f"{line.registrations} registrations" + (f" and {line.loose} loose" if line.loose is not None else ""),
        f"{line.suspicious_rows} suspicious rows" + (f" ({suspicious})" if suspicious else ""),
    ]
    if line.evidence is not None:
        parts.append("evidence " + (f"degraded ({', '.join(line.evidence)})" if line.evidence else "complete"))
    if informational:
        parts.append(f"informational: {informational}")
    if line.baseline is not None:
        keys, sources = line.baseline
        parts.append(f"baseline: {keys} registrations from {sources} known-good output" + ("s" if sources != 1 else ""))
    return PREFIX + "; ".join(parts) + _ROUTES + ", ".join(line.routes)


def locate(text: str) -> Optional[str]:
    """The verdict line in ``text`` (a log line: ``WARNING  volatility3...: Verdict: ...``),
    from its prefix to the end; None when ``text`` holds none."""
    start = text.find(PREFIX)
    return text[start:] if start >= 0 else None


def _split_outside_parentheses(text: str, separator: str) -> Tuple[str, ...]:
    """``text`` split at each ``separator`` outside parentheses (what is inside is a detail)."""
    pieces: List[str] = []
    depth, start = 0, 0
    for index, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif depth == 0 and text.startswith(separator, index):
            pieces.append(text[start:index])
            start = index + len(separator)
    if text:
        pieces.append(text[start:])
    return tuple(pieces)


def _split_routes(text: str) -> Tuple[str, ...]:
    """``a complete (x, y), b skipped`` as its routes (or causes): commas inside parentheses are
    details."""
    return _split_outside_parentheses(text, ", ")


def _parse_flags(text: Optional[str], into: Dict[str, int]) -> bool:
    for item in text.split(", ") if text else ():
        match = _FLAG_COUNT.fullmatch(item)
        if match is None:
            return False
        into[match.group(1)] = int(match.group(2))
    return True


def parse(text: str) -> Optional[VerdictLine]:
    """The verdict line in ``text`` (see :func:`locate`); None when there is none, or when what
    follows the prefix is not a verdict line as :func:`format` writes it."""
    found = locate(text)
    if found is None:
        return None
    head, separator, routes = found[len(PREFIX):].partition(_ROUTES)
    parts = list(_split_outside_parentheses(head, "; "))  # a cause's detail may hold "; "
    if not separator or len(parts) < 4:
        return None
    identity = _IDENTITY.fullmatch(parts[0])
    objects = _OBJECTS.fullmatch(parts[1])
    registrations = _REGISTRATIONS.fullmatch(parts[2])
    suspicious = _SUSPICIOUS.fullmatch(parts[3])
    if identity is None or objects is None or registrations is None or suspicious is None:
        return None
    counts: Dict[str, int] = {}
    if not _parse_flags(suspicious.group(2), counts):
        return None
    baseline: Optional[Tuple[int, int]] = None
    evidence: Optional[Tuple[str, ...]] = None
    rest = parts[4:]
    if rest:
        said = _EVIDENCE.fullmatch(rest[0])
        if said is not None:
            evidence = _split_routes(said.group(2)) if said.group(2) else ()
            rest = rest[1:]
    if rest:
        informational = _INFORMATIONAL.fullmatch(rest[0])
        if informational is not None:
            if not _parse_flags(informational.group(1), counts):
                return None
            rest = rest[1:]
    if rest:
        known_good = _BASELINE.fullmatch(rest[0])
        if known_good is None:
            return None
        baseline = (int(known_good.group(1)), int(known_good.group(2)))
        rest = rest[1:]
    if rest:
        return None
    build, guid, age = identity.groups()
    return VerdictLine(
        build=None if build == "unknown" else int(build),
        kernel_pdb=(guid.upper(), int(age)) if guid is not None else None,
        objects=int(objects.group(1)),
        registrations=int(registrations.group(1)),
        loose=int(registrations.group(2)) if registrations.group(2) is not None else None,
        suspicious_rows=int(suspicious.group(1)),
        flags=counts,
        baseline=baseline,
        routes=_split_routes(routes),
        evidence=evidence,
    )
