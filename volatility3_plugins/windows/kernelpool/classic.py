"""The classic kernel pool (Windows 7 to 10 1809, builds up to 17763), read from its metadata.

Source: the WRK's ``base/ntos/ex/pool.c`` (``ExFreePoolWithTag``, ``ExDeferredFreePool``), checked
against the layouts of the ISFs of 7601, 9600, 14393 and 17763. A free first clears the header's
in-use bit (:data:`~.headers.POOL_IN_USE_BIT`), then puts a small block on the freeing
processor's lookaside list of its size (``_KPRCB.PPNPagedLookasideList``, ``PPNxPagedLookasideList``
from Windows 8, ``PPPagedLookasideList``: ``_GENERAL_LOOKASIDE_POOL`` arrays whose pushes write
the next entry's address over the body's first pointer), on its pool descriptor's
``PendingFrees`` (a chain through the body's first pointer) or on ``ListHeads`` (a ``LIST_ENTRY``
at the body). A block is freed when its in-use bit is clear, and also, whatever its header says,
when it is on one of those lists (a smeared header, or a reimplementation that keeps the bit on
lookaside frees): the lists corroborate the header. The pool's address range is not recorded in
a way this reader trusts (the scan reads the kernel half), except on Windows 7, where
``nt!MmNonPagedPoolStart`` and ``nt!MiNonPagedPoolEnd`` bound the non-paged pool.

Every block: the pages whose header chains tile them (:mod:`.classic_pages`), each block with
the state above, and ``nt!PoolBigPageTable``'s allocations (:mod:`.big_pages`). The header's
pool type cannot tell no-execute non-paged pool from the executable kind (``NonPagedPoolNx`` is
0x200, the header keeps 8 bits): both are ``NonPagedPool`` here.
"""

import logging
from typing import TYPE_CHECKING, Iterable, Iterator, List, Optional, Sequence, Set

from volatility3.framework import exceptions

from ..kernelread import lists
from ..kernelread.views import ViewError, array_member, member_offset, type_name
from ..kernelread.addresses import PAGE_SIZE
from .big_pages import BigPageEntries, big_batch, pool_of
from .classic_pages import Link, candidate_pages, spans, tile_page
from .headers import CHAIN_MEMBERS, POOL_IN_USE_BIT, block_unit, pool_header_view
from .state import (CLASSIC, NONPAGED, NONPAGED_NX, NONPAGED_POOLS, PAGED, BlockBatch, BlockState,
                    PoolMetadataUnavailable, Region)

if TYPE_CHECKING:
    from ..kernelread.context import KernelContext

vollog = logging.getLogger(__name__)

MAX_PROCESSORS = 2048
MAX_POOLS = 64
#: An SLIST or pending chain longer than this is corruption (a lookaside's Depth is at most 256).
MAX_CHAIN = 4096
#: Windows 7 x64 reserves at most 512 GiB of virtual space for non-paged pool.
MAX_POOL_RANGE = 512 << 30
LOOKASIDE_LISTS = {
    "PPNPagedLookasideList": NONPAGED,
    "PPNxPagedLookasideList": NONPAGED_NX,
    "PPPagedLookasideList": PAGED,
}
#: (descriptor array symbol, its count symbol, pool) for the descriptors of each pool.
DESCRIPTORS = (
    ("ExpNonPagedPoolDescriptor", "ExpNumberOfNonPagedPools", NONPAGED),
    ("ExpPagedPoolDescriptor", "ExpNumberOfPagedPools", PAGED),
)


class ClassicPoolMap(BigPageEntries):
    """Freed blocks of the classic pool: the header bit, corroborated by the free lists."""

    name = "classic pool"

    def __init__(self, kernel: "KernelContext", pools: Sequence[str] = NONPAGED_POOLS) -> None:
        super().__init__(kernel, pools)
        if not kernel.kernel_module.has_type("_POOL_DESCRIPTOR"):
            # A kernel whose table has no pool descriptor does not run the classic pool.
            raise PoolMetadataUnavailable("the kernel's symbol table has no _POOL_DESCRIPTOR")
        try:
            self._header = pool_header_view(kernel)
            self._chain = pool_header_view(kernel, CHAIN_MEMBERS)
        except ViewError as excp:
            raise PoolMetadataUnavailable(f"pool headers cannot be decoded: {excp}") from excp
        self._unit = block_unit(kernel.pointer_size)
        self._on_free_lists: Set[int] = set()
        self._walk_lookasides()
        self._walk_descriptors()
        self._range = self._nonpaged_range()

    # -- free lists ----------------------------------------------------------------------

    def _body_to_header(self, body: int) -> int:
        return (body - self._header.size) & self._kernel.mask

    def _walk_chain(self, first: int, what: str) -> None:
        """A singly linked chain through the first pointer of each freed block's body."""
        walked = lists.walk_chain(self._kernel, first, MAX_CHAIN)
        self._on_free_lists.update(self._body_to_header(entry) for entry in walked.entries)
        if not walked.complete:
            self._incomplete(f"{what}: {walked.problem}")

    def _walk_lookasides(self) -> None:
        kernel = self._kernel
        table = kernel.kernel_module.symbol_table_name
        blocks = kernel.symbols.address("KiProcessorBlock")
        count_at = kernel.symbols.address("KeNumberProcessors")
        if blocks is None or count_at is None:
            self._incomplete("no nt!KiProcessorBlock or nt!KeNumberProcessors: lookaside lists not read")
            return
        try:
            processors = int.from_bytes(kernel.reader.read(count_at, 4), "little")
        except exceptions.InvalidAddressException:
            self._incomplete("nt!KeNumberProcessors unreadable: lookaside lists not read")
            return
        if not 0 < processors <= MAX_PROCESSORS:
            self._incomplete(f"nt!KeNumberProcessors is {processors}: lookaside lists not read")
            return
        arrays = []
        for member, pool in LOOKASIDE_LISTS.items():
            if pool not in self._pools:
                continue
            try:
                arrays.append((member, array_member(kernel.context, type_name(table, "_KPRCB"), member)))
            except ViewError:
                continue  # PPNxPagedLookasideList appeared with Windows 8
        for number in range(processors):
            try:
                prcb = kernel.read_pointer(blocks + number * kernel.pointer_size)
            except exceptions.InvalidAddressException:
                self._incomplete(f"KPRCB pointer {number} unreadable")
                continue
            if not prcb:
                continue
            for member, (offset, count, size) in arrays:
                for index in range(count):
                    first = lists.slist_first(kernel, prcb + offset + index * size)
                    if first is None:
                        self._incomplete(f"KPRCB {number} {member}[{index}] unreadable")
                        continue
                    self._walk_chain(first, f"KPRCB {number} {member}[{index}]")

    def _descriptor_addresses(self) -> Iterable[int]:
        kernel = self._kernel
        for array, count_symbol, pool in DESCRIPTORS:
            if pool not in self._pools:
                continue
            base, count_at = kernel.symbols.address(array), kernel.symbols.address(count_symbol)
            if base is None or count_at is None:
                continue
            try:
                count = int.from_bytes(kernel.reader.read(count_at, 4), "little")
            except exceptions.InvalidAddressException:
                self._incomplete(f"nt!{count_symbol} unreadable")
                continue
            # The paged descriptors are one more than the paged pools (index 0: prototype pool).
            count += pool == PAGED
            for index in range(min(count, MAX_POOLS)):
                try:
                    descriptor = kernel.read_pointer(base + index * kernel.pointer_size)
                except exceptions.InvalidAddressException:
                    self._incomplete(f"nt!{array}[{index}] unreadable")
                    continue
                if descriptor:
                    yield descriptor

    def _walk_descriptors(self) -> None:
        kernel = self._kernel
        table = kernel.kernel_module.symbol_table_name
        try:
            pending = member_offset(kernel.context, type_name(table, "_POOL_DESCRIPTOR"), "PendingFrees")
            heads_offset, heads, head_size = array_member(kernel.context, type_name(table, "_POOL_DESCRIPTOR"), "ListHeads")
        except ViewError as excp:
            self._incomplete(f"_POOL_DESCRIPTOR: {excp}")
            return
        for descriptor in self._descriptor_addresses():
            try:
                self._walk_chain(kernel.read_pointer(descriptor + pending), f"pool descriptor {descriptor:#x} PendingFrees")
            except exceptions.InvalidAddressException:
                self._incomplete(f"pool descriptor {descriptor:#x} unreadable")
                continue
            for index in range(heads):
                walked = lists.walk_list(
                    kernel, descriptor + heads_offset + index * head_size, f"pool descriptor {descriptor:#x} ListHeads[{index}]",
                    MAX_CHAIN,
                )
                if not walked.complete:
                    self._incomplete(f"pool descriptor {descriptor:#x} ListHeads[{index}] incomplete")
                self._on_free_lists.update(self._body_to_header(entry) for entry in walked.entries)

    def _nonpaged_range(self) -> Optional[Region]:
        kernel = self._kernel
        start, end = kernel.read_global_pointer("MmNonPagedPoolStart"), kernel.read_global_pointer("MiNonPagedPoolEnd")
        if not start or not end or not start < end <= start + MAX_POOL_RANGE:
            return None
        return Region(start, end - start, "pool", NONPAGED)

    # -- the two answers -----------------------------------------------------------------

    def regions(self, pools: Sequence[str] = NONPAGED_POOLS) -> Optional[List[Region]]:
        if self._range is None or set(pools) - {NONPAGED, NONPAGED_NX}:
            return None
        return [self._range]

    def state(self, header: int, pool_type: Optional[int] = None) -> BlockState:
        header &= self._kernel.mask
        if header in self._on_free_lists:
            return BlockState.FREED
        if pool_type is None:
            record = self._header.read(self._kernel.reader, header)
            if not record.readable("PoolType"):
                return BlockState.UNKNOWN
            pool_type = record.PoolType
        return BlockState.ALLOCATED if pool_type & POOL_IN_USE_BIT else BlockState.FREED

    # -- every block ---------------------------------------------------------------------

    def _wanted(self, pool: str) -> bool:
        # The header cannot tell NonPagedPoolNx from NonPagedPool (see the module docstring).
        return pool in self._pools or (pool == NONPAGED and NONPAGED_NX in self._pools)

    def _page_batch(self, page: int, links: List[Link], any_pool: bool = False) -> Optional[BlockBatch]:
        """The blocks of a pool page, or None when the page is of a pool not asked for (unless
        ``any_pool``)."""
        in_use = [pool_type for _offset, _units, pool_type, _tag in links if pool_type & POOL_IN_USE_BIT]
        if in_use:
            pool = pool_of(in_use[0] & ~POOL_IN_USE_BIT)
        else:
            pool = PAGED if any(pool_type & 1 for _offset, _units, pool_type, _tag in links) else NONPAGED
        if not any_pool and not self._wanted(pool):
            return None
        addresses, sizes, tags, states = [], [], [], []
        for offset, units, pool_type, tag in links:
            header = page + offset
            addresses.append(header)
            sizes.append(units * self._unit)
            tags.append(tag or None)
            freed = header in self._on_free_lists or not pool_type & POOL_IN_USE_BIT
            states.append(BlockState.FREED if freed else BlockState.ALLOCATED)
        return BlockBatch(pool, CLASSIC, addresses, sizes, tags, states)

    def _pool_pages(self) -> Iterator[BlockBatch]:
        kernel = self._kernel
        if kernel.bulk is None:
            self._incomplete("the kernel's layer is not Intel paging: its pages cannot be walked for pool pages")
            return
        skip = [(module.base, module.size) for module in kernel.loaded_modules.modules]
        skip += [(page.address, page.size) for page in self.big_pages if not page.freed]
        for start, length in spans(candidate_pages(kernel, skip)):
            data, _holes = kernel.bulk.read(start, length)
            for offset in range(0, length, PAGE_SIZE):
                links = tile_page(data, offset, self._chain, self._unit)
                if links is not None:
                    batch = self._page_batch(start + offset, links)
                    if batch is not None:
                        yield batch

    def batches(self) -> Iterator[BlockBatch]:
        big = sorted(self.big_pages, key=lambda page: page.address)
        position = 0
        for batch in self._pool_pages():
            while position < len(big) and big[position].address < batch.addresses[0]:
                yield big_batch(big[position])
                position += 1
            yield batch
        for page in big[position:]:
            yield big_batch(page)

    def batch_containing(self, address: int) -> Optional[BlockBatch]:
        address &= self._kernel.mask
        for page in self.big_pages:
            if page.address <= address < page.address + page.size and not page.freed:
                return big_batch(page)
        start = address & ~(PAGE_SIZE - 1)
        try:
            data = self._kernel.reader.read(start, PAGE_SIZE)
        except exceptions.InvalidAddressException:
            data = None
        links = tile_page(data, 0, self._chain, self._unit) if data is not None else None
        if links is not None:
            # Whatever pool the page is of: the block holding an address is asked for where
            # control or a pointer lands, not while listing the pools asked for.
            return self._page_batch(start, links, any_pool=True)
        for page in self.big_pages:
            if page.address <= address < page.address + page.size:
                return big_batch(page)
        return None
