"""The classic pool itself: the pool descriptors, the pool's globals, and what a free does.

:class:`ClassicPool` answers the allocator's questions (``pool.PoolAllocator``) for builds up to
17763: it carves blocks from ``pages.PoolPages``, frees them to a processor's lookaside list
(``lookaside.py``), its descriptor's pending list or, by a deferred free, ``ListHeads``; the
package's docstring gives the sources.
"""

import random
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ...memory.machine import Machine
from ...memory.physical import PAGE_SIZE
from ..big_pool import BigPageTable
from ..pool import (FREED, NOISE_PLAN_SEED, POOL_IN_USE_BIT, POOL_TYPE_FREE, FreedHow, PoolAllocator, PoolBlock,
                    PoolHeaders, PoolKind)
from .lookaside import LOOKASIDE_DEPTH, POOL_SMALL_LISTS, PROCESSORS, Processors
from .pages import PAGED_POOL_INDEX, PageEntry, PoolPages, push

EXP_MAXIMUM_POOL_FREES_PENDING = 32  # WRK pool.c
EX_DELAY_POOL_FREES = 0x200  # WRK base/ntos/inc/pool.h (the bit's value on later builds is not checkable here)


@dataclass(eq=False)
class _Descriptor:
    address: int
    pool_type: int
    pool_index: int
    pending: List[PageEntry] = field(default_factory=list)  # oldest first; the head is the last
    list_heads: Dict[int, List[PageEntry]] = field(default_factory=dict)  # units -> head first
    allocations: int = 0
    frees: int = 0


class ClassicPool(PoolAllocator):
    """Pool pages, descriptors and per-processor lookaside lists of one classic-pool kernel."""

    name = "classic"

    def __init__(self, machine: Machine, kernel_base: int, rng: random.Random) -> None:
        super().__init__(PoolHeaders(machine.layout))
        self.machine = machine
        self.layout = machine.layout
        self.kernel_base = kernel_base
        self._rng = rng
        self.unit = self.headers.unit
        self._entries: Dict[int, PageEntry] = {}  # block header -> entry
        nx_lists = self.layout.has_field("_KPRCB", "PPNxPagedLookasideList")
        self.pages = PoolPages(machine, self.headers, nx_lists)
        self._create_descriptors()
        self.processors = Processors(machine, self.unit, nx_lists)
        self._write_globals()
        self.big_pool = BigPageTable.install(machine, kernel_base)
        self._boot_noise()
        self._big_noise(machine, rng)

    # -- kernel structures ---------------------------------------------------------------

    def _symbol(self, name: str) -> Optional[int]:
        return self.kernel_base + self.layout.symbol(name) if self.layout.has_symbol(name) else None

    def _create_descriptors(self) -> None:
        size = self.layout.size_of("_POOL_DESCRIPTOR")
        nonpaged = self._symbol("NonPagedPoolDescriptor")
        if nonpaged is None:
            nonpaged = self.machine.allocate_system_pages(-(-size // PAGE_SIZE))
        # Paged descriptors, one more than there are paged pools (index 0: prototype pool),
        # allocated at boot; one block of system pages here (the forge has no big pool).
        paged = self.machine.allocate_system_pages(-(-2 * size // PAGE_SIZE))
        self.nonpaged_descriptor = _Descriptor(nonpaged, 0, 0)
        self.paged_descriptors = [_Descriptor(paged + index * size, 1, index) for index in range(2)]

    def _descriptor(self, kind: PoolKind) -> _Descriptor:
        return self.paged_descriptors[PAGED_POOL_INDEX] if kind is PoolKind.PAGED else self.nonpaged_descriptor

    def _write_globals(self) -> None:
        machine = self.machine
        pointer = self.layout.pointer_size
        values = {
            "KeNumberProcessors": PROCESSORS, "ExpNumberOfPagedPools": 1, "ExpNumberOfNonPagedPools": 1,
            "ExpPoolFlags": EX_DELAY_POOL_FREES,
        }
        for name, value in values.items():
            address = self._symbol(name)
            if address is not None:
                machine.space.write(address, value.to_bytes(4, "little"))
        pointers = {
            "PoolVector": [self.nonpaged_descriptor.address, self.paged_descriptors[0].address],
            "ExpNonPagedPoolDescriptor": [self.nonpaged_descriptor.address],
            "ExpPagedPoolDescriptor": [d.address for d in self.paged_descriptors],
            "KiProcessorBlock": self.processors.prcbs,
        }
        for name, targets in pointers.items():
            address = self._symbol(name)
            for index, target in enumerate(targets if address is not None else ()):
                machine.write_pointer(address + index * pointer, target)
        self.processors.write_blocks()

    def _boot_noise(self) -> None:
        """What boot leaves in each pool: blocks of every size up to 0x780 bytes, a third freed
        (to lookaside lists, the pending list and, once 32 are pending, ListHeads)."""
        plan = random.Random(NOISE_PLAN_SEED)
        for kind in (PoolKind.NONPAGED, PoolKind.PAGED):
            sizes = [plan.randrange(self.unit, 0x780, self.unit) for _ in range(240)]
            self._noise(self.machine, plan, self._rng, kind, sizes)

    # -- allocation ----------------------------------------------------------------------

    def _allocate_small(self, size: int, tag: bytes, kind: PoolKind, role: str) -> PoolBlock:
        entry = self.pages.carve(self.headers.units(size), tag, kind, role)
        assert entry.block is not None
        self._entries[entry.block.header] = entry
        self._descriptor(kind).allocations += 1
        return entry.block

    def _big_pages(self, kind: PoolKind, pages: int) -> int:
        return self.pages.take(kind, pages)

    def _release_big_pages(self, block: PoolBlock) -> None:
        self.pages.give_back(block.body, block.size)

    # -- free ----------------------------------------------------------------------------

    def _free_small(self, block: PoolBlock) -> str:
        entry = self._entries[block.header]
        units = entry.units
        pool_type = block.kind.header_pool_type & ~POOL_IN_USE_BIT  # MARK_POOL_HEADER_FREED
        self.machine.write_fields(block.header, "_POOL_HEADER", {"PoolType": pool_type})
        block.state = FREED
        descriptor = self._descriptor(block.kind)
        descriptor.frees += 1
        lookaside_allowed = not (block.kind is PoolKind.PAGED and descriptor.pool_index == 0)
        if units <= POOL_SMALL_LISTS and lookaside_allowed:
            processor = self._rng.randrange(PROCESSORS)  # the processor that happens to free it
            if self.processors.take(processor, entry, block.kind):
                block.how = FreedHow.LOOKASIDE
                return block.how
        # EX_DELAY_POOL_FREES is set: the block waits on the descriptor's pending list.
        if len(descriptor.pending) >= EXP_MAXIMUM_POOL_FREES_PENDING:
            self._deferred_free(descriptor)
        push(self.machine, descriptor.pending, entry)
        entry.state = "pending"
        block.how = FreedHow.PENDING
        return block.how

    def _deferred_free(self, descriptor: _Descriptor) -> None:
        """``ExDeferredFreePool``: every pending block, newest first, merged into ListHeads."""
        pending, descriptor.pending = descriptor.pending, []
        for entry in reversed(pending):
            assert entry.block is not None
            entry.block.how = FreedHow.LIST
            self._insert_free(descriptor, entry)

    def _insert_free(self, descriptor: _Descriptor, entry: PageEntry) -> None:
        page = self.pages.pages[entry.page]
        position = page.entries.index(entry)
        # Merge with the next block, then the previous one, when they are free on ListHeads.
        if position + 1 < len(page.entries) and page.entries[position + 1].state in ("list", "free_tail"):
            following = page.entries.pop(position + 1)
            self._unlist(descriptor, following)
            entry.units += following.units
        if position > 0 and page.entries[position - 1].state in ("list", "free_tail"):
            previous = page.entries[position - 1]
            self._unlist(descriptor, previous)
            previous.units += entry.units
            page.entries.pop(position)
            entry = previous
            position -= 1
        if entry.offset == 0 and entry.units == PAGE_SIZE // self.unit:
            self.pages.release(page)
            return
        entry.state = "list"
        header = page.address + entry.offset * self.unit
        self.machine.write_fields(header, "_POOL_HEADER", {"BlockSize": entry.units, "PoolType": POOL_TYPE_FREE})
        if position + 1 < len(page.entries):
            following_header = page.address + page.entries[position + 1].offset * self.unit
            self.machine.write_fields(following_header, "_POOL_HEADER", {"PreviousSize": entry.units})
        descriptor.list_heads.setdefault(entry.units, []).insert(0, entry)

    def _unlist(self, descriptor: _Descriptor, entry: PageEntry) -> None:
        if entry.state == "list":
            descriptor.list_heads[entry.units].remove(entry)

    # -- metadata ------------------------------------------------------------------------

    def finish(self) -> None:
        """Link the pages' free tails and every freed block into the lists that hold them."""
        for page in self.pages.pages.values():
            tail = page.entries[-1] if page.entries else None
            if tail is not None and tail.state == "free_tail" and tail.units > 1:
                # A header-only fragment (one unit) cannot hold a LIST_ENTRY: on no list.
                tail.state = "list"
                self._descriptor(page.kind).list_heads.setdefault(tail.units, []).append(tail)
        for descriptor in [self.nonpaged_descriptor] + self.paged_descriptors:
            self._write_descriptor(descriptor)
        self.processors.write_lists()

    def _entry_body(self, entry: PageEntry) -> int:
        return entry.page + entry.offset * self.unit + self.headers.size

    def _write_descriptor(self, descriptor: _Descriptor) -> None:
        machine = self.machine
        layout = self.layout
        values = {"PoolType": descriptor.pool_type, "PoolIndex": descriptor.pool_index,
                  "PendingFreeDepth": len(descriptor.pending)}
        for name, value in (("RunningAllocs", descriptor.allocations), ("RunningDeAllocs", descriptor.frees),
                            ("RunningDeallocs", descriptor.frees)):
            if layout.has_field("_POOL_DESCRIPTOR", name):
                values[name] = value
        machine.write_fields(descriptor.address, "_POOL_DESCRIPTOR", values)
        pending_head = descriptor.pending[-1].block.body if descriptor.pending and descriptor.pending[-1].block else 0
        machine.write_pointer(descriptor.address + layout.offset_of("_POOL_DESCRIPTOR", "PendingFrees"), pending_head)
        heads = descriptor.address + layout.offset_of("_POOL_DESCRIPTOR", "ListHeads")
        entry_size = layout.size_of("_LIST_ENTRY")
        count = PAGE_SIZE // self.unit
        for units in range(1, count + 1):
            head = heads + (units - 1) * entry_size
            members = [(self._entry_body(entry), True) for entry in descriptor.list_heads.get(units, [])]
            machine.write_list(head, members)

    def describe(self) -> Dict[str, object]:
        mask = (1 << 48) - 1
        return {
            "allocator": self.name,
            "processors": self.processors.describe_blocks(),
            "lookaside_depth": LOOKASIDE_DEPTH,
            "nonpaged_descriptor": self.nonpaged_descriptor.address & mask,
            "paged_descriptors": [d.address & mask for d in self.paged_descriptors],
            "lookaside_lists": self.processors.describe_lists(),
        }
