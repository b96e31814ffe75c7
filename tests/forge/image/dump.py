"""Output formats of a forged image: a raw physical image and the Windows crash dumps responders
are handed, all holding the same memory.

| format        | file                   | DumpType | pages                        | on a real system                                   |
|---------------|------------------------|----------|------------------------------|----------------------------------------------------|
| `raw`         | memory.raw             | -        | all of RAM, flat             | any acquisition tool                               |
| `dump`        | memory.dmp             | 1        | all of RAM, physical runs    | complete memory dump (KeBugCheck, before Windows 8)|
| `bitmap`      | memory-bitmap.dmp      | 5        | all of RAM, bitmap           | complete or active memory dump (Windows 8 and later)|
| `live`        | memory-live.dmp        | 6        | kernel pages, bitmap         | Task Manager live kernel dump; kernel/automatic crash dump |
| `kernel`      | memory-kernel.dmp      | 8        | kernel pages, PFN ranges     | WinDbg `.dump /k` (x64 only)                       |
| `kernel-user` | memory-kernel-user.dmp | 9        | kernel and user pages, ranges| WinDbg `.dump /ka` (x64 only)                      |
| `complete`    | memory-complete.dmp    | 10       | all of RAM but page 0, ranges| WinDbg `.dump /f` (x64 only)                       |

"Kernel pages" are the page-table pages and the frames that the kernel half of the address space
maps (``memory/kernel_pages.py``); the forge models no user space, so `kernel-user` holds the same pages
as `kernel`. Pages the forge never wrote read as zeros, as they do in the raw image.

Every dump starts with the first header (x64: two pages of ``_DUMP_HEADER64``, ``PAGEDU64``;
x86: one page of ``_DUMP_HEADER``, ``PAGEDUMP``); offsets from Volatility's
``symbols/windows/crash64.json``/``crash.json`` and the SDK's ``mindumpdef.h``. Then:

- DumpType 1: the pages of the physical memory runs of the header, in order.
- DumpType 5 and 6 (``DUMP_TYPE_BITMAP_FULL``/``DUMP_TYPE_BITMAP_KERNEL``, mindumpdef.h): right
  after the first header a ``_SUMMARY_DUMP`` (Volatility's ``crash_common.json``; signature
  ``FDMP`` for a full bitmap, ``SDMP`` for a kernel one, ``DUMP``), whose ``HeaderSize`` is the
  file offset of the first page, ``Pages`` the number of pages present and ``BitmapSize`` the
  number of bits, one per physical page; the present pages follow in ascending order.
- DumpType 8, 9 and 10, written by the debugger engine (layout per kdmp-parser's
  ``kdmp-parser-structs.h``, the only public reader): at 0x2000 an ``RDMP`` header (marker 0x40,
  ``RDMP``, ``DUMP``, a reserved dword, ``MetadataSize``, ``FirstPageOffset``), then from 0x2020
  the metadata: a range count (dword, two reserved words) and the total page count (qword), then
  (PFN, page count) qword pairs. ``FirstPageOffset`` = 0x2020 + ``MetadataSize``, as
  kdmp-parser checks, so pages are not page-aligned in the file; they follow in range order.
  What is not documented, so chosen here: for types 8 and 9 kdmp-parser calls the two metadata
  fields "unknown" (the forge writes them as for type 10); the list ends with one all-zero
  range inside ``MetadataSize`` (kdmp-parser reads types 8 and 9 from 0x2030 for
  ``MetadataSize`` bytes, 0x10 past the metadata, and stops at a range whose PFN is 0: the
  terminator keeps it off the first page; it stops type 10 at the total page count; our layer
  stops at either); and no range starts at PFN 0 (real machines never report page 0 as RAM,
  and kdmp-parser would take it for the end), so page 0 is left out of these three formats.

No public description of the ``RDMP`` formats exists for 32-bit dumps (kdmp-parser reads 64-bit
dumps only), so the forge writes types 8, 9 and 10 for x64 images only.
"""

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Dict, Iterable, List, Optional, Tuple

from ..memory.kernel_pages import clip_to, mapped_pages, paging_mode, runs_of
from ..memory.machine import CAPTURE_TIME
from ..memory.physical import PAGE_SIZE, PhysicalMemory

Runs = List[Tuple[int, int]]

DUMP_TYPE_FULL = 1
DUMP_TYPE_BITMAP_FULL = 5
DUMP_TYPE_BITMAP_KERNEL = 6
DUMP_TYPE_KERNEL_MEMORY = 8
DUMP_TYPE_KERNEL_AND_USER_MEMORY = 9
DUMP_TYPE_COMPLETE_MEMORY = 10

BUGCHECK_MANUALLY_INITIATED_CRASH = 0xE2
BUGCHECK_LIVE_SYSTEM_DUMP = 0x161  # what a live dump records as its "bug check" code
SYSTEM_TIME = CAPTURE_TIME  # FILETIME: 2024-11-21 15:28:22 UTC
COMMENT = b"Forged by the callbackobjects test forge\x00"


@dataclass(frozen=True)
class DumpFormat:
    """One output format; ``pages`` is ``all`` (RAM), ``kernel`` or ``kernel+user``."""

    name: str
    file_name: str
    dump_type: Optional[int]
    pages: str
    x64_only: bool = False


FORMATS: Dict[str, DumpFormat] = {
    fmt.name: fmt
    for fmt in (
        DumpFormat("raw", "memory.raw", None, "all"),
        DumpFormat("dump", "memory.dmp", DUMP_TYPE_FULL, "all"),
        DumpFormat("bitmap", "memory-bitmap.dmp", DUMP_TYPE_BITMAP_FULL, "all"),
        DumpFormat("live", "memory-live.dmp", DUMP_TYPE_BITMAP_KERNEL, "kernel"),
        DumpFormat("kernel", "memory-kernel.dmp", DUMP_TYPE_KERNEL_MEMORY, "kernel", x64_only=True),
        DumpFormat("kernel-user", "memory-kernel-user.dmp", DUMP_TYPE_KERNEL_AND_USER_MEMORY, "kernel+user", x64_only=True),
        DumpFormat("complete", "memory-complete.dmp", DUMP_TYPE_COMPLETE_MEMORY, "all", x64_only=True),
    )
}
DEFAULT_FORMATS = ("raw", "dump")


def formats_for(is_64bit: bool) -> Tuple[str, ...]:
    """The names of the formats an image of that architecture can be written in."""
    return tuple(name for name, fmt in FORMATS.items() if is_64bit or not fmt.x64_only)


@dataclass(frozen=True)
class MachineFacts:
    """What the first header says about the machine (kernel addresses already canonical)."""

    is_64bit: bool
    pae: bool
    dtb: int
    build: int
    ps_loaded_module_list: int
    ps_active_process_head: int
    kd_debugger_data_block: int


@dataclass(frozen=True)
class _HeaderLayout:
    """Offsets of the first header: ``_DUMP_HEADER64`` or ``_DUMP_HEADER`` (32-bit)."""

    size: int
    valid_dump: bytes
    machine_image_type: int
    pointer: str
    directory_table_base: int  # then PfnDataBase, PsLoadedModuleList, PsActiveProcessHead
    machine_type: int  # MachineImageType, then NumberProcessors, BugCheckCode
    bugcheck_parameters: int
    kd_debugger_data_block: int
    physical_memory_block: int
    descriptor: str  # NumberOfRuns, [padding,] NumberOfPages
    context_record: int  # the run array must end before it
    comment: int
    dump_type: int
    required_dump_space: int
    system_time: int
    pae_enabled: Optional[int] = None

    @property
    def max_runs(self) -> int:
        run_size = 2 * struct.calcsize("<" + self.pointer)
        return (self.context_record - self.physical_memory_block - struct.calcsize("<" + self.descriptor)) // run_size


HEADER64 = _HeaderLayout(0x2000, b"DU64", 0x8664, "Q", 0x10, 0x30, 0x40, 0x80, 0x88, "IIQ", 0x348, 0xFB0, 0xF98, 0xFA0, 0xFA8)
HEADER32 = _HeaderLayout(0x1000, b"DUMP", 0x014C, "I", 0x10, 0x20, 0x2C, 0x60, 0x64, "II", 0x320, 0x820, 0xF88, 0xFA0, 0xFC0,
                         pae_enabled=0x5C)

# _SUMMARY_DUMP (Volatility's crash_common.json): Signature, ValidDump, DumpOptions, then at 0x20
# HeaderSize, Pages, BitmapSize and the bitmap at 0x38.
SUMMARY_FIELDS = 0x20
SUMMARY_BITMAP = 0x38
# RDMP header (kdmp-parser RDMP_HEADER64 / FULL_RDMP_HEADER64), at the end of the first header.
RDMP_MARKER = 0x40
RDMP_METADATA = 0x20  # MetadataSize counts from here: range count, total pages, ranges
RDMP_RANGES = 0x30


def write_raw(physical: PhysicalMemory, path: Path) -> None:
    """Physical memory as one flat file; absent pages read as zeros."""
    size = physical.size
    with open(path, "wb") as out:
        out.truncate(size)
        for number in physical.page_numbers():
            out.seek(number * PAGE_SIZE)
            out.write(physical.page_bytes(number))


def select_pages(physical: PhysicalMemory, facts: MachineFacts, fmt: DumpFormat) -> Runs:
    """The runs of physical pages a dump of format ``fmt`` holds (see the module docstring)."""
    ram = list(physical.runs())
    if fmt.pages == "all":
        pages = ram
    else:
        mode = paging_mode(facts.is_64bit, facts.pae)
        pages = runs_of(clip_to(mapped_pages(physical, mode, facts.dtb, fmt.pages == "kernel+user"), ram))
    if fmt.dump_type in (DUMP_TYPE_KERNEL_MEMORY, DUMP_TYPE_KERNEL_AND_USER_MEMORY, DUMP_TYPE_COMPLETE_MEMORY):
        pages = _without_page_zero(pages)
    return pages


def _without_page_zero(pages: Runs) -> Runs:
    kept = []
    for first, count in pages:
        if first == 0:
            first, count = 1, count - 1
        if count:
            kept.append((first, count))
    return kept


def write_crash_dump(physical: PhysicalMemory, path: Path, facts: MachineFacts, fmt: DumpFormat) -> Runs:
    """Write ``path`` in format ``fmt``; returns the runs of pages it holds."""
    if fmt.dump_type is None:
        raise ValueError(f"{fmt.name} is not a crash dump format")
    if fmt.x64_only and not facts.is_64bit:
        raise ValueError(f"the {fmt.name} format (DumpType {fmt.dump_type}) exists for x64 dumps only")
    pages = select_pages(physical, facts, fmt)
    layout = HEADER64 if facts.is_64bit else HEADER32
    if fmt.dump_type == DUMP_TYPE_FULL:
        body = b""
    elif fmt.dump_type in (DUMP_TYPE_BITMAP_FULL, DUMP_TYPE_BITMAP_KERNEL):
        body = _summary_header(layout.size, pages, physical.size // PAGE_SIZE, full=fmt.dump_type == DUMP_TYPE_BITMAP_FULL)
    else:
        body = _rdmp_header(layout.size, pages)
    first_page = layout.size + len(body)
    page_count = sum(count for _, count in pages)
    header = _first_header(layout, facts, fmt.dump_type, physical, first_page + page_count * PAGE_SIZE)
    with open(path, "wb") as out:
        out.write(header)
        out.write(body)
        _write_pages(out, physical, pages)
    return pages


def _first_header(layout: _HeaderLayout, facts: MachineFacts, dump_type: int, physical: PhysicalMemory,
                  file_size: int) -> bytes:
    ram = list(physical.runs())
    if not facts.is_64bit and not facts.pae and physical.size > 1 << 32:
        raise ValueError("a non-PAE x86 machine addresses 4 GiB of physical memory at most")
    if len(ram) > layout.max_runs and dump_type == DUMP_TYPE_FULL:
        raise ValueError(f"{len(ram)} physical runs do not fit one dump header (at most {layout.max_runs})")
    pointer = layout.pointer
    header = bytearray(b"PAGE" * (layout.size // 4))  # unused space reads "PAGE", as Windows leaves it
    header[0:8] = b"PAGE" + layout.valid_dump
    struct.pack_into("<II", header, 0x08, 0xF, facts.build)  # MajorVersion 0xF: a free build
    struct.pack_into("<" + pointer * 4, header, layout.directory_table_base,
                     facts.dtb, 0, facts.ps_loaded_module_list, facts.ps_active_process_head)
    bugcheck = BUGCHECK_LIVE_SYSTEM_DUMP if dump_type == DUMP_TYPE_BITMAP_KERNEL else BUGCHECK_MANUALLY_INITIATED_CRASH
    struct.pack_into("<III", header, layout.machine_type, layout.machine_image_type, 1, bugcheck)
    struct.pack_into("<" + pointer * 4, header, layout.bugcheck_parameters, 0, 0, 0, 0)
    struct.pack_into("<" + pointer, header, layout.kd_debugger_data_block, facts.kd_debugger_data_block)
    if layout.pae_enabled is not None:
        header[layout.pae_enabled] = 1 if facts.pae else 0
    # The physical memory descriptor (MmPhysicalMemoryBlock): DumpType 1 is made of its runs; the
    # other types carry it too, when it fits (a forged memory of scattered pages may not).
    if len(ram) <= layout.max_runs:
        total = sum(count for _, count in ram)
        counts = (len(ram), 0, total) if layout.descriptor == "IIQ" else (len(ram), total)
        struct.pack_into("<" + layout.descriptor, header, layout.physical_memory_block, *counts)
        run_offset = layout.physical_memory_block + struct.calcsize("<" + layout.descriptor)
        for first, count in ram:
            struct.pack_into("<" + pointer * 2, header, run_offset, first, count)
            run_offset += struct.calcsize("<" + pointer * 2)
    struct.pack_into("<I", header, layout.dump_type, dump_type)
    struct.pack_into("<q", header, layout.required_dump_space, file_size)
    struct.pack_into("<q", header, layout.system_time, SYSTEM_TIME)
    header[layout.comment : layout.comment + len(COMMENT)] = COMMENT
    return bytes(header)


def _summary_header(offset: int, pages: Runs, bitmap_pages: int, full: bool) -> bytes:
    """``_SUMMARY_DUMP`` and its bitmap, padded so that the first page starts a file page."""
    bitmap = bitmap_of(pages, bitmap_pages)
    size = -(-(SUMMARY_BITMAP + len(bitmap)) // PAGE_SIZE) * PAGE_SIZE
    summary = bytearray(size)
    summary[0:8] = (b"FDMP" if full else b"SDMP") + b"DUMP"
    struct.pack_into("<QQQ", summary, SUMMARY_FIELDS, offset + size, sum(c for _, c in pages), bitmap_pages)
    summary[SUMMARY_BITMAP : SUMMARY_BITMAP + len(bitmap)] = bitmap
    return bytes(summary)


def bitmap_of(pages: Runs, bitmap_pages: int) -> bytes:
    """One bit per physical page, set for the pages present, in whole dwords (RtlInitializeBitMap)."""
    bitmap = bytearray(-(-bitmap_pages // 32) * 4)
    for first, count in pages:
        number, end = first, first + count
        while number < end and number % 8:
            bitmap[number // 8] |= 1 << (number % 8)
            number += 1
        whole = (end - number) // 8
        bitmap[number // 8 : number // 8 + whole] = b"\xff" * whole
        number += whole * 8
        while number < end:
            bitmap[number // 8] |= 1 << (number % 8)
            number += 1
    return bytes(bitmap)


def _rdmp_header(offset: int, pages: Runs) -> bytes:
    """The debugger engine's ``RDMP`` header, its metadata and the range list (see the docstring)."""
    ranges = list(pages) + [(0, 0)]  # the all-zero range ends the list
    metadata_size = RDMP_RANGES - RDMP_METADATA + 16 * len(ranges)
    rdmp = bytearray(RDMP_RANGES + 16 * len(ranges))
    struct.pack_into("<I4s4sIQQ", rdmp, 0, RDMP_MARKER, b"RDMP", b"DUMP", 0, metadata_size,
                     offset + RDMP_METADATA + metadata_size)
    struct.pack_into("<IHHQ", rdmp, RDMP_METADATA, len(pages), 0, 0, sum(c for _, c in pages))
    for index, (first, count) in enumerate(ranges):
        struct.pack_into("<QQ", rdmp, RDMP_RANGES + 16 * index, first, count)
    return bytes(rdmp)


def _write_pages(out: BinaryIO, physical: PhysicalMemory, pages: Iterable[Tuple[int, int]]) -> None:
    for first, count in pages:
        for number in range(first, first + count):
            out.write(physical.page_bytes(number))
