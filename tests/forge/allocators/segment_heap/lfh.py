"""The segment heap's low-fragmentation heap (LFH): buckets of one block size, their subsegments.

A block size's bucket is activated by its 17th allocation; from then on the LFH serves that size
(up to ``LFH_MAX_BLOCK``) from subsegments of equal slots, a random free slot each time, and a
free only clears the block's two bitmap bits. The package's docstring gives the encodings.
"""

import random
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ...memory.machine import Machine
from ...memory.physical import PAGE_SIZE
from ..pool import NOISE_TAGS, FreedHow, PoolBlock, PoolHeaders, PoolKind
from .noise import BlockHeaders, NoisePages, noise_blocks
from .segments import RANGE_LFH, PageSegments

LFH_MAX_BLOCK = 0x200
ACTIVATION_THRESHOLD = 16  # allocations a bucket serves from VS before the LFH takes over
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
    # Bulk noise (fill): slots whose block is busy, without a PoolBlock each.
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


class LfhContext:
    """The LFH of one heap (its ``LfhContext``): buckets by block size and their subsegments."""

    def __init__(self, machine: Machine, backend: PageSegments, headers: PoolHeaders, rng: random.Random,
                 lfh_key: int) -> None:
        self.machine = machine
        self.layout = machine.layout
        self.backend = backend
        self.headers = headers
        self.unit = headers.unit
        self.pointer_size = self.layout.pointer_size
        self._rng = rng
        self.lfh_key = lfh_key
        self.buckets: Dict[int, _Bucket] = {}  # block size -> bucket

    def count(self, block_size: int) -> bool:
        """One more request for ``block_size`` bytes (at most ``LFH_MAX_BLOCK``); True once its
        bucket is active, so that the LFH serves it."""
        bucket = self.buckets.get(block_size)
        if bucket is None:
            bucket = self.buckets[block_size] = _Bucket(block_size // self.unit, block_size)
        bucket.allocations += 1
        return bucket.active

    # -- allocation and free ---------------------------------------------------------------

    def allocate(self, block_size: int, tag: bytes, kind: PoolKind, role: str) -> PoolBlock:
        bucket = self.buckets[block_size]
        # Slots are never handed out twice, so only the newest subsegment can have free ones.
        subsegment = bucket.subsegments[-1] if bucket.subsegments else None
        if subsegment is None or not subsegment.free_slots:
            subsegment = self._new_subsegment(bucket)
        # The LFH hands out a random free block of the subsegment, not the next one.
        position = self._rng.randrange(len(subsegment.free_slots))
        slot = subsegment.free_slots[position]
        subsegment.free_slots[position] = subsegment.free_slots[-1]
        subsegment.free_slots.pop()
        header = subsegment.slot_address(slot)
        block = PoolBlock(header, header + self.headers.size, bucket.block_size, tag, kind, "lfh", subsegment.address, role)
        subsegment.blocks[slot] = block
        self.machine.space.write(block.header, self.headers.block_bytes(block))
        return block

    @staticmethod
    def free(block: PoolBlock) -> str:
        """Only the block's two bitmap bits go to 0 (written by :meth:`write_subsegments`); no
        byte of the block changes."""
        block.how = FreedHow.LFH
        return block.how

    def _geometry(self, pages: int, block_size: int) -> Tuple[int, int]:
        """(FirstBlockOffset, slot count): the bitmap (2 bits a slot) between header and blocks."""
        bitmap = self.layout.offset_of("_HEAP_LFH_SUBSEGMENT", "BlockBitmap")
        total = pages * PAGE_SIZE
        slots = (total - bitmap) // block_size
        while True:
            bitmap_bytes = -(-2 * slots // (8 * self.pointer_size)) * self.pointer_size
            first = self.headers.align(bitmap + bitmap_bytes)
            fitting = (total - first) // block_size
            if fitting >= slots:
                return first, slots
            slots = fitting

    def _new_subsegment(self, bucket: _Bucket, source: int = 0) -> _LfhSubsegment:
        """``source``: the procedural content source of its pages (bulk noise), 0 for stored pages."""
        pages = 1 if bucket.block_size <= 0x100 else 2
        address = self.backend.new_range(pages, RANGE_LFH, source)
        first, slots = self._geometry(pages, bucket.block_size)
        size = bucket.block_size
        usable = [slot for slot in range(slots)
                  if (first + slot * size) // PAGE_SIZE == (first + (slot + 1) * size - 1) // PAGE_SIZE]
        subsegment = _LfhSubsegment(address, pages, bucket, first, slots, usable)
        bucket.subsegments.append(subsegment)
        return subsegment

    # -- noise -------------------------------------------------------------------------------

    def fill(self, block_size: int, kind: PoolKind, rng: random.Random, counts: Dict[str, int],
             noise: NoisePages) -> _LfhSubsegment:
        """A whole subsegment of ``block_size`` noise blocks, a third of them freed, without a
        PoolBlock each (``counts`` counts them); its pages are procedural (``noise.py``)."""
        bucket = self.buckets.setdefault(block_size, _Bucket(block_size // self.unit, block_size))
        bucket.allocations = max(bucket.allocations, ACTIVATION_THRESHOLD + 1)  # long since active
        subsegment = self._new_subsegment(bucket, noise.source)
        subsegment.bulk_busy = bytearray(subsegment.slot_count)
        tags = []
        for slot in subsegment.free_slots:
            tags.append(rng.randrange(len(NOISE_TAGS)))
            freed = rng.randrange(3) == 0
            subsegment.bulk_busy[slot] = 0 if freed else 1
            counts["lfh_freed" if freed else "lfh_blocks"] += 1
        offsets = [subsegment.first_offset + slot * block_size for slot in subsegment.free_slots]
        content = BlockHeaders(self.headers, kind.header_pool_type, rng.getrandbits(48), subsegment.first_offset,
                               noise_blocks(offsets, block_size // self.unit, tags))
        noise.register(subsegment.address, subsegment.units, content)
        subsegment.free_slots = []
        return subsegment

    # -- metadata ------------------------------------------------------------------------------

    def _encoded_offsets(self, subsegment: _LfhSubsegment) -> int:
        shift = (subsegment.address >> 12) if self.layout.build and self.layout.build >= LFH_SHIFT_FROM_BUILD \
            else (subsegment.address & 0xFFFF_FFFF) >> 12
        decoded = subsegment.bucket.block_size | (subsegment.first_offset << 16)
        return (decoded ^ (self.lfh_key & 0xFFFF_FFFF) ^ shift) & 0xFFFF_FFFF

    def write_subsegments(self) -> None:
        """Each subsegment's header: counts, encoded block offsets, the block bitmap."""
        for bucket in self.buckets.values():
            for subsegment in bucket.subsegments:
                self._write_subsegment(subsegment)

    def _write_subsegment(self, subsegment: _LfhSubsegment) -> None:
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

    def write_buckets(self, heap: int, lfh: int) -> None:
        """Activated buckets: their ``_HEAP_LFH_BUCKET`` after the heap (``heap``: its address),
        subsegments linked into its available or full list; ``LfhContext.Buckets[index]`` (at
        ``lfh``) points at it."""
        machine = self.machine
        layout = self.layout
        bucket_size = layout.size_of("_HEAP_LFH_BUCKET")
        first = heap + self.headers.align(layout.size_of("_SEGMENT_HEAP"))
        state = layout.offset_of("_HEAP_LFH_BUCKET", "State")
        owner = "_HEAP_LFH_SUBSEGMENT_OWNER"
        for bucket in sorted(self.buckets.values(), key=lambda b: b.index):
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
