"""Walking Intel page tables over physical memory read as bytes, standard library only.

One walker for three readers: the pool search maps the frames of its hits back to kernel
addresses (``windows/kernelread/physical_search.py``); the kernel reader counts the pages the
kernel half maps that a raw image's file does not hold, when the kernel's own description of RAM
cannot be read (``windows/kernelread/image_extent.py``); the stacker that looks at a file no layer
recognised (``layers/unrecognised_file.py``) does the same from the x64 processor start block,
before Volatility gives up on a raw image whose kernel it cannot find.

Entries with the present bit, or on the last level Windows' "transition" entries (bit 11 set,
bit 10 clear: the page is on the standby list, still in memory), are followed; large pages (bit 7
where a level allows them) are one mapping of their whole run of frames; the top level's
self-map entry (Windows maps the page tables into the kernel half through it) is skipped.

Counting what a file lacks, only write-back mappings count (:func:`pages_past`): drivers map
device memory (frame buffers, PCI BARs, often above the top of RAM) uncached or write-combined
(PWT, PCD or PAT set), and such frames are in no memory image.
"""

import dataclasses
import struct
from typing import Callable, Iterator, Optional, Sequence, Tuple

from .units import PAGE_SIZE, missing_pages_text, size_text

#: Reads ``length`` bytes of physical memory at ``offset``; fewer (or none) where it cannot.
Read = Callable[[int, int], bytes]

#: The x64 processor start block ("low stub") Windows keeps in the first megabyte: its first
#: qword (a JMP and the block's CompletionFlag), masked, and where its CR3 and long-mode target lie.
LOW_STUB_SIGNATURE = 0x0000_0001_0006_00E9
LOW_STUB_MASK = 0xFFFF_FFFF_FFFF_00FF
LOW_STUB_LM_TARGET = 0x70
LOW_STUB_CR3 = 0xA0
LOW_STUB_RANGE = 0x100000


@dataclasses.dataclass(frozen=True)
class Paging:
    """A page-table format: (index bits, large pages allowed) per level from the top."""

    levels: Sequence[Tuple[int, bool]]
    entry_size: int
    physical_bits: int
    #: Follow Windows' transition entries on the last level.
    transition: bool = True

    @property
    def top_size(self) -> int:
        return (1 << self.levels[0][0]) * self.entry_size


#: x64 4-level paging (Volatility's Intel32e).
X64 = Paging(((9, False), (9, True), (9, True), (9, False)), 8, 52)
#: The kernel half of the x64 address space, as a layer addresses it (bit 47 set).
X64_KERNEL_HALF = 1 << 47

#: (virtual address, first physical frame, frame count, whether it is a page table, whether it
#: is cached write-back: PWT, PCD and PAT clear).
Mapping = Tuple[int, int, int, bool, bool]
#: PWT, PCD; PAT of a 4 KiB page (bit 7) and of a large page (bit 12).
UNCACHED_BITS = 0x18
PAT_PAGE, PAT_LARGE = 0x80, 0x1000


def _walk(read: Read, dtb: int, paging: Paging, lowest: int, leaves: bool, last_tables: bool = True) -> Iterator[Tuple]:
    """Mappings as :func:`mappings` yields them, except that with ``leaves`` False a last-level
    table is yielded whole, as ``(virtual, None, entries, False, True)``: counting its entries in
    one pass is what keeps a walk of gigabytes of mappings fast; with ``last_tables`` False the
    last-level tables are entered (yielded as tables) but not read."""
    frame_mask = ((1 << paging.physical_bits) - 1) & ~(PAGE_SIZE - 1)
    code = "Q" if paging.entry_size == 8 else "I"
    shifts = []
    shift = 12
    for bits, _large in reversed(paging.levels):
        shifts.insert(0, shift)
        shift += bits
    self_map = dtb & frame_mask
    last_level = len(paging.levels) - 1

    def walk(table: int, level: int, virtual: int) -> Iterator[Tuple]:
        bits, large = paging.levels[level]
        count = 1 << bits
        data = read(table, count * paging.entry_size)
        if len(data) < count * paging.entry_size:
            return
        entries = struct.unpack(f"<{count}{code}", data)
        if level == last_level and not leaves:
            yield virtual, None, entries, False, True
            return
        span = 1 << shifts[level]
        for index, entry in enumerate(entries):
            if not entry & 1 and not (level == last_level and paging.transition and entry & 0xC00 == 0x800):
                continue
            address = virtual + index * span
            if level == 0 and address + span <= lowest:
                continue
            target = entry & frame_mask
            if level == last_level:
                yield address, target >> 12, 1, False, not entry & (UNCACHED_BITS | PAT_PAGE)
            elif large and entry & 0x80:
                yield address, (target & ~(span - 1)) >> 12, span >> 12, False, not entry & (UNCACHED_BITS | PAT_LARGE)
            elif not (level == 0 and target == self_map):
                yield address, target >> 12, 1, True, True
                if last_tables or level + 1 < last_level:
                    yield from walk(target, level + 1, address)

    yield 0, dtb >> 12, 1, True, True
    yield from walk(dtb & ~(paging.top_size - 1) & ((1 << paging.physical_bits) - 1), 0, 0)


def mappings(read: Read, dtb: int, paging: Paging, lowest: int = 0) -> Iterator[Mapping]:
    """Every present mapping at or above virtual ``lowest`` (a page, or a large page's run of
    frames), and every page table entered (count 1, ``True``), in address order. A table that
    cannot be read whole is entered but not walked."""
    return _walk(read, dtb, paging, lowest, leaves=True)


def pages_past(read: Read, dtb: int, paging: Paging, file_size: int, lowest: int = 0) -> Tuple[int, int]:
    """(pages the write-back mappings at or above ``lowest`` and their page tables place past the
    end of a file of ``file_size`` bytes, all such pages)."""
    limit = file_size // PAGE_SIZE
    frame_mask = ((1 << paging.physical_bits) - 1) & ~(PAGE_SIZE - 1)
    # A last-level entry that maps a write-back page: present (or in transition), no PWT/PCD/PAT.
    transition = 0xC00 if paging.transition else 0
    missing = total = 0
    for _virtual, first, count, _table, write_back in _walk(read, dtb, paging, lowest, leaves=False):
        if first is None:
            frames = [entry & frame_mask for entry in count
                      if (entry & 1 or (transition and entry & 0xC00 == 0x800)) and not entry & (UNCACHED_BITS | PAT_PAGE)]
            total += len(frames)
            missing += sum(frame >> 12 >= limit for frame in frames)
            continue
        if not write_back:
            continue
        total += count
        missing += max(0, min(count, first + count - limit))
    return missing, total


def tables_past(read: Read, dtb: int, paging: Paging, file_size: int, lowest: int = 0) -> bool:
    """Whether a page table, or a write-back large page, of the mappings at or above ``lowest``
    lies past the end of a file of ``file_size`` bytes: the cheap first look of
    :func:`pages_past`. The last-level tables are not read (a few hundred pages are, not the
    thousands that map gigabytes), so a whole image costs milliseconds; the tables lie all over
    RAM, so a file cut short almost always leaves some of them past its end."""
    limit = file_size // PAGE_SIZE
    for _virtual, first, count, _table, write_back in _walk(read, dtb, paging, lowest, leaves=True, last_tables=False):
        if write_back and first + count > limit:
            return True
    return False


def truncation_text(missing: int, total: int, file_size: int) -> str:
    """How a raw image whose kernel maps pages past its end is said to be truncated."""
    return (f"the raw image is truncated: {missing_pages_text(missing, total)} its kernel's page tables map "
            f"(kernel half, page tables included) lie past the end of the file, at {size_text(file_size)}")


def low_stub_dtb(read: Read) -> Optional[int]:
    """The kernel's page-table root from the x64 processor start block in the first megabyte
    (what MemProcFS and WinDbg's own tools use to find it); None when there is none."""
    for page in range(0, LOW_STUB_RANGE, PAGE_SIZE):
        block = read(page, LOW_STUB_CR3 + 8)
        if len(block) < LOW_STUB_CR3 + 8:
            return None
        (signature,) = struct.unpack_from("<Q", block)
        if signature & LOW_STUB_MASK != LOW_STUB_SIGNATURE:
            continue
        (target,) = struct.unpack_from("<Q", block, LOW_STUB_LM_TARGET)
        (cr3,) = struct.unpack_from("<Q", block, LOW_STUB_CR3)
        if target >> 47 == 0x1FFFF and cr3 and not cr3 & 0xFFF and cr3 >> X64.physical_bits == 0:
            return cr3
    return None
