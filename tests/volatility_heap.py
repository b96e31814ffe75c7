"""The kernel pool of an image, read back through Volatility's own objects of the kernel's ISF.

Nothing here uses the forge: every structure is a ``kernel.object(...)`` of the kernel's symbol
table, as a reader of a real image would take it, and every rule is the readers' (MemProcFS
``vmm/vmmwinpool.c``, PoolViewer, the WRK). Bitfields of encoded words are decoded by Volatility
too: the decoded bytes go into a scratch ``BufferDataLayer`` and are read back as an object of
the ISF's type. Every walk is bounded.

:func:`read_segment_heap` walks ``nt!ExPoolState`` down to the LFH bitmaps and VS chunks;
:func:`read_classic_pool` walks the processors' lookaside lists, the pool descriptors' pending
lists and ``ListHeads``, and the header chains of pool pages. Both return a :class:`PoolReading`:
what state each block is in, as far as the metadata tells it.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional, Set, Tuple

PAGE = 0x1000
SEGMENT_HEAP_SIGNATURE = 0xDDEEDDEE
PAGE_SEGMENT_KEY = 0xA2E64EAD_A2E64EAD
DESCRIPTOR_SIGNATURE = 0xCCDDCCDD
RANGE_LFH, RANGE_VS, RANGE_INTERIOR = 0xB, 0xF, 0x1
VS_SIGNATURE_KEY = 0x2BED
UNITS_PER_SEGMENT = 256
MAX_SEGMENTS = 4096
MAX_CHUNKS = 100_000
MAX_LIST = 100_000


def canonical(address: int) -> int:
    address &= 0xFFFF_FFFF_FFFF
    return address | 0xFFFF_0000_0000_0000 if address & (1 << 47) else address


@dataclass
class Block:
    """One pool block as the allocator's metadata places it."""

    header: int  # its _POOL_HEADER, 48-bit
    size: int  # bytes, header included
    tag: bytes
    allocated: bool
    how: Optional[str]  # for a free block: lfh, vs, vs_delay, lookaside, pending, list
    container: str  # lfh, vs, page
    subsegment: Optional[int] = None  # the LFH or VS subsegment holding it


@dataclass
class PoolReading:
    blocks: Dict[int, Block] = field(default_factory=dict)  # by header address
    free_ranges: List[Tuple[int, int, str]] = field(default_factory=list)  # (start, end, how): free space
    problems: List[str] = field(default_factory=list)  # inconsistencies found in the metadata
    counts: Dict[str, int] = field(default_factory=dict)  # what was walked (segments, subsegments, ...)

    def count(self, what: str, number: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + number

    def free_range_of(self, address: int) -> Optional[str]:
        for start, end, how in self.free_ranges:
            if start <= address < end:
                return how
        return None


class _Kernel:
    """The kernel module of a Volatility context, with small helpers over its objects."""

    def __init__(self, context: Any, kernel_name: str) -> None:
        from volatility3.framework.layers.physical import BufferDataLayer

        self.context = context
        self.module = context.modules[kernel_name]
        self.table = self.module.symbol_table_name
        self.layer = context.layers[self.module.layer_name]
        self.pointer_size = self.module.get_type("pointer").size
        self.address_mask = (1 << 48) - 1 if self.pointer_size == 8 else 0xFFFF_FFFF
        self._scratch = bytearray(64)
        name = context.layers.free_layer_name("heap_scratch")
        context.add_layer(BufferDataLayer(context, "heap_scratch", name, self._scratch))
        self._scratch_layer = name

    def object(self, type_name: str, address: int) -> Any:
        return self.module.object(type_name, offset=address & self.address_mask, absolute=True)

    def symbol(self, name: str) -> Optional[int]:
        try:
            return self.module.get_symbol(name).address + self.module.offset
        except Exception:  # noqa: BLE001 - a symbol the table lacks
            return None

    def has_member(self, type_name: str, member: str) -> bool:
        return self.module.get_type(type_name).has_member(member)

    def offset_of(self, type_name: str, member: str) -> int:
        return self.module.get_type(type_name).relative_child_offset(member)

    def size_of(self, type_name: str) -> int:
        return self.module.get_type(type_name).size

    def read(self, address: int, length: int) -> bytes:
        return self.layer.read(address & self.address_mask, length)

    def pointer(self, address: int) -> int:
        return int.from_bytes(self.read(address, self.pointer_size), "little")

    def decode(self, type_name: str, data: bytes) -> Any:
        """``data`` read as an object of ``type_name`` (through a scratch buffer layer)."""
        self._scratch[: len(data)] = data
        return self.context.object(f"{self.table}!{type_name}", self._scratch_layer, offset=0)

    def pool_header(self, address: int) -> Tuple[int, int, bytes]:
        """(BlockSize, PoolType, tag) of the _POOL_HEADER at ``address``."""
        header = self.object("_POOL_HEADER", address)
        return int(header.BlockSize), int(header.PoolType), int(header.PoolTag).to_bytes(4, "little")

    def walk_list(self, head: int) -> List[int]:
        """Addresses of the LIST_ENTRYs after ``head`` (Flink order), bounded."""
        found: List[int] = []
        entry = self.pointer(head) & self.address_mask
        while entry != head & self.address_mask and len(found) < MAX_LIST:
            if entry in found:
                raise ValueError(f"list at {head:#x} loops at {entry:#x}")
            found.append(entry)
            entry = self.pointer(entry) & self.address_mask
        return found

    def walk_single(self, first: int, limit: int) -> List[int]:
        """Entries of a singly linked list whose first pointer names the next, bounded."""
        found: List[int] = []
        entry = first & self.address_mask
        while entry and len(found) < limit:
            found.append(entry)
            entry = self.pointer(entry) & self.address_mask
        return found


# -- segment heap -------------------------------------------------------------------------------

def read_segment_heap(context: Any, kernel_name: str, build: Optional[int]) -> PoolReading:
    kernel = _Kernel(context, kernel_name)
    reading = PoolReading()
    state = kernel.object("_EX_POOL_HEAP_MANAGER_STATE", kernel.symbol("ExPoolState"))
    heap_globals = kernel.object("_RTLP_HP_HEAP_GLOBALS", int(state.HeapManager.Globals))
    heap_key, lfh_key = int(heap_globals.HeapKey), int(heap_globals.LfhKey)
    pools = int(state.NumberOfPools)
    if not 0 < pools <= 64:
        reading.problems.append(f"NumberOfPools {pools}")
        return reading
    page_segment_key = PAGE_SEGMENT_KEY if build is None or build < 26100 else 0
    for node in list(state.PoolNode)[:pools]:
        for heap_pointer in node.Heaps:
            if int(heap_pointer):
                _read_heap(kernel, int(heap_pointer), heap_key, lfh_key, page_segment_key, reading)
    return reading


def _read_heap(kernel: _Kernel, address: int, heap_key: int, lfh_key: int, page_segment_key: int,
               reading: PoolReading) -> None:
    heap = kernel.object("_SEGMENT_HEAP", address)
    reading.count("heaps")
    if int(heap.Signature) != SEGMENT_HEAP_SIGNATURE:
        reading.problems.append(f"heap {address:#x}: signature {int(heap.Signature):#x}")
        return
    context = heap.SegContexts[0]
    if int(context.UnitShift) != 12:
        reading.problems.append(f"heap {address:#x}: context 0 UnitShift {int(context.UnitShift)}")
    first_descriptor = int(context.FirstDescriptorIndex)
    delayed = _read_delay_list(kernel, heap, reading)
    list_offset = kernel.offset_of("_HEAP_PAGE_SEGMENT", "ListEntry")
    for entry in kernel.walk_list(context.SegmentListHead.vol.offset)[:MAX_SEGMENTS]:
        segment_address = entry - list_offset
        reading.count("segments")
        segment = kernel.object("_HEAP_PAGE_SEGMENT", segment_address)
        if segment_address % (UNITS_PER_SEGMENT * PAGE):
            reading.problems.append(f"segment {segment_address:#x} not 1 MiB aligned")
        decoded = int(segment.Signature) ^ canonical(segment_address) ^ heap_key ^ page_segment_key
        mask = (1 << (8 * kernel.size_of("pointer"))) - 1
        if decoded & mask != canonical(context.vol.offset) & mask:
            reading.problems.append(f"segment {segment_address:#x}: signature decodes to {decoded & mask:#x}")
            continue
        _read_descriptors(kernel, segment, segment_address, first_descriptor, heap_key, lfh_key, delayed, reading)
    missing = [entry for entry in delayed if entry not in reading.blocks or reading.blocks[entry].how != "vs_delay"]
    if missing:
        reading.problems.append(f"VS delay-free entries in no allocated chunk: {[hex(e) for e in missing]}")
    _check_free_tree(kernel, heap, reading)


def _read_descriptors(kernel: _Kernel, segment: Any, segment_address: int, first: int, heap_key: int,
                      lfh_key: int, delayed: Set[int], reading: PoolReading) -> None:
    descriptors = list(segment.DescArray)
    index = first
    while index < UNITS_PER_SEGMENT:
        descriptor = descriptors[index]
        units = int(descriptor.UnitSize)
        flags = int(descriptor.RangeFlags)
        if units == 0:
            reading.problems.append(f"segment {segment_address:#x}: descriptor {index} has UnitSize 0")
            return
        address = segment_address + index * PAGE
        if flags in (RANGE_LFH, RANGE_VS):
            if int(descriptor.TreeSignature) != DESCRIPTOR_SIGNATURE:
                reading.problems.append(f"descriptor {index} of {segment_address:#x}: TreeSignature {int(descriptor.TreeSignature):#x}")
            for offset in range(1, units):
                interior = descriptors[index + offset]
                if int(interior.RangeFlags) != RANGE_INTERIOR or int(interior.UnitOffset) != offset:
                    reading.problems.append(f"descriptor {index + offset} of {segment_address:#x}: not an interior one")
            if flags == RANGE_LFH:
                _read_lfh(kernel, address, units * PAGE, lfh_key, reading)
            else:
                _read_vs(kernel, address, units * PAGE, heap_key, delayed, reading)
        index += units
    if index != UNITS_PER_SEGMENT:
        reading.problems.append(f"segment {segment_address:#x}: descriptors overrun the segment")


def _read_lfh(kernel: _Kernel, address: int, size: int, lfh_key: int, reading: PoolReading) -> None:
    """MemProcFS's LFH walk (VmmWinPool_AllPool1903_5_LFH_DoWork), deciding by the busy bit."""
    reading.count("lfh_subsegments")
    subsegment = kernel.object("_HEAP_LFH_SUBSEGMENT", address)
    encoded = int(subsegment.BlockOffsets.EncodedData)
    decoded = kernel.decode("_HEAP_LFH_SUBSEGMENT_ENCODED_OFFSETS",
                            (encoded ^ (lfh_key & 0xFFFF_FFFF) ^ ((address & 0xFFFF_FFFF) >> 12)).to_bytes(4, "little"))
    block_size, first = int(decoded.BlockSize), int(decoded.FirstBlockOffset)
    if not 0 < block_size < PAGE or first >= size:
        reading.problems.append(f"LFH subsegment {address:#x}: offsets decode to {block_size:#x}/{first:#x}")
        return
    bitmap_offset = kernel.offset_of("_HEAP_LFH_SUBSEGMENT", "BlockBitmap")
    bitmap = kernel.read(address + bitmap_offset, first - bitmap_offset)
    slots = (size - first) // block_size
    if int(subsegment.BlockCount) != slots:
        reading.problems.append(f"LFH subsegment {address:#x}: BlockCount {int(subsegment.BlockCount)} for {slots} slots")
    unit = kernel.size_of("_POOL_HEADER")
    for slot in range(slots):
        offset = first + slot * block_size
        if offset % PAGE + block_size > PAGE:
            continue  # a block never crosses a page
        bits = bitmap[slot // 4] >> (2 * (slot % 4)) & 0b11
        header = (address + offset) & kernel.address_mask
        units, pool_type, tag = kernel.pool_header(header)
        busy = bool(bits & 1)
        if busy and units * unit != block_size:
            reading.problems.append(f"LFH block {header:#x}: BlockSize {units} in a {block_size:#x} bucket")
        reading.blocks[header] = Block(header, block_size, tag, busy, None if busy else "lfh", "lfh", address)
        reading.count("lfh_blocks")


def _read_vs(kernel: _Kernel, address: int, size: int, heap_key: int, delayed: Set[int], reading: PoolReading) -> None:
    """PoolViewer's and MemProcFS's VS walk: chunk headers from the first after the subsegment
    header, each decoded with its own address and the heap key. A chunk on the delay-free list
    decodes allocated, but its block's pool header lies under the list link."""
    reading.count("vs_subsegments")
    subsegment = kernel.object("_HEAP_VS_SUBSEGMENT", address)
    if int(subsegment.Size) != (int(subsegment.Signature) ^ VS_SIGNATURE_KEY) or int(subsegment.FullCommit):
        reading.problems.append(f"VS subsegment {address:#x}: Size {int(subsegment.Size):#x}, Signature {int(subsegment.Signature):#x}")
        return
    granule = 2 * kernel.pointer_size
    header_size = kernel.size_of("_HEAP_VS_CHUNK_HEADER")
    bits_size = kernel.module.get_type("_HEAP_VS_CHUNK_HEADER_SIZE").size
    offset = -(-kernel.size_of("_HEAP_VS_SUBSEGMENT") // granule) * granule
    previous = 0
    pool_unit = kernel.size_of("_POOL_HEADER")
    for _ in range(MAX_CHUNKS):
        if offset >= size:
            break
        chunk = (address + offset) & kernel.address_mask
        raw = int.from_bytes(kernel.read(chunk, bits_size), "little")
        sizes = kernel.decode("_HEAP_VS_CHUNK_HEADER_SIZE",
                              ((raw ^ canonical(chunk) ^ heap_key) & ((1 << (8 * bits_size)) - 1)).to_bytes(bits_size, "little"))
        chunk_size = int(sizes.UnsafeSize) * granule
        if chunk_size < header_size or offset + chunk_size > size:
            reading.problems.append(f"VS chunk {chunk:#x}: size {chunk_size:#x} breaks the walk")
            return
        if int(sizes.UnsafePrevSize) * granule != previous:
            reading.problems.append(f"VS chunk {chunk:#x}: UnsafePrevSize {int(sizes.UnsafePrevSize):#x} after a {previous:#x} chunk")
        reading.count("vs_chunks")
        if int(sizes.Allocated) & 1:
            header = chunk + header_size
            block = chunk_size - header_size
            if header in delayed:
                reading.blocks[header] = Block(header, block, b"", False, "vs_delay", "vs", address)
                reading.count("vs_delayed")
            else:
                units, _, tag = kernel.pool_header(header)
                if block not in (units * pool_unit, units * pool_unit + pool_unit):
                    reading.problems.append(f"VS block {header:#x}: BlockSize {units} in a {block:#x} chunk")
                reading.blocks[header] = Block(header, units * pool_unit, tag, True, None, "vs", address)
        else:
            reading.free_ranges.append((chunk, chunk + chunk_size, "vs"))
        previous = chunk_size
        offset += chunk_size
    if offset != size:
        reading.problems.append(f"VS subsegment {address:#x}: chunks end at {offset:#x} of {size:#x}")


def _read_delay_list(kernel: _Kernel, heap: Any, reading: PoolReading) -> Set[int]:
    """The blocks on the VS delay-free list (their chunks still decode allocated)."""
    head = heap.VsContext.DelayFreeContext.ListHead
    first, depth = _slist(kernel, head)
    entries = kernel.walk_single(first, depth + 1)
    if len(entries) != depth:
        reading.problems.append(f"VS delay-free list of heap {heap.vol.offset:#x}: {len(entries)} entries, Depth {depth}")
    return set(entries)


def _check_free_tree(kernel: _Kernel, heap: Any, reading: PoolReading) -> None:
    """Every free chunk of the heap is a node of the VS free tree, ordered by size."""
    node_offset = kernel.offset_of("_HEAP_VS_CHUNK_FREE_HEADER", "Node")
    root = int(heap.VsContext.FreeChunkTree.Root)
    sizes: List[int] = []
    stack: List[Tuple[int, int]] = [(root & kernel.address_mask, 0)]
    seen: Set[int] = set()
    while stack and len(seen) < MAX_CHUNKS:
        node, state = stack.pop()
        if not node:
            continue
        balanced = kernel.object("_RTL_BALANCED_NODE", node)
        if state == 0:  # in order: left, node, right
            stack += [(node, 1), (int(balanced.Left) & kernel.address_mask, 0)]
            continue
        if node in seen:
            reading.problems.append(f"VS free tree loops at {node:#x}")
            return
        seen.add(node)
        chunk = node - node_offset
        how = reading.free_range_of(chunk)
        if how != "vs":
            reading.problems.append(f"VS free tree node {node:#x} is in no free chunk")
        else:
            sizes.append(next(end - start for start, end, _ in reading.free_ranges if start == chunk))
        stack.append((int(balanced.Right) & kernel.address_mask, 0))
    if sizes != sorted(sizes):
        reading.problems.append(f"VS free tree of heap {heap.vol.offset:#x} is not ordered by size")
    reading.count("vs_tree_nodes", len(seen))


def _slist(kernel: _Kernel, header: Any) -> Tuple[int, int]:
    """(first entry, depth) of an _SLIST_HEADER."""
    if kernel.has_member("_SLIST_HEADER", "HeaderX64"):
        return int(header.HeaderX64.NextEntry) << 4, int(header.HeaderX64.Depth)
    return int(header.Next.Next), int(header.Depth)


# -- classic pool ---------------------------------------------------------------------------------

LOOKASIDE_MEMBERS = ("PPNPagedLookasideList", "PPPagedLookasideList", "PPNxPagedLookasideList")


def read_classic_pool(context: Any, kernel_name: str, pages: Iterable[int]) -> PoolReading:
    """The lookaside lists of every processor, the descriptors' pending lists and ListHeads, and
    the header chain of each pool page in ``pages`` (page addresses)."""
    kernel = _Kernel(context, kernel_name)
    reading = PoolReading()
    for body, how in _freed_list_members(kernel, reading):
        reading.blocks[body - kernel.size_of("_POOL_HEADER")] = Block(body - kernel.size_of("_POOL_HEADER"), 0, b"", False, how, "page")
    for page in sorted(set(pages)):
        _walk_page(kernel, page, reading)
    return reading


def _freed_list_members(kernel: _Kernel, reading: PoolReading) -> Iterator[Tuple[int, str]]:
    processors = int.from_bytes(kernel.read(kernel.symbol("KeNumberProcessors"), 4), "little")
    block_table = kernel.symbol("KiProcessorBlock")
    for number in range(processors):
        prcb = kernel.object("_KPRCB", kernel.pointer(block_table + number * kernel.pointer_size))
        reading.count("processors")
        for member in LOOKASIDE_MEMBERS:
            if not kernel.has_member("_KPRCB", member):
                continue
            for index, lookaside in enumerate(getattr(prcb, member)):
                first, depth = _slist(kernel, lookaside.ListHead)
                entries = kernel.walk_single(first, depth + 1)
                if len(entries) != depth or depth > int(lookaside.Depth):
                    reading.problems.append(f"processor {number} {member}[{index}]: {len(entries)} entries, Depth {depth}")
                for entry in entries:
                    reading.count("lookaside_entries")
                    units, pool_type, _ = kernel.pool_header(entry - kernel.size_of("_POOL_HEADER"))
                    if units != index + 1 or pool_type & 2:
                        reading.problems.append(f"{member}[{index}] holds {entry:#x}: BlockSize {units}, PoolType {pool_type}")
                    yield entry, "lookaside"
    for descriptor in _descriptors(kernel):
        pending = kernel.walk_single(kernel.pointer(descriptor.PendingFrees.vol.offset), MAX_LIST)
        if len(pending) != int(descriptor.PendingFreeDepth):
            reading.problems.append(f"descriptor {descriptor.vol.offset:#x}: {len(pending)} pending, depth {int(descriptor.PendingFreeDepth)}")
        for entry in pending:
            reading.count("pending_entries")
            yield entry, "pending"
        entry_size = kernel.size_of("_LIST_ENTRY")
        heads = descriptor.ListHeads.vol.offset
        for index in range(PAGE // kernel.size_of("_POOL_HEADER")):
            for entry in kernel.walk_list(heads + index * entry_size):
                units, pool_type, _ = kernel.pool_header(entry - kernel.size_of("_POOL_HEADER"))
                if units != index + 1 or pool_type:
                    reading.problems.append(f"ListHeads[{index}] holds {entry:#x}: BlockSize {units}, PoolType {pool_type}")
                reading.count("list_entries")
                yield entry, "list"


def _descriptors(kernel: _Kernel) -> List[Any]:
    found = []
    nonpaged = kernel.symbol("NonPagedPoolDescriptor")
    if nonpaged is None:
        nonpaged = kernel.pointer(kernel.symbol("PoolVector"))
    found.append(kernel.object("_POOL_DESCRIPTOR", nonpaged))
    paged = kernel.symbol("ExpPagedPoolDescriptor")
    count = int.from_bytes(kernel.read(kernel.symbol("ExpNumberOfPagedPools"), 4), "little")
    for index in range(count + 1):
        found.append(kernel.object("_POOL_DESCRIPTOR", kernel.pointer(paged + index * kernel.pointer_size)))
    return found


def _walk_page(kernel: _Kernel, page: int, reading: PoolReading) -> None:
    """A pool page's header chain, front to back: each PreviousSize names the block before."""
    unit = kernel.size_of("_POOL_HEADER")
    if not kernel.layer.is_valid(page & kernel.address_mask):
        reading.count("released_pages")
        return
    offset, previous = 0, 0
    while offset < PAGE:
        header = kernel.object("_POOL_HEADER", page + offset)
        units, pool_type, tag = int(header.BlockSize), int(header.PoolType), int(header.PoolTag).to_bytes(4, "little")
        if units == 0 or offset + units * unit > PAGE:
            reading.problems.append(f"page {page:#x}: chain broken at +{offset:#x}")
            return
        if int(header.PreviousSize) != previous:
            reading.problems.append(f"page {page:#x}: PreviousSize {int(header.PreviousSize)} at +{offset:#x}, {previous} before")
        address = (page + offset) & kernel.address_mask
        known = reading.blocks.get(address)
        if pool_type & 2:
            reading.blocks[address] = Block(address, units * unit, tag, True, None, "page")
        elif known is not None:
            known.size, known.tag = units * unit, tag
            if known.how == "list":
                reading.free_ranges.append((address, address + units * unit, "list"))
        elif units > 1:  # a header-only fragment cannot hold a LIST_ENTRY: it is on no list
            reading.problems.append(f"page {page:#x}: free block at +{offset:#x} (PoolType {pool_type}) on no list")
        reading.count("page_blocks")
        previous = units
        offset += units * unit
