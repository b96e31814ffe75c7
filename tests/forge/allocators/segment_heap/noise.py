"""The heap's bulk noise as procedural memory: block contents produced when the image is written.

A busy machine's heap holds hundreds of megabytes of blocks whose contents matter to nobody but
whose metadata a reader walks. :meth:`SegmentHeapPool.fill_noise` decides everything a reader
sees (which subsegments, their geometry, every block's size, tag and state: kept compactly, the
metadata exact) and registers each subsegment's pages here; the random bodies and the blocks'
pool headers are produced page by page when the image is written, the same every time. The
metadata the heap writes over those pages (subsegment headers, bitmaps, chunk headers, list
links, free-tree nodes) are patches that physical memory lays over the produced content
(``memory/physical.py``), so nothing holds the heap whole.
"""

import bisect
import random
from typing import Callable, Dict, List, Sequence, Tuple

from ...memory.machine import Machine
from ...memory.physical import PAGE_SIZE
from ..pool import NOISE_TAGS, PoolHeaders

#: A subsegment's page, by its index in the subsegment.
PageContent = Callable[[int], bytes]


def random_page(seed: int, index: int) -> bytearray:
    """The random bytes of page ``index`` of the subsegment whose noise seed is ``seed``."""
    return bytearray(random.Random((seed << 16) | index).getrandbits(8 * PAGE_SIZE).to_bytes(PAGE_SIZE, "little"))


class NoisePages:
    """The procedural content source of every bulk noise subsegment of a pool."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.source = machine.physical.add_source(self)
        self._where: Dict[int, Tuple[PageContent, int]] = {}  # frame -> (its subsegment's pages, index)

    def register(self, address: int, pages: int, content: PageContent) -> None:
        """The ``pages`` pages mapped at ``address`` hold ``content(index)``."""
        for index in range(pages):
            physical = self.machine.space.translate(address + index * PAGE_SIZE)
            assert physical is not None
            self._where[physical // PAGE_SIZE] = (content, index)

    def __call__(self, frame: int) -> bytes:
        content, index = self._where[frame]
        return content(index)


class BlockHeaders:
    """Pool headers at given offsets of a subsegment: (offset, units, tag index) sorted."""

    def __init__(self, headers: PoolHeaders, pool_type: int, seed: int, zeroed: int,
                 blocks: Sequence[Tuple[int, int, int]]) -> None:
        self._headers = headers
        self._pool_type = pool_type
        self._seed = seed
        self._zeroed = zeroed  # bytes at the subsegment's start the heap's own header takes
        self._blocks = list(blocks)
        self._offsets = [offset for offset, _units, _tag in self._blocks]

    def __call__(self, index: int) -> bytes:
        page = random_page(self._seed, index)
        start, end = index * PAGE_SIZE, (index + 1) * PAGE_SIZE
        if start < self._zeroed:
            page[: self._zeroed - start] = bytes(min(self._zeroed - start, PAGE_SIZE))
        size = self._headers.size
        for position in range(bisect.bisect_left(self._offsets, start), bisect.bisect_left(self._offsets, end)):
            offset, units, tag = self._blocks[position]
            page[offset - start : offset - start + size] = self._headers.pack(units, NOISE_TAGS[tag], self._pool_type)
        return bytes(page)


def noise_blocks(offsets: List[int], units: int, tags: Sequence[int]) -> List[Tuple[int, int, int]]:
    """(offset, units, tag index) of blocks of one size at ``offsets``."""
    return [(offset, units, tag) for offset, tag in zip(offsets, tags)]
