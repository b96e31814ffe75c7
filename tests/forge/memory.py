"""Physical memory and the paging modes of forged images: x64 4-level, x86 PAE and x86 2-level.

Physical memory is sparse (only pages that were written are stored) and laid out the way
Volatility's Windows heuristics expect of a real machine: the top-level table (the DTB) sits in
the low physical range that the DTB scanner searches and maps the page tables through
self-referential entries, exactly as Windows does:
- x64: one PML4 entry points at the PML4 itself;
- x86 without PAE: page-directory entry 0x300 points at the page directory (PTEs at 0xC0000000);
- x86 with PAE: the four page directories follow the PDPT page by page, and entries 0-3 of the
  last one point at the four directories, so that directory maps itself at index 3 (PTEs at
  0xC0000000, PDEs at 0xC0600000). Volatility's ``DtbSelfRefPae`` looks for exactly that page and
  then for the PDPT four pages below it.

Frames are handed out in a shuffled order (seeded), so virtual pages are scattered over physical
memory as on a machine that has been running: neighbouring virtual pages are almost never
neighbouring frames. Without a fixed memory size, RAM grows in banks as pages are needed.

A large image (the ``busy`` benchmark scenario) would not fit in memory as stored pages: its
bulk is *filler*, frames whose content a function produces when the image is written, mapped
into kernel space in bulk (:meth:`AddressSpace.map_filler`).
"""

import random
from array import array
from bisect import bisect_right
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

PAGE_SIZE = 0x1000
PAGE_MASK = ~(PAGE_SIZE - 1)
ZERO_PAGE = bytes(PAGE_SIZE)

PTE_PRESENT = 1 << 0
PTE_WRITABLE = 1 << 1
PTE_ACCESSED = 1 << 5
PTE_DIRTY = 1 << 6
PTE_NO_EXECUTE = 1 << 63
PFN_MASK = 0x000F_FFFF_FFFF_F000

CANONICAL_HIGH = 0xFFFF_0000_0000_0000

#: Frames below this address are never handed out: the DTB, the low stub and what firmware keeps.
LOW_RESERVED = 0x200000
#: Without a fixed memory size, RAM grows by this much whenever the shuffled frames run out.
BANK_SIZE = 0x200000

FillerContent = Callable[[int], bytes]


class ForgeMemoryError(Exception):
    """A write to an address the forge never mapped: a bug in a scenario."""


def canonical(address: int) -> int:
    """Sign-extend a 48-bit virtual address, as the processor does."""
    address &= 0xFFFF_FFFF_FFFF
    return address | CANONICAL_HIGH if address & (1 << 47) else address


def masked(address: int) -> int:
    """A virtual address as Volatility renders it: the low 48 bits."""
    return address & 0xFFFF_FFFF_FFFF


class PhysicalMemory:
    """Sparse physical pages; frames handed out in a seeded shuffled order above the low range."""

    def __init__(self, rng: Optional[random.Random] = None, minimum_size: int = 0) -> None:
        self._pages: Dict[int, bytearray] = {}
        self._rng = rng if rng is not None else random.Random(0)
        # A machine has this much RAM even where the forge wrote nothing.
        self.minimum_size = minimum_size
        self._free: List[int] = []  # shuffled frame numbers, taken from the end
        self._bank_end = LOW_RESERVED // PAGE_SIZE
        # Filler: frames whose content is produced when the image is written.
        self._filler_frames: Optional[bytearray] = None
        self._filler_content: Optional[FillerContent] = None
        self._filler_count = 0

    # -- frames --------------------------------------------------------------------------

    def page(self, address: int) -> bytearray:
        number = address // PAGE_SIZE
        page = self._pages.get(number)
        if page is None:
            page = self._pages[number] = bytearray(PAGE_SIZE)
        return page

    def _add_bank(self) -> None:
        start = self._bank_end
        if self.minimum_size:
            end = self.minimum_size // PAGE_SIZE
            if start >= end:
                raise ForgeMemoryError(f"out of physical memory: {self.minimum_size:#x} bytes are all in use")
        else:
            end = start + BANK_SIZE // PAGE_SIZE
        bank = list(range(start, end))
        self._rng.shuffle(bank)
        self._free = bank + self._free  # older banks are used up first
        self._bank_end = end

    def _next_free_frame(self) -> int:
        while True:
            if not self._free:
                self._add_bank()
            number = self._free.pop()
            if number not in self._pages:
                return number

    def allocate_page(self) -> int:
        """A fresh frame (physical address), anywhere in RAM."""
        number = self._next_free_frame()
        self._pages[number] = bytearray(PAGE_SIZE)
        return number * PAGE_SIZE

    def free_frame_count(self) -> int:
        """Frames still unused in RAM of a fixed size (0 when RAM grows on demand)."""
        if not self.minimum_size:
            return 0
        unused_banks = max(0, self.minimum_size // PAGE_SIZE - self._bank_end)
        return len([n for n in self._free if n not in self._pages]) + unused_banks

    def take_filler_frames(self, count: int, content: FillerContent) -> List[int]:
        """``count`` unused frames (scattered) that from now on hold ``content(frame)``."""
        frames: List[int] = []
        while len(frames) < count:
            frames.append(self._next_free_frame())
        if self._filler_frames is None:
            self._filler_frames = bytearray(max(self.size, (max(frames) + 1) * PAGE_SIZE) // PAGE_SIZE)
        for number in frames:
            self._filler_frames[number] = 1
        self._filler_content = content
        self._filler_count += len(frames)
        return frames

    def _is_filler(self, number: int) -> bool:
        filler = self._filler_frames
        return filler is not None and number < len(filler) and filler[number] == 1

    # -- bytes ---------------------------------------------------------------------------

    def write(self, address: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            offset = address % PAGE_SIZE
            take = min(len(view), PAGE_SIZE - offset)
            number = address // PAGE_SIZE
            page = self._pages.get(number)
            if page is None:
                page = self._materialise(number)
            page[offset : offset + take] = view[:take]
            address += take
            view = view[take:]

    def _materialise(self, number: int) -> bytearray:
        """A stored page for frame ``number``; a filler frame keeps its produced content."""
        page = bytearray(self.page_bytes(number))
        self._pages[number] = page
        return page

    def read(self, address: int, length: int) -> bytes:
        out = bytearray()
        while length > 0:
            offset = address % PAGE_SIZE
            take = min(length, PAGE_SIZE - offset)
            out += self.page_bytes(address // PAGE_SIZE)[offset : offset + take]
            address += take
            length -= take
        return bytes(out)

    @property
    def size(self) -> int:
        """The physical address space: RAM handed out so far (or the fixed size), 1 MiB rounded."""
        highest = (max(self._pages) + 1) * PAGE_SIZE if self._pages else 0
        highest = max(highest, self._bank_end * PAGE_SIZE)
        return max((highest + 0xFFFFF) & ~0xFFFFF, self.minimum_size)

    def page_numbers(self) -> List[int]:
        """Every frame with content: stored pages and filler."""
        if self._filler_frames is None:
            return sorted(self._pages)
        filler = self._filler_frames
        stored = self._pages
        return [n for n in range(len(filler)) if filler[n] or n in stored] + sorted(
            n for n in stored if n >= len(filler))

    def runs(self) -> Iterator[Tuple[int, int]]:
        """Runs of physical pages as (first page number, page count), as a dump's physical memory
        descriptor lists them. With a fixed memory size, all of RAM from frame 0. Otherwise the
        low range with the banks handed out so far (one run: frames are scattered over all of
        it), then the maximal runs of pages written above them (the x86 kernel, which the loader
        puts at a fixed physical address; every written page when no bank was ever needed)."""
        if self.minimum_size:
            yield 0, self.size // PAGE_SIZE
            return
        banked = self._bank_end if self._bank_end > LOW_RESERVED // PAGE_SIZE else 0
        if banked:
            yield 0, banked
        start = previous = None
        for number in sorted(n for n in self._pages if n >= banked):
            if start is None:
                start = previous = number
            elif number == previous + 1:
                previous = number
            else:
                yield start, previous - start + 1
                start = previous = number
        if start is not None:
            yield start, previous - start + 1

    def page_bytes(self, number: int) -> bytes:
        page = self._pages.get(number)
        if page is not None:
            return bytes(page)
        if self._is_filler(number):
            assert self._filler_content is not None
            return self._filler_content(number)
        return ZERO_PAGE


class _PagedSpace:
    """Reads and writes through a translation kept beside the page tables (the tables are the
    image's truth; the dictionary is how the forge finds a page's frame without walking them)."""

    physical: PhysicalMemory
    dtb: int
    #: bytes of one page-table entry: 8 on x64 and PAE, 4 without PAE
    ENTRY_SIZE = 8

    def __init__(self) -> None:
        self._frames: Dict[int, int] = {}  # virtual page number -> frame address
        self._bulk_starts: List[int] = []  # first virtual page numbers of filler ranges
        self._bulk_frames: List[array] = []  # their frame numbers

    def _entry(self, table: int, index: int) -> int:
        return int.from_bytes(self.physical.read(table + index * self.ENTRY_SIZE, self.ENTRY_SIZE), "little")

    def _write_entry(self, table: int, index: int, value: int) -> None:
        self.physical.write(table + index * self.ENTRY_SIZE, value.to_bytes(self.ENTRY_SIZE, "little"))

    def _page_number(self, virtual: int) -> int:
        raise NotImplementedError

    def map_page(self, virtual: int, physical: Optional[int] = None, executable: bool = True) -> int:
        """Map one page (allocating the frame and any missing table) and return its frame."""
        number = self._page_number(virtual)
        existing = self._frames.get(number)
        if existing is not None:
            return existing
        frame = physical if physical is not None else self.physical.allocate_page()
        self._install(number * PAGE_SIZE, frame, executable)
        self._frames[number] = frame
        return frame

    def unmap_page(self, virtual: int) -> None:
        """Remove a page's mapping (its frame keeps its bytes, as freed memory does)."""
        number = self._page_number(virtual)
        if self._frames.pop(number, None) is not None:
            self._uninstall(number * PAGE_SIZE)

    def _install(self, virtual: int, frame: int, executable: bool) -> None:
        raise NotImplementedError

    def _uninstall(self, virtual: int) -> None:
        raise NotImplementedError

    def translate(self, virtual: int) -> Optional[int]:
        number = self._page_number(virtual)
        frame = self._frames.get(number)
        if frame is None:
            index = bisect_right(self._bulk_starts, number) - 1
            if index < 0 or number - self._bulk_starts[index] >= len(self._bulk_frames[index]):
                return None
            frame = self._bulk_frames[index][number - self._bulk_starts[index]] * PAGE_SIZE
        return frame | (virtual & (PAGE_SIZE - 1))

    def map_range(self, virtual: int, size: int, executable: bool = True, physical: Optional[int] = None) -> None:
        """Map ``size`` bytes; with ``physical``, onto the contiguous frames starting there."""
        start = virtual & PAGE_MASK
        end = (virtual + size + PAGE_SIZE - 1) & PAGE_MASK
        for page in range(start, end, PAGE_SIZE):
            frame = None if physical is None else (physical & PAGE_MASK) + (page - start)
            if frame is not None:
                self.physical.page(frame)  # the frame exists (and is dumped) even if never written
            self.map_page(page, frame, executable=executable)

    def is_mapped(self, virtual: int) -> bool:
        return self.translate(virtual) is not None

    def write(self, virtual: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            physical = self.translate(virtual)
            if physical is None:
                raise ForgeMemoryError(f"write to unmapped virtual address {canonical(virtual):#x}")
            take = min(len(view), PAGE_SIZE - (virtual % PAGE_SIZE))
            self.physical.write(physical, view[:take])
            virtual += take
            view = view[take:]

    def read(self, virtual: int, length: int) -> bytes:
        out = bytearray()
        while length > 0:
            take = min(length, PAGE_SIZE - (virtual % PAGE_SIZE))
            physical = self.translate(virtual)
            if physical is None:
                raise ForgeMemoryError(f"read of unmapped virtual address {canonical(virtual):#x}")
            out += self.physical.read(physical, take)
            virtual += take
            length -= take
        return bytes(out)


class AddressSpace(_PagedSpace):
    """An x64 4-level page-table hierarchy rooted at a fixed physical page (the DTB)."""

    def __init__(self, physical: PhysicalMemory, dtb: int, self_ref_index: int) -> None:
        super().__init__()
        self.physical = physical
        self.dtb = dtb
        self.self_ref_index = self_ref_index
        physical.page(dtb)
        self._write_entry(dtb, self_ref_index, dtb | PTE_PRESENT | PTE_WRITABLE | PTE_ACCESSED | PTE_DIRTY | PTE_NO_EXECUTE)

    @staticmethod
    def _indices(address: int) -> Tuple[int, int, int, int]:
        return ((address >> 39) & 0x1FF, (address >> 30) & 0x1FF, (address >> 21) & 0x1FF, (address >> 12) & 0x1FF)

    def _page_number(self, virtual: int) -> int:
        return (virtual & 0xFFFF_FFFF_FFFF) >> 12

    def _page_table(self, virtual: int) -> int:
        """The page table covering ``virtual``, created (with its parents) if missing."""
        indices = self._indices(virtual)
        if indices[0] == self.self_ref_index:
            raise ForgeMemoryError(f"{canonical(virtual):#x} lies in the page-table self-map")
        table = self.dtb
        for index in indices[:3]:
            entry = self._entry(table, index)
            if not entry & PTE_PRESENT:
                new_table = self.physical.allocate_page()
                entry = new_table | PTE_PRESENT | PTE_WRITABLE | PTE_ACCESSED
                self._write_entry(table, index, entry)
            table = entry & PFN_MASK
        return table

    def _install(self, virtual: int, frame: int, executable: bool) -> None:
        flags = PTE_PRESENT | PTE_WRITABLE | PTE_ACCESSED | PTE_DIRTY | (0 if executable else PTE_NO_EXECUTE)
        self._write_entry(self._page_table(virtual), self._indices(virtual)[3], frame | flags)

    def _uninstall(self, virtual: int) -> None:
        self._write_entry(self._page_table(virtual), self._indices(virtual)[3], 0)

    def map_filler(self, virtual: int, pages: int, content: FillerContent) -> int:
        """Map up to ``pages`` non-executable pages from ``virtual`` (2 MiB aligned) onto unused
        frames whose bytes ``content(frame number)`` gives when the image is written; their page
        tables are written whole, 512 entries at a time. Returns how many pages were mapped
        (fewer when RAM runs out: the page tables take their share first)."""
        if virtual % (PAGE_SIZE * 512):
            raise ValueError("filler ranges start on a 2 MiB boundary")
        tables_needed = (pages + 511) // 512
        available = self.physical.free_frame_count()
        pages = min(pages, max(0, available - 2 * tables_needed - 2))
        flags = PTE_PRESENT | PTE_WRITABLE | PTE_ACCESSED | PTE_DIRTY | PTE_NO_EXECUTE
        mapped = array("Q")
        for first in range(0, pages, 512):
            count = min(512, pages - first)
            table = self._page_table(virtual + first * PAGE_SIZE)
            frames = self.physical.take_filler_frames(count, content)
            entries = array("Q", ((frame << 12) | flags for frame in frames))
            self.physical.write(table, entries.tobytes())
            mapped.extend(frames)
        self._bulk_starts.append(self._page_number(virtual))
        self._bulk_frames.append(mapped)
        order = sorted(range(len(self._bulk_starts)), key=self._bulk_starts.__getitem__)
        self._bulk_starts = [self._bulk_starts[i] for i in order]
        self._bulk_frames = [self._bulk_frames[i] for i in order]
        return pages


X86_SELF_MAP = 0xC000_0000  # PTE_BASE of 32-bit Windows, with and without PAE
X86_SELF_MAP_SIZE_PAE = 0x80_0000  # 4 page directories' worth of page tables: 0xC0000000-0xC07FFFFF
X86_SELF_MAP_SIZE = 0x40_0000  # one page directory's worth: 0xC0000000-0xC03FFFFF
X86_SELF_REF_INDEX = 0x300  # 0xC0000000 >> 22
PAE_SELF_REF_INDEX = 3  # the last page directory maps itself at index 3 (0xC0600000)
PTE32_FLAGS = PTE_PRESENT | PTE_WRITABLE | PTE_ACCESSED | PTE_DIRTY


class X86AddressSpace(_PagedSpace):
    """32-bit 2-level paging: a 1024-entry page directory (the DTB) of 4-byte entries."""

    ENTRY_SIZE = 4

    def __init__(self, physical: PhysicalMemory, dtb: int) -> None:
        super().__init__()
        self.physical = physical
        self.dtb = dtb
        physical.page(dtb)
        self._write_entry(dtb, X86_SELF_REF_INDEX, dtb | PTE32_FLAGS)

    def _page_number(self, virtual: int) -> int:
        return (virtual & 0xFFFF_FFFF) >> 12

    def _page_table(self, virtual: int) -> int:
        if X86_SELF_MAP <= virtual < X86_SELF_MAP + X86_SELF_MAP_SIZE:
            raise ForgeMemoryError(f"{virtual:#x} lies in the page-table self-map")
        entry = self._entry(self.dtb, virtual >> 22)
        if not entry & PTE_PRESENT:
            entry = self.physical.allocate_page() | PTE_PRESENT | PTE_WRITABLE | PTE_ACCESSED
            self._write_entry(self.dtb, virtual >> 22, entry)
        return entry & 0xFFFF_F000

    def _install(self, virtual: int, frame: int, executable: bool) -> None:
        """``executable`` has no meaning without PAE (no NX bit), as on the hardware."""
        self._write_entry(self._page_table(virtual), (virtual >> 12) & 0x3FF, frame | PTE32_FLAGS)

    def _uninstall(self, virtual: int) -> None:
        self._write_entry(self._page_table(virtual), (virtual >> 12) & 0x3FF, 0)


class PaeAddressSpace(_PagedSpace):
    """32-bit PAE paging: a 4-entry PDPT (the DTB) and four page directories of 8-byte entries.

    The PDPT takes its own page and the directories the four pages after it, all allocated up
    front, as Windows does at boot; the PDPT entries carry only the present bit (the others are
    reserved in a PDPTE).
    """

    def __init__(self, physical: PhysicalMemory, dtb: int) -> None:
        super().__init__()
        self.physical = physical
        self.dtb = dtb
        self.directories = [dtb + PAGE_SIZE * (index + 1) for index in range(4)]
        physical.page(dtb)
        for index, directory in enumerate(self.directories):
            physical.page(directory)
            self._write_entry(dtb, index, directory | PTE_PRESENT)
        for index, directory in enumerate(self.directories):
            self._write_entry(self.directories[3], index, directory | PTE32_FLAGS)

    def _page_number(self, virtual: int) -> int:
        return (virtual & 0xFFFF_FFFF) >> 12

    def _page_table(self, virtual: int) -> int:
        if X86_SELF_MAP <= virtual < X86_SELF_MAP + X86_SELF_MAP_SIZE_PAE:
            raise ForgeMemoryError(f"{virtual:#x} lies in the page-table self-map")
        directory = self.directories[virtual >> 30]
        index = (virtual >> 21) & 0x1FF
        entry = self._entry(directory, index)
        if not entry & PTE_PRESENT:
            entry = self.physical.allocate_page() | PTE_PRESENT | PTE_WRITABLE | PTE_ACCESSED
            self._write_entry(directory, index, entry)
        return entry & PFN_MASK

    def _install(self, virtual: int, frame: int, executable: bool) -> None:
        self._write_entry(self._page_table(virtual), (virtual >> 12) & 0x1FF,
                          frame | PTE32_FLAGS | (0 if executable else PTE_NO_EXECUTE))

    def _uninstall(self, virtual: int) -> None:
        self._write_entry(self._page_table(virtual), (virtual >> 12) & 0x1FF, 0)


KernelAddressSpace = Union[AddressSpace, X86AddressSpace, PaeAddressSpace]

