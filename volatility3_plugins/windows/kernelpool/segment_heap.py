"""The kernel's segment heap (Windows 10 1903, build 18362, and later), read from its metadata.

Sources: MemProcFS ``vmm/vmmwinpool.c`` (``VmmWinPool_AllPool1903_*``), Yarden Shafir's
PoolViewer, Bayet & Fariello "Scoop the Windows 10 pool!" (SSTIC 2020), Yason "Windows 10
Segment Heap Internals" (Black Hat USA 2016). Every offset, size and bit position is taken from
the kernel's own symbol table; only the constants below are not in any ISF.

The chain, as the kernel keeps it:

- ``nt!ExPoolState`` (``_EX_POOL_HEAP_MANAGER_STATE``): ``HeapManager.Globals`` points at the
  heap globals (``_RTLP_HP_HEAP_GLOBALS``: ``HeapKey``, ``LfhKey``); ``NumberOfPools`` nodes,
  each ``PoolNode[i].Heaps[0..3]`` (0 NonPaged, 1 NonPagedNx, 2 and 3 Paged), and
  ``SpecialHeaps``;
- a ``_SEGMENT_HEAP`` (``Signature`` 0xDDEEDDEE) has ``SegContexts``: each links its
  ``_HEAP_PAGE_SEGMENT``s through ``SegmentListHead`` and gives their ``UnitShift`` and
  ``FirstDescriptorIndex``;
- a page segment (256 units) is valid when ``Signature`` ^ segment ^ HeapKey ^ 0xA2E64EADA2E64EAD
  (0 from build 26100) gives back its segment context; its ``DescArray`` is walked from
  ``FirstDescriptorIndex`` by ``UnitSize``: ``RangeFlags`` 0xB starts an LFH subsegment, 0xF a
  VS subsegment;
- an LFH subsegment: ``BlockOffsets.EncodedData`` ^ (u32)``LfhKey`` ^ (u32 of the subsegment
  address) >> 12 (from 26100: (u32)(address >> 12)) gives ``BlockSize`` (low 16 bits) and
  ``FirstBlockOffset`` (high 16); ``BlockBitmap`` holds two bits per block, bit 0 busy. A free
  clears the bits and changes no byte of the block (up to 23H2): the bitmap is the only truth;
- a VS subsegment (``Size`` == ``Signature`` ^ 0x2BED): chunks tile it from its header rounded
  to the heap granularity; each chunk header's first word ^ its address ^ HeapKey gives
  ``UnsafeSize`` (in granules) and ``Allocated``;
- ``RangeFlags`` 3 starts a backend range of whole pages handed out as one allocation (the
  big-pool pages of a request of more than a page less two pool headers): a ``large`` block,
  its tag from ``nt!PoolBigPageTable`` (:mod:`.big_pages`), which also names the big
  allocations no range describes (``big page`` blocks, freed ones included);
- each heap's ``VsContext.DelayFreeContext.ListHead``: the VS chunks freed but not yet given
  back (the kernel delays up to 32): they still decode allocated, they are freed.

How each subsegment decodes is :mod:`.subsegments`. A block is judged by the subsegment that
holds it, never by its size (a bucket is served by the LFH only once activated, so small blocks
of early boot live in VS subsegments). A block in no subsegment the metadata describes, or at a
position that is no block start, is ``unknown``. Not read: the large allocations of the heap's
``LargeAllocMetadata`` (above a page segment's reach; the forge writes none either), the
special-pool heaps' own tracking, and the 24H2 (26100) LFH layout, whose changes are described
only by reverse-engineering notes (the build-dependent LFH shift is chosen here).
"""

import bisect
import logging
from typing import TYPE_CHECKING, Dict, FrozenSet, Iterator, List, Optional, Sequence, Set, Tuple

from volatility3.framework import exceptions

from ..kernelread import lists
from ..kernelread.addresses import canonical
from ..kernelread.views import BITS, StructView, ViewError, array_member, member_offset, type_name
from .big_pages import BigPage, BigPageEntries, big_batch
from .headers import block_unit
from .state import (LARGE, LFH, NONPAGED, NONPAGED_NX, NONPAGED_POOLS, PAGED, VS, BlockBatch, BlockState,
                    PoolMetadataUnavailable, Region, RegionIndex)
from .subsegments import LfhBlocks, SubsegmentDecoder, VsChunks, unknown_batch

if TYPE_CHECKING:
    from ..kernelread.context import KernelContext

vollog = logging.getLogger(__name__)

FIRST_BUILD = 18362
SEGMENT_HEAP_SIGNATURE = 0xDDEEDDEE
PAGE_SEGMENT_KEY = 0xA2E64EADA2E64EAD  # 0 from build 26100 (MemProcFS)
NEW_LAYOUT_BUILD = 26100
RANGE_LARGE = 0x3
RANGE_LFH = 0xB
RANGE_VS = 0xF
#: What each kind of range is, as a region and as a block's allocator.
RANGE_KINDS = {RANGE_LARGE: "large", RANGE_LFH: "lfh", RANGE_VS: "vs"}
ALLOCATORS = {"large": LARGE, "lfh": LFH, "vs": VS}
#: _EX_HEAP_POOL_NODE.Heaps by index, and SpecialHeaps likewise.
HEAP_POOLS = (NONPAGED, NONPAGED_NX, PAGED, PAGED)
MAX_POOL_NODES = 64
MAX_SEGMENTS = 0x10000  # per segment context: 64 GiB of 1 MiB segments
DESCRIPTORS = 256
#: The delay-free list holds 32 chunks; a longer chain is damage.
MAX_DELAYED = 1024
#: Bytes of neighbouring subsegments read at once when enumerating (into one reused buffer).
READ_SPAN = 1 << 20

#: An LFH, VS or large range of a page segment (``kind`` "lfh", "vs" or "large").
Subsegment = Region


class SegmentHeapMap(BigPageEntries):
    """The segment heap's view of the pools asked for (see the module docstring)."""

    name = "segment heap"

    def __init__(self, kernel: "KernelContext", pools: Sequence[str] = NONPAGED_POOLS) -> None:
        super().__init__(kernel, pools)
        self._pointer = kernel.pointer_size
        # The heap's granule is the pool's block unit: both are how the allocator rounds sizes.
        self._granularity = block_unit(self._pointer)
        build = kernel.build_number or 0
        self._new_layout = build >= NEW_LAYOUT_BUILD
        self._segment_key = 0 if self._new_layout else PAGE_SEGMENT_KEY
        self._compile()
        self.heap_key, self.lfh_key, heaps = self._manager()
        self.decoder = SubsegmentDecoder(kernel, self.heap_key, self.lfh_key, self._granularity)
        subsegments: List[Subsegment] = []
        delayed: Set[int] = set()
        for address, pool in heaps:
            subsegments += self._heap(address, pool)
            delayed |= self._delay_free_list(address, pool)
        self._index = RegionIndex(subsegments)
        #: Pool headers of the VS chunks on a delay-free list: freed, though they decode allocated.
        self.delayed: FrozenSet[int] = frozenset(delayed)
        self._decoded: Dict[int, object] = {}  # subsegment -> its LfhBlocks or VsChunks (None: undecodable)
        self._span_buffer = bytearray()

    # -- layouts -------------------------------------------------------------------------

    def _compile(self) -> None:
        kernel = self._kernel
        table = kernel.kernel_module.symbol_table_name
        if not kernel.kernel_module.has_type("_EX_POOL_HEAP_MANAGER_STATE") or not kernel.symbols.has("ExPoolState"):
            raise PoolMetadataUnavailable("the kernel's symbol table has no segment-heap pool (nt!ExPoolState)")

        def view(name: str, members: List[str]) -> StructView:
            try:
                return StructView.compile(kernel.context, type_name(table, name), members, kernel.mask)
            except ViewError as excp:
                raise PoolMetadataUnavailable(f"the kernel's symbol table lacks {name}: {excp}") from excp

        try:
            self._state_view = view("_EX_POOL_HEAP_MANAGER_STATE", ["HeapManager.Globals", "NumberOfPools"])
            self._pool_node = array_member(kernel.context, type_name(table, "_EX_POOL_HEAP_MANAGER_STATE"), "PoolNode")
            self._special = array_member(kernel.context, type_name(table, "_EX_POOL_HEAP_MANAGER_STATE"), "SpecialHeaps")
            self._node_heaps = array_member(kernel.context, type_name(table, "_EX_HEAP_POOL_NODE"), "Heaps")
            self._globals_view = view("_RTLP_HP_HEAP_GLOBALS", ["HeapKey", "LfhKey"])
            self._heap_view = view("_SEGMENT_HEAP", ["Signature"])
            self._contexts = array_member(kernel.context, type_name(table, "_SEGMENT_HEAP"), "SegContexts")
            self._context_view = view("_HEAP_SEG_CONTEXT", ["UnitShift", "FirstDescriptorIndex"])
            self._list_head = member_offset(kernel.context, type_name(table, "_HEAP_SEG_CONTEXT"), "SegmentListHead")
            self._segment_view = view("_HEAP_PAGE_SEGMENT", ["Signature"])
            self._descriptor_view = view("_HEAP_PAGE_RANGE_DESCRIPTOR", ["RangeFlags", "UnitSize"])
            self._delay_list = member_offset(kernel.context, type_name(table, "_SEGMENT_HEAP"), "VsContext.DelayFreeContext.ListHead")
        except ViewError as excp:
            raise PoolMetadataUnavailable(f"segment-heap types: {excp}") from excp

    # -- the chain -----------------------------------------------------------------------

    def _manager(self) -> Tuple[int, int, List[Tuple[int, str]]]:
        kernel = self._kernel
        state = kernel.symbols.address("ExPoolState")
        if state is None:
            raise PoolMetadataUnavailable("no nt!ExPoolState")
        record = self._state_view.read(kernel.reader, state)
        if not record.complete or record.zeroed:
            raise PoolMetadataUnavailable(f"nt!ExPoolState unreadable at {state:#x}")
        pools = record.NumberOfPools
        if not 0 < pools <= min(MAX_POOL_NODES, self._pool_node[1]):
            raise PoolMetadataUnavailable(f"nt!ExPoolState.NumberOfPools is {pools}")
        keys = self._globals_view.read(kernel.reader, record["HeapManager.Globals"])
        if not keys.complete or keys.zeroed:
            raise PoolMetadataUnavailable("the heap globals (HeapKey, LfhKey) are unreadable")
        heaps: List[Tuple[int, str]] = []
        node_offset, _count, node_size = self._pool_node
        heaps_offset, heap_count, _size = self._node_heaps
        for node in range(pools):
            base = state + node_offset + node * node_size + heaps_offset
            heaps += self._heap_pointers(base, heap_count)
        special_offset, special_count, _size = self._special
        heaps += self._heap_pointers(state + special_offset, special_count)
        return keys.HeapKey, keys.LfhKey & 0xFFFF_FFFF, [(a, p) for a, p in heaps if p in self._pools]

    def _heap_pointers(self, base: int, count: int) -> List[Tuple[int, str]]:
        found = []
        for index in range(min(count, len(HEAP_POOLS))):
            try:
                pointer = self._kernel.read_pointer(base + index * self._pointer)
            except exceptions.InvalidAddressException:
                self._incomplete(f"heap pointer at {base + index * self._pointer:#x} unreadable")
                continue
            if pointer:
                found.append((pointer, HEAP_POOLS[index]))
        return found

    def _heap(self, heap: int, pool: str) -> List[Subsegment]:
        kernel = self._kernel
        record = self._heap_view.read(kernel.reader, heap)
        if record.Signature != SEGMENT_HEAP_SIGNATURE:
            self._incomplete(f"{pool} heap at {heap:#x}: no segment-heap signature")
            return []
        offset, count, size = self._contexts
        found: List[Subsegment] = []
        for index in range(count):
            context = heap + offset + index * size
            settings = self._context_view.read(kernel.reader, context)
            if not settings.complete:
                self._incomplete(f"{pool} heap {heap:#x}: segment context {index} unreadable")
                continue
            shift, first = settings.UnitShift, settings.FirstDescriptorIndex
            if not 12 <= shift <= 24 or first >= DESCRIPTORS:
                self._incomplete(f"{pool} heap {heap:#x}: segment context {index} implausible (UnitShift {shift})")
                continue
            walked = lists.walk_list(kernel, context + self._list_head, f"{pool} heap {heap:#x} segment list {index}", MAX_SEGMENTS)
            if not walked.complete:
                self._incomplete(f"{pool} heap {heap:#x}: segment list {index} incomplete")
            for segment in walked.entries:
                found += self._segment(segment, context, shift, first, pool)
        return found

    def _segment(self, segment: int, context: int, shift: int, first: int, pool: str) -> List[Subsegment]:
        kernel = self._kernel
        record = self._segment_view.read(kernel.reader, segment)
        expected = canonical(segment, self._pointer) ^ canonical(context, self._pointer) ^ self.heap_key ^ self._segment_key
        if not record.complete or record.Signature != expected & (2 ** (8 * self._pointer) - 1):
            self._incomplete(f"{pool} page segment {segment:#x}: signature does not validate")
            return []
        step = self._descriptor_view.size
        try:
            descriptors = kernel.reader.read(segment, DESCRIPTORS * step)
        except exceptions.InvalidAddressException:
            self._incomplete(f"{pool} page segment {segment:#x}: descriptors unreadable")
            return []
        flags_field = self._descriptor_view.fields["RangeFlags"]
        size_field = self._descriptor_view.fields["UnitSize"]
        # 32-bit builds keep CommittedPageCount in RangeFlags' top bits (MemProcFS masks them).
        flags_mask = 0xFF if self._pointer == 8 else 0x1F
        # Both members are single bytes on every build (the descriptors are read byte by byte:
        # a page segment has 256 of them and a server's heap thousands of segments).
        flags_at, size_at = flags_field.offset, size_field.offset
        single = flags_field.size == size_field.size == 1 and BITS not in (flags_field.kind, size_field.kind)
        found: List[Subsegment] = []
        index = first
        while index < DESCRIPTORS:
            if single:
                flags, units = descriptors[index * step + flags_at] & flags_mask, descriptors[index * step + size_at]
            else:
                flags = flags_field.unpack(descriptors, index * step) & flags_mask
                units = size_field.unpack(descriptors, index * step)
            if units == 0:
                index += 1
                continue
            if index + units > DESCRIPTORS:
                self._incomplete(f"{pool} page segment {segment:#x}: descriptor {index} runs past the segment")
                break
            if flags in RANGE_KINDS:
                found.append(Subsegment((segment + (index << shift)) & kernel.mask, units << shift, RANGE_KINDS[flags], pool))
            index += units
        return found

    def _delay_free_list(self, heap: int, pool: str) -> Set[int]:
        """The chunks on a heap's VS delay-free list (each entry is where the chunk's pool
        header begins)."""
        walked = lists.walk_slist(self._kernel, heap + self._delay_list, MAX_DELAYED)
        if walked is None:
            self._incomplete(f"{pool} heap {heap:#x}: delay-free list unreadable")
            return set()
        if not walked.complete:
            self._incomplete(f"{pool} heap {heap:#x}: delay-free list {walked.problem}")
        return {entry & self._kernel.mask for entry in walked.entries}

    # -- where blocks lie and their states ------------------------------------------------

    def regions(self, pools: Sequence[str] = NONPAGED_POOLS) -> Optional[List[Region]]:
        """The LFH and VS subsegments of ``pools``; None when some heap, segment list or page
        segment did not validate (blocks may then lie elsewhere)."""
        if not self.complete or set(pools) - set(self._pools):
            return None
        return [region for region in self._index.regions if region.pool in pools and region.kind != "large"]

    def state(self, header: int, pool_type: Optional[int] = None) -> BlockState:
        header &= self._kernel.mask
        region = self._index.find(header)
        if region is None or region.kind == "large":
            return BlockState.UNKNOWN
        if region.kind == "lfh":
            blocks = self._decode(region)
            if not isinstance(blocks, LfhBlocks):
                return BlockState.UNKNOWN
            offset = header - region.start - blocks.first
            if offset < 0 or offset % blocks.size or offset // blocks.size >= blocks.count:
                return BlockState.NOT_A_BLOCK
            return BlockState.ALLOCATED if blocks.busy(offset // blocks.size) else BlockState.FREED
        chunks = self._decode(region)
        if not isinstance(chunks, VsChunks):
            return BlockState.UNKNOWN
        position = bisect.bisect_right(chunks.starts, header) - 1
        if position < 0 or header >= chunks.ends[position]:
            return BlockState.UNKNOWN  # past the chunks that could be walked
        return self.decoder.vs_state(header, chunks, self.delayed, position)

    def _read(self, region: Subsegment) -> Optional[bytes]:
        try:
            return self._kernel.reader.read(region.start, region.length)
        except exceptions.InvalidAddressException:
            return None

    def _decode(self, region: Subsegment) -> object:
        """A subsegment's decoded slots (LFH) or chunks (VS), read and decoded once for
        :meth:`state`; None (said once) when they do not decode."""
        if region.start not in self._decoded:
            data = self._read(region)
            decode = self.decoder.lfh if region.kind == "lfh" else self.decoder.vs
            found = decode(region, data) if data is not None else None
            if found is None:
                self._incomplete(f"{region.kind.upper()} subsegment {region.start:#x}: its metadata does not validate")
            self._decoded[region.start] = found
        return self._decoded[region.start]

    # -- every block ---------------------------------------------------------------------

    def _batch(self, region: Subsegment, data: Optional[bytes], big: Dict[int, BigPage]) -> BlockBatch:
        """The blocks of one range whose bytes are ``data`` (None: not all mapped)."""
        allocator = ALLOCATORS[region.kind]
        if region.kind == "large":
            page = big.get(region.start)
            tag = int.from_bytes(page.tag, "little") if page is not None and not page.freed else None
            return BlockBatch(region.pool, LARGE, [region.start], region.length, [tag], [BlockState.ALLOCATED])
        if data is None:
            self._incomplete(f"{region.kind.upper()} subsegment {region.start:#x}: not all mapped")
            return unknown_batch(region, allocator)
        if region.kind == "lfh":
            blocks = self.decoder.lfh(region, data)
            if blocks is None:
                self._incomplete(f"LFH subsegment {region.start:#x}: block offsets or bitmap do not validate")
                return unknown_batch(region, allocator)
            return self.decoder.lfh_batch(region, data, blocks)
        chunks = self.decoder.vs(region, data)
        if chunks is None:
            self._incomplete(f"VS subsegment {region.start:#x}: header does not validate")
            return unknown_batch(region, allocator)
        if chunks.walked_to < region.end:
            self._incomplete(f"VS subsegment {region.start:#x}: chunks decode only up to {chunks.walked_to:#x}")
        return self.decoder.vs_batch(region, data, chunks, self.delayed)

    def _spans(self) -> Iterator[Tuple[List[Subsegment], Optional[bytes]]]:
        """Neighbouring subsegments read together (``READ_SPAN`` at most; large ranges, whose
        bytes are not read, end a span): (subsegments, their bytes or None when the kernel
        cannot read them in bulk or some page is missing: each is then read on its own)."""
        group: List[Subsegment] = []
        for region in self._index.regions:
            if group and (region.kind == "large" or region.start != group[-1].end or region.end - group[0].start > READ_SPAN):
                yield group, self._read_span(group)
                group = []
            if region.kind == "large":
                yield [region], None
                continue
            group.append(region)
        if group:
            yield group, self._read_span(group)

    def _read_span(self, group: List[Subsegment]) -> Optional[memoryview]:
        """The bytes of ``group``, in a buffer the next span reuses (every batch of a span is
        built, its columns copied out, before the next span is read)."""
        bulk = self._kernel.bulk
        if bulk is None:
            return None
        length = group[-1].end - group[0].start
        if len(self._span_buffer) < length:
            self._span_buffer = bytearray(length)
        data, holes = bulk.read(group[0].start, length, self._span_buffer)
        return memoryview(data) if not holes else None

    def batches(self) -> Iterator[BlockBatch]:
        big = {page.address: page for page in self.big_pages if not page.freed}
        described = self._index
        loose = [page for page in self.big_pages if described.find(page.address) is None]
        position = 0
        for group, data in self._spans():
            span_start = group[0].start
            for region in group:
                while position < len(loose) and loose[position].address < region.start:
                    yield big_batch(loose[position])
                    position += 1
                if region.kind == "large":
                    yield self._batch(region, None, big)
                    continue
                piece = data[region.start - span_start : region.end - span_start] if data is not None else self._read(region)
                yield self._batch(region, piece, big)
        for page in loose[position:]:
            yield big_batch(page)

    def batch_containing(self, address: int) -> Optional[BlockBatch]:
        address &= self._kernel.mask
        region = self._index.find(address)
        if region is not None:
            big = {page.address: page for page in self.big_pages if not page.freed}
            return self._batch(region, None if region.kind == "large" else self._read(region), big)
        for page in self.big_pages:
            if page.address <= address < page.address + page.size:
                return big_batch(page)
        return None
