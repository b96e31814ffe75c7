"""Known-good comparison: the registrations that known-good images of a fleet have.

A registration is compared across machines by what survives a reboot and another machine, never
by an address (KASLR moves every one):

- the object: its name, case-insensitively; every unnamed object alike (``unnamed``): such an
  object has nothing that survives a reboot but its registrants, and the registration's own
  routine already names one, so a foreign driver on an unnamed object differs from the baseline
  and the object's other registrations do not;
- the routine: its module (case-insensitively) and its symbol, a kernel symbol or driver export
  as attribution names it, else its module-relative offset (``module+0xOFFSET``, kept as
  ``+0xoffset``).

A routine in no module has no such key: it is in no baseline, ever (it is ``outside_modules``
already). A row that is no evidence of a live registration (``flags.NO_EVIDENCE``: freed,
allocation unknown, unreadable) is not compared, and neither is a registration whose owner
module or object name could not be read: absence of evidence is no accusation.

The same keys serve the stack of a fleet (:mod:`..fleet.stack`). Plain data:
rows come as :class:`RowView`, from the plugin's rows or from JSON outputs alike, so the plugin
and the fleet commands key a row the same way. Standard library only.
"""

import dataclasses
import os
from typing import Any, FrozenSet, List, Mapping, Optional, Sequence, Set, Tuple

from . import columns, flags, outputs

#: The object part of the key of every unnamed object.
UNNAMED_OBJECT = "unnamed"


@dataclasses.dataclass(frozen=True)
class RowView:
    """What the comparison reads of one output row."""

    #: Full name; None when unnamed (a JSON output also writes an unreadable name as null).
    name: Optional[str]
    has_registration: bool
    module: Optional[str]
    symbol: Optional[str]
    flags: Tuple[str, ...]
    #: False when the plugin could not read the object's name: such a row is not compared.
    name_readable: bool = True

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> "RowView":
        """A row of a JSON output (with the columns of ``columns.READ_BACK``)."""

        def text(column: str) -> Optional[str]:
            value = row.get(column)
            return value if isinstance(value, str) and value else None

        return cls(
            name=text(columns.NAME.name),
            has_registration=row.get(columns.REGISTRATION.name) is not None,
            module=text(columns.MODULE.name),
            symbol=text(columns.SYMBOL.name),
            flags=tuple(outputs.row_flags(dict(row))),
        )

    @property
    def suspicious(self) -> bool:
        return flags.any_suspicious(self.flags)

    @property
    def is_evidence(self) -> bool:
        """A registration that is evidence of a live registration."""
        return self.has_registration and flags.is_evidence(self.flags)

    @property
    def in_no_module(self) -> bool:
        """The routine lies in no module of a completely walked module list."""
        return self.module is None and flags.OUTSIDE_MODULES in self.flags


@dataclasses.dataclass(frozen=True, order=True)
class RegistrationKey:
    """A registration as compared across machines (see the module docstring)."""

    object: str
    #: Lower-cased module name; empty for a routine in no module.
    module: str
    #: Kernel symbol or export; ``+0xoffset`` when module-relative; empty in no module.
    symbol: str

    @property
    def comparable(self) -> bool:
        """Only a routine in a module can be found in a baseline."""
        return bool(self.module)


def routine_key(module: Optional[str], symbol: Optional[str]) -> Optional[Tuple[str, str]]:
    """(module, symbol) as compared; None when either is unknown. ``ndis.sys+0x1780`` becomes
    ``+0x1780`` so that the module's spelling counts once, case-insensitively."""
    if not module or not symbol:
        return None
    prefix = module.lower() + "+"
    if symbol.lower().startswith(prefix):
        return module.lower(), symbol[len(module):].lower()
    return module.lower(), symbol


def object_key(name: Optional[str]) -> str:
    return name.lower() if name else UNNAMED_OBJECT


def keys(rows: Sequence[RowView]) -> List[Optional[RegistrationKey]]:
    """The key of each row of one image; None where the row says nothing comparable: no
    registration, not evidence, the object's name unreadable, or the routine's module unknown
    without being in no module."""
    found: List[Optional[RegistrationKey]] = []
    for row in rows:
        if not row.is_evidence or not row.name_readable:
            found.append(None)
            continue
        routine = ("", "") if row.in_no_module else routine_key(row.module, row.symbol)
        if routine is None:
            found.append(None)
            continue
        found.append(RegistrationKey(object_key(row.name), *routine))
    return found


@dataclasses.dataclass(frozen=True)
class BaselineSource:
    """One known-good output the baseline was made of."""

    path: str
    #: The image's kernel build from the sweep's sidecar; None without one.
    build: Optional[int]
    registrations: int
    #: Rows of the known-good image that carry a suspicious flag: it may not be known-good.
    suspicious_rows: int
    #: ``degraded`` when the image lacked evidence (registrations it could not show are missing).
    evidence: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Baseline:
    """The registrations of the known-good images, by key."""

    keys: FrozenSet[RegistrationKey]
    sources: Tuple[BaselineSource, ...]

    def judge(self, rows: Sequence[RowView]) -> List[Optional[bool]]:
        """For each row of one image: True when a known-good image has its registration, False
        when none has it (a routine in no module: never in a baseline), None when the row
        cannot be compared."""
        verdicts: List[Optional[bool]] = []
        for key in keys(rows):
            verdicts.append(None if key is None else key.comparable and key in self.keys)
        return verdicts

    def other_builds(self, build: Optional[int]) -> List[BaselineSource]:
        """Sources whose recorded build is not ``build`` (nothing when ``build`` is unknown)."""
        if build is None:
            return []
        return [source for source in self.sources if source.build is not None and source.build != build]

    def notes(self, build: Optional[int]) -> List[str]:
        """Warnings for the analyst: baselines of another build, baselines with suspicious rows."""
        said = []
        others = self.other_builds(build)
        if others:
            builds = ", ".join(sorted({str(source.build) for source in others}))
            said.append(
                f"Baseline of another build: {len(others)} of {len(self.sources)} known-good outputs come from "
                f"build {builds}, this image is build {build}; registrations that differ between builds "
                f"(kernel symbols, driver versions) will show as {flags.NOT_IN_BASELINE}"
            )
        degraded = [source for source in self.sources if source.evidence == columns.DEGRADED]
        if degraded:
            said.append(
                "Baseline of degraded evidence: " + ", ".join(source.path for source in degraded)
                + ": registrations those images could not show will show as " + flags.NOT_IN_BASELINE
            )
        doubtful = [source for source in self.sources if source.suspicious_rows]
        if doubtful:
            said.append(
                "Baseline with suspicious rows: " + ", ".join(f"{s.path} ({s.suspicious_rows})" for s in doubtful)
                + ": their registrations count as known-good; check that these images are"
            )
        return said


def _source(output: outputs.Output) -> Tuple[BaselineSource, Set[RegistrationKey]]:
    views = [RowView.from_json(row) for row in output.rows]
    found = {key for key in keys(views) if key is not None and key.comparable}
    suspicious = sum(1 for view in views if view.suspicious)
    return BaselineSource(output.path, output.build, len(found), suspicious, output.evidence), found


#: The last baseline loaded, with the fingerprint of its files: Volatility asks the plugin's
#: requirements twice before the run reads the baseline again, and a fleet's baseline can be
#: hundreds of MiB of JSON.
_last_loaded: Optional[Tuple[Tuple[Tuple[str, int, int], ...], Baseline]] = None


def _fingerprint(paths: Sequence[str]) -> Tuple[Tuple[str, int, int], ...]:
    """Every output file (and sidecar) the paths name, with its size and modification time."""
    found = []
    for path in paths:
        for output in outputs.find_outputs(path):
            for file_path in (output, outputs.sidecar_path(output)):
                try:
                    status = os.stat(file_path)
                except OSError:
                    if file_path == output:
                        raise outputs.OutputError(f"{output}: cannot be read") from None
                    continue
                found.append((os.path.realpath(file_path), status.st_size, status.st_mtime_ns))
    return tuple(found)


def load(paths: Sequence[str]) -> Baseline:
    """The baseline made of the outputs at ``paths`` (files, or folders searched for
    ``*.json``). Raises :class:`outputs.OutputError` when a path is not an output of the plugin
    or holds no registration to compare with (an output made with ``--suspicious``, say). The
    same files unchanged since the last call give the same baseline without reading them again."""
    global _last_loaded
    if not paths:
        raise outputs.OutputError("--baseline: no path given")
    fingerprint = _fingerprint(paths)
    if _last_loaded is not None and _last_loaded[0] == fingerprint:
        return _last_loaded[1]
    sources = []
    known: Set[RegistrationKey] = set()
    for output in outputs.load_outputs(paths):
        source, found = _source(output)
        if not found:
            raise outputs.OutputError(
                f"{output.path}: no registration to compare with (an output made with --suspicious, "
                "or of an image the plugin refused?)"
            )
        sources.append(source)
        known |= found
    loaded = Baseline(frozenset(known), tuple(sources))
    _last_loaded = (fingerprint, loaded)
    return loaded
