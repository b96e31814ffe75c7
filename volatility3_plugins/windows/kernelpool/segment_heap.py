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
  ``UnsafeSize`` (in granules) and ``Allocated``.

A block is judged by the subsegment that holds it, never by its size (a bucket is served by the
LFH only once activated, so small blocks of early boot live in VS subsegments). A block in no
subsegment the metadata describes, or at a position that is no block start, is ``unknown``.
Not read: large allocations (``RangeFlags`` 3) and the 24H2 (26100) LFH layout, whose changes
are described only by reverse-engineering notes (the build-dependent LFH shift is chosen here).
"""

import bisect
import dataclasses
import logging
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from volatility3.framework import exceptions

from ..kernelread import lists
from ..kernelread.addresses import PAGE_SIZE, canonical
from ..kernelread.views import StructView, ViewError, array_member, member_offset, type_name, type_size
from .headers import block_unit, read_tag
from .state import (NONPAGED, NONPAGED_NX, NONPAGED_POOLS, PAGED, BlockState, ContainingBlock, MetadataPoolMap,
                    PoolMetadataUnavailable, Region, RegionIndex)

if TYPE_CHECKING:
    from ..kernelread.context import KernelContext

vollog = logging.getLogger(__name__)

FIRST_BUILD = 18362
SEGMENT_HEAP_SIGNATURE = 0xDDEEDDEE
PAGE_SEGMENT_KEY = 0xA2E64EADA2E64EAD  # 0 from build 26100 (MemProcFS)
NEW_LAYOUT_BUILD = 26100
RANGE_LFH = 0xB
RANGE_VS = 0xF
VS_SIGNATURE_KEY = 0x2BED
#: _EX_HEAP_POOL_NODE.Heaps by index, and SpecialHeaps likewise.
HEAP_POOLS = (NONPAGED, NONPAGED_NX, PAGED, PAGED)
MAX_POOL_NODES = 64
MAX_SEGMENTS = 0x10000  # per segment context: 64 GiB of 1 MiB segments
DESCRIPTORS = 256
MAX_LFH_BLOCK = 0x1000


#: An LFH or VS subsegment of a page segment (``kind`` "lfh" or "vs").
Subsegment = Region


@dataclasses.dataclass
class LfhBlocks:
    first: int
    size: int
    count: int
    bitmap: bytes


@dataclasses.dataclass
class VsChunks:
    starts: List[int]
    ends: List[int]
    allocated: List[bool]
    header_size: int


def _next_page(address: int) -> int:
    """Where a block whose chunk body would cross a page keeps its pool header instead: at the
    next page (MemProcFS ``VmmWinPool_AllPool1903_5_VS_DoWork``)."""
    return (address + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


class SegmentHeapMap(MetadataPoolMap):
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
        subsegments: List[Subsegment] = []
        for address, pool in heaps:
            subsegments += self._heap(address, pool)
        self._index = RegionIndex(subsegments)
        self._lfh: Dict[int, Optional[LfhBlocks]] = {}
        self._vs: Dict[int, Optional[VsChunks]] = {}

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
            self._lfh_view = view("_HEAP_LFH_SUBSEGMENT", ["BlockOffsets.EncodedData", "BlockCount"])
            self._bitmap = member_offset(kernel.context, type_name(table, "_HEAP_LFH_SUBSEGMENT"), "BlockBitmap")
            self._vs_view = view("_HEAP_VS_SUBSEGMENT", ["Size", "Signature"])
            self._vs_header = type_size(kernel.context, type_name(table, "_HEAP_VS_SUBSEGMENT"))
            self._chunk_view = view("_HEAP_VS_CHUNK_HEADER_SIZE", ["HeaderBits", "UnsafeSize", "UnsafePrevSize", "Allocated"])
            self._chunk_header = type_size(kernel.context, type_name(table, "_HEAP_VS_CHUNK_HEADER"))
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
        found: List[Subsegment] = []
        index = first
        while index < DESCRIPTORS:
            flags = flags_field.unpack(descriptors, index * step) & flags_mask
            units = size_field.unpack(descriptors, index * step)
            if units == 0:
                index += 1
                continue
            if index + units > DESCRIPTORS:
                self._incomplete(f"{pool} page segment {segment:#x}: descriptor {index} runs past the segment")
                break
            start = (segment + (index << shift)) & kernel.mask
            if flags == RANGE_LFH:
                found.append(Subsegment(start, units << shift, "lfh", pool))
            elif flags == RANGE_VS:
                found.append(Subsegment(start, units << shift, "vs", pool))
            index += units
        return found

    # -- the two answers -----------------------------------------------------------------

    def regions(self, pools: Sequence[str] = NONPAGED_POOLS) -> Optional[List[Region]]:
        """The LFH and VS subsegments of ``pools``; None when some heap, segment list or page
        segment did not validate (blocks may then lie elsewhere)."""
        if not self.complete or set(pools) - set(self._pools):
            return None
        return [region for region in self._index.regions if region.pool in pools]

    def state(self, header: int, pool_type: Optional[int] = None) -> BlockState:
        header &= self._kernel.mask
        region = self._index.find(header)
        if region is None:
            return BlockState.UNKNOWN
        if region.kind == "lfh":
            blocks = self._lfh_blocks(region)
            if blocks is None:
                return BlockState.UNKNOWN
            offset = header - region.start - blocks.first
            if offset < 0 or offset % blocks.size or offset // blocks.size >= blocks.count:
                return BlockState.NOT_A_BLOCK
            index = offset // blocks.size
            bits = blocks.bitmap[index >> 2] >> ((index & 3) << 1)
            return BlockState.ALLOCATED if bits & 1 else BlockState.FREED
        chunks = self._vs_chunks(region)
        if chunks is None:
            return BlockState.UNKNOWN
        position = bisect.bisect_right(chunks.starts, header) - 1
        if position < 0 or header >= chunks.ends[position]:
            return BlockState.UNKNOWN  # past the chunks that could be walked
        if not chunks.allocated[position]:
            # A free chunk, including the stale headers of the chunks merged into it.
            return BlockState.FREED
        start = chunks.starts[position] + chunks.header_size
        if header != start and header != _next_page(start):
            return BlockState.NOT_A_BLOCK
        return BlockState.ALLOCATED

    def block_containing(self, address: int) -> Optional[ContainingBlock]:
        """The LFH block or VS chunk of a subsegment that holds ``address``; UNKNOWN (without a
        header) when that subsegment's metadata does not validate."""
        address &= self._kernel.mask
        region = self._index.find(address)
        if region is None:
            return None
        if region.kind == "lfh":
            blocks = self._lfh_blocks(region)
            if blocks is None:
                return ContainingBlock(None, None, None, BlockState.UNKNOWN)
            offset = address - region.start - blocks.first
            if offset < 0 or offset // blocks.size >= blocks.count:
                return None  # the subsegment's own header, or its unused end
            header = region.start + blocks.first + offset // blocks.size * blocks.size
            return ContainingBlock(header, blocks.size, read_tag(self._kernel, header), self.state(header))
        chunks = self._vs_chunks(region)
        if chunks is None:
            return ContainingBlock(None, None, None, BlockState.UNKNOWN)
        position = bisect.bisect_right(chunks.starts, address) - 1
        if position < 0 or address >= chunks.ends[position]:
            return None
        header = chunks.starts[position] + chunks.header_size
        if address < header:
            return None  # the chunk header itself
        state = BlockState.ALLOCATED if chunks.allocated[position] else BlockState.FREED
        return ContainingBlock(header, chunks.ends[position] - header, read_tag(self._kernel, header), state)

    def _lfh_blocks(self, region: Subsegment) -> Optional[LfhBlocks]:
        if region.start in self._lfh:
            return self._lfh[region.start]
        kernel = self._kernel
        found: Optional[LfhBlocks] = None
        record = self._lfh_view.read(kernel.reader, region.start)
        if record.complete:
            # The kernel computes its keys with canonical (sign-extended) addresses.
            address = canonical(region.start, self._pointer)
            shift = ((address >> 12) if self._new_layout else (address & 0xFFFF_FFFF) >> 12) & 0xFFFF_FFFF
            decoded = record["BlockOffsets.EncodedData"] ^ self.lfh_key ^ shift
            size, first = decoded & 0xFFFF, decoded >> 16
            if size % self._granularity == 0 and self._granularity <= size < MAX_LFH_BLOCK and self._bitmap < first < region.length:
                # BlockCount must agree with the decoded offsets: damaged or zeroed headers
                # decode to offsets that look plausible often enough.
                count = min(record.BlockCount, (region.length - first) // size)
                if record.BlockCount == 0 or record.BlockCount > (region.length - first) // size:
                    count = 0
                try:
                    bitmap = kernel.reader.read(region.start + self._bitmap, (count + 3) // 4)
                except exceptions.InvalidAddressException:
                    bitmap = None
                if bitmap is not None and count:
                    found = LfhBlocks(first, size, count, bitmap)
        if found is None:
            self._incomplete(f"LFH subsegment {region.start:#x}: block offsets or bitmap do not validate")
        self._lfh[region.start] = found
        return found

    def _vs_chunks(self, region: Subsegment) -> Optional[VsChunks]:
        if region.start in self._vs:
            return self._vs[region.start]
        self._vs[region.start] = found = self._walk_vs(region)
        if found is None:
            self._incomplete(f"VS subsegment {region.start:#x}: header or chunks do not validate")
        return found

    def _walk_vs(self, region: Subsegment) -> Optional[VsChunks]:
        kernel = self._kernel
        try:
            data = kernel.reader.read(region.start, region.length)
        except exceptions.InvalidAddressException:
            return None
        header = self._vs_view.unpack(data, region.start)
        if header.Size != header.Signature ^ VS_SIGNATURE_KEY:
            return None
        granule = self._granularity
        width = self._chunk_view.fields["HeaderBits"].size
        word_mask = (1 << (8 * width)) - 1
        chunks = VsChunks([], [], [], self._chunk_header)
        offset = (self._vs_header + granule - 1) // granule * granule
        previous = None
        while offset + self._chunk_header <= region.length:
            address = canonical(region.start + offset, self._pointer)
            raw = int.from_bytes(data[offset : offset + width], "little")
            decoded = ((raw ^ address ^ self.heap_key) & word_mask).to_bytes(width, "little")
            size = self._chunk_view.fields["UnsafeSize"].unpack(decoded) * granule
            if size < self._chunk_header + granule or offset + size > region.length:
                break
            # Each header repeats its predecessor's size: a chunk that disagrees was damaged,
            # and what follows it cannot be told (UNKNOWN past the last chunk walked).
            if previous is not None and self._chunk_view.fields["UnsafePrevSize"].unpack(decoded) * granule != previous:
                break
            previous = size
            chunks.starts.append((region.start + offset) & kernel.mask)
            chunks.ends.append((region.start + offset + size) & kernel.mask)
            chunks.allocated.append(bool(self._chunk_view.fields["Allocated"].unpack(decoded) & 1))
            offset += size
        return chunks
