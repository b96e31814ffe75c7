"""The pool heaps of ``nt!ExPoolState``: :class:`SegmentHeapPool`, and one :class:`SegmentHeap` each.

The pool answers the allocator's questions (``pool.PoolAllocator``) by handing each request to
the heap of its pool type; a heap hands it to its LFH once the size's bucket is active, to its
VS allocator otherwise, and big-pool pages to its backend.
"""

import random
from typing import Dict, List, Optional

from ...memory.machine import Machine
from ...memory.physical import PAGE_SIZE
from ...profiles.layout import KernelLayout
from ..big_pool import BigPageTable
from ..pool import FREED, NOISE_PLAN_SEED, PoolAllocator, PoolBlock, PoolHeaders, PoolKind
from .lfh import ACTIVATION_THRESHOLD, LFH_MAX_BLOCK, LfhContext
from .noise import NoisePages
from .segments import RANGE_BACKEND, UNITS_PER_SEGMENT, PageSegments, PoolRegions, first_descriptor
from .vs import VsContext

SEGMENT_HEAP_SIGNATURE = 0xDDEEDDEE
LARGE_UNIT_SHIFT = 16  # context 1's unit
# Heaps of PoolNode[0]: which pool each serves (MemProcFS's reading of the indices).
HEAP_INDEX = {PoolKind.NONPAGED_EXECUTE: 0, PoolKind.NONPAGED: 1, PoolKind.PAGED: 2}
HEAP_KINDS = (PoolKind.NONPAGED_EXECUTE, PoolKind.NONPAGED, PoolKind.PAGED, PoolKind.PAGED)


def heap_pages(layout: KernelLayout, unit: int) -> int:
    """Pages of a heap's metadata: the ``_SEGMENT_HEAP`` and, after it, a ``_HEAP_LFH_BUCKET`` for
    every LFH block size."""
    buckets = LFH_MAX_BLOCK // unit
    return -(-(layout.size_of("_SEGMENT_HEAP") + buckets * layout.size_of("_HEAP_LFH_BUCKET")) // PAGE_SIZE)


class SegmentHeap:
    """One ``_SEGMENT_HEAP`` at ``address``: its backend, LFH and VS contexts, and its header."""

    def __init__(self, index: int, kind: PoolKind, address: int, machine: Machine, regions: PoolRegions,
                 headers: PoolHeaders, rng: random.Random, heap_key: int, lfh_key: int) -> None:
        self.index = index
        self.kind = kind
        self.address = address
        self.machine = machine
        self.heap_key = heap_key
        self.backend = PageSegments(machine, regions, kind)
        self.lfh = LfhContext(machine, self.backend, headers, rng, lfh_key)
        self.vs = VsContext(machine, self.backend, headers, heap_key)

    def allocate(self, block_size: int, tag: bytes, kind: PoolKind, role: str) -> PoolBlock:
        """A block of ``block_size`` bytes (pool header included, in granularity units)."""
        if block_size <= LFH_MAX_BLOCK and self.lfh.count(block_size):
            return self.lfh.allocate(block_size, tag, kind, role)
        return self.vs.allocate(block_size, tag, kind, role)

    def free(self, block: PoolBlock) -> str:
        block.state = FREED
        if block.container == "lfh":
            return self.lfh.free(block)
        return self.vs.free(block)

    def finish(self) -> None:
        """Every structure of the heap, subsegments first, the header last."""
        self.lfh.write_subsegments()
        self.vs.write_subsegments()
        self.vs.write_delay_list(self.address)
        self.vs.write_free_tree(self.address)
        self.backend.write(self.address + self.machine.layout.offset_of("_SEGMENT_HEAP", "SegContexts"), self.heap_key)
        self._write_header()

    def _write_header(self) -> None:
        machine = self.machine
        layout = machine.layout
        base = self.address
        mask = (1 << (8 * layout.pointer_size)) - 1
        machine.write_fields(base, "_SEGMENT_HEAP", {"Signature": SEGMENT_HEAP_SIGNATURE})
        contexts = base + layout.offset_of("_SEGMENT_HEAP", "SegContexts")
        context_size = layout.size_of("_HEAP_SEG_CONTEXT")
        lfh = base + layout.offset_of("_SEGMENT_HEAP", "LfhContext")
        vs = base + layout.offset_of("_SEGMENT_HEAP", "VsContext")
        segment_header = layout.size_of("_HEAP_PAGE_SEGMENT")
        segments = self.backend.segments
        for number, shift in enumerate((12, LARGE_UNIT_SHIFT)):
            context = contexts + number * context_size
            segment_bytes = UNITS_PER_SEGMENT << shift
            machine.write_fields(context, "_HEAP_SEG_CONTEXT", {
                "SegmentMask": ~(segment_bytes - 1) & mask, "UnitShift": shift, "PagesPerUnitShift": shift - 12,
                "FirstDescriptorIndex": -(-segment_header // (1 << shift)), "LfhContext": lfh, "VsContext": vs,
                "Heap": base, "SegmentCount": len(segments) if number == 0 else 0,
            })
            head = context + layout.offset_of("_HEAP_SEG_CONTEXT", "SegmentListHead")
            machine.write_list(head, [(segment.address, True) for segment in segments] if number == 0 else [])
        subsegments = vs + layout.offset_of("_HEAP_VS_CONTEXT", "SubsegmentList")
        machine.write_list(subsegments, [(s.address, True) for s in self.vs.subsegments])
        self.lfh.write_buckets(base, lfh)

    def describe(self) -> Dict[str, object]:
        mask = (1 << 48) - 1
        return {"index": self.index, "address": self.address & mask, "pool": self.kind.value,
                "segments": [s.address & mask for s in self.backend.segments]}


class SegmentHeapPool(PoolAllocator):
    """The pool heaps of ``nt!ExPoolState`` and everything below them."""

    name = "segment_heap"

    def __init__(self, machine: Machine, kernel_base: int, rng: random.Random) -> None:
        super().__init__(PoolHeaders(machine.layout))
        self.machine = machine
        self.layout = layout = machine.layout
        self.kernel_base = kernel_base
        self.unit = self.headers.unit  # the heap's granularity: 16 bytes on x64, 8 on x86
        self.pointer_size = layout.pointer_size
        self.first_descriptor = first_descriptor(layout)
        self.heap_key = rng.getrandbits(8 * self.pointer_size)
        self.lfh_key = rng.getrandbits(8 * self.pointer_size)
        self._rng = rng
        self._regions = PoolRegions(machine, rng)
        self.pool_state = kernel_base + layout.symbol("ExPoolState")
        self.globals = (kernel_base + layout.symbol("RtlpHpHeapGlobals") if layout.has_symbol("RtlpHpHeapGlobals")
                        else machine.allocate_system_pages(1))
        self.heaps = [self._create_heap(index, kind) for index, kind in enumerate(HEAP_KINDS)]
        self.bulk_subsegments: List[int] = []  # filled by fill_noise: their blocks have no PoolBlock
        self._noise_pages: Optional[NoisePages] = None
        self._write_roots()
        self.big_pool = BigPageTable.install(machine, kernel_base)
        self._boot_noise()
        self._big_noise(machine, rng)

    def _heap_for(self, kind: PoolKind) -> SegmentHeap:
        return self.heaps[HEAP_INDEX[kind]]

    # -- roots -----------------------------------------------------------------------------

    def _create_heap(self, index: int, kind: PoolKind) -> SegmentHeap:
        pages = heap_pages(self.layout, self.unit)
        address = self._regions.reserve(kind, pages)
        self.machine.space.map_range(address, pages * PAGE_SIZE, executable=False)
        return SegmentHeap(index, kind, address, self.machine, self._regions, self.headers, self._rng,
                           self.heap_key, self.lfh_key)

    def _write_roots(self) -> None:
        machine = self.machine
        layout = self.layout
        machine.write_fields(self.globals, "_RTLP_HP_HEAP_GLOBALS", {"HeapKey": self.heap_key, "LfhKey": self.lfh_key})
        machine.write_fields(self.pool_state, "_EX_POOL_HEAP_MANAGER_STATE", {"HeapManager.Globals": self.globals, "NumberOfPools": 1})
        heaps = self.pool_state + layout.offset_of("_EX_POOL_HEAP_MANAGER_STATE", "PoolNode") + layout.offset_of("_EX_HEAP_POOL_NODE", "Heaps")
        for heap in self.heaps:
            machine.write_pointer(heaps + heap.index * self.pointer_size, heap.address)

    # -- allocation and free -----------------------------------------------------------------

    def _allocate_small(self, size: int, tag: bytes, kind: PoolKind, role: str) -> PoolBlock:
        block_size = self.headers.units(size) * self.unit
        return self._heap_for(kind).allocate(block_size, tag, kind, role)

    def _big_pages(self, kind: PoolKind, pages: int) -> int:
        if self.first_descriptor + pages > UNITS_PER_SEGMENT:
            raise ValueError(f"{pages} pages do not fit a page segment (large allocations are not modelled)")
        return self._heap_for(kind).backend.new_range(pages, RANGE_BACKEND)

    def _release_big_pages(self, block: PoolBlock) -> None:
        self._heap_for(block.kind).backend.release_range(block.body)

    def _free_small(self, block: PoolBlock) -> str:
        return self._heap_for(block.kind).free(block)

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
        merged). Their pages are procedural (``noise.py``: produced when the image is written,
        the metadata exact), without a PoolBlock each (the ground truth counts them); returns
        the counts."""
        heap = self._heap_for(kind)
        if self._noise_pages is None:
            self._noise_pages = NoisePages(self.machine)
        counts = {"lfh_blocks": 0, "lfh_freed": 0, "vs_blocks": 0, "vs_freed": 0, "bytes": 0}
        sizes = [units * self.unit for units in range(2, LFH_MAX_BLOCK // self.unit + 1)]
        while counts["bytes"] < target_bytes:
            if rng.randrange(8):
                subsegment = heap.lfh.fill(rng.choice(sizes), kind, rng, counts, self._noise_pages)
            else:
                subsegment = heap.vs.fill(kind, rng, counts, self._noise_pages)
            self.bulk_subsegments.append(subsegment.address)
            counts["bytes"] += subsegment.units * PAGE_SIZE
        return counts

    # -- metadata ------------------------------------------------------------------------------

    def finish(self) -> None:
        for heap in self.heaps:
            heap.finish()

    def describe(self) -> Dict[str, object]:
        mask = (1 << 48) - 1
        return {
            "allocator": self.name,
            "pool_state": self.pool_state & mask,
            "heap_globals": self.globals & mask,
            "heaps": [heap.describe() for heap in self.heaps],
            "lfh_max_block": LFH_MAX_BLOCK,
            "activation_threshold": ACTIVATION_THRESHOLD,
            "bulk_subsegments": [address & mask for address in self.bulk_subsegments],
        }
