"""Big pool: allocations too large for a pool page, and ``nt!PoolBigPageTable``, which tracks them.

Sources: the WRK's ``base/ntos/ex/pool.c`` (Microsoft's Windows Server 2003 SP1 kernel source):
``ExAllocatePoolWithTag`` hands a request of more than ``POOL_BUDDY_MAX`` bytes (a page less a
pool header and the smallest block: 0xFE0 on x64, 0xFF0 on x86) whole pages, with no pool
header, and records them with ``ExpAddTagForBigPages``; ``ExFreePoolWithTag`` takes the record
back with ``ExpFindAndRemoveTagBigPages``. MemProcFS (``vmm/vmmwinpool.c``,
``VmmWinPool_Initialize_BigPool_DoWork``) uses the same threshold on the segment heap of 18362
and later, where big allocations keep this table. Every layout (``_POOL_TRACKER_BIG_PAGES``: 0x18
bytes, 0x20 from 20348 with ``ProcessBilled``; ``PoolType`` a bit field from Windows 10) comes from
the ISF of the build.

The table as the WRK keeps it:
- ``nt!PoolBigPageTable`` points at ``nt!PoolBigPageTableSize`` entries, a power of two (4096,
  ``DEFAULT_BIGPAGE_TABLE``, unless the machine is large); every unused entry's ``Va`` is
  ``POOL_BIG_TABLE_ENTRY_FREE`` (1);
- an allocation is entered at ``(Va >> PAGE_SHIFT) & (PoolBigPageTableSize - 1)``, or the next
  unused entry after it (linear probing): ``Va``, ``Key`` (the tag), ``PoolType`` and
  ``NumberOfBytes``;
- a free sets bit 0 of the entry's ``Va`` and leaves the rest (tag, size) as it was; the pages go
  back to memory management (the forge unmaps them).

Where the pages come from is the allocator's business (``classic_pool``: pages of the pool's
virtual range; ``segment_heap``: a range of a page segment). Not modelled: the table's growth
(``ExpExpandBigPageTable``), its placement in non-paged pool (the forge puts it in system pages),
the session pool's own table and the tracker table of tags (``PoolTrackTable``);
``NumberOfBytes`` holds the whole pages of the allocation.
"""

from typing import Dict, List, Optional

from ..memory.machine import Machine
from ..memory.physical import PAGE_SIZE, canonical
from .pool import FREED, FreedHow, PoolBlock, PoolKind, tag_value


DEFAULT_BIG_PAGE_TABLE = 4096  # entries (WRK pool.c DEFAULT_BIGPAGE_TABLE)
ENTRY_FREE = 0x1  # WRK pool.c POOL_BIG_TABLE_ENTRY_FREE
TABLE_SYMBOLS = ("PoolBigPageTable", "PoolBigPageTableSize")
ENTRY_TYPE = "_POOL_TRACKER_BIG_PAGES"
# The _POOL_TYPE a caller passes for each kind of pool (wdm.h; NonPagedPoolNx from Windows 8).
POOL_TYPE_NAMES = {PoolKind.NONPAGED: ("NonPagedPoolNx", "NonPagedPool"),
                   PoolKind.NONPAGED_EXECUTE: ("NonPagedPool",), PoolKind.PAGED: ("PagedPool",)}


class BigPageTable:
    """``nt!PoolBigPageTable`` of one kernel, and the big allocations entered in it."""

    def __init__(self, machine: Machine, kernel_base: int, entries: int = DEFAULT_BIG_PAGE_TABLE) -> None:
        if entries & (entries - 1):
            raise ValueError(f"PoolBigPageTableSize must be a power of two, not {entries}")
        self.machine = machine
        self.layout = layout = machine.layout
        self.entries = entries
        self.entry_size = layout.size_of(ENTRY_TYPE)
        pages = -(-entries * self.entry_size // PAGE_SIZE)
        self.address = machine.allocate_system_pages(pages)
        self.allocations: List[PoolBlock] = []
        self._slots: Dict[int, int] = {}  # table index -> Va of the allocation (free bit clear)
        self._index_of: Dict[int, int] = {}  # block header -> table index
        self._requested: Dict[int, int] = {}  # block header -> bytes the caller asked for
        unused = layout.pack(ENTRY_TYPE, {"Va": ENTRY_FREE})
        machine.space.write(self.address, unused * entries)
        machine.write_pointer(kernel_base + layout.symbol("PoolBigPageTable"), self.address)
        machine.space.write(kernel_base + layout.symbol("PoolBigPageTableSize"),
                            entries.to_bytes(layout.pointer_size, "little"))

    @classmethod
    def install(cls, machine: Machine, kernel_base: int) -> Optional["BigPageTable"]:
        """The build's table, or None where its symbol table has none (the 32-bit built-in
        profiles, whose invented symbols do not include it)."""
        layout = machine.layout
        if not layout.has_type(ENTRY_TYPE) or not all(layout.has_symbol(name) for name in TABLE_SYMBOLS):
            return None
        return cls(machine, kernel_base)

    def pool_type(self, kind: PoolKind) -> int:
        """The ``_POOL_TYPE`` value of ``kind`` in the build's enumeration."""
        for name in POOL_TYPE_NAMES[kind]:
            value = self.layout.enum_value("_POOL_TYPE", name)
            if value is not None:
                return value
        raise ValueError(f"{self.layout.name}: _POOL_TYPE has none of {POOL_TYPE_NAMES[kind]}")

    def _entry(self, index: int) -> int:
        return self.address + index * self.entry_size

    def track(self, block: PoolBlock, requested: int) -> int:
        """``ExpAddTagForBigPages``: enter ``block`` in the table; returns its index."""
        mask = self.entries - 1
        index = (canonical(block.body) >> 12) & mask
        for _ in range(self.entries):
            if index not in self._slots:
                break
            index = (index + 1) & mask
        else:
            raise ValueError("the big page table is full (the forge does not grow it)")
        self._slots[index] = block.body
        self._index_of[block.header] = index
        self._requested[block.header] = requested
        self.machine.write_struct(self._entry(index), ENTRY_TYPE, {
            "Va": canonical(block.body), "Key": tag_value(block.tag), "PoolType": self.pool_type(block.kind),
            "NumberOfBytes": block.size,
        })
        self.allocations.append(block)
        return index

    def untrack(self, block: PoolBlock) -> None:
        """``ExpFindAndRemoveTagBigPages``: the free bit in the entry's ``Va``, nothing else."""
        index = self._index_of[block.header]
        del self._slots[index]
        self.machine.write_fields(self._entry(index), ENTRY_TYPE, {"Va": canonical(block.body) | ENTRY_FREE})
        block.state = FREED
        block.how = FreedHow.BIG
        block.header_intact = False  # a big allocation has no pool header; its pages are gone

    def describe(self) -> Dict[str, object]:
        """The table and every allocation it recorded, for the ground truth (``big_pool``)."""
        mask = (1 << 48) - 1
        return {
            "table": self.address & mask,
            "entries": self.entries,
            "entry_size": self.entry_size,
            "allocations": [{
                "va": block.body & mask, "size": block.size, "requested": self._requested[block.header],
                "tag": block.tag.decode("latin-1"), "pool": block.kind.value, "pool_type": self.pool_type(block.kind),
                "role": block.role, "state": block.state, "index": self._index_of[block.header],
            } for block in self.allocations],
        }
