"""``nt!PoolBigPageTable``: the kernel's record of its big allocations, on every build.

Sources: the WRK's ``base/ntos/ex/pool.c`` (``ExpAddTagForBigPages``,
``ExpFindAndRemoveTagBigPages``), MemProcFS ``vmm/vmmwinpool.c``
(``VmmWinPool_Initialize_BigPool_DoWork``) and Volatility's ``windows.bigpools``. A request of
more than a page less two pool headers gets whole pages and no pool header; the table,
``nt!PoolBigPageTableSize`` entries of ``_POOL_TRACKER_BIG_PAGES`` (its layout from the kernel's
symbol table), records each: ``Va``, the tag in ``Key``, ``PoolType`` and ``NumberOfBytes``. A
free sets bit 0 of ``Va`` and leaves the rest, so a freed entry still names its pages and tag
(those pages went back to memory management: usually unmapped, or reused by then). Entries
whose ``Va`` is not a kernel address are unused.
"""

import dataclasses
from typing import TYPE_CHECKING, List, Optional, Tuple

from volatility3.framework import exceptions

from ..kernelread.addresses import kernel_half_start
from .state import (BIG_PAGE, NONPAGED, NONPAGED_NX, NONPAGED_SESSION, PAGED, PAGED_SESSION, BlockBatch, BlockState,
                    MetadataPoolMap)

if TYPE_CHECKING:
    from ..kernelread.context import KernelContext

#: The table grows by powers of two; Volatility and MemProcFS refuse more than this.
MAX_ENTRIES = 0x0100_0000
ENTRY_FREE = 0x1
#: _POOL_TYPE bits (wdm.h): paged, session, no-execute.
PAGED_BIT = 0x1
SESSION_BIT = 0x20
NX_BIT = 0x200


@dataclasses.dataclass(frozen=True)
class BigPage:
    """One entry of the table that names an allocation."""

    address: int
    size: int
    tag: bytes
    pool: str
    freed: bool


def pool_of(pool_type: int) -> str:
    """The pool a ``_POOL_TYPE`` value names."""
    if pool_type & SESSION_BIT:
        return PAGED_SESSION if pool_type & PAGED_BIT else NONPAGED_SESSION
    if pool_type & PAGED_BIT:
        return PAGED
    return NONPAGED_NX if pool_type & NX_BIT else NONPAGED


def read_big_pages(kernel: "KernelContext") -> Tuple[List[BigPage], Optional[str]]:
    """Every entry of ``nt!PoolBigPageTable`` that names an allocation, sorted by address, and
    what kept the table from being read whole (None when it was)."""
    if not kernel.symbols.has("PoolBigPageTable") or not kernel.symbols.has("PoolBigPageTableSize"):
        return [], None  # no such table on this kernel (its symbols do not have it): nothing missed
    view = kernel.kernel_view("_POOL_TRACKER_BIG_PAGES", ["Va", "Key", "PoolType", "NumberOfBytes"], quiet=True)
    if view is None:
        return [], "the kernel's symbol table has no _POOL_TRACKER_BIG_PAGES"
    table = kernel.read_global_pointer("PoolBigPageTable")
    size_at = kernel.symbols.address("PoolBigPageTableSize")
    try:
        count = int.from_bytes(kernel.reader.read(size_at, 4), "little") if size_at is not None else 0
    except exceptions.InvalidAddressException:
        return [], "nt!PoolBigPageTableSize unreadable"
    if not table or not 0 < count <= MAX_ENTRIES:
        return [], f"nt!PoolBigPageTable unusable (at {table or 0:#x}, {count} entries)"
    try:
        data = kernel.reader.read(table, count * view.size)
    except exceptions.InvalidAddressException:
        return [], f"nt!PoolBigPageTable at {table:#x} unreadable"
    kernel_start = kernel_half_start(kernel.pointer_size) & kernel.mask
    found: List[BigPage] = []
    fields = view.fields
    for offset in range(0, count * view.size, view.size):
        va = fields["Va"].unpack(data, offset) & kernel.mask
        address = va & ~ENTRY_FREE
        if address < kernel_start:
            continue
        found.append(BigPage(
            address,
            fields["NumberOfBytes"].unpack(data, offset),
            fields["Key"].unpack(data, offset).to_bytes(4, "little"),
            pool_of(fields["PoolType"].unpack(data, offset)),
            bool(va & ENTRY_FREE),
        ))
    found.sort(key=lambda page: (page.address, page.freed))
    return found, None


def big_batch(page: BigPage) -> BlockBatch:
    """A big allocation as a block of its own (allocator ``big page``)."""
    return BlockBatch(page.pool, BIG_PAGE, [page.address], page.size, [int.from_bytes(page.tag, "little")],
                      [BlockState.FREED if page.freed else BlockState.ALLOCATED])


class BigPageEntries(MetadataPoolMap):
    """A reader's ``nt!PoolBigPageTable`` entries in the pools it was opened for, read once
    (both allocators keep the table)."""

    _big: Optional[List[BigPage]] = None

    def _wanted(self, pool: str) -> bool:
        return pool in self._pools

    @property
    def big_pages(self) -> List[BigPage]:
        if self._big is None:
            found, problem = read_big_pages(self._kernel)
            if problem is not None:
                self._incomplete(problem)
            self._big = [page for page in found if self._wanted(page.pool)]
        return self._big
