"""Intel page tables walked over physical memory read as bytes: the one walker, standard library only.

Every reader of page tables uses it: the kernel reader's bulk translation of kernel ranges into
physical runs and its map of frames back to kernel pages (``windows/kernelread/translation.py``,
which adds only the Volatility glue: a layer's paging, its physical reader); the kernel reader's
count of the pages a raw image's file lacks (``windows/kernelread/image_extent.py``); and the
stacker that looks at a file no layer recognised (``layers/file_check.py``), from the x64
processor start block, before Volatility gives up on a raw image whose kernel it cannot find. It
takes a ``read(offset, length)`` of physical memory, so it needs no Volatility.

The rules are Volatility's (``volatility3.framework.layers.intel``), rule for rule:

- an entry is valid when present or, for Windows (``Paging.transition``), in transition (bit
  11 set, prototype bit 10 clear: the page is on the standby list, still in memory), at every
  level (Volatility's ``WindowsMixin._page_is_valid`` is asked at each);
- a large page (bit 7 where a level allows it) drops its PAT bit (12) and keeps the address bits
  below its size: a byte's physical address is the entry's frame bits OR its offset in the page;
- a table is read as a page from its base, and a page whose entries are all alike is no table
  (Volatility's guard against the repeated entries Windows 10 maps); a table that cannot be read
  whole is none either.

The top-level self-map entry (Windows maps the page tables into the kernel half through it) is
skipped where a walk of the whole kernel half asks for it.

Counting what a file lacks, only write-back mappings count (:func:`pages_past`): drivers map
device memory (frame buffers, PCI BARs, often above the top of RAM) uncached or write-combined
(PWT, PCD or PAT set), and such frames are in no memory image.
"""

import array
import dataclasses
import struct
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

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

PRESENT = 1
#: Windows keeps standby pages mapped by transition entries: present bit clear, bit 11 set,
#: bit 10 (prototype) clear; their contents are in memory (Volatility's ``WindowsMixin``).
TRANSITION = 1 << 11
PROTOTYPE = 1 << 10
LARGE_PAGE = 1 << 7
#: PWT, PCD; PAT of a 4 KiB page (bit 7) and of a large page (bit 12).
UNCACHED_BITS = 0x18
PAT_PAGE, PAT_LARGE = 0x80, 0x1000
#: Page-table pages a :class:`PageTables` keeps (4 KiB each): the tables of 2 GiB of 4 KiB pages.
MAX_CACHED_TABLES = 1024


@dataclasses.dataclass(frozen=True)
class Paging:
    """A page-table format: (index bits, large pages allowed) per level from the top."""

    levels: Sequence[Tuple[int, bool]]
    entry_size: int
    physical_bits: int
    #: Windows' transition entries are valid (Volatility's Windows layers).
    transition: bool = True

    @property
    def top_size(self) -> int:
        return (1 << self.levels[0][0]) * self.entry_size


#: x64 4-level paging (Volatility's Intel32e).
X64 = Paging(((9, False), (9, True), (9, True), (9, False)), 8, 52)
#: The kernel half of the x64 address space, as a layer addresses it (bit 47 set).
X64_KERNEL_HALF = 1 << 47

#: (virtual address, physical address, length) of a mapped piece of a virtual range.
Run = Tuple[int, int, int]

#: What a descent of the tables meets (the first item of each tuple :meth:`PageTables.descend`
#: yields).
TABLE, LEAF, LAST = "table", "leaf", "last"


class PageTables:
    """The page tables of one address space (root ``dtb``), read through ``read``; each table
    page read whole once and kept (bounded)."""

    def __init__(self, read: Read, dtb: int, paging: Paging, max_tables: int = MAX_CACHED_TABLES) -> None:
        self.paging = paging
        self.dtb = dtb
        self._read = read
        self._max_tables = max_tables
        self._code = "Q" if paging.entry_size == 8 else "I"
        self.frame_mask = ((1 << paging.physical_bits) - 1) & ~(PAGE_SIZE - 1)
        self._shifts: List[int] = []
        shift = 12
        for bits, _large in reversed(paging.levels):
            self._shifts.insert(0, shift)
            shift += bits
        self.top_shift = shift  # bits of the address space
        self._last = len(paging.levels) - 1
        # The top table is as large as its entries (PAE: a 32-byte PDPT; otherwise a page).
        self.top = dtb & ~(paging.top_size - 1) & ((1 << paging.physical_bits) - 1)
        self._tables: Dict[int, Optional[array.array]] = {}

    def table(self, address: int, level: int) -> Optional[array.array]:
        """The entries of the table at ``address`` (of ``level``); None when it is no table:
        read as a page, as Volatility reads it, and all alike or not read whole."""
        key = address << 2 | level  # one page can be a table of two levels (the self-map)
        try:
            return self._tables[key]
        except KeyError:
            pass
        if len(self._tables) >= self._max_tables:
            self._tables.clear()  # walks are local: dropping everything now and then costs little
        size = max(PAGE_SIZE, (1 << self.paging.levels[level][0]) * self.paging.entry_size)
        data = self._read(address, size)
        entries: Optional[array.array] = None
        if len(data) == size and data != data[: self.paging.entry_size] * (size // self.paging.entry_size):
            entries = array.array(self._code)
            entries.frombytes(data[: (1 << self.paging.levels[level][0]) * self.paging.entry_size])
        self._tables[key] = entries
        return entries

    def large_physical(self, entry: int) -> int:
        """The frame bits of a valid large-page entry, its PAT bit dropped."""
        if entry & PAT_LARGE:
            entry -= PAT_LARGE
        return entry & self.frame_mask

    def descend(self, start: int, end: int, skip_self_map: bool = False,
                read_last: bool = True) -> Iterator[Tuple[str, int, int, object]]:
        """One descent of the tables over virtual [start, end), in address order, as tuples:

        - ``(TABLE, virtual, address, level)``: a table entered (yielded before it is read;
          the top one first), ``virtual`` the first address it maps;
        - ``(LEAF, virtual, entry, span)``: a valid large page of an upper level (the raw entry);
        - ``(LAST, virtual, entries, indices)``: a last-level table read, and the indices of
          its entries that cover part of the range (every entry, valid or not: its reader
          takes them in one pass, which is what keeps a walk of gigabytes of mappings fast).

        ``skip_self_map`` leaves out the top-level entry that maps the tables themselves;
        ``read_last`` False enters the last-level tables without reading them."""
        yield TABLE, 0, self.top, 0
        yield from self._descend(self.top, 0, 0, start, end, skip_self_map, read_last)

    def _descend(self, table: int, level: int, base: int, start: int, end: int, skip_self_map: bool,
                 read_last: bool) -> Iterator[Tuple[str, int, int, object]]:
        entries = self.table(table, level)
        if entries is None:
            return
        shift = self._shifts[level]
        indices = range(max(0, (start - base) >> shift), min(len(entries) - 1, (end - 1 - base) >> shift) + 1)
        if level == self._last:
            yield LAST, base, entries, indices  # type: ignore[misc]
            return
        large_allowed = self.paging.levels[level][1]
        self_map = self.dtb & self.frame_mask if skip_self_map and level == 0 else None
        transition = self.paging.transition
        frame_mask = self.frame_mask
        for index in indices:
            entry = entries[index]
            if not entry & PRESENT and not (transition and entry & (TRANSITION | PROTOTYPE) == TRANSITION):
                continue
            virtual = base + (index << shift)
            if large_allowed and entry & LARGE_PAGE:
                yield LEAF, virtual, entry, 1 << shift
                continue
            target = entry & frame_mask
            if target == self_map:
                continue
            yield TABLE, virtual, target, level + 1
            if read_last or level + 1 < self._last:
                yield from self._descend(target, level + 1, virtual, start, end, skip_self_map, read_last)

    def leaves(self, start: int, end: int, skip_self_map: bool = False) -> Iterator[Tuple[int, int, int]]:
        """(virtual, physical, span) of every valid leaf entry (a page or a large page) that
        covers part of [start, end), in address order."""
        transition = self.paging.transition
        frame_mask = self.frame_mask
        for kind, virtual, value, extra in self.descend(start, end, skip_self_map):
            if kind == LAST:
                for index, entry in enumerate(value[extra.start : extra.stop], extra.start):  # type: ignore[index, attr-defined]
                    if entry & PRESENT or (transition and entry & (TRANSITION | PROTOTYPE) == TRANSITION):
                        yield virtual + (index << 12), entry & frame_mask, PAGE_SIZE
            elif kind == LEAF:
                yield virtual, self.large_physical(value), extra  # type: ignore[misc]

    def runs(self, start: int, length: int) -> List[Run]:
        """The mapped pieces of [start, start + length), in order, each as long as virtual and
        physical memory stay contiguous (the hot path of every bulk read)."""
        found: List[Run] = []
        end = start + length
        transition = self.paging.transition
        frame_mask = self.frame_mask
        # The last run, kept apart from ``found`` until it ends.
        run_virtual = run_physical = run_length = -1
        for kind, virtual, value, extra in self.descend(start, end):
            if kind == LAST:
                first_page = virtual + (extra.start << 12)  # type: ignore[attr-defined]
                if first_page >= start and virtual + (extra.stop << 12) <= end:  # type: ignore[attr-defined]
                    # Every page of this table's slice lies whole in the range (a bulk read's
                    # usual case): the same runs without clipping each page to the range.
                    page = first_page - PAGE_SIZE
                    for entry in value[extra.start : extra.stop]:  # type: ignore[index, attr-defined]
                        page += PAGE_SIZE
                        if not entry & PRESENT and not (transition and entry & (TRANSITION | PROTOTYPE) == TRANSITION):
                            continue
                        address = entry & frame_mask
                        if run_virtual + run_length == page and run_physical + run_length == address:
                            run_length += PAGE_SIZE
                            continue
                        if run_length > 0:
                            found.append((run_virtual, run_physical, run_length))
                        run_virtual, run_physical, run_length = page, address, PAGE_SIZE
                    continue
                # A table the range starts or ends inside: each page clipped to the range.
                pieces: List[Run] = []
                for index, entry in enumerate(value[extra.start : extra.stop], extra.start):  # type: ignore[index, attr-defined]
                    if not entry & PRESENT and not (transition and entry & (TRANSITION | PROTOTYPE) == TRANSITION):
                        continue
                    page = virtual + (index << 12)
                    low = page if page > start else start
                    high = page + PAGE_SIZE if page + PAGE_SIZE < end else end
                    pieces.append((low, (entry & frame_mask) | (low - page), high - low))
            elif kind == LEAF:
                span: int = extra  # type: ignore[assignment]
                low = virtual if virtual > start else start
                high = virtual + span if virtual + span < end else end
                pieces = [(low, self.large_physical(value) | (low - virtual), high - low)]  # type: ignore[arg-type]
            else:
                continue
            for low, address, size in pieces:
                if run_virtual + run_length == low and run_physical + run_length == address:
                    run_length += size
                    continue
                if run_length > 0:
                    found.append((run_virtual, run_physical, run_length))
                run_virtual, run_physical, run_length = low, address, size
        if run_length > 0:
            found.append((run_virtual, run_physical, run_length))
        return found


def pages_past(read: Read, dtb: int, paging: Paging, file_size: int, lowest: int = 0) -> Tuple[int, int]:
    """(pages the write-back mappings at or above ``lowest`` and their page tables place past the
    end of a file of ``file_size`` bytes, all such pages)."""
    limit = file_size // PAGE_SIZE
    tables = PageTables(read, dtb, paging)
    frame_mask = tables.frame_mask
    # A last-level entry that maps a write-back page: valid, no PWT/PCD/PAT.
    transition = TRANSITION if paging.transition else -1
    missing = total = 0
    for kind, _virtual, value, extra in tables.descend(lowest, 1 << tables.top_shift, skip_self_map=True):
        if kind == LAST:
            frames = [entry & frame_mask for entry in value[extra.start : extra.stop]  # type: ignore[index, attr-defined]
                      if (entry & PRESENT or entry & (TRANSITION | PROTOTYPE) == transition)
                      and not entry & (UNCACHED_BITS | PAT_PAGE)]
            total += len(frames)
            missing += sum(frame >> 12 >= limit for frame in frames)
        elif kind == TABLE:
            total += 1
            missing += value >> 12 >= limit  # type: ignore[operator]
        elif not value & (UNCACHED_BITS | PAT_LARGE):  # type: ignore[operator]
            first, count = tables.large_physical(value) >> 12, extra >> 12  # type: ignore[arg-type, operator]
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
    tables = PageTables(read, dtb, paging)
    for kind, _virtual, value, extra in tables.descend(lowest, 1 << tables.top_shift, skip_self_map=True, read_last=False):
        if kind == TABLE and value >> 12 >= limit:  # type: ignore[operator]
            return True
        if kind == LEAF and not value & (UNCACHED_BITS | PAT_LARGE):  # type: ignore[operator]
            if (tables.large_physical(value) >> 12) + (extra >> 12) > limit:  # type: ignore[arg-type, operator]
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
