"""A Windows crash dump's headers: its DumpType, where its pages lie in the file, and so how many
bytes the file must hold.

One definition for two readers. The crash-dump layer (``layers/crashdump.py``) builds its
segments from the page runs read here (DumpTypes 6, 8, 9 and 10) and says, for a dump of any
type, when its file is cut short; the kernel reader (``windows/kernelread/image_extent.py``)
checks from inside a plugin, with the same runs, whether the file Volatility opened holds every
page its header places in it (DumpTypes 1 and 5 are opened by Volatility's own layer, which
never compares the file's size with anything). Standard library only: the layer must load
wherever the plugin folder is given, volshell included.

First header (SDK ``mindumpdef.h``: ``DUMP_HEADER32``/``DUMP_HEADER64``,
``PHYSICAL_MEMORY_DESCRIPTOR32``/``64``; the same offsets in kdmp-parser's
``kdmp-parser-structs.h`` and Volatility's ``crash.json``/``crash64.json``):

=============================================  ===========================  ==================
field                                          x64 (``PAGE`` ``DU64``)      x86 (``PAGE`` ``DUMP``)
=============================================  ===========================  ==================
PhysicalMemoryBlock.NumberOfRuns               0x88 (u32)                   0x64 (u32)
PhysicalMemoryBlock.NumberOfPages              0x90 (u64)                   0x68 (u32)
PhysicalMemoryBlock.Run[] (BasePage, Count)    0x98 (u64 pairs, 43 fit)     0x6C (u32 pairs, 86)
DumpType                                       0xF98 (u32)                  0xF88 (u32)
RequiredDumpSpace                              0xFA0 (i64)                  0xFA0 (i64)
first page, or the second header               0x2000                       0x1000
=============================================  ===========================  ==================

(Volatility's ``crash64.json`` puts NumberOfPages at +4 as a u32, which is the padding; it is not
read here.) Windows fills unused header space with ``PAGE``: a field reading it was never written.

Page layouts, by DumpType:

- 1: the runs of PhysicalMemoryBlock, stored one after the other after the first header.
- 5 and 6: ``_SUMMARY_DUMP`` after the first header (``FDMP``/``SDMP``, ``DUMP``; at +0x20 the file
  offset of the first page, at +0x30 the number of bitmap bits, one per physical page; the bitmap
  at +0x38); the pages whose bit is set follow in ascending order.
- 8, 9 and 10 (the debugger engine's; kdmp-parser is the only public description, 64-bit only):
  at the end of the first header an ``RDMP`` header (marker 0x40, ``RDMP``, ``DUMP``, a reserved
  dword, ``MetadataSize``, ``FirstPageOffset``), from 0x2020 the metadata (a range count and the
  total page count, read for type 10 only) and from 0x2030 (PFN, page count) qword pairs, up to
  ``MetadataSize``, an all-zero pair or (type 10) the total; the pages follow from
  ``FirstPageOffset`` in range order.

RequiredDumpSpace is compared, never used for the layout: no public source says how Windows
fills it for every type (QEMU's elf2dmp and the forge write the whole file's size).
"""

import dataclasses
import struct
from typing import Callable, List, Optional, Tuple

from .units import PAGE_SIZE, missing_pages_text, size_text

#: Reads ``length`` bytes of the file at ``offset`` (fewer at the end of the file).
Read = Callable[[int, int], bytes]

SIGNATURE = b"PAGE"
#: x64 addresses 52 bits of physical memory at most.
MAX_PAGE_NUMBER = 1 << 40
#: A 32-bit header field Windows never wrote (the ``PAGE`` fill).
UNWRITTEN = 0x45474150

DUMP_TYPE_FULL = 1
DUMP_TYPE_BITMAP_FULL = 5
DUMP_TYPE_BITMAP_KERNEL = 6
DUMP_TYPE_KERNEL_MEMORY = 8
DUMP_TYPE_KERNEL_AND_USER_MEMORY = 9
DUMP_TYPE_COMPLETE_MEMORY = 10
BITMAP_TYPES = (DUMP_TYPE_BITMAP_FULL, DUMP_TYPE_BITMAP_KERNEL)
RDMP_TYPES = (DUMP_TYPE_KERNEL_MEMORY, DUMP_TYPE_KERNEL_AND_USER_MEMORY, DUMP_TYPE_COMPLETE_MEMORY)

# _SUMMARY_DUMP (Volatility's crash_common.json): signatures, then at +0x20 HeaderSize, Pages,
# BitmapSize, and the bitmap at +0x38.
SUMMARY_SIGNATURES = (b"SDMP", b"FDMP")
SUMMARY_VALID = b"DUMP"
SUMMARY_FIELDS = struct.Struct("<QQQ")
SUMMARY_FIELDS_OFFSET = 0x20
SUMMARY_BITMAP = 0x38
# RDMP header (kdmp-parser RDMP_HEADER64, FULL_RDMP_HEADER64).
RDMP_HEADER = struct.Struct("<I4s4sIQQ")  # Marker, Signature, ValidDump, reserved, MetadataSize, FirstPageOffset
RDMP_FULL_METADATA = struct.Struct("<IHHQ")  # NumberOfRanges, two reserved words, TotalNumberOfPages
RDMP_MARKER = 0x40
PFN_RANGE = struct.Struct("<QQ")  # PageFileNumber, NumberOfPages


class DumpFormatError(ValueError):
    """A crash dump whose headers describe no readable page layout (cut short, damaged, or of a
    type whose layout nobody describes)."""


@dataclasses.dataclass(frozen=True)
class _HeaderFormat:
    bits: int
    valid_dump: bytes
    size: int
    number_of_runs: int
    runs: int
    run: struct.Struct
    max_runs: int
    dump_type: int
    required_dump_space: int


FORMATS = (
    _HeaderFormat(64, b"DU64", 0x2000, 0x88, 0x98, struct.Struct("<QQ"), 43, 0xF98, 0xFA0),
    _HeaderFormat(32, b"DUMP", 0x1000, 0x64, 0x6C, struct.Struct("<II"), 86, 0xF88, 0xFA0),
)


@dataclasses.dataclass(frozen=True)
class FirstHeader:
    """What the first header says about the file."""

    bits: int
    #: Bytes of the first header: where the pages (type 1) or the second header start.
    size: int
    dump_type: int
    #: RequiredDumpSpace; None when unwritten.
    required_dump_space: Optional[int]
    #: PhysicalMemoryBlock's runs as (first page, page count); None when unwritten or absurd.
    memory_runs: Optional[Tuple[Tuple[int, int], ...]]


def is_crash_dump(head: bytes) -> bool:
    """Whether a file starting with ``head`` (8 bytes or more) is a Windows crash dump."""
    return any(head[:8] == SIGNATURE + fmt.valid_dump for fmt in FORMATS)


def read_first_header(read: Read) -> Optional[FirstHeader]:
    """The first header; None when the file is no Windows crash dump. Raises
    :class:`DumpFormatError` when the header is cut short."""
    head = read(0, 8)
    fmt = next((fmt for fmt in FORMATS if head == SIGNATURE + fmt.valid_dump), None)
    if fmt is None:
        return None
    data = read(0, fmt.size)
    if len(data) < fmt.size:
        raise DumpFormatError("a Windows crash dump whose first header is cut short")
    (dump_type,) = struct.unpack_from("<I", data, fmt.dump_type)
    (required,) = struct.unpack_from("<q", data, fmt.required_dump_space)
    written = required > 0 and required & 0xFFFFFFFF != UNWRITTEN
    return FirstHeader(fmt.bits, fmt.size, dump_type, required if written else None, _memory_runs(data, fmt))


def _memory_runs(data: bytes, fmt: _HeaderFormat) -> Optional[Tuple[Tuple[int, int], ...]]:
    (count,) = struct.unpack_from("<I", data, fmt.number_of_runs)
    if count == UNWRITTEN or count > fmt.max_runs:
        return None
    runs = tuple(fmt.run.unpack_from(data, fmt.runs + index * fmt.run.size) for index in range(count))
    if any(first + pages > MAX_PAGE_NUMBER for first, pages in runs):
        return None
    return runs


@dataclasses.dataclass(frozen=True)
class PageLayout:
    """Where a dump's pages lie in its file."""

    #: (first physical page, page count, file offset of its first page), in file order.
    runs: Tuple[Tuple[int, int, int], ...]

    @property
    def pages(self) -> int:
        return sum(count for _, count, _ in self.runs)

    @property
    def end(self) -> int:
        """The file size the pages need: the end of the last one."""
        return max((offset + count * PAGE_SIZE for _, count, offset in self.runs), default=0)

    def pages_inside(self, file_size: int) -> List[Tuple[int, int, int]]:
        """The runs clipped to the whole pages a file of ``file_size`` bytes holds."""
        inside = []
        for first, count, offset in self.runs:
            kept = max(0, min(count, (file_size - offset) // PAGE_SIZE))
            if kept:
                inside.append((first, kept, offset))
        return inside

    def missing_pages(self, file_size: int) -> int:
        """Pages the layout places (partly or wholly) past the end of a file of ``file_size`` bytes."""
        return self.pages - sum(count for _, count, _ in self.pages_inside(file_size))

    def truncation(self, file_size: int) -> Optional["Truncation"]:
        """What a file of ``file_size`` bytes lacks of these pages; None when it holds them all."""
        missing = self.missing_pages(file_size)
        return Truncation(missing, self.pages, self.end, file_size) if missing else None


def page_layout(read: Read, header: FirstHeader, file_size: int) -> PageLayout:
    """The page layout of a dump of DumpType 1, 5, 6 (32 and 64 bit) or 8, 9, 10 (64 bit);
    :class:`DumpFormatError` (its message says why) for any other or a damaged one."""
    if header.dump_type == DUMP_TYPE_FULL:
        if header.memory_runs is None:
            raise DumpFormatError("its physical memory descriptor (PhysicalMemoryBlock) is unwritten or absurd")
        runs, offset = [], header.size
        for first, count in header.memory_runs:
            runs.append((first, count, offset))
            offset += count * PAGE_SIZE
        return PageLayout(tuple(runs))
    if header.dump_type in BITMAP_TYPES:
        return _bitmap_layout(read, header.size, file_size)
    if header.dump_type in RDMP_TYPES and header.bits == 64:
        return _rdmp_layout(read, header.size, header.dump_type, file_size)
    raise DumpFormatError(f"no page layout is known for a {header.bits}-bit dump of DumpType {header.dump_type}")


def _bitmap_layout(read: Read, offset: int, file_size: int) -> PageLayout:
    summary = read(offset, SUMMARY_BITMAP)
    if len(summary) < SUMMARY_BITMAP:
        raise DumpFormatError(f"its bitmap header at {offset:#x} is cut short")
    if summary[:4] not in SUMMARY_SIGNATURES or summary[4:8] != SUMMARY_VALID:
        raise DumpFormatError(f"no bitmap header (SDMP or FDMP) at {offset:#x}")
    first_page, _, bits = SUMMARY_FIELDS.unpack_from(summary, SUMMARY_FIELDS_OFFSET)
    bitmap_offset = offset + SUMMARY_BITMAP
    if bits > MAX_PAGE_NUMBER or bitmap_offset + (bits + 7) // 8 > file_size:
        raise DumpFormatError(f"a bitmap of {bits} pages does not fit the file")
    runs = []
    for first, count in bitmap_runs(read(bitmap_offset, (bits + 7) // 8), bits):
        runs.append((first, count, first_page))
        first_page += count * PAGE_SIZE
    return PageLayout(tuple(runs))


def _rdmp_layout(read: Read, offset: int, dump_type: int, file_size: int) -> PageLayout:
    header = read(offset, RDMP_HEADER.size + RDMP_FULL_METADATA.size)
    if len(header) < RDMP_HEADER.size + RDMP_FULL_METADATA.size:
        raise DumpFormatError(f"its RDMP header at {offset:#x} is cut short")
    marker, signature, valid, _, metadata_size, first_page = RDMP_HEADER.unpack_from(header)
    if marker != RDMP_MARKER or signature != b"RDMP" or valid != b"DUMP":
        raise DumpFormatError(f"no RDMP header at {offset:#x}")
    ranges_offset = offset + RDMP_HEADER.size + RDMP_FULL_METADATA.size
    count = (metadata_size - RDMP_FULL_METADATA.size) // PFN_RANGE.size if metadata_size >= RDMP_FULL_METADATA.size else 0
    count = min(count, max(0, (min(first_page, file_size) - ranges_offset) // PFN_RANGE.size))
    total_pages = None
    if dump_type == DUMP_TYPE_COMPLETE_MEMORY:
        range_count, _, _, total = RDMP_FULL_METADATA.unpack_from(header, RDMP_HEADER.size)
        count = min(count, range_count) if range_count else count
        total_pages = total or None
    if not count:
        raise DumpFormatError(f"the RDMP header at {offset:#x} lists no page ranges")
    runs = []
    pages = 0
    for pfn, page_count in PFN_RANGE.iter_unpack(read(ranges_offset, count * PFN_RANGE.size)):
        if pfn == 0 and page_count == 0:
            break
        if total_pages is not None:
            page_count = min(page_count, total_pages - pages)
        if pfn + page_count > MAX_PAGE_NUMBER:
            raise DumpFormatError(f"a page range starts at PFN {pfn:#x}, beyond any physical memory")
        runs.append((pfn, page_count, first_page + pages * PAGE_SIZE))
        pages += page_count
        if total_pages is not None and pages >= total_pages:
            break
    return PageLayout(tuple(runs))


def bitmap_runs(bitmap: bytes, bits: int) -> List[Tuple[int, int]]:
    """Runs of set bits of ``bitmap`` (bit 0 = lowest bit of byte 0) below bit ``bits``, as
    (first bit, count), ascending; one pass over 64-bit words, whole words at a time."""
    runs: List[Tuple[int, int]] = []
    start: Optional[int] = None
    padded = bytes(bitmap[: (bits + 7) // 8]) + bytes(-((bits + 7) // 8) % 8)
    full = (1 << 64) - 1
    for index, (word,) in enumerate(struct.iter_unpack("<Q", padded)):
        base = index * 64
        if base + 64 > bits:
            word &= (1 << max(bits - base, 0)) - 1
        if word == full:
            if start is None:
                start = base
            continue
        position = 0
        while word:
            zeros = (word & -word).bit_length() - 1
            if zeros:
                if start is not None:
                    runs.append((start, base + position - start))
                    start = None
                word >>= zeros
                position += zeros
            ones = (~word & (word + 1)).bit_length() - 1
            if start is None:
                start = base + position
            word >>= ones
            position += ones
        if position < 64 and start is not None:
            runs.append((start, base + position - start))
            start = None
    if start is not None:
        runs.append((start, bits - start))
    return runs


@dataclasses.dataclass(frozen=True)
class Truncation:
    """How much of its pages a crash dump's file lacks."""

    missing: int
    total: int
    #: The file size the pages need, and the file's.
    required: int
    file_size: int

    def __str__(self) -> str:
        """``461 of 4,610 pages (1.8 MiB, 10%) lie past the end of the file (16.2 MiB of 18.0 MiB)``"""
        return (f"{missing_pages_text(self.missing, self.total)} lie past the end of the file "
                f"({size_text(self.file_size)} of the {size_text(self.required)} its pages need)")


def truncation(read: Read, file_size: int) -> Optional[Truncation]:
    """The pages of a crash dump (of a type whose layout is known) that its file does not hold;
    None when it holds them all, or when the file is no crash dump. Raises
    :class:`DumpFormatError` when the headers describe no layout."""
    header = read_first_header(read)
    if header is None:
        return None
    return page_layout(read, header, file_size).truncation(file_size)


def layer_reader(layer) -> Read:
    """A :data:`Read` of a Volatility data layer holding a file (``FileLayer``): its bytes from
    ``offset``, fewer at its end (duck-typed: ``read`` and ``maximum_address``)."""
    size = layer.maximum_address + 1

    def read(offset: int, length: int) -> bytes:
        length = max(0, min(length, size - offset))
        return layer.read(offset, length) if length else b""

    return read
