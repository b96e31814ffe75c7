"""The blocks of one segment-heap subsegment, decoded from its bytes as the heap lays them out.

:mod:`.segment_heap` finds the subsegments (and gives the keys); this module reads what is in
one. The encodings (MemProcFS ``vmm/vmmwinpool.c``, PoolViewer, Yason's segment heap paper), every
offset and width from the kernel's symbol table:

- LFH: ``BlockOffsets.EncodedData`` ^ (u32)``LfhKey`` ^ (u32 of the subsegment address) >> 12
  (from 26100: (u32)(address >> 12)) gives ``BlockSize`` (low 16 bits) and ``FirstBlockOffset``
  (high 16); ``BlockBitmap`` holds two bits per slot, bit 0 busy. A free changes no byte of the
  block: the bitmap is the only truth. Slots that would cross a page hold no block (the kernel
  never places a pool block across a page; MemProcFS skips them too), and a free slot whose
  pool header reads all zeros never held one (nothing to list: MemProcFS skips it as well).
- VS: the subsegment is valid when ``Size`` == ``Signature`` ^ 0x2BED; chunks tile it from its
  header rounded to the heap granularity; each chunk header's first word ^ its (canonical)
  address ^ ``HeapKey`` gives ``UnsafeSize``, ``UnsafePrevSize`` (granules) and ``Allocated``;
  each header repeats its predecessor's size, so a damaged one ends the walk (what follows is
  ``unknown``). An allocated chunk holds the pool header after its chunk header, or at the next
  page when the block would otherwise cross one (MemProcFS ``VmmWinPool_AllPool1903_5_VS_DoWork``;
  the header itself says which: its ``BlockSize`` spans the rest of the chunk). A free chunk's
  free-tree node (``_HEAP_VS_CHUNK_FREE_HEADER.Node``) lies over its pool header: its tag is
  gone. A chunk on the heap's delay-free list still decodes allocated; it is freed, and its
  list link lies over the start of its pool header (over the tag too when a pointer is wider
  than the tag's offset, as on x64).
"""

import dataclasses
import functools
import itertools
import operator
from typing import TYPE_CHECKING, FrozenSet, Iterator, List, Optional, Sequence, Tuple

from ..kernelread.addresses import PAGE_SIZE, canonical
from ..kernelread.views import BITS, Field, StructView, ViewError, member_offset, type_name, type_size
from .headers import pool_header_view
from .state import LFH, VS, BlockBatch, BlockState, PoolMetadataUnavailable, Region

if TYPE_CHECKING:
    from ..kernelread.context import KernelContext

NEW_LAYOUT_BUILD = 26100
VS_SIGNATURE_KEY = 0x2BED
MAX_LFH_BLOCK = 0x1000
#: The two bitmap bits of four slots, from one bitmap byte: busy (bit 0 of each pair).
_BUSY = [bytes((value >> shift) & 1 for shift in (0, 2, 4, 6)) for value in range(256)]
_STATES = (BlockState.FREED, BlockState.ALLOCATED)


class BusyStates(Sequence[BlockState]):
    """The states of an LFH subsegment's slots, from their busy bits (one byte each), without a
    list of states built for every slot (a summary counts hundreds of thousands)."""

    def __init__(self, busy: bytes) -> None:
        self._busy = busy

    @property
    def busy(self) -> bytes:
        """One byte a slot: 1 busy (allocated), 0 free."""
        return self._busy

    def __len__(self) -> int:
        return len(self._busy)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [_STATES[bit] for bit in self._busy[index]]
        return _STATES[self._busy[index]]

    def __iter__(self) -> Iterator[BlockState]:
        return map(_STATES.__getitem__, self._busy)


def word_field(field: Field) -> Tuple[int, int]:
    """(shift, mask) of a member inside the little-endian integer of its structure's first
    bytes: integer arithmetic on a decoded header word instead of unpacking bytes each time."""
    if field.kind == BITS:
        return field.offset * 8 + field.start_bit, (1 << field.bit_length) - 1
    return field.offset * 8, (1 << (8 * field.size)) - 1


@dataclasses.dataclass
class LfhBlocks:
    first: int
    size: int
    count: int
    bitmap: bytes

    def busy(self, index: int) -> bool:
        return bool(self.bitmap[index >> 2] >> ((index & 3) << 1) & 1)


@dataclasses.dataclass
class VsChunks:
    starts: List[int]
    ends: List[int]
    allocated: List[bool]
    #: Where the walk stopped (the subsegment's end when every chunk decoded).
    walked_to: int


class SubsegmentDecoder:
    """Decodes LFH and VS subsegments of one kernel's heaps (keys from ``_RTLP_HP_HEAP_GLOBALS``)."""

    def __init__(self, kernel: "KernelContext", heap_key: int, lfh_key: int, granularity: int) -> None:
        self._kernel = kernel
        self._pointer = kernel.pointer_size
        self.heap_key = heap_key
        self.lfh_key = lfh_key
        self.granularity = granularity
        self._new_layout = (kernel.build_number or 0) >= NEW_LAYOUT_BUILD
        table = kernel.kernel_module.symbol_table_name

        def view(name: str, members: List[str]) -> StructView:
            return StructView.compile(kernel.context, type_name(table, name), members, kernel.mask)

        try:
            self._lfh_view = view("_HEAP_LFH_SUBSEGMENT", ["BlockOffsets.EncodedData", "BlockCount"])
            self.bitmap_offset = member_offset(kernel.context, type_name(table, "_HEAP_LFH_SUBSEGMENT"), "BlockBitmap")
            self._vs_view = view("_HEAP_VS_SUBSEGMENT", ["Size", "Signature"])
            self.vs_header = type_size(kernel.context, type_name(table, "_HEAP_VS_SUBSEGMENT"))
            self._chunk_view = view("_HEAP_VS_CHUNK_HEADER_SIZE", ["HeaderBits", "UnsafeSize", "UnsafePrevSize", "Allocated"])
            self.chunk_header = type_size(kernel.context, type_name(table, "_HEAP_VS_CHUNK_HEADER"))
            self._pool_header = pool_header_view(kernel)
        except ViewError as excp:
            raise PoolMetadataUnavailable(f"segment-heap types: {excp}") from excp
        self.tag_offset = self._pool_header.offset("PoolTag")
        self._block_size = self._pool_header.fields["BlockSize"]
        self._encoded = self._lfh_view.fields["BlockOffsets.EncodedData"]
        self._block_count = self._lfh_view.fields["BlockCount"]
        chunk = self._chunk_view.fields
        self._word_width = chunk["HeaderBits"].size
        self._size_bits = word_field(chunk["UnsafeSize"])
        self._previous_bits = word_field(chunk["UnsafePrevSize"])
        self._allocated_bits = word_field(chunk["Allocated"])

    # -- LFH -----------------------------------------------------------------------------

    def lfh(self, region: Region, data: bytes) -> Optional[LfhBlocks]:
        """The slots of an LFH subsegment whose bytes are ``data``; None when its offsets or
        counts do not validate (damaged or zeroed headers decode to plausible offsets often)."""
        if len(data) < self.bitmap_offset:
            return None
        address = canonical(region.start, self._pointer)
        shift = ((address >> 12) if self._new_layout else (address & 0xFFFF_FFFF) >> 12) & 0xFFFF_FFFF
        decoded = self._encoded.unpack(data) ^ self.lfh_key ^ shift
        size, first = decoded & 0xFFFF, decoded >> 16
        if size % self.granularity or not self.granularity <= size < MAX_LFH_BLOCK or not self.bitmap_offset < first < region.length:
            return None
        count = self._block_count.unpack(data)
        if not 0 < count <= (region.length - first) // size:
            return None
        bitmap = data[self.bitmap_offset : self.bitmap_offset + (count + 3) // 4]
        if len(bitmap) < (count + 3) // 4:
            return None
        return LfhBlocks(first, size, count, bitmap)

    def lfh_batch(self, region: Region, data: bytes, blocks: LfhBlocks) -> BlockBatch:
        """The blocks of an LFH subsegment: every slot within a page whose state the bitmap
        gives, free slots that never held a block left out (column by column: a summary of a
        server's heap counts a million slots)."""
        first, size, count = blocks.first, blocks.size, blocks.count
        view = memoryview(data)
        end = first + count * size
        tags = view[first + self.tag_offset : end].cast("I")[:: size // 4].tolist()
        heads = view[first : end].cast("Q")[:: size // 8].tolist()
        busy = b"".join(map(_BUSY.__getitem__, blocks.bitmap))[:count]
        crossing = (first // PAGE_SIZE) != ((end - 1) // PAGE_SIZE)  # slots may then cross a page
        base = region.start + first
        if not crossing and 0 not in heads:
            return BlockBatch(region.pool, LFH, range(base, base + count * size, size), size, tags, BusyStates(busy))
        # Kept: slots busy or with a header (free and headerless: never used), within a page;
        # one flag a slot, the columns then filtered at C speed.
        kept = bytes(map(operator.or_, busy, map(bool, heads)))
        if crossing:
            kept = bytes(map(operator.and_, kept, _within_page(first % PAGE_SIZE, size, count)))
        return BlockBatch(region.pool, LFH, list(itertools.compress(range(base, base + count * size, size), kept)), size,
                          list(itertools.compress(tags, kept)), BusyStates(bytes(itertools.compress(busy, kept))))

    # -- VS ------------------------------------------------------------------------------

    def vs(self, region: Region, data: bytes) -> Optional[VsChunks]:
        """The chunks of a VS subsegment whose bytes are ``data``, as far as they decode; None
        when the subsegment's own header does not validate."""
        if len(data) < self.vs_header:
            return None
        header = self._vs_view.unpack(data, region.start)
        if header.Size != header.Signature ^ VS_SIGNATURE_KEY:
            return None
        granule = self.granularity
        width = self._word_width
        size_shift, size_mask = self._size_bits
        previous_shift, previous_mask = self._previous_bits
        allocated_shift, allocated_mask = self._allocated_bits
        key = self.heap_key
        mask = self._kernel.mask
        length = min(region.length, len(data))
        chunks = VsChunks([], [], [], region.start)
        starts, ends, allocated = chunks.starts, chunks.ends, chunks.allocated
        offset = (self.vs_header + granule - 1) // granule * granule
        base = canonical(region.start, self._pointer)
        start = region.start
        chunk_header = self.chunk_header
        smallest = chunk_header + granule
        previous = None
        add_start, add_end, add_allocated = starts.append, ends.append, allocated.append
        from_bytes = int.from_bytes
        while offset + chunk_header <= length:
            decoded = from_bytes(data[offset : offset + width], "little") ^ (base + offset) ^ key
            size = ((decoded >> size_shift) & size_mask) * granule
            if size < smallest or offset + size > length:
                break
            if previous is not None and ((decoded >> previous_shift) & previous_mask) * granule != previous:
                break
            previous = size
            add_start((start + offset) & mask)
            add_end((start + offset + size) & mask)
            add_allocated((decoded >> allocated_shift) & allocated_mask & 1 == 1)
            offset += size
        chunks.walked_to = (region.start + offset) & mask
        return chunks

    def pool_header_of(self, chunk_start: int, chunk_end: int, data: bytes, base: int) -> int:
        """Where the pool header is of an allocated chunk whose block would cross a page right
        after its chunk header (:meth:`vs_batch` asks only for those, the test being its hot
        loop's): there, or at the next page when the header there spans the rest of the chunk
        (``data`` holds the subsegment, which starts at ``base``)."""
        header = chunk_start + self.chunk_header
        next_page = (header + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        if next_page >= chunk_end:
            return header
        here = self._block_size.unpack(data, header - base) * self.granularity
        there = self._block_size.unpack(data, next_page - base) * self.granularity
        fits = (chunk_end - header, chunk_end - header - self.granularity)
        if here not in fits and there in (chunk_end - next_page, chunk_end - next_page - self.granularity):
            return next_page
        return header

    def vs_batch(self, region: Region, data: bytes, chunks: VsChunks, delayed: FrozenSet[int]) -> BlockBatch:
        """The blocks of a VS subsegment: one per chunk walked (a free chunk is one freed block
        without a tag), and one ``unknown`` block for what could not be walked."""
        addresses: List[int] = []
        sizes: List[int] = []
        tags: List[Optional[int]] = []
        states: List[BlockState] = []
        start = region.start
        link_over_tag = self._pointer > self.tag_offset
        chunk_header, tag_at = self.chunk_header, self.tag_offset - start
        allocated_state, freed_state = BlockState.ALLOCATED, BlockState.FREED
        add_address, add_size, add_tag, add_state = addresses.append, sizes.append, tags.append, states.append
        from_bytes = int.from_bytes
        for chunk_start, chunk_end, allocated in zip(chunks.starts, chunks.ends, chunks.allocated):
            header = chunk_start + chunk_header
            if allocated:
                if header % PAGE_SIZE + (chunk_end - header) > PAGE_SIZE:
                    # The block would cross a page after the chunk header (the one place this is
                    # tested): its pool header may be at the next page.
                    header = self.pool_header_of(chunk_start, chunk_end, data, start)
                tag: Optional[int] = from_bytes(data[header + tag_at : header + tag_at + 4], "little")
                state = allocated_state
                if delayed and (header in delayed or chunk_start + chunk_header in delayed):
                    state = freed_state
                    if link_over_tag:
                        tag = None
            else:
                tag, state = None, freed_state
            add_address(header)
            add_size(chunk_end - header)
            add_tag(tag)
            add_state(state)
        if chunks.walked_to < region.end:
            addresses.append(chunks.walked_to)
            sizes.append(region.end - chunks.walked_to)
            tags.append(None)
            states.append(BlockState.UNKNOWN)
        return BlockBatch(region.pool, VS, addresses, sizes, tags, states)

    def vs_state(self, header: int, chunks: VsChunks, delayed: FrozenSet[int], chunk_index: int) -> BlockState:
        """The state of the block whose pool header is at ``header`` inside chunk ``chunk_index``."""
        if not chunks.allocated[chunk_index]:
            # A free chunk, including the stale headers of the chunks merged into it.
            return BlockState.FREED
        start = chunks.starts[chunk_index] + self.chunk_header
        if header != start and header != (start + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1):
            return BlockState.NOT_A_BLOCK
        if header in delayed or start in delayed:
            return BlockState.FREED
        return BlockState.ALLOCATED


@functools.lru_cache(maxsize=256)
def _within_page(first: int, size: int, count: int) -> bytes:
    """One flag a slot of ``size`` bytes from ``first`` (its offset in a page): 1 when the slot
    lies within one page."""
    return bytes((first + index * size) // PAGE_SIZE == (first + index * size + size - 1) // PAGE_SIZE
                 for index in range(count))


def unknown_batch(region: Region, allocator: str) -> BlockBatch:
    """A subsegment whose metadata does not decode (or is not mapped): one block of unknown state."""
    return BlockBatch(region.pool, allocator, [region.start], region.length, [None], [BlockState.UNKNOWN])

