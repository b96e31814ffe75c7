"""The x64 exception directory (``.pdata``) of an image in memory: does a code address start a
function, lie inside one, or lie where no function is described?

Sources: Microsoft Learn, "x64 exception handling" (``RUNTIME_FUNCTION``, ``UNWIND_INFO``, chained
unwind info); the WRK's ``public/sdk/inc/ntamd64.h`` (``UNW_FLAG_CHAININFO``,
``RUNTIME_FUNCTION_INDIRECT``) and ``base/ntos/rtl/amd64/exdsptch.c`` (``RtlpConvertFunctionEntry``,
``RtlpLookupPrimaryUnwindInfo``):

- ``RUNTIME_FUNCTION`` {``BeginAddress``, ``EndAddress``, ``UnwindData``}: 12 bytes of RVAs, sorted,
  ``EndAddress`` exclusive. Every function that allocates stack or calls another has one; leaf
  functions have none, so an address no entry covers is no evidence of anything.
- An odd ``UnwindData`` (``RUNTIME_FUNCTION_INDIRECT``) names another ``RUNTIME_FUNCTION`` (at
  ``UnwindData - 1``) whose unwind data applies.
- ``UNWIND_INFO``: version (1, or 2 with epilog codes) in the low three bits of its first byte,
  flags in the high five; ``UNW_FLAG_CHAININFO`` (4) marks a fragment of another function (cold
  code, shrink-wrapped parts): its ``BeginAddress`` is no entry point either.

The table is read whole, once per image, and trusted only when it validates: inside the image,
at most :data:`MAX_ENTRIES` entries, not all zeros, sorted without overlap, every range inside an
executable section. A table that does not is no verdict on any address (what memory lost or a
hostile image wrote proves nothing), and says so. There is no ``.pdata`` on x86.
"""

import bisect
import dataclasses
import struct
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from volatility3.framework import exceptions

from .pe_image import PeImage

if TYPE_CHECKING:
    from .loaded_modules import LoadedModule
    from .pages import PageReader

#: ntoskrnl has about 40,000 entries; no image has ten times that.
MAX_ENTRIES = 0x60000
ENTRY = struct.Struct("<III")
RUNTIME_FUNCTION_INDIRECT = 0x1
UNW_FLAG_CHAININFO = 0x4
UNWIND_VERSIONS = (1, 2)

# What a table read gave (TableRead.state).
VALID = "valid"
ABSENT = "absent"  # the image's header has no exception directory
UNREADABLE = "unreadable"
INVALID = "invalid"

# Where an address lies (FunctionTables.position).
ENTRY_POINT = "entry point"  # BeginAddress of a primary entry
INSIDE = "inside a function"  # strictly inside an entry's range
FRAGMENT = "chained fragment"  # at the start of an entry that is a fragment of another function
UNCOVERED = "uncovered"  # no entry covers it (a leaf function, padding, data)
UNKNOWN = "unknown"  # no valid table, or the entry's unwind data cannot be read
#: Positions that are no function entry point.
NOT_AN_ENTRY = (INSIDE, FRAGMENT)


@dataclasses.dataclass
class FunctionTable:
    """A validated table: entry ``i`` covers [begins[i], ends[i])."""

    begins: List[int]
    ends: List[int]
    unwind: List[int]

    def covering(self, rva: int) -> Optional[int]:
        index = bisect.bisect_right(self.begins, rva) - 1
        if index >= 0 and rva < self.ends[index]:
            return index
        return None

    def __len__(self) -> int:
        return len(self.begins)


@dataclasses.dataclass
class TableRead:
    state: str
    table: Optional[FunctionTable] = None
    problem: str = ""


def parse_table(data: bytes, image: PeImage, size_of_image: int) -> TableRead:
    """Validate and index the ``RUNTIME_FUNCTION`` entries in ``data`` (see the module docstring)."""
    if not any(data):
        return TableRead(INVALID, problem="reads as zeros")
    code = sorted((section.start, section.end) for section in image.sections if section.executable)
    starts = [start for start, _end in code]
    begins: List[int] = []
    ends: List[int] = []
    unwind: List[int] = []
    previous_end = 0
    for number, (begin, end, unwind_data) in enumerate(ENTRY.iter_unpack(data)):
        if not begin < end <= size_of_image:
            return TableRead(INVALID, problem=f"entry {number} has the range {begin:#x}-{end:#x}")
        if begin < previous_end:
            return TableRead(INVALID, problem=f"entry {number} at {begin:#x} is out of order or overlaps")
        section = bisect.bisect_right(starts, begin) - 1
        if section < 0 or end > code[section][1]:
            return TableRead(INVALID, problem=f"entry {number} ({begin:#x}-{end:#x}) is not inside an executable section")
        if not 0 < unwind_data & ~RUNTIME_FUNCTION_INDIRECT < size_of_image:
            return TableRead(INVALID, problem=f"entry {number} has unwind data at {unwind_data:#x}")
        begins.append(begin)
        ends.append(end)
        unwind.append(unwind_data)
        previous_end = end
    return TableRead(VALID, FunctionTable(begins, ends, unwind))


def read_table(reader: "PageReader", base: int, size_of_image: int, image: PeImage) -> TableRead:
    """The exception directory of the image at ``base`` whose headers ``image`` are."""
    if image.exception_directory is None:
        return TableRead(ABSENT, problem="no exception directory in its header")
    rva, size = image.exception_directory
    count = size // ENTRY.size
    if count == 0 or count > MAX_ENTRIES or rva + count * ENTRY.size > size_of_image:
        return TableRead(INVALID, problem=f"exception directory {rva:#x}+{size:#x} is implausible")
    try:
        data = reader.read(base + rva, count * ENTRY.size)
    except exceptions.InvalidAddressException:
        return TableRead(UNREADABLE, problem=f"exception directory at {base + rva:#x} not mapped")
    return parse_table(data, image, size_of_image)


def position(reader: "PageReader", base: int, table: FunctionTable, rva: int) -> str:
    """Where ``rva`` lies in the image at ``base`` whose validated table is ``table``."""
    index = table.covering(rva)
    if index is None:
        return UNCOVERED
    if rva != table.begins[index]:
        return INSIDE
    info = _unwind_info(reader, base, table.unwind[index])
    if info is None:
        return UNKNOWN
    version, flags = info[0] & 0x7, info[0] >> 3
    if version not in UNWIND_VERSIONS:
        return UNKNOWN
    return FRAGMENT if flags & UNW_FLAG_CHAININFO else ENTRY_POINT


def _unwind_info(reader: "PageReader", base: int, unwind_data: int) -> Optional[bytes]:
    """The first four bytes of an entry's ``UNWIND_INFO``, an indirect entry resolved first."""
    try:
        if unwind_data & RUNTIME_FUNCTION_INDIRECT:
            _begin, _end, unwind_data = ENTRY.unpack(reader.read(base + (unwind_data & ~RUNTIME_FUNCTION_INDIRECT), ENTRY.size))
            if unwind_data & RUNTIME_FUNCTION_INDIRECT:
                return None  # the kernel resolves one level only
        info = reader.read(base + unwind_data, 4)
    except exceptions.InvalidAddressException:
        return None
    return info if any(info) else None


class ExceptionDirectories:
    """The tables of the images a run asks about, each read once; what was read and what could
    not be, for the run's verdict."""

    def __init__(self, reader: "PageReader") -> None:
        self._reader = reader
        self.tables: Dict[int, Tuple[str, TableRead]] = {}  # image base -> (its label, the read)

    def position(self, module: "LoadedModule", image: PeImage, rva: int) -> str:
        """Where ``rva`` lies in ``module``, whose parsed headers are ``image`` (an image whose
        headers could not be read has no exception directory to ask: its caller says so)."""
        if module.base not in self.tables:
            self.tables[module.base] = (module.label, read_table(self._reader, module.base, module.size, image))
        found = self.tables[module.base][1]
        if found.table is None:
            return UNKNOWN
        return position(self._reader, module.base, found.table, rva)

    def failures(self) -> List[Tuple[str, str]]:
        """(label, problem) of each table asked for that could not be read or did not validate."""
        return [(label, read.problem) for label, read in self.tables.values() if read.state in (UNREADABLE, INVALID)]

    def valid(self) -> int:
        return sum(1 for _label, read in self.tables.values() if read.state == VALID)
