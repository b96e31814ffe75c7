"""The kernel's segment heap (Windows 10 1903, build 18362, and later) as the pool allocator.

Sources: MemProcFS ``vmm/vmmwinpool.c`` (Ulf Frisk: a C reader of exactly this metadata),
Yarden Shafir's PoolViewer (``PoolData/PoolData.cpp``), Bayet & Fariello, "Scoop the Windows 10
pool!" (SSTIC 2020) and Yason, "Windows 10 Segment Heap Internals" (Black Hat USA 2016). Every
offset, size and bit position comes from the ISF of the build (x64 from the real ISFs, 19041
x86 from Volatility 2's overlay); nothing below hard-codes one.

The chain a reader walks, all of which the forge writes:

- ``nt!ExPoolState`` (``_EX_POOL_HEAP_MANAGER_STATE``): ``HeapManager.Globals`` (its first
  pointer) leads to ``nt!RtlpHpHeapGlobals`` (``HeapKey``, ``LfhKey``); ``NumberOfPools`` (1);
  ``PoolNode[0].Heaps[0..3]``: 0 NonPaged (executable), 1 NonPagedNx, 2 and 3 Paged;
  ``SpecialHeaps`` stay empty (no special pool). Issue 12 says ``SpecialHeaps[4]``: that holds
  from 19041; 18362's ISF has ``SpecialHeaps[3]`` (MemProcFS reads four entries regardless).
- each ``_SEGMENT_HEAP``: ``Signature`` 0xDDEEDDEE; ``SegContexts[0]`` (``UnitShift`` 12,
  ``FirstDescriptorIndex``, ``SegmentListHead`` linking the page segments through their first
  ``LIST_ENTRY``); ``SegContexts[1]`` (64 KiB units) holds no segment here.
- each ``_HEAP_PAGE_SEGMENT`` (1 MiB aligned, 256 4-KiB units): ``Signature`` = segment VA ^
  segment-context VA ^ ``HeapKey`` ^ 0xA2E64EADA2E64EAD (the constant is 0 from build 26100,
  MemProcFS); its ``DescArray`` is walked from ``FirstDescriptorIndex`` by ``UnitSize``: the
  first descriptor of a range has ``RangeFlags`` 0xB (LFH subsegment) or 0xF (VS subsegment)
  and ``TreeSignature`` 0xCCDDCCDD (PoolViewer checks it), the others ``RangeFlags`` 1 and
  their ``UnitOffset`` back to the first (PoolViewer); the unused tail is one range with
  ``RangeFlags`` 0.
- an LFH subsegment (``_HEAP_LFH_SUBSEGMENT``): ``BlockOffsets.EncodedData`` ^ (u32)``LfhKey`` ^
  ((u32)subsegment VA >> 12) gives ``BlockSize`` (low 16 bits) and ``FirstBlockOffset`` (high
  16); block i lies at subsegment + FirstBlockOffset + i * BlockSize, and a block that would
  cross a page is never handed out (MemProcFS and PoolViewer skip those slots); ``BlockBitmap``
  holds 2 bits per block, bit 0 busy, bit 1 "unused bytes" (Yason). Pool sizes are rounded to
  the bucket granularity, so the blocks fill their bucket exactly and read ``01``.
- a VS subsegment (``_HEAP_VS_SUBSEGMENT``): ``Signature`` (15 bits) = ``Size`` ^ 0x2BED, with
  ``FullCommit`` 0 so that MemProcFS's whole-word compare holds too; its chunks start after the
  header (rounded to the heap granularity, PoolViewer) and tile it; each chunk header's
  ``HeaderBits`` ^ chunk VA ^ ``HeapKey`` gives ``UnsafeSize`` and ``UnsafePrevSize`` (in units
  of the granularity) and ``Allocated``. On x64 the word is the first quadword and
  ``Allocated`` its byte at bits 48-55 (the issue's "bit 0" is that byte's); on x86 it is a
  32-bit word with ``UnsafeSize`` in bits 1-15 counting 8-byte units and ``Allocated`` bit 31
  (Volatility 2's 19041 x86 overlay, MemProcFS's 32-bit path), and the descriptors' ``RangeFlags``
  byte shares its top 3 bits with ``CommittedPageCount`` (readers mask 0x1F, MemProcFS does).
  An allocated chunk holds the pool header, then the
  data; no chunk of a small block crosses a page (the forge never lets one: where a request
  does not fit the rest of a page, that rest becomes a free chunk, or joins the previous chunk
  when it is too small for a free chunk, which MemProcFS accepts as one extra unit).

Every block starts with a ``_POOL_HEADER`` (``BlockSize`` = block size / granularity,
``PreviousSize`` 0, pool type 2 or 3, tag). A block is LFH-served once its size's bucket is
activated: the first allocations of each size (early boot) come from VS subsegments; the
17th activates the bucket (Yason's user-mode figure, assumed for the kernel), so a ``CBRe`` can
be a VS chunk: a reader must classify a block by the subsegment that holds it. The LFH serves
blocks up to 0x200 bytes ("Scoop the Windows 10 pool!"), larger small blocks are VS chunks.

Frees, as the heap does them:
- LFH: only the block's two bitmap bits go to 0; no byte of the block changes (up to 23H2).
- VS: the chunk first goes on the VS delay-free list (up to 32 chunks): its header still
  decodes as allocated, the list link overwrites the start of its pool header; when the list
  is full it is flushed, each chunk really freed: its header decodes free, it is merged with
  free neighbours, and the free-tree node (``_HEAP_VS_CHUNK_FREE_HEADER.Node``) of the chunk
  that heads the free range overwrites its pool header (the tag is gone); a chunk merged into
  the free chunk before it keeps its stale headers, tag included.

Big-pool allocations (more than 0xFE0 bytes, ``big_pool.py``) are served by the heap's backend:
a range of whole pages in a page segment whose first descriptor has ``RangeFlags`` 3 (allocated,
first of its range; what MemProcFS calls large pool and skips) and interior descriptors like
every other range; no pool header; ``nt!PoolBigPageTable`` records them. Freed, the range
becomes free (``RangeFlags`` 0, merged with free neighbours) and its pages are decommitted
(unmapped).

Not modelled: the 24H2 layouts (one bitmap bit per block, per-subsegment delay-free lists):
no 26100 ISF is at hand; ``FirstBlockOffset``'s shift differs there (``LFH_SHIFT_FROM_BUILD``).
LFH affinity slots, the non-activated buckets' usage counters (``Buckets[i]`` stays 0), the
chunk headers' ``EncodedSegmentPageOffset``, commit bitmaps beyond "all committed", large
allocations (above a page segment's reach, ``LargeAllocMetadata``), decommitted pages of live
ranges, the free-range tree of the backend and special pool are left out; the VS free tree is
written unencoded; allocations never reuse freed blocks.
"""

import random
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from .big_pool import BigPageTable
from .machine import Machine
from .memory import PAGE_SIZE, canonical
from .pool import (FREED, NOISE_PLAN_SEED, NOISE_TAGS, FreedHow, PoolAllocator, PoolBlock, PoolHeaders, PoolKind,
                   write_slist_header)


SEGMENT_HEAP_SIGNATURE = 0xDDEEDDEE
PAGE_SEGMENT_KEY = 0xA2E64EAD_A2E64EAD  # 0 from build 26100 (MemProcFS)
PAGE_SEGMENT_KEY_LAST_BUILD = 26099
DESCRIPTOR_SIGNATURE = 0xCCDDCCDD
RANGE_LFH = 0xB
RANGE_VS = 0xF
RANGE_BACKEND = 0x3  # a backend allocation of whole pages (big pool): allocated, first of its range
RANGE_INTERIOR = 0x1
RANGE_FREE = 0x0
VS_SIGNATURE_KEY = 0x2BED
UNITS_PER_SEGMENT = 256  # context 0: 256 descriptors of 4 KiB units, a 1 MiB segment
SEGMENT_SIZE = UNITS_PER_SEGMENT * PAGE_SIZE
LARGE_UNIT_SHIFT = 16  # context 1's unit
LFH_MAX_BLOCK = 0x200
ACTIVATION_THRESHOLD = 16  # allocations a bucket serves from VS before the LFH takes over
VS_DELAY_FREE_DEPTH = 32
VS_SUBSEGMENT_PAGES = 16
# Heaps of PoolNode[0]: which pool each serves (MemProcFS's reading of the indices).
HEAP_INDEX = {PoolKind.NONPAGED_EXECUTE: 0, PoolKind.NONPAGED: 1, PoolKind.PAGED: 2}
HEAP_KINDS = (PoolKind.NONPAGED_EXECUTE, PoolKind.NONPAGED, PoolKind.PAGED, PoolKind.PAGED)
LFH_SHIFT_FROM_BUILD = 26100  # (u32)(VA >> 12) from here on, ((u32)VA) >> 12 before (MemProcFS)


@dataclass(eq=False)
class _LfhSubsegment:
    address: int
    units: int
    bucket: "_Bucket"
    first_offset: int
    slot_count: int
    free_slots: List[int]  # usable slots never handed out
    blocks: Dict[int, PoolBlock] = field(default_factory=dict)  # slot -> block
    # Bulk noise (fill_noise): slots whose block is busy, without a PoolBlock each.
    bulk_busy: Optional[bytearray] = None

    def slot_address(self, slot: int) -> int:
        return self.address + self.first_offset + slot * self.bucket.block_size


@dataclass(eq=False)
class _Bucket:
    index: int
    block_size: int
    allocations: int = 0
    address: int = 0  # its _HEAP_LFH_BUCKET once activated
    subsegments: List[_LfhSubsegment] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.allocations > ACTIVATION_THRESHOLD


@dataclass(eq=False)
class _Chunk:
    offset: int  # from the VS subsegment's start
    size: int
    state: str  # allocated, delay, free
    block: Optional[PoolBlock] = None
    padded: bool = False  # holds one granule more than its block (a fragment too small to be free)
    fresh: bool = True  # free space never handed out: the only space the forge allocates from


@dataclass(eq=False)
class _VsSubsegment:
    address: int
    units: int
    chunks: List[_Chunk]


@dataclass(eq=False)
class _Segment:
    address: int
    next_unit: int
    ranges: List[Tuple[int, int, int]] = field(default_factory=list)  # (first unit, units, RangeFlags)


@dataclass(eq=False)
class _Heap:
    index: int
    kind: PoolKind
    address: int
    segments: List[_Segment] = field(default_factory=list)
    buckets: Dict[int, _Bucket] = field(default_factory=dict)  # block size -> bucket
    vs_subsegments: List[_VsSubsegment] = field(default_factory=list)
    delayed: List[Tuple[_VsSubsegment, _Chunk]] = field(default_factory=list)


class SegmentHeapPool(PoolAllocator):
    """The pool heaps of ``nt!ExPoolState`` and everything below them."""

    name = "segment_heap"

    def __init__(self, machine: Machine, kernel_base: int, rng: random.Random) -> None:
        super().__init__(PoolHeaders(machine.layout))
        self.machine = machine
        self.layout = layout = machine.layout
        self.kernel_base = kernel_base
        self._rng = rng
        self.unit = self.headers.unit  # the heap's granularity: 16 bytes on x64, 8 on x86
        self.pointer_size = layout.pointer_size
        self._mask = (1 << (8 * self.pointer_size)) - 1
        self.first_descriptor = -(-layout.size_of("_HEAP_PAGE_SEGMENT") // PAGE_SIZE)
        self.vs_header = layout.size_of("_HEAP_VS_CHUNK_HEADER")
        self.vs_first_chunk = self._align(layout.size_of("_HEAP_VS_SUBSEGMENT"))
        self.vs_min_free = layout.size_of("_HEAP_VS_CHUNK_FREE_HEADER")
        self.heap_key = rng.getrandbits(8 * self.pointer_size)
        self.lfh_key = rng.getrandbits(8 * self.pointer_size)
        self._next_segment = {
            "nonpaged": machine.plan.nonpaged_pool & ~(SEGMENT_SIZE - 1),
            "paged": machine.plan.paged_pool & ~(SEGMENT_SIZE - 1),
        }
        self.pool_state = kernel_base + layout.symbol("ExPoolState")
        self.globals = (kernel_base + layout.symbol("RtlpHpHeapGlobals") if layout.has_symbol("RtlpHpHeapGlobals")
                        else machine.allocate_system_pages(1))
        self.heaps = [self._create_heap(index, kind) for index, kind in enumerate(HEAP_KINDS)]
        self.bulk_subsegments: List[int] = []  # filled by fill_noise: their blocks have no PoolBlock
        self._write_roots()
        self.big_pool = BigPageTable.install(machine, kernel_base)
        self._boot_noise()
        self._big_noise(machine, rng)

    # -- helpers ---------------------------------------------------------------------------

    def _align(self, value: int) -> int:
        return -(-value // self.unit) * self.unit

    def _region(self, kind: PoolKind) -> str:
        return "paged" if kind is PoolKind.PAGED else "nonpaged"

    def _reserve(self, kind: PoolKind, pages: int) -> int:
        """Page-aligned kernel VA for heap metadata or a page segment, at a random distance."""
        region = self._region(kind)
        size = -(-pages * PAGE_SIZE // SEGMENT_SIZE) * SEGMENT_SIZE
        address = self._next_segment[region]
        self._next_segment[region] = address + size + SEGMENT_SIZE * self._rng.randrange(4)
        return address

    def _heap_for(self, kind: PoolKind) -> _Heap:
        return self.heaps[HEAP_INDEX[kind]]

    def _bucket_pages(self) -> int:
        buckets = LFH_MAX_BLOCK // self.unit
        return -(-(self.layout.size_of("_SEGMENT_HEAP") + buckets * self.layout.size_of("_HEAP_LFH_BUCKET")) // PAGE_SIZE)

    # -- roots -----------------------------------------------------------------------------

    def _create_heap(self, index: int, kind: PoolKind) -> _Heap:
        pages = self._bucket_pages()
        address = self._reserve(kind, pages)
        self.machine.space.map_range(address, pages * PAGE_SIZE, executable=False)
        return _Heap(index, kind, address)

    def _write_roots(self) -> None:
        machine = self.machine
        layout = self.layout
        machine.write_fields(self.globals, "_RTLP_HP_HEAP_GLOBALS", {"HeapKey": self.heap_key, "LfhKey": self.lfh_key})
        machine.write_fields(self.pool_state, "_EX_POOL_HEAP_MANAGER_STATE", {"HeapManager.Globals": self.globals, "NumberOfPools": 1})
        heaps = self.pool_state + layout.offset_of("_EX_POOL_HEAP_MANAGER_STATE", "PoolNode") + layout.offset_of("_EX_HEAP_POOL_NODE", "Heaps")
        for heap in self.heaps:
            machine.write_pointer(heaps + heap.index * self.pointer_size, heap.address)

    # -- allocation ------------------------------------------------------------------------

    def _allocate_small(self, size: int, tag: bytes, kind: PoolKind, role: str) -> PoolBlock:
        units = self.headers.units(size)
        block_size = units * self.unit
        heap = self._heap_for(kind)
        bucket = None
        if block_size <= LFH_MAX_BLOCK:
            bucket = heap.buckets.get(block_size)
            if bucket is None:
                bucket = heap.buckets[block_size] = _Bucket(block_size // self.unit, block_size)
            bucket.allocations += 1
        if bucket is not None and bucket.active:
            return self._allocate_lfh(heap, bucket, tag, kind, role)
        return self._allocate_vs(heap, block_size, tag, kind, role)

    def _big_pages(self, kind: PoolKind, pages: int) -> int:
        if self.first_descriptor + pages > UNITS_PER_SEGMENT:
            raise ValueError(f"{pages} pages do not fit a page segment (large allocations are not modelled)")
        return self._new_range(self._heap_for(kind), pages, RANGE_BACKEND)

    def _release_big_pages(self, block: PoolBlock) -> None:
        heap = self._heap_for(block.kind)
        segment = next(s for s in heap.segments if s.address <= block.body < s.address + SEGMENT_SIZE)
        first = (block.body - segment.address) // PAGE_SIZE
        position = next(i for i, (unit, _, _) in enumerate(segment.ranges) if unit == first)
        _, units, _ = segment.ranges[position]
        segment.ranges[position] = (first, units, RANGE_FREE)
        for page in range(units):
            self.machine.space.unmap_page(block.body + page * PAGE_SIZE)

    def _allocate_lfh(self, heap: _Heap, bucket: _Bucket, tag: bytes, kind: PoolKind, role: str) -> PoolBlock:
        # Slots are never handed out twice, so only the newest subsegment can have free ones.
        subsegment = bucket.subsegments[-1] if bucket.subsegments else None
        if subsegment is None or not subsegment.free_slots:
            subsegment = self._new_lfh_subsegment(heap, bucket)
        # The LFH hands out a random free block of the subsegment, not the next one.
        position = self._rng.randrange(len(subsegment.free_slots))
        slot = subsegment.free_slots[position]
        subsegment.free_slots[position] = subsegment.free_slots[-1]
        subsegment.free_slots.pop()
        header = subsegment.slot_address(slot)
        block = PoolBlock(header, header + self.headers.size, bucket.block_size, tag, kind, "lfh", subsegment.address, role)
        subsegment.blocks[slot] = block
        self._write_block(block, bucket.block_size // self.unit)
        return block

    def _write_block(self, block: PoolBlock, units: int) -> None:
        self.machine.space.write(block.header, self.headers.pack(units, block.tag, block.kind.header_pool_type)
                                 + bytes(block.size - self.headers.size))

    def _lfh_geometry(self, pages: int, block_size: int) -> Tuple[int, int]:
        """(FirstBlockOffset, slot count): the bitmap (2 bits a slot) between header and blocks."""
        bitmap = self.layout.offset_of("_HEAP_LFH_SUBSEGMENT", "BlockBitmap")
        total = pages * PAGE_SIZE
        slots = (total - bitmap) // block_size
        while True:
            bitmap_bytes = -(-2 * slots // (8 * self.pointer_size)) * self.pointer_size
            first = self._align(bitmap + bitmap_bytes)
            fitting = (total - first) // block_size
            if fitting >= slots:
                return first, slots
            slots = fitting

    def _new_lfh_subsegment(self, heap: _Heap, bucket: _Bucket) -> _LfhSubsegment:
        pages = 1 if bucket.block_size <= 0x100 else 2
        address = self._new_range(heap, pages, RANGE_LFH)
        first, slots = self._lfh_geometry(pages, bucket.block_size)
        size = bucket.block_size
        usable = [slot for slot in range(slots)
                  if (first + slot * size) // PAGE_SIZE == (first + (slot + 1) * size - 1) // PAGE_SIZE]
        subsegment = _LfhSubsegment(address, pages, bucket, first, slots, usable)
        bucket.subsegments.append(subsegment)
        return subsegment

    def _new_range(self, heap: _Heap, units: int, flags: int) -> int:
        """``units`` pages of a page segment of ``heap`` for a subsegment, mapped."""
        segment = heap.segments[-1] if heap.segments else None
        if segment is None or segment.next_unit + units > UNITS_PER_SEGMENT:
            segment = _Segment(self._reserve(heap.kind, UNITS_PER_SEGMENT), self.first_descriptor)
            self.machine.space.map_range(segment.address, self.first_descriptor * PAGE_SIZE, executable=False)
            heap.segments.append(segment)
        first = segment.next_unit
        segment.ranges.append((first, units, flags))
        segment.next_unit += units
        address = segment.address + first * PAGE_SIZE
        self.machine.space.map_range(address, units * PAGE_SIZE, executable=heap.kind.executable)
        return address

    def _allocate_vs(self, heap: _Heap, block_size: int, tag: bytes, kind: PoolKind, role: str) -> PoolBlock:
        need = block_size + self.vs_header
        for subsegment in heap.vs_subsegments:
            chunk = self._carve(subsegment, need)
            if chunk is not None:
                break
        else:
            subsegment = self._new_vs_subsegment(heap)
            chunk = self._carve(subsegment, need)
            assert chunk is not None
        header = subsegment.address + chunk.offset + self.vs_header
        block = PoolBlock(header, header + self.headers.size, block_size, tag, kind, "vs", subsegment.address, role)
        chunk.block = block
        self._write_block(block, block_size // self.unit)
        return block

    def _new_vs_subsegment(self, heap: _Heap) -> _VsSubsegment:
        address = self._new_range(heap, VS_SUBSEGMENT_PAGES, RANGE_VS)
        end = VS_SUBSEGMENT_PAGES * PAGE_SIZE
        subsegment = _VsSubsegment(address, VS_SUBSEGMENT_PAGES, [_Chunk(self.vs_first_chunk, end - self.vs_first_chunk, "free")])
        heap.vs_subsegments.append(subsegment)
        return subsegment

    def _carve(self, subsegment: _VsSubsegment, need: int) -> Optional[_Chunk]:
        """The first free chunk that holds ``need`` bytes inside one page, split to size."""
        for position, chunk in enumerate(subsegment.chunks):
            if chunk.state != "free" or not chunk.fresh:
                continue
            start = chunk.offset
            page_end = (start // PAGE_SIZE + 1) * PAGE_SIZE
            if start + need > page_end:
                # The rest of this page cannot hold the block: carve it off and start at the page.
                gap = page_end - start
                if start + gap + need > chunk.offset + chunk.size:
                    continue
                if gap >= self.vs_min_free:
                    subsegment.chunks.insert(position, _Chunk(start, gap, "free"))
                    position += 1
                elif position > 0 and not subsegment.chunks[position - 1].padded:
                    subsegment.chunks[position - 1].size += gap
                    subsegment.chunks[position - 1].padded = True
                else:
                    continue
                chunk.offset += gap
                chunk.size -= gap
                start = chunk.offset
            if need > chunk.size:
                continue
            rest = chunk.size - need
            padded = False
            if rest and rest < self.vs_min_free:
                need += rest  # too small to be a free chunk of its own: stays with the block
                rest, padded = 0, True
            allocated = _Chunk(start, need, "allocated", padded=padded)
            subsegment.chunks[position] = allocated
            if rest:
                subsegment.chunks.insert(position + 1, _Chunk(start + need, rest, "free"))
            return allocated
        return None

    # -- free --------------------------------------------------------------------------------

    def _free_small(self, block: PoolBlock) -> str:
        block.state = FREED
        heap = self._heap_for(block.kind)
        if block.container == "lfh":
            block.how = FreedHow.LFH  # the bitmap bits are written by finish(); the block is untouched
            return block.how
        subsegment, chunk = self._find_chunk(heap, block)
        if len(heap.delayed) >= VS_DELAY_FREE_DEPTH:
            self._flush_delayed(heap)
        chunk.state = "delay"
        heap.delayed.append((subsegment, chunk))
        block.how = FreedHow.VS_DELAY
        block.header_intact = False  # the list link lies over the pool header's size fields
        return block.how

    def _find_chunk(self, heap: _Heap, block: PoolBlock) -> Tuple[_VsSubsegment, _Chunk]:
        for subsegment in heap.vs_subsegments:
            if subsegment.address == block.subsegment:
                for chunk in subsegment.chunks:
                    if chunk.block is block:
                        return subsegment, chunk
        raise KeyError(f"no VS chunk holds block {block.header:#x}")

    def _flush_delayed(self, heap: _Heap) -> None:
        delayed, heap.delayed = heap.delayed, []
        for subsegment, chunk in delayed:
            self._free_chunk(subsegment, chunk)

    def _free_chunk(self, subsegment: _VsSubsegment, chunk: _Chunk) -> None:
        """A real VS free: the chunk becomes free and is merged with free neighbours."""
        assert chunk.block is not None
        chunk.block.how = FreedHow.VS
        chunk.block.header_intact = False  # heads a free range: the free-tree node covers its pool header
        chunk.state = "free"
        if self._coalesce(subsegment, chunk):
            # Merged into the free chunk before it: its stale headers stay, the tag readable.
            chunk.block.header_intact = True

    @staticmethod
    def _coalesce(subsegment: _VsSubsegment, chunk: _Chunk) -> bool:
        """Merge a chunk just freed with its free neighbours (the heap keeps no two free chunks
        side by side); True when it went into the chunk before it."""
        chunk.fresh = False
        chunks = subsegment.chunks
        position = chunks.index(chunk)
        if position + 1 < len(chunks) and chunks[position + 1].state == "free":
            chunk.size += chunks.pop(position + 1).size
        if position > 0 and chunks[position - 1].state == "free":
            chunks[position - 1].size += chunk.size
            chunks[position - 1].fresh = False
            chunks.pop(position)
            return True
        return False

    # -- noise -------------------------------------------------------------------------------

    def _boot_noise(self) -> None:
        """Early boot in every heap: a few blocks of every LFH size (not enough to activate a
        bucket on their own, so they are VS chunks) and some larger VS blocks."""
        plan = random.Random(NOISE_PLAN_SEED)
        for kind in (PoolKind.NONPAGED, PoolKind.PAGED):
            sizes = [units * self.unit - self.headers.size for units in range(2, LFH_MAX_BLOCK // self.unit + 1)
                     for _ in range(plan.randrange(4, ACTIVATION_THRESHOLD - 3))]
            sizes += [plan.randrange(LFH_MAX_BLOCK, PAGE_SIZE // 2, self.unit) for _ in range(8)]
            plan.shuffle(sizes)
            self._noise(self.machine, plan, self._rng, kind, sizes)

    def fill_noise(self, kind: PoolKind, target_bytes: int, rng: random.Random) -> Dict[str, int]:
        """Fill ``kind``'s heap with ``target_bytes`` of whole subsegments of noise, as a busy
        machine's heap is: LFH subsegments of every bucket (a third of their blocks freed: bits
        00, bytes intact) and VS subsegments of larger blocks (a third freed: free chunks,
        merged). Written a page at a time, without a PoolBlock each (the ground truth counts
        them); returns the counts."""
        heap = self._heap_for(kind)
        counts = {"lfh_blocks": 0, "lfh_freed": 0, "vs_blocks": 0, "vs_freed": 0, "bytes": 0}
        sizes = [units * self.unit for units in range(2, LFH_MAX_BLOCK // self.unit + 1)]
        while counts["bytes"] < target_bytes:
            if rng.randrange(8):
                counts["bytes"] += self._fill_lfh(heap, rng.choice(sizes), kind, rng, counts)
            else:
                counts["bytes"] += self._fill_vs(heap, kind, rng, counts)
        return counts

    def _fill_lfh(self, heap: _Heap, block_size: int, kind: PoolKind, rng: random.Random, counts: Dict[str, int]) -> int:
        bucket = heap.buckets.setdefault(block_size, _Bucket(block_size // self.unit, block_size))
        bucket.allocations = max(bucket.allocations, ACTIVATION_THRESHOLD + 1)  # long since active
        subsegment = self._new_lfh_subsegment(heap, bucket)
        size = subsegment.units * PAGE_SIZE
        data = bytearray(rng.getrandbits(8 * size).to_bytes(size, "little"))
        data[: subsegment.first_offset] = bytes(subsegment.first_offset)  # the header, written by finish()
        subsegment.bulk_busy = bytearray(subsegment.slot_count)
        units = block_size // self.unit
        for slot in subsegment.free_slots:
            offset = subsegment.first_offset + slot * block_size
            data[offset : offset + self.headers.size] = self.headers.pack(units, rng.choice(NOISE_TAGS), kind.header_pool_type)
            freed = rng.randrange(3) == 0
            subsegment.bulk_busy[slot] = 0 if freed else 1
            counts["lfh_freed" if freed else "lfh_blocks"] += 1
        subsegment.free_slots = []
        self.machine.space.write(subsegment.address, bytes(data))
        self.bulk_subsegments.append(subsegment.address)
        return size

    def _fill_vs(self, heap: _Heap, kind: PoolKind, rng: random.Random, counts: Dict[str, int]) -> int:
        subsegment = self._new_vs_subsegment(heap)
        size = subsegment.units * PAGE_SIZE
        data = bytearray(rng.getrandbits(8 * size).to_bytes(size, "little"))
        data[: self.vs_first_chunk] = bytes(self.vs_first_chunk)
        carved = []
        while True:
            block_size = rng.randrange(LFH_MAX_BLOCK + self.unit, PAGE_SIZE - self.vs_header, self.unit)
            chunk = self._carve(subsegment, block_size + self.vs_header)
            if chunk is None:
                break
            header = chunk.offset + self.vs_header
            data[header : header + self.headers.size] = self.headers.pack(block_size // self.unit, rng.choice(NOISE_TAGS),
                                                                          kind.header_pool_type)
            carved.append(chunk)
        for chunk in carved:
            if rng.randrange(3) == 0:
                chunk.state = "free"
                self._coalesce(subsegment, chunk)
                counts["vs_freed"] += 1
            else:
                counts["vs_blocks"] += 1
        for chunk in subsegment.chunks:  # nothing more is carved from a bulk subsegment
            chunk.fresh = False
        self.machine.space.write(subsegment.address, bytes(data))
        self.bulk_subsegments.append(subsegment.address)
        return size

    # -- metadata ------------------------------------------------------------------------------

    def finish(self) -> None:
        for heap in self.heaps:
            for bucket in heap.buckets.values():
                for subsegment in bucket.subsegments:
                    self._write_lfh_subsegment(subsegment)
            for subsegment in heap.vs_subsegments:
                self._write_vs_subsegment(subsegment)
            self._write_delay_list(heap)
            self._write_free_tree(heap)
            for segment in heap.segments:
                self._write_segment(heap, segment)
            self._write_heap(heap)

    def _encoded_offsets(self, subsegment: _LfhSubsegment) -> int:
        shift = (subsegment.address >> 12) if self.layout.build and self.layout.build >= LFH_SHIFT_FROM_BUILD \
            else (subsegment.address & 0xFFFF_FFFF) >> 12
        decoded = subsegment.bucket.block_size | (subsegment.first_offset << 16)
        return (decoded ^ (self.lfh_key & 0xFFFF_FFFF) ^ shift) & 0xFFFF_FFFF

    def _write_lfh_subsegment(self, subsegment: _LfhSubsegment) -> None:
        layout = self.layout
        bitmap = bytearray(subsegment.first_offset - layout.offset_of("_HEAP_LFH_SUBSEGMENT", "BlockBitmap"))
        busy_slots = [slot for slot, block in subsegment.blocks.items() if not block.freed]
        if subsegment.bulk_busy is not None:
            busy_slots = [slot for slot, busy in enumerate(subsegment.bulk_busy) if busy]
        for slot in busy_slots:
            bitmap[slot // 4] |= 0b01 << (2 * (slot % 4))
        busy = len(busy_slots)
        usable = len(subsegment.free_slots) + len(subsegment.blocks)
        self.machine.write_fields(subsegment.address, "_HEAP_LFH_SUBSEGMENT", {
            "FreeCount": usable - busy, "BlockCount": subsegment.slot_count,
            "BlockOffsets.EncodedData": self._encoded_offsets(subsegment),
        })
        self.machine.space.write(subsegment.address + layout.offset_of("_HEAP_LFH_SUBSEGMENT", "BlockBitmap"), bytes(bitmap))

    def _chunk_header(self, address: int, size: int, previous: int, allocated: bool) -> bytes:
        """The encoded first word of a VS chunk header: sizes in granularity units."""
        spec = self.layout.field("_HEAP_VS_CHUNK_HEADER_SIZE", "HeaderBits")
        decoded = self.layout.pack("_HEAP_VS_CHUNK_HEADER_SIZE", {
            "UnsafeSize": size // self.unit, "UnsafePrevSize": previous // self.unit, "Allocated": 1 if allocated else 0,
        })
        value = int.from_bytes(decoded[spec.offset : spec.offset + spec.size], "little")
        width = (1 << (8 * spec.size)) - 1
        return ((value ^ address ^ self.heap_key) & width).to_bytes(spec.size, "little")

    def _write_vs_subsegment(self, subsegment: _VsSubsegment) -> None:
        space = self.machine.space
        size = subsegment.units * PAGE_SIZE // self.unit
        self.machine.write_fields(subsegment.address, "_HEAP_VS_SUBSEGMENT", {
            "Size": size, "Signature": (size ^ VS_SIGNATURE_KEY) & 0x7FFF, "FullCommit": 0,
            "CommitBitmap": (1 << subsegment.units) - 1,
        })
        previous = 0
        for chunk in subsegment.chunks:
            address = subsegment.address + chunk.offset
            space.write(address, self._chunk_header(canonical(address), chunk.size, previous, chunk.state != "free"))
            previous = chunk.size

    def _write_delay_list(self, heap: _Heap) -> None:
        """The VS delay-free list: links at each chunk's block (where its pool header begins)."""
        entries = [subsegment.address + chunk.offset + self.vs_header for subsegment, chunk in heap.delayed]
        following = 0
        for entry in entries:  # oldest first: each entry names the one pushed before it
            self.machine.write_pointer(entry, following)
            following = entry
        context = heap.address + self.layout.offset_of("_SEGMENT_HEAP", "VsContext")
        head = context + self.layout.offset_of("_HEAP_VS_CONTEXT", "DelayFreeContext") \
            + self.layout.offset_of("_HEAP_VS_DELAY_FREE_CONTEXT", "ListHead")
        write_slist_header(self.machine, head, following, len(entries))

    def _write_free_tree(self, heap: _Heap) -> None:
        """The free chunks as a valid red-black tree keyed by size (then address); the nodes
        overwrite each free chunk's pool header."""
        layout = self.layout
        node_offset = layout.offset_of("_HEAP_VS_CHUNK_FREE_HEADER", "Node")
        free = sorted((chunk.size, subsegment.address + chunk.offset + node_offset)
                      for subsegment in heap.vs_subsegments for chunk in subsegment.chunks if chunk.state == "free")
        nodes = [node for _, node in free]
        links: List[Tuple[int, int, int, int, int]] = []  # node, left, right, parent, depth

        def build(low: int, high: int, parent: int, depth: int) -> int:
            if low >= high:
                return 0
            middle = (low + high) // 2
            node = nodes[middle]
            left = build(low, middle, node, depth + 1)
            right = build(middle + 1, high, node, depth + 1)
            links.append((node, left, right, parent, depth))
            return node

        root = build(0, len(nodes), 0, 0)
        deepest = max((link[4] for link in links), default=0)
        perfect = len(nodes) == (1 << (deepest + 1)) - 1
        # Black everywhere but on an incomplete deepest level, whose nodes are red leaves: every
        # path to a leaf then counts the same black nodes and no red node has a red child.
        for node, left, right, parent, depth in links:
            red = 1 if (not perfect and depth == deepest) else 0
            self.machine.write_fields(node, "_RTL_BALANCED_NODE", {"Left": left, "Right": right, "ParentValue": parent | red})
        tree = heap.address + layout.offset_of("_SEGMENT_HEAP", "VsContext") + layout.offset_of("_HEAP_VS_CONTEXT", "FreeChunkTree")
        self.machine.write_fields(tree, "_RTL_RB_TREE", {"Root": root})

    def _write_segment(self, heap: _Heap, segment: _Segment) -> None:
        layout = self.layout
        context = heap.address + layout.offset_of("_SEGMENT_HEAP", "SegContexts")
        key = PAGE_SEGMENT_KEY if not layout.build or layout.build <= PAGE_SEGMENT_KEY_LAST_BUILD else 0
        signature = (canonical(segment.address) ^ canonical(context) ^ self.heap_key ^ key) & self._mask
        self.machine.write_fields(segment.address, "_HEAP_PAGE_SEGMENT", {"Signature": signature})
        descriptor_size = layout.size_of("_HEAP_PAGE_RANGE_DESCRIPTOR")
        ranges: List[Tuple[int, int, int]] = []
        tail = [(segment.next_unit, UNITS_PER_SEGMENT - segment.next_unit, RANGE_FREE)] if segment.next_unit < UNITS_PER_SEGMENT else []
        for first, units, flags in segment.ranges + tail:
            if flags == RANGE_FREE and ranges and ranges[-1][2] == RANGE_FREE:
                ranges[-1] = (ranges[-1][0], ranges[-1][1] + units, RANGE_FREE)  # free ranges merge
            else:
                ranges.append((first, units, flags))
        for first, units, flags in ranges:
            descriptor = segment.address + first * descriptor_size
            values = {"RangeFlags": flags, "UnitSize": units}
            if flags != RANGE_FREE:
                values["TreeSignature"] = DESCRIPTOR_SIGNATURE
            self.machine.write_fields(descriptor, "_HEAP_PAGE_RANGE_DESCRIPTOR", values)
            if flags == RANGE_FREE:
                continue
            for offset in range(1, units):
                self.machine.write_fields(descriptor + offset * descriptor_size, "_HEAP_PAGE_RANGE_DESCRIPTOR",
                                          {"RangeFlags": RANGE_INTERIOR, "UnitOffset": offset})

    def _write_heap(self, heap: _Heap) -> None:
        machine = self.machine
        layout = self.layout
        base = heap.address
        machine.write_fields(base, "_SEGMENT_HEAP", {"Signature": SEGMENT_HEAP_SIGNATURE})
        contexts = base + layout.offset_of("_SEGMENT_HEAP", "SegContexts")
        context_size = layout.size_of("_HEAP_SEG_CONTEXT")
        lfh = base + layout.offset_of("_SEGMENT_HEAP", "LfhContext")
        vs = base + layout.offset_of("_SEGMENT_HEAP", "VsContext")
        segment_header = layout.size_of("_HEAP_PAGE_SEGMENT")
        for number, shift in enumerate((12, LARGE_UNIT_SHIFT)):
            context = contexts + number * context_size
            segment_bytes = UNITS_PER_SEGMENT << shift
            machine.write_fields(context, "_HEAP_SEG_CONTEXT", {
                "SegmentMask": ~(segment_bytes - 1) & self._mask, "UnitShift": shift, "PagesPerUnitShift": shift - 12,
                "FirstDescriptorIndex": -(-segment_header // (1 << shift)), "LfhContext": lfh, "VsContext": vs,
                "Heap": base, "SegmentCount": len(heap.segments) if number == 0 else 0,
            })
            head = context + layout.offset_of("_HEAP_SEG_CONTEXT", "SegmentListHead")
            machine.write_list(head, [(segment.address, True) for segment in heap.segments] if number == 0 else [])
        subsegments = vs + layout.offset_of("_HEAP_VS_CONTEXT", "SubsegmentList")
        machine.write_list(subsegments, [(s.address, True) for s in heap.vs_subsegments])
        self._write_buckets(heap, lfh)

    def _write_buckets(self, heap: _Heap, lfh: int) -> None:
        """Activated buckets: their ``_HEAP_LFH_BUCKET`` after the heap, subsegments linked into
        its available or full list; ``LfhContext.Buckets[index]`` points at it."""
        machine = self.machine
        layout = self.layout
        bucket_size = layout.size_of("_HEAP_LFH_BUCKET")
        first = heap.address + self._align(layout.size_of("_SEGMENT_HEAP"))
        state = layout.offset_of("_HEAP_LFH_BUCKET", "State")
        owner = "_HEAP_LFH_SUBSEGMENT_OWNER"
        for bucket in sorted(heap.buckets.values(), key=lambda b: b.index):
            if not bucket.subsegments:
                continue
            bucket.address = first + (bucket.index - 1) * bucket_size
            machine.write_pointer(lfh + layout.offset_of("_HEAP_LFH_CONTEXT", "Buckets") + bucket.index * self.pointer_size,
                                  bucket.address)
            available = [s for s in bucket.subsegments if s.free_slots or any(b.freed for b in s.blocks.values())]
            full = [s for s in bucket.subsegments if s not in available]
            machine.write_fields(bucket.address + state, owner, {
                "IsBucket": 1, "BucketIndex": bucket.index, "AvailableSubsegmentCount": len(available)})
            machine.write_list(bucket.address + state + layout.offset_of(owner, "AvailableSubsegmentList"),
                               [(s.address, True) for s in available])
            machine.write_list(bucket.address + state + layout.offset_of(owner, "FullSubsegmentList"),
                               [(s.address, True) for s in full])
            machine.write_fields(bucket.address, "_HEAP_LFH_BUCKET", {
                "TotalBlockCount": sum(s.slot_count for s in bucket.subsegments),
                "TotalSubsegmentCount": len(bucket.subsegments)})
            for subsegment in bucket.subsegments:
                machine.write_fields(subsegment.address, "_HEAP_LFH_SUBSEGMENT", {"Owner": bucket.address})

    def describe(self) -> Dict[str, object]:
        mask = (1 << 48) - 1
        return {
            "allocator": self.name,
            "pool_state": self.pool_state & mask,
            "heap_globals": self.globals & mask,
            "heaps": [{"index": h.index, "address": h.address & mask, "pool": h.kind.value,
                       "segments": [s.address & mask for s in h.segments]} for h in self.heaps],
            "lfh_max_block": LFH_MAX_BLOCK,
            "activation_threshold": ACTIVATION_THRESHOLD,
            "bulk_subsegments": [address & mask for address in self.bulk_subsegments],
        }
