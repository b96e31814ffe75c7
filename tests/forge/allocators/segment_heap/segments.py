"""The segment heap's backend: page segments, whose ranges of whole pages hold the subsegments.

A heap's ``SegContexts[0]`` links its page segments (``_HEAP_PAGE_SEGMENT``: 1 MiB aligned, 256
units of 4 KiB). A segment's descriptors (``DescArray``, from ``FirstDescriptorIndex``) describe
its ranges: an LFH or VS subsegment, a big-pool allocation (``RANGE_BACKEND``), or the free
tail; the package's docstring gives the fields a reader checks.
"""

import random
from dataclasses import dataclass, field
from typing import List, Tuple

from ...memory.machine import Machine
from ...memory.physical import PAGE_SIZE, canonical
from ...profiles.layout import KernelLayout
from ..pool import PoolKind

PAGE_SEGMENT_KEY = 0xA2E64EAD_A2E64EAD  # 0 from build 26100 (MemProcFS)
PAGE_SEGMENT_KEY_LAST_BUILD = 26099
DESCRIPTOR_SIGNATURE = 0xCCDDCCDD
RANGE_LFH = 0xB
RANGE_VS = 0xF
RANGE_BACKEND = 0x3  # a backend allocation of whole pages (big pool): allocated, first of its range
RANGE_INTERIOR = 0x1
RANGE_FREE = 0x0
UNITS_PER_SEGMENT = 256  # context 0: 256 descriptors of 4 KiB units, a 1 MiB segment
SEGMENT_SIZE = UNITS_PER_SEGMENT * PAGE_SIZE


def first_descriptor(layout: KernelLayout) -> int:
    """The first usable unit of a page segment: its header (and descriptor array) fills those before."""
    return -(-layout.size_of("_HEAP_PAGE_SEGMENT") // PAGE_SIZE)


@dataclass(eq=False)
class _Segment:
    address: int
    next_unit: int
    ranges: List[Tuple[int, int, int]] = field(default_factory=list)  # (first unit, units, RangeFlags)


class PoolRegions:
    """Kernel VA for heap metadata and page segments: each pool's region handed out upwards,
    whole segments at a time, a random number of segments apart (``rng``: the pool's stream)."""

    def __init__(self, machine: Machine, rng: random.Random) -> None:
        self._rng = rng
        self._next_segment = {
            "nonpaged": machine.plan.nonpaged_pool & ~(SEGMENT_SIZE - 1),
            "paged": machine.plan.paged_pool & ~(SEGMENT_SIZE - 1),
        }

    def reserve(self, kind: PoolKind, pages: int) -> int:
        """Page-aligned kernel VA for heap metadata or a page segment, at a random distance."""
        region = "paged" if kind is PoolKind.PAGED else "nonpaged"
        size = -(-pages * PAGE_SIZE // SEGMENT_SIZE) * SEGMENT_SIZE
        address = self._next_segment[region]
        self._next_segment[region] = address + size + SEGMENT_SIZE * self._rng.randrange(4)
        return address


class PageSegments:
    """The page segments of one heap (its ``SegContexts[0]``) and the ranges handed out of them."""

    def __init__(self, machine: Machine, regions: PoolRegions, kind: PoolKind) -> None:
        self.machine = machine
        self.kind = kind
        self._regions = regions
        self.first_descriptor = first_descriptor(machine.layout)
        self.segments: List[_Segment] = []

    def new_range(self, units: int, flags: int, source: int = 0) -> int:
        """``units`` pages of a page segment for a subsegment or a big allocation, mapped (onto
        frames of the physical memory's procedural ``source`` when it is not 0)."""
        segment = self.segments[-1] if self.segments else None
        if segment is None or segment.next_unit + units > UNITS_PER_SEGMENT:
            segment = _Segment(self._regions.reserve(self.kind, UNITS_PER_SEGMENT), self.first_descriptor)
            self.machine.space.map_range(segment.address, self.first_descriptor * PAGE_SIZE, executable=False)
            self.segments.append(segment)
        first = segment.next_unit
        segment.ranges.append((first, units, flags))
        segment.next_unit += units
        address = segment.address + first * PAGE_SIZE
        if source:
            self.machine.space.map_procedural(address, units, source, executable=self.kind.executable)
        else:
            self.machine.space.map_range(address, units * PAGE_SIZE, executable=self.kind.executable)
        return address

    def release_range(self, address: int) -> None:
        """A backend range given back: free (merged with free neighbours when written), its pages
        decommitted (unmapped)."""
        segment = next(s for s in self.segments if s.address <= address < s.address + SEGMENT_SIZE)
        first = (address - segment.address) // PAGE_SIZE
        position = next(i for i, (unit, _, _) in enumerate(segment.ranges) if unit == first)
        _, units, _ = segment.ranges[position]
        segment.ranges[position] = (first, units, RANGE_FREE)
        for page in range(units):
            self.machine.space.unmap_page(address + page * PAGE_SIZE)

    def write(self, context: int, heap_key: int) -> None:
        """Every segment's signature and range descriptors; ``context``: the heap's ``SegContexts[0]``."""
        for segment in self.segments:
            self._write_segment(segment, context, heap_key)

    def _write_segment(self, segment: _Segment, context: int, heap_key: int) -> None:
        layout = self.machine.layout
        key = PAGE_SEGMENT_KEY if not layout.build or layout.build <= PAGE_SEGMENT_KEY_LAST_BUILD else 0
        mask = (1 << (8 * layout.pointer_size)) - 1
        signature = (canonical(segment.address) ^ canonical(context) ^ heap_key ^ key) & mask
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
