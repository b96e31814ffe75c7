"""The paging modes of forged images: x64 4-level, x86 PAE and x86 2-level.

The top-level table (the DTB) sits in the low physical range that Volatility's DTB scanner
searches and maps the page tables through self-referential entries, exactly as Windows does:
- x64: one PML4 entry points at the PML4 itself;
- x86 without PAE: page-directory entry 0x300 points at the page directory (PTEs at 0xC0000000);
- x86 with PAE: the four page directories follow the PDPT page by page, and entries 0-3 of the
  last one point at the four directories, so that directory maps itself at index 3 (PTEs at
  0xC0000000, PDEs at 0xC0600000). Volatility's ``DtbSelfRefPae`` looks for exactly that page and
  then for the PDPT four pages below it.

The frames come from ``physical.PhysicalMemory``, the filler frames of a large image too
(:meth:`AddressSpace.map_filler` maps them in bulk).
"""

from array import array
from bisect import bisect_right
from typing import Dict, List, Optional, Tuple, Union

from .physical import PAGE_MASK, PAGE_SIZE, FillerContent, ForgeMemoryError, PhysicalMemory, canonical

PTE_PRESENT = 1 << 0
PTE_WRITABLE = 1 << 1
PTE_ACCESSED = 1 << 5
PTE_DIRTY = 1 << 6
PTE_NO_EXECUTE = 1 << 63
PFN_MASK = 0x000F_FFFF_FFFF_F000


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

    def map_procedural(self, virtual: int, pages: int, source: int, executable: bool = False) -> List[int]:
        """Map ``pages`` pages from ``virtual`` onto unused frames whose content the physical
        memory's procedural ``source`` produces when the image is written; returns the frames."""
        frames = self.physical.take_procedural_frames(pages, source)
        for index, frame in enumerate(frames):
            self.map_page(virtual + index * PAGE_SIZE, frame * PAGE_SIZE, executable=executable)
        return frames

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

