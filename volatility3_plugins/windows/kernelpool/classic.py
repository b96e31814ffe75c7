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
"""

import logging
from typing import TYPE_CHECKING, Iterable, List, Optional, Sequence, Set

from volatility3.framework import exceptions

from ..kernelread import lists
from ..kernelread.addresses import PAGE_SIZE, canonical
from ..kernelread.views import StructView, ViewError, array_member, member_offset, type_name
from .headers import POOL_IN_USE_BIT, block_unit, pool_header_view
from .state import (NONPAGED, NONPAGED_NX, NONPAGED_POOLS, PAGED, BlockState, ContainingBlock, MetadataPoolMap,
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


class ClassicPoolMap(MetadataPoolMap):
    """Freed blocks of the classic pool: the header bit, corroborated by the free lists."""

    name = "classic pool"

    def __init__(self, kernel: "KernelContext", pools: Sequence[str] = NONPAGED_POOLS) -> None:
        super().__init__(kernel, pools)
        if not kernel.kernel_module.has_type("_POOL_DESCRIPTOR"):
            # A kernel whose table has no pool descriptor does not run the classic pool.
            raise PoolMetadataUnavailable("the kernel's symbol table has no _POOL_DESCRIPTOR")
        try:
            self._header = pool_header_view(kernel)
        except ViewError as excp:
            raise PoolMetadataUnavailable(f"pool headers cannot be decoded: {excp}") from excp
        self._on_free_lists: Set[int] = set()
        self._walk_lookasides()
        self._walk_descriptors()
        self._range = self._nonpaged_range()

    # -- free lists ----------------------------------------------------------------------

    def _body_to_header(self, body: int) -> int:
        return (body - self._header.size) & self._kernel.mask

    def _walk_chain(self, first: int, what: str) -> None:
        """A singly linked chain through the first pointer of each freed block's body."""
        kernel, seen, entry = self._kernel, set(), first
        while entry and entry not in seen:
            if len(seen) >= MAX_CHAIN:
                self._incomplete(f"{what}: bound of {MAX_CHAIN} entries reached")
                return
            seen.add(entry)
            self._on_free_lists.add(self._body_to_header(entry))
            try:
                entry = kernel.read_pointer(entry)
            except exceptions.InvalidAddressException:
                self._incomplete(f"{what}: entry {entry:#x} unreadable")
                return

    def _slist_first(self, address: int) -> Optional[int]:
        """The first entry of an ``_SLIST_HEADER`` (x64 ``HeaderX64.NextEntry`` << 4, x86 ``Next``)."""
        kernel = self._kernel
        view = kernel.kernel_view("_SLIST_HEADER", ["HeaderX64.NextEntry"], optional=["HeaderX64.NextEntry"])
        if view is not None and view.has("HeaderX64.NextEntry"):
            record = view.read(kernel.reader, address)
            if not record.complete:
                return None
            # The header keeps bits 4-47 of the entry: the kernel's pointer is canonical.
            return canonical(record["HeaderX64.NextEntry"] << 4, kernel.pointer_size) & kernel.mask
        try:
            return kernel.read_pointer(address)
        except exceptions.InvalidAddressException:
            return None

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
        lists = []
        for member, pool in LOOKASIDE_LISTS.items():
            if pool not in self._pools:
                continue
            try:
                lists.append((member, array_member(kernel.context, type_name(table, "_KPRCB"), member)))
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
            for member, (offset, count, size) in lists:
                for index in range(count):
                    first = self._slist_first(prcb + offset + index * size)
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

    def block_containing(self, address: int) -> Optional[ContainingBlock]:
        """The block holding ``address`` in a small-pool page: the page's header chain is walked
        from its start, and believed only when it tiles the page exactly, each header's
        ``PreviousSize`` matching the block before (a page of anything else does not)."""
        kernel = self._kernel
        try:
            view = StructView.compile(kernel.context, self._header.type_name, ["PreviousSize", "BlockSize", "PoolType", "PoolTag"], kernel.mask)
            page = kernel.reader.read((address & kernel.mask) & ~(PAGE_SIZE - 1), PAGE_SIZE)
        except (ViewError, exceptions.InvalidAddressException):
            return None
        unit = block_unit(kernel.pointer_size)
        offset = (address & kernel.mask) & (PAGE_SIZE - 1)
        position, previous, found = 0, 0, None
        while position < PAGE_SIZE:
            record = view.unpack(page, 0, position)
            size = record.BlockSize * unit
            if size == 0 or position + size > PAGE_SIZE or record.PreviousSize * unit != previous:
                return None
            if position <= offset < position + size:
                found = (position, size, record)
            previous = size
            position += size
        if found is None:
            return None
        position, size, record = found
        header = ((address & kernel.mask) & ~(PAGE_SIZE - 1)) + position
        tag = record.PoolTag.to_bytes(4, "little")
        return ContainingBlock(header, size, tag, self.state(header, record.PoolType))
