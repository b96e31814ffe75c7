"""Output formats: a raw physical image and a Windows x64 complete memory dump.

The crash dump is what ``KeBugCheck`` writes for a "complete memory dump": a two-page
``_DUMP_HEADER64`` (signature ``PAGEDU64``, DumpType 1) whose physical memory descriptor lists
the runs of present pages, followed by those pages in order.
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
    comment = b"Forged by the callbackobjects test forge\x00"
    header[OFF_COMMENT : OFF_COMMENT + len(comment)] = comment
    with open(path, "wb") as out:
        out.write(header)
        for first, count in runs:
            for number in range(first, first + count):
                out.write(physical.page_bytes(number))
