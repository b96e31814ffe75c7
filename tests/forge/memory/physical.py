"""Physical memory of forged images, and the address arithmetic every floor shares.

Physical memory is sparse (only pages that were written are stored). Frames are handed out in a
shuffled order (seeded), so virtual pages are scattered over physical memory as on a machine
that has been running: neighbouring virtual pages are almost never neighbouring frames. Without
a fixed memory size, RAM grows in banks as pages are needed.

A large image (the ``busy`` benchmark scenarios) would not fit in memory as stored pages: its
bulk is *procedural*, frames whose content a function produces when the image is written:
filler mapped into kernel space in bulk (``paging.AddressSpace.map_filler``) and the pages of
the heap's bulk noise subsegments (``paging.AddressSpace.map_procedural``). A write to such a
frame (the heap's metadata over its subsegments) is kept as a patch laid over the produced
content, not as a stored page, until the patches of a frame grow past a quarter of a page.
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
#: Patched bytes of a procedural frame beyond which the frame is stored instead.
MAX_PATCH_BYTES = PAGE_SIZE // 4


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
        # Procedural frames: the content source of each frame (an index into _sources, 0 for
        # none), and the writes laid over them.
        self._frame_source: Optional[bytearray] = None
        self._sources: List[Optional[FillerContent]] = [None]
        self._patches: Dict[int, List[Tuple[int, bytes]]] = {}

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
        return self.take_procedural_frames(count, self.add_source(content))

    def add_source(self, content: FillerContent) -> int:
        """Register a procedural content source (once; again gives the same number); returns
        its number (at most 255 sources)."""
        for number, known in enumerate(self._sources):
            if known == content:
                return number
        if len(self._sources) >= 256:
            raise ForgeMemoryError("too many procedural content sources")
        self._sources.append(content)
        return len(self._sources) - 1

    def take_procedural_frames(self, count: int, source: int) -> List[int]:
        """``count`` unused frames (scattered) whose content source ``source`` produces."""
        frames: List[int] = []
        while len(frames) < count:
            frames.append(self._next_free_frame())
        highest = max(frames) + 1
        if self._frame_source is None:
            self._frame_source = bytearray(max(self.size // PAGE_SIZE, highest))
        elif len(self._frame_source) < highest:
            self._frame_source.extend(bytes(highest - len(self._frame_source)))
        for number in frames:
            self._frame_source[number] = source
        return frames

    def is_stored(self, number: int) -> bool:
        """Whether frame ``number``'s bytes are stored (not produced when the image is written)."""
        return number in self._pages

    def _source_of(self, number: int) -> int:
        sources = self._frame_source
        return sources[number] if sources is not None and number < len(sources) else 0

    # -- bytes ---------------------------------------------------------------------------

    def write(self, address: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            offset = address % PAGE_SIZE
            take = min(len(view), PAGE_SIZE - offset)
            number = address // PAGE_SIZE
            page = self._pages.get(number)
            if page is None and self._source_of(number) and self._patch(number, offset, bytes(view[:take])):
                address += take
                view = view[take:]
                continue
            if page is None:
                page = self._materialise(number)
            page[offset : offset + take] = view[:take]
            address += take
            view = view[take:]

    def _patch(self, number: int, offset: int, data: bytes) -> bool:
        """Keep a write to a procedural frame as a patch; False once the frame's patches would
        pass ``MAX_PATCH_BYTES`` (then it is stored)."""
        patches = self._patches.setdefault(number, [])
        if sum(len(patch) for _, patch in patches) + len(data) > MAX_PATCH_BYTES:
            return False
        patches.append((offset, data))
        return True

    def _materialise(self, number: int) -> bytearray:
        """A stored page for frame ``number``; a procedural frame keeps its content and patches."""
        page = bytearray(self.page_bytes(number))
        self._pages[number] = page
        self._patches.pop(number, None)
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
        """Every frame with content: stored pages and procedural frames."""
        if self._frame_source is None:
            return sorted(self._pages)
        sources = self._frame_source
        stored = self._pages
        return [n for n in range(len(sources)) if sources[n] or n in stored] + sorted(
            n for n in stored if n >= len(sources))

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
        source = self._source_of(number)
        if source:
            content = self._sources[source]
            assert content is not None
            produced = content(number)
            patches = self._patches.get(number)
            if not patches:
                return produced
            patched = bytearray(produced)
            for offset, data in patches:
                patched[offset : offset + len(data)] = data
            return bytes(patched)
        return ZERO_PAGE
