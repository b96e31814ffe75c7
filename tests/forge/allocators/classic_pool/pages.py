"""The classic pool's pages: taken from the pool's virtual range, carved into blocks front to back.

Each block of a page is a :class:`PageEntry` of the page's header chain; a block freed to a
lookaside list, the pending list or ``ListHeads`` keeps its entry, with the state that says
which list holds it; the page's free rest is one entry too (``free_tail``).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ...memory.machine import Machine
from ...memory.physical import PAGE_SIZE
from ..pool import POOL_TYPE_FREE, PoolBlock, PoolHeaders, PoolKind

PAGED_POOL_INDEX = 1  # paged pool descriptor 0 holds prototype pool, which lookasides never take


@dataclass(eq=False)
class PageEntry:
    """One block of a pool page, as the page's header chain has it."""

    page: int  # address of its page
    offset: int  # in units from the page start
    units: int
    block: Optional[PoolBlock]  # None: the page's free tail
    state: str = "allocated"  # allocated, lookaside, pending, list (on ListHeads), free_tail


@dataclass(eq=False)
class PoolPage:
    address: int
    kind: PoolKind
    entries: List[PageEntry] = field(default_factory=list)
    blocks: List[PoolBlock] = field(default_factory=list)  # every block ever carved from it


def push(machine: Machine, stack: List[PageEntry], entry: PageEntry) -> None:
    """An interlocked push (a lookaside list, the pending list): the new entry's first pointer
    names the previous head."""
    assert entry.block is not None
    previous = stack[-1].block.body if stack and stack[-1].block is not None else 0
    machine.write_pointer(entry.block.body, previous)
    stack.append(entry)


def pool_index(kind: PoolKind) -> int:
    """The ``PoolIndex`` of ``kind``'s blocks: the descriptor that owns them."""
    return PAGED_POOL_INDEX if kind is PoolKind.PAGED else 0


class PoolPages:
    """The pool's pages: each pool's virtual range handed out as ``MiAllocatePoolPages`` does, the
    pages carved into blocks, the page each pool carves from; ``nx_lists``: the build has
    no-execute non-paged pool (Windows 8 and later)."""

    def __init__(self, machine: Machine, headers: PoolHeaders, nx_lists: bool) -> None:
        self.machine = machine
        self.headers = headers
        self.unit = headers.unit
        self.nx_lists = nx_lists
        self.pages: Dict[int, PoolPage] = {}
        self.current: Dict[PoolKind, Optional[PoolPage]] = {kind: None for kind in PoolKind}
        self._next_page = {"nonpaged": machine.plan.nonpaged_pool, "paged": machine.plan.paged_pool}

    def take(self, kind: PoolKind, count: int) -> int:
        """``count`` consecutive pages of the pool's virtual range, mapped (MiAllocatePoolPages)."""
        region = "paged" if kind is PoolKind.PAGED else "nonpaged"
        address = self._next_page[region]
        # Pages follow one another while nothing has been given back: MiAllocatePoolPages (the
        # WRK's mm/allocpag.c) takes paged pool first fit from PagedPoolAllocationMap at
        # PagedPoolHint, and non-paged pool from the free runs of MmNonPagedPoolFreeListHead, one
        # run at boot. Gaps come only from pages given back (freed big allocations, wholly free
        # pages). Readers rely on it: MemProcFS reads 0x70 bytes before every object it walks.
        self._next_page[region] = address + PAGE_SIZE * count
        # Before Windows 8 all non-paged pool is executable; from 8 on only NonPagedPool (not Nx).
        executable = kind is not PoolKind.PAGED and (kind.executable or not self.nx_lists)
        self.machine.space.map_range(address, count * PAGE_SIZE, executable=executable)
        return address

    def give_back(self, address: int, size: int) -> None:
        """Pages that go back to memory management: no longer mapped."""
        for offset in range(0, size, PAGE_SIZE):
            self.machine.space.unmap_page(address + offset)

    def carve(self, units: int, tag: bytes, kind: PoolKind, role: str) -> PageEntry:
        """A block of ``units`` at the front of the current page's free tail (a fresh page when
        it is too small), its header written and its body zeroed."""
        page = self.current[kind]
        tail = page.entries[-1] if page is not None and page.entries else None
        if page is None or tail is None or tail.state != "free_tail" or tail.units < units:
            page = self._new_page(kind)
            tail = page.entries[-1]
        entry = PageEntry(page.address, tail.offset, units, None)
        previous = page.entries[-2].units if len(page.entries) > 1 else 0
        header = page.address + entry.offset * self.unit
        block = PoolBlock(header, header + self.headers.size, units * self.unit, tag, kind, "page", role=role)
        entry.block = block
        page.blocks.append(block)
        page.entries.insert(len(page.entries) - 1, entry)
        tail.offset += units
        tail.units -= units
        self.machine.space.write(header, self.headers.pack(units, tag, kind.header_pool_type, previous, pool_index(kind))
                                 + bytes(units * self.unit - self.headers.size))
        if tail.units:
            self._write_tail_header(page, tail, units)
        else:
            page.entries.pop()
        return entry

    def _new_page(self, kind: PoolKind) -> PoolPage:
        address = self.take(kind, 1)
        page = PoolPage(address, kind, [PageEntry(address, 0, PAGE_SIZE // self.unit, None, state="free_tail")])
        self.pages[address] = page
        self.current[kind] = page
        self._write_tail_header(page, page.entries[0], 0)
        return page

    def _write_tail_header(self, page: PoolPage, tail: PageEntry, previous_units: int) -> None:
        """The free rest of a page: the kernel writes its size fields, not its tag, which reads
        0 there (the rest of a page was never handed out, so it is still zeroed)."""
        header = page.address + tail.offset * self.unit
        self.machine.space.write(header, self.headers.pack(tail.units, bytes(4), POOL_TYPE_FREE, previous_units,
                                                           pool_index(page.kind)))

    def release(self, page: PoolPage) -> None:
        """A page whose blocks are all free goes back to memory management: no longer mapped."""
        for block in page.blocks:
            block.header_intact = False
        page.entries = []
        del self.pages[page.address]
        if self.current[page.kind] is page:
            self.current[page.kind] = None
        self.machine.space.unmap_page(page.address)
