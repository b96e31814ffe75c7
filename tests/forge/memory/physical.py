"""Physical memory of forged images, and the address arithmetic every floor shares.

Physical memory is sparse (only pages that were written are stored). Frames are handed out in a
shuffled order (seeded), so virtual pages are scattered over physical memory as on a machine
that has been running: neighbouring virtual pages are almost never neighbouring frames. Without
a fixed memory size, RAM grows in banks as pages are needed.

A large image (the ``busy`` benchmark scenario) would not fit in memory as stored pages: its
bulk is *filler*, frames whose content a function produces when the image is written, mapped
into kernel space in bulk (``paging.AddressSpace.map_filler``).
"""

import random
from typing import Callable, Dict, Iterator, List, Optional, Tuple

PAGE_SIZE = 0x1000
PAGE_MASK = ~(PAGE_SIZE - 1)
ZERO_PAGE = bytes(PAGE_SIZE)

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
