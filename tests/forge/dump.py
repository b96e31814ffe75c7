"""Output formats: a raw physical image and a Windows complete memory dump (x64 or x86).

The crash dump is what ``KeBugCheck`` writes for a "complete memory dump": a header
(x64: two pages of ``_DUMP_HEADER64``, signature ``PAGEDU64``; x86: one page of ``_DUMP_HEADER``,
signature ``PAGEDUMP``), DumpType 1, whose physical memory descriptor lists the runs of present
pages, followed by those pages in order.
"""

import struct
from pathlib import Path

from .memory import PAGE_SIZE, PhysicalMemory

DUMP_SIGNATURE = b"PAGE"
DUMP_VALID_64 = b"DU64"
DUMP_TYPE_FULL = 1
HEADER_PAGES_64 = 2
MACHINE_AMD64 = 0x8664
MAX_RUNS = (0x348 - 0x88 - 0x10) // 0x10  # what fits before ContextRecord

# _DUMP_HEADER64 offsets (volatility3/framework/symbols/windows/crash64.json, WinDbg's wdbgexts.h)
OFF_MAJOR_VERSION = 0x08
OFF_MINOR_VERSION = 0x0C
OFF_DIRECTORY_TABLE_BASE = 0x10
OFF_PFN_DATABASE = 0x18
OFF_PS_LOADED_MODULE_LIST = 0x20
OFF_PS_ACTIVE_PROCESS_HEAD = 0x28
OFF_MACHINE_IMAGE_TYPE = 0x30
OFF_NUMBER_PROCESSORS = 0x34
OFF_BUGCHECK_CODE = 0x38
OFF_KD_DEBUGGER_DATA_BLOCK = 0x80
OFF_PHYSICAL_MEMORY_BLOCK = 0x88
OFF_DUMP_TYPE = 0xF98
OFF_REQUIRED_DUMP_SPACE = 0xFA0
OFF_SYSTEM_TIME = 0xFA8
OFF_COMMENT = 0xFB0


# _DUMP_HEADER (32-bit) offsets (volatility3/framework/symbols/windows/crash.json, WinDbg's wdbgexts.h)
DUMP_VALID_32 = b"DUMP"
HEADER_PAGES_32 = 1
MACHINE_I386 = 0x014C
OFF32_MAJOR_VERSION = 0x08
OFF32_DIRECTORY_TABLE_BASE = 0x10
OFF32_PS_LOADED_MODULE_LIST = 0x18
OFF32_MACHINE_IMAGE_TYPE = 0x20
OFF32_BUGCHECK_CODE = 0x28
OFF32_PAE_ENABLED = 0x5C
OFF32_KD_DEBUGGER_DATA_BLOCK = 0x60
OFF32_PHYSICAL_MEMORY_BLOCK = 0x64  # NumberOfRuns, NumberOfPages, then 8-byte runs
OFF32_CONTEXT_RECORD = 0x320
OFF32_COMMENT = 0x820
OFF32_DUMP_TYPE = 0xF88
OFF32_REQUIRED_DUMP_SPACE = 0xFA0
OFF32_SYSTEM_TIME = 0xFC0
MAX_RUNS_32 = (OFF32_CONTEXT_RECORD - OFF32_PHYSICAL_MEMORY_BLOCK - 8) // 8


def write_raw(physical: PhysicalMemory, path: Path) -> None:
    """Physical memory as one flat file; absent pages read as zeros."""
    size = physical.size
    with open(path, "wb") as out:
        out.truncate(size)
        for number in physical.page_numbers():
            out.seek(number * PAGE_SIZE)
            out.write(physical.page_bytes(number))


def write_crash_dump(
    physical: PhysicalMemory,
    path: Path,
    dtb: int,
    build: int,
    ps_loaded_module_list: int,
    ps_active_process_head: int,
    kd_debugger_data_block: int,
) -> None:
    runs = list(physical.runs())
    if len(runs) > MAX_RUNS:
        raise ValueError(f"{len(runs)} physical runs do not fit one dump header (at most {MAX_RUNS})")
    header = bytearray(b"PAGE" * (HEADER_PAGES_64 * PAGE_SIZE // 4))  # unused space reads "PAGE"
    header[0:8] = DUMP_SIGNATURE + DUMP_VALID_64
    struct.pack_into("<II", header, OFF_MAJOR_VERSION, 0xF, build or 0)
    struct.pack_into("<QQQQ", header, OFF_DIRECTORY_TABLE_BASE, dtb, 0, ps_loaded_module_list, ps_active_process_head)
    struct.pack_into("<II", header, OFF_MACHINE_IMAGE_TYPE, MACHINE_AMD64, 1)
    struct.pack_into("<IIQQQQ", header, OFF_BUGCHECK_CODE, 0xE2, 0, 0, 0, 0, 0)  # MANUALLY_INITIATED_CRASH
    struct.pack_into("<Q", header, OFF_KD_DEBUGGER_DATA_BLOCK, kd_debugger_data_block)
    pages = sum(count for _, count in runs)
    struct.pack_into("<IIQ", header, OFF_PHYSICAL_MEMORY_BLOCK, len(runs), 0, pages)
    for index, (first, count) in enumerate(runs):
        struct.pack_into("<QQ", header, OFF_PHYSICAL_MEMORY_BLOCK + 0x10 + index * 0x10, first, count)
    struct.pack_into("<I", header, OFF_DUMP_TYPE, DUMP_TYPE_FULL)
    struct.pack_into("<Q", header, OFF_REQUIRED_DUMP_SPACE, (HEADER_PAGES_64 + pages) * PAGE_SIZE)
    struct.pack_into("<Q", header, OFF_SYSTEM_TIME, 0x01DB_3C2A_0000_0000)
    _write_dump(path, header, OFF_COMMENT, physical, runs)


def write_crash_dump32(
    physical: PhysicalMemory,
    path: Path,
    dtb: int,
    build: int,
    ps_loaded_module_list: int,
    ps_active_process_head: int,
    kd_debugger_data_block: int,
    pae: bool,
) -> None:
    """A 32-bit complete memory dump: one ``_DUMP_HEADER`` page (``PAGEDUMP``), then the pages."""
    runs = list(physical.runs())
    if len(runs) > MAX_RUNS_32:
        raise ValueError(f"{len(runs)} physical runs do not fit one dump header (at most {MAX_RUNS_32})")
    if physical.size > 1 << 32 and not pae:
        raise ValueError("a non-PAE x86 machine addresses 4 GiB of physical memory at most")
    header = bytearray(b"PAGE" * (HEADER_PAGES_32 * PAGE_SIZE // 4))  # unused space reads "PAGE"
    header[0:8] = DUMP_SIGNATURE + DUMP_VALID_32
    struct.pack_into("<II", header, OFF32_MAJOR_VERSION, 0xF, build or 0)
    struct.pack_into("<IIII", header, OFF32_DIRECTORY_TABLE_BASE, dtb, 0, ps_loaded_module_list, ps_active_process_head)
    struct.pack_into("<II", header, OFF32_MACHINE_IMAGE_TYPE, MACHINE_I386, 1)
    struct.pack_into("<IIIII", header, OFF32_BUGCHECK_CODE, 0xE2, 0, 0, 0, 0)  # MANUALLY_INITIATED_CRASH
    header[OFF32_PAE_ENABLED] = 1 if pae else 0
    struct.pack_into("<I", header, OFF32_KD_DEBUGGER_DATA_BLOCK, kd_debugger_data_block)
    pages = sum(count for _, count in runs)
    struct.pack_into("<II", header, OFF32_PHYSICAL_MEMORY_BLOCK, len(runs), pages)
    for index, (first, count) in enumerate(runs):
        struct.pack_into("<II", header, OFF32_PHYSICAL_MEMORY_BLOCK + 8 + index * 8, first, count)
    struct.pack_into("<I", header, OFF32_DUMP_TYPE, DUMP_TYPE_FULL)
    struct.pack_into("<Q", header, OFF32_REQUIRED_DUMP_SPACE, (HEADER_PAGES_32 + pages) * PAGE_SIZE)
    struct.pack_into("<Q", header, OFF32_SYSTEM_TIME, 0x01DB_3C2A_0000_0000)
    _write_dump(path, header, OFF32_COMMENT, physical, runs)


def _write_dump(path: Path, header: bytearray, comment_offset: int, physical: PhysicalMemory, runs) -> None:
    """Sign the header's comment, then write it and the pages of every run, in order."""
    comment = b"Forged by the callbackobjects test forge\x00"
    header[comment_offset : comment_offset + len(comment)] = comment
    with open(path, "wb") as out:
        out.write(header)
        for first, count in runs:
            for number in range(first, first + count):
                out.write(physical.page_bytes(number))
