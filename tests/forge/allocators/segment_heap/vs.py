"""The segment heap's variable-size (VS) allocator: subsegments tiled with chunks.

It serves blocks larger than the LFH's and the first requests of every size; a free goes on
the delay-free list first, then (once the list is full) really frees the chunk, merged with its
free neighbours into the free tree. The package's docstring gives the encodings.
"""

import random
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ...memory.machine import Machine
from ...memory.physical import PAGE_SIZE, canonical
from ..pool import NOISE_TAGS, FreedHow, PoolBlock, PoolHeaders, PoolKind, write_slist_header
from .lfh import LFH_MAX_BLOCK
from .noise import BlockHeaders, NoisePages
from .segments import RANGE_VS, PageSegments

VS_SIGNATURE_KEY = 0x2BED
VS_DELAY_FREE_DEPTH = 32
VS_SUBSEGMENT_PAGES = 16


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


class VsContext:
    """The VS allocator of one heap (its ``VsContext``): subsegments, delay-free list, free tree."""

    def __init__(self, machine: Machine, backend: PageSegments, headers: PoolHeaders, heap_key: int) -> None:
        self.machine = machine
        self.layout = layout = machine.layout
        self.backend = backend
        self.headers = headers
        self.unit = headers.unit
        self.heap_key = heap_key
        self.chunk_header = layout.size_of("_HEAP_VS_CHUNK_HEADER")
        self.first_chunk = headers.align(layout.size_of("_HEAP_VS_SUBSEGMENT"))
        self.min_free = layout.size_of("_HEAP_VS_CHUNK_FREE_HEADER")
        self.subsegments: List[_VsSubsegment] = []
        self.delayed: List[Tuple[_VsSubsegment, _Chunk]] = []

    # -- allocation ------------------------------------------------------------------------

    def allocate(self, block_size: int, tag: bytes, kind: PoolKind, role: str) -> PoolBlock:
        need = block_size + self.chunk_header
        for subsegment in self.subsegments:
            chunk = self._carve(subsegment, need)
            if chunk is not None:
                break
        else:
            subsegment = self._new_subsegment()
            chunk = self._carve(subsegment, need)
            assert chunk is not None
        header = subsegment.address + chunk.offset + self.chunk_header
        block = PoolBlock(header, header + self.headers.size, block_size, tag, kind, "vs", subsegment.address, role)
        chunk.block = block
        self.machine.space.write(block.header, self.headers.block_bytes(block))
        return block

    def _new_subsegment(self, source: int = 0) -> _VsSubsegment:
        """``source``: the procedural content source of its pages (bulk noise), 0 for stored pages."""
        address = self.backend.new_range(VS_SUBSEGMENT_PAGES, RANGE_VS, source)
        end = VS_SUBSEGMENT_PAGES * PAGE_SIZE
        subsegment = _VsSubsegment(address, VS_SUBSEGMENT_PAGES, [_Chunk(self.first_chunk, end - self.first_chunk, "free")])
        self.subsegments.append(subsegment)
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
                if gap >= self.min_free:
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
            if rest and rest < self.min_free:
                need += rest  # too small to be a free chunk of its own: stays with the block
                rest, padded = 0, True
            allocated = _Chunk(start, need, "allocated", padded=padded)
            subsegment.chunks[position] = allocated
            if rest:
                subsegment.chunks.insert(position + 1, _Chunk(start + need, rest, "free"))
            return allocated
        return None

    # -- free --------------------------------------------------------------------------------

    def free(self, block: PoolBlock) -> str:
        """Onto the delay-free list, flushed first when it is full."""
        subsegment, chunk = self._find_chunk(block)
        if len(self.delayed) >= VS_DELAY_FREE_DEPTH:
            self._flush_delayed()
        chunk.state = "delay"
        self.delayed.append((subsegment, chunk))
        block.how = FreedHow.VS_DELAY
        block.header_intact = False  # the list link lies over the pool header's size fields
        return block.how

    def _find_chunk(self, block: PoolBlock) -> Tuple[_VsSubsegment, _Chunk]:
        for subsegment in self.subsegments:
            if subsegment.address == block.subsegment:
                for chunk in subsegment.chunks:
                    if chunk.block is block:
                        return subsegment, chunk
        raise KeyError(f"no VS chunk holds block {block.header:#x}")

    def _flush_delayed(self) -> None:
        delayed, self.delayed = self.delayed, []
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

    def fill(self, kind: PoolKind, rng: random.Random, counts: Dict[str, int], noise: NoisePages) -> _VsSubsegment:
        """A whole subsegment of noise chunks larger than the LFH's blocks, a third of them freed
        (free chunks, merged), without a PoolBlock each (``counts``); its pages are procedural
        (``noise.py``)."""
        subsegment = self._new_subsegment(noise.source)
        carved = []
        blocks = []  # (pool header offset, units, tag index)
        while True:
            block_size = rng.randrange(LFH_MAX_BLOCK + self.unit, PAGE_SIZE - self.chunk_header, self.unit)
            chunk = self._carve(subsegment, block_size + self.chunk_header)
            if chunk is None:
                break
            blocks.append((chunk.offset + self.chunk_header, block_size // self.unit, rng.randrange(len(NOISE_TAGS))))
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
        content = BlockHeaders(self.headers, kind.header_pool_type, rng.getrandbits(48), self.first_chunk, sorted(blocks))
        noise.register(subsegment.address, subsegment.units, content)
        return subsegment

    # -- metadata ------------------------------------------------------------------------------

    def _encoded_chunk_header(self, address: int, size: int, previous: int, allocated: bool) -> bytes:
        """The encoded first word of a VS chunk header: sizes in granularity units."""
        spec = self.layout.field("_HEAP_VS_CHUNK_HEADER_SIZE", "HeaderBits")
        decoded = self.layout.pack("_HEAP_VS_CHUNK_HEADER_SIZE", {
            "UnsafeSize": size // self.unit, "UnsafePrevSize": previous // self.unit, "Allocated": 1 if allocated else 0,
        })
        value = int.from_bytes(decoded[spec.offset : spec.offset + spec.size], "little")
        width = (1 << (8 * spec.size)) - 1
        return ((value ^ address ^ self.heap_key) & width).to_bytes(spec.size, "little")

    def write_subsegments(self) -> None:
        """Each subsegment's header and the encoded header of every chunk in it."""
        space = self.machine.space
        for subsegment in self.subsegments:
            size = subsegment.units * PAGE_SIZE // self.unit
            self.machine.write_fields(subsegment.address, "_HEAP_VS_SUBSEGMENT", {
                "Size": size, "Signature": (size ^ VS_SIGNATURE_KEY) & 0x7FFF, "FullCommit": 0,
                "CommitBitmap": (1 << subsegment.units) - 1,
            })
            previous = 0
            for chunk in subsegment.chunks:
                address = subsegment.address + chunk.offset
                space.write(address, self._encoded_chunk_header(canonical(address), chunk.size, previous, chunk.state != "free"))
                previous = chunk.size

    def write_delay_list(self, heap: int) -> None:
        """The delay-free list of the heap at ``heap``: links at each chunk's block (where its
        pool header begins)."""
        entries = [subsegment.address + chunk.offset + self.chunk_header for subsegment, chunk in self.delayed]
        following = 0
        for entry in entries:  # oldest first: each entry names the one pushed before it
            self.machine.write_pointer(entry, following)
            following = entry
        context = heap + self.layout.offset_of("_SEGMENT_HEAP", "VsContext")
        head = context + self.layout.offset_of("_HEAP_VS_CONTEXT", "DelayFreeContext") \
            + self.layout.offset_of("_HEAP_VS_DELAY_FREE_CONTEXT", "ListHead")
        write_slist_header(self.machine, head, following, len(entries))

    def write_free_tree(self, heap: int) -> None:
        """The free chunks as a valid red-black tree keyed by size (then address); the nodes
        overwrite each free chunk's pool header."""
        layout = self.layout
        node_offset = layout.offset_of("_HEAP_VS_CHUNK_FREE_HEADER", "Node")
        free = sorted((chunk.size, subsegment.address + chunk.offset + node_offset)
                      for subsegment in self.subsegments for chunk in subsegment.chunks if chunk.state == "free")
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
        tree = heap + layout.offset_of("_SEGMENT_HEAP", "VsContext") + layout.offset_of("_HEAP_VS_CONTEXT", "FreeChunkTree")
        self.machine.write_fields(tree, "_RTL_RB_TREE", {"Root": root})
