"""Physical memory and the paging modes of forged images: x64 4-level, x86 PAE and x86 2-level.

Physical memory is sparse (only pages that were handed out exist) and is laid out the way
Volatility's Windows heuristics expect of a real machine: the top-level table (the DTB) sits in
the low physical range that the DTB scanner searches and maps the page tables through
self-referential entries, exactly as Windows does:
- x64: one PML4 entry points at the PML4 itself;
- x86 without PAE: page-directory entry 0x300 points at the page directory (PTEs at 0xC0000000);
- x86 with PAE: the four page directories follow the PDPT page by page, and entries 0-3 of the
  last one point at the four directories, so that directory maps itself at index 3 (PTEs at
  0xC0000000, PDEs at 0xC0600000). Volatility's ``DtbSelfRefPae`` looks for exactly that page and
  then for the PDPT four pages below it.
"""

from typing import Dict, Iterator, List, Optional, Tuple, Union

PAGE_SIZE = 0x1000
PAGE_MASK = ~(PAGE_SIZE - 1)

PTE_PRESENT = 1 << 0
PTE_WRITABLE = 1 << 1
PTE_ACCESSED = 1 << 5
PTE_DIRTY = 1 << 6
PTE_NO_EXECUTE = 1 << 63
PFN_MASK = 0x000F_FFFF_FFFF_F000

CANONICAL_HIGH = 0xFFFF_0000_0000_0000


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
    """Sparse physical pages with a simple bump allocator above the reserved low range."""

    def __init__(self, first_free: int = 0x200000, minimum_size: int = 0) -> None:
        self._pages: Dict[int, bytearray] = {}
        self._next_free = first_free
        # A machine has this much RAM even where the forge wrote nothing (zero pages).
        self.minimum_size = minimum_size

    def page(self, address: int) -> bytearray:
        number = address // PAGE_SIZE
        page = self._pages.get(number)
        if page is None:
            page = self._pages[number] = bytearray(PAGE_SIZE)
        return page

    def allocate_page(self) -> int:
        while self._next_free // PAGE_SIZE in self._pages:
            self._next_free += PAGE_SIZE
        address = self._next_free
        self.page(address)
        self._next_free += PAGE_SIZE
        return address

    def write(self, address: int, data: bytes) -> None:
        while data:
            offset = address % PAGE_SIZE
            chunk = data[: PAGE_SIZE - offset]
            self.page(address)[offset : offset + len(chunk)] = chunk
            address += len(chunk)
            data = data[len(chunk) :]

    def read(self, address: int, length: int) -> bytes:
        out = bytearray()
        while length > 0:
            offset = address % PAGE_SIZE
            take = min(length, PAGE_SIZE - offset)
            page = self._pages.get(address // PAGE_SIZE)
            out += page[offset : offset + take] if page is not None else bytes(take)
            address += take
            length -= take
        return bytes(out)

    @property
    def size(self) -> int:
        """The physical address space: up to the highest page in use, rounded up to 1 MiB."""
        highest = (max(self._pages) + 1) * PAGE_SIZE if self._pages else 0
        return max((highest + 0xFFFFF) & ~0xFFFFF, self.minimum_size)

    def page_numbers(self) -> List[int]:
        return sorted(self._pages)

    def runs(self) -> Iterator[Tuple[int, int]]:
        """Runs of physical pages as (first page number, page count): all of RAM when a
        minimum size was given, else the maximal runs of pages the forge wrote."""
        if self.minimum_size:
            yield 0, self.size // PAGE_SIZE
            return
        numbers = self.page_numbers()
        if not numbers:
            return
        start = previous = numbers[0]
        for number in numbers[1:]:
            if number != previous + 1:
                yield start, previous - start + 1
                start = number
            previous = number
        yield start, previous - start + 1

    def page_bytes(self, number: int) -> bytes:
        page = self._pages.get(number)
        return bytes(page) if page is not None else bytes(PAGE_SIZE)


class _PagedSpace:
    """Reads and writes through ``translate``; subclasses build the page tables."""

    physical: PhysicalMemory
    dtb: int
    #: bytes of one page-table entry: 8 on x64 and PAE, 4 without PAE
    ENTRY_SIZE = 8

    def _entry(self, table: int, index: int) -> int:
        return int.from_bytes(self.physical.read(table + index * self.ENTRY_SIZE, self.ENTRY_SIZE), "little")

    def _write_entry(self, table: int, index: int, value: int) -> None:
        self.physical.write(table + index * self.ENTRY_SIZE, value.to_bytes(self.ENTRY_SIZE, "little"))

    def map_page(self, virtual: int, physical: Optional[int] = None, executable: bool = True) -> int:
        raise NotImplementedError

    def translate(self, virtual: int) -> Optional[int]:
        raise NotImplementedError

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
        while data:
            physical = self.translate(virtual)
            if physical is None:
                raise ForgeMemoryError(f"write to unmapped virtual address {canonical(virtual):#x}")
            chunk = data[: PAGE_SIZE - (virtual % PAGE_SIZE)]
            self.physical.write(physical, chunk)
            virtual += len(chunk)
            data = data[len(chunk) :]

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
        self.physical = physical
        self.dtb = dtb
        self.self_ref_index = self_ref_index
        physical.page(dtb)
        self._write_entry(dtb, self_ref_index, dtb | PTE_PRESENT | PTE_WRITABLE | PTE_ACCESSED | PTE_DIRTY | PTE_NO_EXECUTE)

    @staticmethod
    def _indices(address: int) -> Tuple[int, int, int, int]:
        return ((address >> 39) & 0x1FF, (address >> 30) & 0x1FF, (address >> 21) & 0x1FF, (address >> 12) & 0x1FF)

    def map_page(self, virtual: int, physical: Optional[int] = None, executable: bool = True) -> int:
        """Map one page (allocating the frame and any missing table) and return its frame."""
        virtual = canonical(virtual) & PAGE_MASK
        table = self.dtb
        indices = self._indices(virtual)
        if indices[0] == self.self_ref_index:
            raise ForgeMemoryError(f"{virtual:#x} lies in the page-table self-map")
        for index in indices[:3]:
            entry = self._entry(table, index)
            if not entry & PTE_PRESENT:
                new_table = self.physical.allocate_page()
                entry = new_table | PTE_PRESENT | PTE_WRITABLE | PTE_ACCESSED
                self._write_entry(table, index, entry)
            table = entry & PFN_MASK
        existing = self._entry(table, indices[3])
        if existing & PTE_PRESENT:
            return existing & PFN_MASK
        frame = physical if physical is not None else self.physical.allocate_page()
        flags = PTE_PRESENT | PTE_WRITABLE | PTE_ACCESSED | PTE_DIRTY
        if not executable:
            flags |= PTE_NO_EXECUTE
        self._write_entry(table, indices[3], frame | flags)
        return frame

    def translate(self, virtual: int) -> Optional[int]:
        table = self.dtb
        indices = self._indices(canonical(virtual))
        for index in indices:
            entry = self._entry(table, index)
            if not entry & PTE_PRESENT:
                return None
            table = entry & PFN_MASK
        return table | (virtual & (PAGE_SIZE - 1))


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
        self.physical = physical
        self.dtb = dtb
        physical.page(dtb)
        self._write_entry(dtb, X86_SELF_REF_INDEX, dtb | PTE32_FLAGS)

    def map_page(self, virtual: int, physical: Optional[int] = None, executable: bool = True) -> int:
        """Map one page; ``executable`` has no meaning without PAE (no NX bit), as on the hardware."""
        virtual &= 0xFFFF_F000
        if X86_SELF_MAP <= virtual < X86_SELF_MAP + X86_SELF_MAP_SIZE:
            raise ForgeMemoryError(f"{virtual:#x} lies in the page-table self-map")
        directory_index, table_index = virtual >> 22, (virtual >> 12) & 0x3FF
        entry = self._entry(self.dtb, directory_index)
        if not entry & PTE_PRESENT:
            entry = self.physical.allocate_page() | PTE_PRESENT | PTE_WRITABLE | PTE_ACCESSED
            self._write_entry(self.dtb, directory_index, entry)
        table = entry & 0xFFFF_F000
        existing = self._entry(table, table_index)
        if existing & PTE_PRESENT:
            return existing & 0xFFFF_F000
        frame = physical if physical is not None else self.physical.allocate_page()
        self._write_entry(table, table_index, frame | PTE32_FLAGS)
        return frame

    def translate(self, virtual: int) -> Optional[int]:
        virtual &= 0xFFFF_FFFF
        entry = self._entry(self.dtb, virtual >> 22)
        if not entry & PTE_PRESENT:
            return None
        entry = self._entry(entry & 0xFFFF_F000, (virtual >> 12) & 0x3FF)
        if not entry & PTE_PRESENT:
            return None
        return (entry & 0xFFFF_F000) | (virtual & (PAGE_SIZE - 1))


class PaeAddressSpace(_PagedSpace):
    """32-bit PAE paging: a 4-entry PDPT (the DTB) and four page directories of 8-byte entries.

    The PDPT takes its own page and the directories the four pages after it, all allocated up
    front, as Windows does at boot; the PDPT entries carry only the present bit (the others are
    reserved in a PDPTE).
    """

    def __init__(self, physical: PhysicalMemory, dtb: int) -> None:
        self.physical = physical
        self.dtb = dtb
        self.directories = [dtb + PAGE_SIZE * (index + 1) for index in range(4)]
        physical.page(dtb)
        for index, directory in enumerate(self.directories):
            physical.page(directory)
            self._write_entry(dtb, index, directory | PTE_PRESENT)
        for index, directory in enumerate(self.directories):
            self._write_entry(self.directories[3], index, directory | PTE32_FLAGS)

    def map_page(self, virtual: int, physical: Optional[int] = None, executable: bool = True) -> int:
        virtual &= 0xFFFF_F000
        if X86_SELF_MAP <= virtual < X86_SELF_MAP + X86_SELF_MAP_SIZE_PAE:
            raise ForgeMemoryError(f"{virtual:#x} lies in the page-table self-map")
        directory = self.directories[virtual >> 30]
        directory_index, table_index = (virtual >> 21) & 0x1FF, (virtual >> 12) & 0x1FF
        entry = self._entry(directory, directory_index)
        if not entry & PTE_PRESENT:
            entry = self.physical.allocate_page() | PTE_PRESENT | PTE_WRITABLE | PTE_ACCESSED
            self._write_entry(directory, directory_index, entry)
        table = entry & PFN_MASK
        existing = self._entry(table, table_index)
        if existing & PTE_PRESENT:
            return existing & PFN_MASK
        frame = physical if physical is not None else self.physical.allocate_page()
        self._write_entry(table, table_index, frame | PTE32_FLAGS | (0 if executable else PTE_NO_EXECUTE))
        return frame

    def translate(self, virtual: int) -> Optional[int]:
        virtual &= 0xFFFF_FFFF
        entry = self._entry(self.directories[virtual >> 30], (virtual >> 21) & 0x1FF)
        if not entry & PTE_PRESENT:
            return None
        entry = self._entry(entry & PFN_MASK, (virtual >> 12) & 0x1FF)
        if not entry & PTE_PRESENT:
            return None
        return (entry & PFN_MASK) | (virtual & (PAGE_SIZE - 1))


KernelAddressSpace = Union[AddressSpace, X86AddressSpace, PaeAddressSpace]
