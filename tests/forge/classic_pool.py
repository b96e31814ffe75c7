"""The classic kernel pool (Windows 7 to 10 1809, builds up to 17763) as the kernel runs it.

Sources: the WRK's ``base/ntos/ex/pool.c`` (Microsoft's Windows Server 2003 SP1 kernel source:
``ExAllocatePoolWithTag``, ``ExFreePoolWithTag``, ``ExDeferredFreePool``), checked against the
layouts of the real ISFs of 7601, 9600, 14393 and 17763 (every offset and size below comes from
the ISF of the build). ReactOS's ``expool.c`` reimplements this differently (it keeps
``PoolType`` on lookaside frees and has ``.P``/``.L`` lookaside pairs), so it is not followed.

Allocation: pool pages are carved front to back; every block starts with a ``_POOL_HEADER``
(``PreviousSize``, ``PoolIndex``, ``BlockSize`` in header-sized units, ``PoolType``, tag) and
the rest of a page is one free block, so the chain of headers walks the whole page.

Free (``ExFreePoolWithTag``):
1. the header's in-use bit is cleared (``MARK_POOL_HEADER_FREED``): non-paged blocks then read
   ``PoolType`` 0, paged ones 1 (see ``pool.POOL_IN_USE_BIT``); the tag stays;
2. a block of at most 32 units (``POOL_SMALL_LISTS``: 0x200 bytes on x64, 0x100 on x86) goes
   to the freeing processor's lookaside list of its size if that list holds fewer than its
   ``Depth``: ``_KPRCB.PPNPagedLookasideList[BlockSize-1]`` (``PPNxPagedLookasideList`` for
   no-execute pool from Windows 8, ``PPPagedLookasideList`` for paged pool, never for paged
   blocks of pool index 0), a ``_GENERAL_LOOKASIDE_POOL`` inside the KPRCB; the push writes the
   next entry's address (or 0) over the first pointer of the body;
3. otherwise, with ``EX_DELAY_POOL_FREES`` set (the kernel sets it on machines of 127 * 1024
   pages and more), it is pushed on the descriptor's ``PendingFrees`` (next link at body+0);
   when 32 are pending (``EXP_MAXIMUM_POOL_FREES_PENDING``), ``ExDeferredFreePool`` first moves
   them all to ``ListHeads``: each is merged with a free neighbour, gets ``PoolType`` 0 and a
   ``LIST_ENTRY`` at its body, inserted at the head of ``ListHeads[BlockSize-1]``; a block
   merged into a whole page goes back to memory management (the forge unmaps the page).

Big-pool allocations (more than ``POOL_BUDDY_MAX`` bytes, ``big_pool.py``) get whole pages of the
pool's virtual range from ``MiAllocatePoolPages``, no pool header, an entry in
``nt!PoolBigPageTable``; freed, their pages go back to memory management (unmapped).

Not modelled (written down as the issue asks): allocations never reuse freed blocks (the
forge frees after it has allocated); lookaside ``Depth`` tuning (every list has depth 4, the
value the forge chooses); session pool; the lookaside lists' links into the kernel's lists of
lookasides; ``PoolTrackTable``; the descriptors' page counters of big allocations; one
non-paged descriptor serves both executable and no-execute pool.
"""

import random
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from .big_pool import BigPageTable
from .machine import Machine
from .memory import PAGE_SIZE
from .pool import (FREED, NOISE_PLAN_SEED, POOL_IN_USE_BIT, POOL_TYPE_FREE, FreedHow, PoolAllocator, PoolBlock,
                   PoolHeaders, PoolKind, write_slist_header)


POOL_SMALL_LISTS = 32  # WRK base/ntos/inc/ntosdef.h
EXP_MAXIMUM_POOL_FREES_PENDING = 32  # WRK pool.c
EX_DELAY_POOL_FREES = 0x200  # WRK base/ntos/inc/pool.h (the bit's value on later builds is not checkable here)
PROCESSORS = 2
LOOKASIDE_DEPTH = 4
PAGED_POOL_INDEX = 1  # paged pool descriptor 0 holds prototype pool, which lookasides never take
# _POOL_TYPE of each lookaside array's lists: NonPagedPool, PagedPool, NonPagedPoolNx
LOOKASIDE_TYPES = {"PPNPagedLookasideList": 0, "PPPagedLookasideList": 1, "PPNxPagedLookasideList": 0x200}


@dataclass(eq=False)
class _Entry:
    """One block of a pool page, as the page's header chain has it."""

    page: int  # address of its page
    offset: int  # in units from the page start
    units: int
    block: Optional[PoolBlock]  # None: the page's free tail
    state: str = "allocated"  # allocated, lookaside, pending, list (on ListHeads), free_tail


@dataclass(eq=False)
class _Page:
    address: int
    kind: PoolKind
    entries: List[_Entry] = field(default_factory=list)
    blocks: List[PoolBlock] = field(default_factory=list)  # every block ever carved from it


@dataclass(eq=False)
class _Descriptor:
    address: int
    pool_type: int
    pool_index: int
    pending: List[_Entry] = field(default_factory=list)  # oldest first; the head is the last
    list_heads: Dict[int, List[_Entry]] = field(default_factory=dict)  # units -> head first
    allocations: int = 0
    frees: int = 0


@dataclass(eq=False)
class _Lookaside:
    address: int
    member: str  # the _KPRCB array it belongs to
    units: int
    entries: List[_Entry] = field(default_factory=list)  # oldest first; the head is the last
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
        self._pages: Dict[int, _Page] = {}
        self._current: Dict[PoolKind, Optional[_Page]] = {kind: None for kind in PoolKind}
        self._next_page = {"nonpaged": machine.plan.nonpaged_pool, "paged": machine.plan.paged_pool}
        self._entries: Dict[int, _Entry] = {}  # block header -> entry
        self._nx_lists = self.layout.has_field("_KPRCB", "PPNxPagedLookasideList")
        self._create_descriptors()
        self._create_processors()
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

    def _create_processors(self) -> None:
        layout = self.layout
        pcr_size = layout.size_of("_KPCR")
        embedded = layout.has_field("_KPCR", "PrcbData")  # x86: PrcbData; x64: Prcb is embedded
        prcb_offset = layout.offset_of("_KPCR", "PrcbData" if embedded else "Prcb")
        self.processors: List[Tuple[int, int]] = []  # (KPCR, KPRCB)
        self.lookasides: Dict[Tuple[int, str, int], _Lookaside] = {}
        lookaside_size = layout.size_of("_GENERAL_LOOKASIDE_POOL")
        members = sorted({self._lookaside_member(kind) for kind in PoolKind})
        for number in range(PROCESSORS):
            pcr = self.machine.allocate_system_pages(-(-pcr_size // PAGE_SIZE))
            prcb = pcr + prcb_offset
            self.processors.append((pcr, prcb))
            for member in members:
                base = prcb + layout.offset_of("_KPRCB", member)
                for units in range(1, POOL_SMALL_LISTS + 1):
                    self.lookasides[(number, member, units)] = _Lookaside(base + (units - 1) * lookaside_size, member, units)

    def _lookaside_member(self, kind: PoolKind) -> str:
        if kind is PoolKind.PAGED:
            return "PPPagedLookasideList"
        if kind is PoolKind.NONPAGED and self._nx_lists:
            return "PPNxPagedLookasideList"
        return "PPNPagedLookasideList"

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
            "KiProcessorBlock": [prcb for _, prcb in self.processors],
        }
        for name, targets in pointers.items():
            address = self._symbol(name)
            for index, target in enumerate(targets if address is not None else ()):
                machine.write_pointer(address + index * pointer, target)
        embedded = self.layout.has_field("_KPCR", "PrcbData")
        for number, (pcr, prcb) in enumerate(self.processors):
            if embedded:
                machine.write_fields(pcr, "_KPCR", {"SelfPcr": pcr, "Prcb": prcb})
            else:
                machine.write_fields(pcr, "_KPCR", {"Self": pcr, "CurrentPrcb": prcb})
            machine.write_fields(prcb, "_KPRCB", {"Number": number})

    def _boot_noise(self) -> None:
        """What boot leaves in each pool: blocks of every size up to 0x780 bytes, a third freed
        (to lookaside lists, the pending list and, once 32 are pending, ListHeads)."""
        plan = random.Random(NOISE_PLAN_SEED)
        for kind in (PoolKind.NONPAGED, PoolKind.PAGED):
            sizes = [plan.randrange(self.unit, 0x780, self.unit) for _ in range(240)]
            self._noise(self.machine, plan, self._rng, kind, sizes)

    # -- allocation ----------------------------------------------------------------------

    def _allocate_small(self, size: int, tag: bytes, kind: PoolKind, role: str) -> PoolBlock:
        units = self.headers.units(size)
        page = self._current[kind]
        tail = page.entries[-1] if page is not None and page.entries else None
        if page is None or tail is None or tail.state != "free_tail" or tail.units < units:
            page = self._new_page(kind)
            tail = page.entries[-1]
        entry = _Entry(page.address, tail.offset, units, None)
        previous = page.entries[-2].units if len(page.entries) > 1 else 0
        header = page.address + entry.offset * self.unit
        block = PoolBlock(header, header + self.headers.size, units * self.unit, tag, kind, "page", role=role)
        entry.block = block
        page.blocks.append(block)
        page.entries.insert(len(page.entries) - 1, entry)
        tail.offset += units
        tail.units -= units
        self._entries[header] = entry
        self.machine.space.write(header, self.headers.pack(units, tag, kind.header_pool_type, previous, self._pool_index(kind))
                                 + bytes(units * self.unit - self.headers.size))
        if tail.units:
            self._write_tail_header(page, tail, units)
        else:
            page.entries.pop()
        self._descriptor(kind).allocations += 1
        return block

    def _pool_index(self, kind: PoolKind) -> int:
        return PAGED_POOL_INDEX if kind is PoolKind.PAGED else 0

    def _pool_pages(self, kind: PoolKind, count: int) -> int:
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
        executable = kind is not PoolKind.PAGED and (kind.executable or not self._nx_lists)
        self.machine.space.map_range(address, count * PAGE_SIZE, executable=executable)
        return address

    def _big_pages(self, kind: PoolKind, pages: int) -> int:
        return self._pool_pages(kind, pages)

    def _release_big_pages(self, block: PoolBlock) -> None:
        for offset in range(0, block.size, PAGE_SIZE):
            self.machine.space.unmap_page(block.body + offset)

    def _new_page(self, kind: PoolKind) -> _Page:
        address = self._pool_pages(kind, 1)
        page = _Page(address, kind, [_Entry(address, 0, PAGE_SIZE // self.unit, None, state="free_tail")])
        self._pages[address] = page
        self._current[kind] = page
        self._write_tail_header(page, page.entries[0], 0)
        return page

    def _write_tail_header(self, page: _Page, tail: _Entry, previous_units: int) -> None:
        """The free rest of a page: the kernel writes its size fields, not its tag, which reads
        0 there (the rest of a page was never handed out, so it is still zeroed)."""
        header = page.address + tail.offset * self.unit
        self.machine.space.write(header, self.headers.pack(tail.units, bytes(4), POOL_TYPE_FREE, previous_units,
                                                           self._pool_index(page.kind)))

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
            lookaside = self.lookasides[(processor, self._lookaside_member(block.kind), units)]
            lookaside.frees += 1
            if len(lookaside.entries) < LOOKASIDE_DEPTH:
                self._push(lookaside.entries, entry)
                entry.state = "lookaside"
                block.how = FreedHow.LOOKASIDE
                return block.how
        # EX_DELAY_POOL_FREES is set: the block waits on the descriptor's pending list.
        if len(descriptor.pending) >= EXP_MAXIMUM_POOL_FREES_PENDING:
            self._deferred_free(descriptor)
        self._push(descriptor.pending, entry)
        entry.state = "pending"
        block.how = FreedHow.PENDING
        return block.how

    def _push(self, stack: List[_Entry], entry: _Entry) -> None:
        """An interlocked push: the new entry's first pointer names the previous head."""
        assert entry.block is not None
        previous = stack[-1].block.body if stack and stack[-1].block is not None else 0
        self.machine.write_pointer(entry.block.body, previous)
        stack.append(entry)

    def _deferred_free(self, descriptor: _Descriptor) -> None:
        """``ExDeferredFreePool``: every pending block, newest first, merged into ListHeads."""
        pending, descriptor.pending = descriptor.pending, []
        for entry in reversed(pending):
            assert entry.block is not None
            entry.block.how = FreedHow.LIST
            self._insert_free(descriptor, entry)

    def _insert_free(self, descriptor: _Descriptor, entry: _Entry) -> None:
        page = self._pages[entry.page]
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
            self._release_page(page)
            return
        entry.state = "list"
        header = page.address + entry.offset * self.unit
        self.machine.write_fields(header, "_POOL_HEADER", {"BlockSize": entry.units, "PoolType": POOL_TYPE_FREE})
        if position + 1 < len(page.entries):
            following_header = page.address + page.entries[position + 1].offset * self.unit
            self.machine.write_fields(following_header, "_POOL_HEADER", {"PreviousSize": entry.units})
        descriptor.list_heads.setdefault(entry.units, []).insert(0, entry)

    def _unlist(self, descriptor: _Descriptor, entry: _Entry) -> None:
        if entry.state == "list":
            descriptor.list_heads[entry.units].remove(entry)

    def _release_page(self, page: _Page) -> None:
        """A page whose blocks are all free goes back to memory management: no longer mapped."""
        for block in page.blocks:
            block.header_intact = False
        page.entries = []
        del self._pages[page.address]
        if self._current[page.kind] is page:
            self._current[page.kind] = None
        self.machine.space.unmap_page(page.address)

    # -- metadata ------------------------------------------------------------------------

    def finish(self) -> None:
        """Link the pages' free tails and every freed block into the lists that hold them."""
        for page in self._pages.values():
            tail = page.entries[-1] if page.entries else None
            if tail is not None and tail.state == "free_tail" and tail.units > 1:
                # A header-only fragment (one unit) cannot hold a LIST_ENTRY: on no list.
                tail.state = "list"
                self._descriptor(page.kind).list_heads.setdefault(tail.units, []).append(tail)
        for descriptor in [self.nonpaged_descriptor] + self.paged_descriptors:
            self._write_descriptor(descriptor)
        for lookaside in self.lookasides.values():
            self._write_lookaside(lookaside)

    def _entry_body(self, entry: _Entry) -> int:
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

    def _write_lookaside(self, lookaside: _Lookaside) -> None:
        machine = self.machine
        head = lookaside.entries[-1].block.body if lookaside.entries and lookaside.entries[-1].block else 0
        depth = len(lookaside.entries)
        values = {
            "Depth": LOOKASIDE_DEPTH, "MaximumDepth": 256, "Size": lookaside.units * self.unit,
            "Type": LOOKASIDE_TYPES[lookaside.member], "TotalFrees": lookaside.frees, "FreeHits": depth,
        }
        machine.write_fields(lookaside.address, "_GENERAL_LOOKASIDE_POOL", values)
        list_entry = lookaside.address + self.layout.offset_of("_GENERAL_LOOKASIDE_POOL", "ListEntry")
        machine.write_list_entry(list_entry, list_entry, list_entry)
        write_slist_header(machine, lookaside.address + self.layout.offset_of("_GENERAL_LOOKASIDE_POOL", "ListHead"), head, depth)

    def describe(self) -> Dict[str, object]:
        mask = (1 << 48) - 1
        lists = []
        for (number, member, units), lookaside in sorted(self.lookasides.items()):
            if lookaside.entries:
                lists.append({"processor": number, "list": member, "units": units, "address": lookaside.address & mask,
                              "blocks": [e.block.body & mask for e in reversed(lookaside.entries) if e.block]})
        return {
            "allocator": self.name,
            "processors": [{"kpcr": pcr & mask, "kprcb": prcb & mask} for pcr, prcb in self.processors],
            "lookaside_depth": LOOKASIDE_DEPTH,
            "nonpaged_descriptor": self.nonpaged_descriptor.address & mask,
            "paged_descriptors": [d.address & mask for d in self.paged_descriptors],
            "lookaside_lists": lists,
        }
