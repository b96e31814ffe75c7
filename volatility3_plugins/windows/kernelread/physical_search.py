"""The kernel half of the address space, searched at memory speed.

Volatility's ``layer.scan`` translates every page of the virtual range it scans through Python
and reads it on its own; on a busy machine's image, whose kernel space maps most of its RAM,
that costs more than a minute for 4 GiB. Here physical memory is read in large sequential
chunks (the raw file, or the crash dump's data runs), pool tags are searched only at the
positions a pool header can hold them (every ``unit`` bytes: the 4-byte words at the tag's
offset are gathered by a strided memory view and searched with ``bytes.find``), and the few
frames holding a hit are mapped back to kernel virtual addresses by one walk of the page tables
(the kernel half only, large pages included, the page-table self-map skipped). Peak memory stays
flat: one chunk at a time, and only the hits are kept.

For layers that are not Intel paging over a physical layer, :func:`physical_search` returns None
and the caller scans through Volatility.
"""

import dataclasses
import struct
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from volatility3.framework import exceptions, interfaces
from volatility3.framework.layers import intel, linear

from .addresses import PAGE_SIZE, kernel_half_start

if TYPE_CHECKING:
    from .context import KernelContext

#: Bytes read from the physical layer at once.
CHUNK = 4 << 20
#: Hits kept before the search stops (a real system has thousands of each tag, not millions).
MAX_HITS = 4_000_000


@dataclasses.dataclass(frozen=True)
class PhysicalHit:
    frame: int  # physical page number
    offset: int  # of the pool header in the page
    tag: bytes
    #: The first bytes at the hit (as many as the caller kept: its pool header), read with the
    #: search: a hit whose header already rules it out costs no read through the page tables.
    head: bytes = b""


@dataclasses.dataclass(frozen=True)
class Paging:
    """What a page-table walk needs of an Intel layer."""

    physical: interfaces.layers.DataLayerInterface
    dtb: int
    levels: Sequence[Tuple[int, bool]]  # (index bits, large pages allowed) per level, top first
    entry_size: int
    physical_bits: int
    #: Windows keeps pages on its standby list mapped by "transition" PTEs (bit 11 set, bit 10
    #: clear, present bit clear): their contents are in memory, as Volatility's Windows layers
    #: read them.
    transition: bool


def paging_of(kernel: "KernelContext") -> Optional[Paging]:
    layer = kernel.layer
    if not isinstance(layer, intel.Intel):
        return None
    try:
        physical = kernel.context.layers[layer.config["memory_layer"]]
        dtb = int(layer.config["page_map_offset"])
    except (KeyError, TypeError):
        return None
    wide = isinstance(layer, (intel.Intel32e, intel.IntelPAE))
    return Paging(
        physical,
        dtb,
        [(bits, large) for _name, bits, large in layer.structure],
        8 if wide else 4,
        getattr(layer, "_maxphyaddr", 52),
        isinstance(layer, intel.WindowsMixin),
    )


def read_uncached(
    context: interfaces.context.ContextInterface, layer: interfaces.layers.DataLayerInterface, offset: int, length: int
) -> bytes:
    """``length`` bytes at ``offset`` (zeros where nothing is mapped), read down the layer stack
    through ``mapping``.

    Why: Volatility's translation layers keep the results of their last 512 ``read`` calls
    (``functools.lru_cache`` on ``read``); for the megabyte reads of a scan that cache holds
    hundreds of megabytes, gigabytes with 16 MiB reads. Linearly mapped layers (Intel paging, the
    crash-dump layers) decode nothing, so reading their mapping's pieces from the layers below is
    the same data without the cache; other translation layers are read as usual."""
    if not isinstance(layer, interfaces.layers.TranslationLayerInterface):
        return layer.read(offset, length, pad=True)
    if not isinstance(layer, linear.LinearlyMappedLayer):
        return layer.read(offset, length, pad=True)
    output = bytearray(length)
    for start, _sublength, mapped, mapped_length, name in layer.mapping(offset, length, ignore_errors=True):
        piece = read_uncached(context, context.layers[name], mapped, mapped_length)
        output[start - offset : start - offset + len(piece)] = piece
    return bytes(output)


def physical_runs(physical: interfaces.layers.DataLayerInterface) -> List[Tuple[int, int]]:
    """(offset, length) of the physical layer's data, coalesced: the whole file for a raw image,
    the data runs of a crash dump."""
    end = physical.maximum_address + 1
    if not isinstance(physical, interfaces.layers.TranslationLayerInterface):
        return [(0, end)]
    runs: List[Tuple[int, int]] = []
    for offset, length, _mapped, _mapped_length, _layer in physical.mapping(0, end, ignore_errors=True):
        if runs and runs[-1][0] + runs[-1][1] == offset:
            runs[-1] = (runs[-1][0], runs[-1][1] + length)
        else:
            runs.append((offset, length))
    return runs


def search_tags(
    data: bytes, base: int, tags: Sequence[bytes], tag_offset: int, unit: int
) -> Iterator[Tuple[int, bytes]]:
    """(physical address of the pool header, tag) of every tag at a header position in ``data``
    (which starts at ``base``, a multiple of ``unit``)."""
    words = memoryview(data)[: len(data) - len(data) % unit].cast("I")
    gathered = words[tag_offset // 4 :: unit // 4].tobytes()
    for tag in tags:
        position = gathered.find(tag)
        while position >= 0:
            if position % 4 == 0:
                yield base + (position // 4) * unit, tag
            position = gathered.find(tag, position + 1)


def search_ranges(
    context: interfaces.context.ContextInterface,
    layer: interfaces.layers.DataLayerInterface,
    ranges: Sequence[Tuple[int, int]],
    tags: Sequence[bytes],
    tag_offset: int,
    unit: int,
    chunk: int,
    progress: Optional[Callable[[float, str], None]] = None,
    description: str = "",
) -> Iterator[Tuple[int, bytes, bytes, int]]:
    """(address of the pool header, tag, the chunk read, the header's offset in it) of every tag
    at a header position in the (start, length) ``ranges`` of ``layer``, read ``chunk`` bytes at
    a time (uncached, zeros where nothing is mapped); ``progress`` is told after each chunk."""
    total = sum(length for _start, length in ranges) or 1
    done = 0
    for start, length in ranges:
        position = start - start % unit
        while position < start + length:
            size = min(chunk, start + length - position)
            try:
                data = read_uncached(context, layer, position, size)
            except exceptions.InvalidAddressException:
                data = b""
            for header, tag in search_tags(data, position, tags, tag_offset, unit):
                yield header, tag, data, header - position
            position += size
            done += size
            if progress is not None:
                progress(100.0 * done / total, description)


def physical_search(
    kernel: "KernelContext",
    tags: Sequence[bytes],
    tag_offset: int,
    unit: int,
    progress: Optional[Callable[[float, str], None]] = None,
    keep: int = 0,
) -> Optional[List[PhysicalHit]]:
    """Every pool-header position in physical memory that carries one of ``tags``, with the
    ``keep`` bytes that start there (within its chunk); None when this layer is not searched
    this way."""
    paging = paging_of(kernel)
    if paging is None or tag_offset % 4 or unit % 4:
        return None
    hits: List[PhysicalHit] = []
    found = search_ranges(
        kernel.context, paging.physical, physical_runs(paging.physical), tags, tag_offset, unit, CHUNK, progress,
        "Searching physical memory for pool tags",
    )
    for header, tag, data, offset in found:
        hits.append(PhysicalHit(header >> 12, header & (PAGE_SIZE - 1), tag, data[offset : offset + keep]))
        if len(hits) >= MAX_HITS:
            kernel.diagnostics.warning(f"More than {MAX_HITS} pool-tag hits in physical memory: the rest not searched")
            return hits
    return hits


def kernel_mappings(kernel: "KernelContext", frames: Set[int]) -> Dict[int, List[int]]:
    """Virtual addresses (pages) in the kernel half that map each of ``frames``, from one walk
    of the page tables through the physical layer. Addresses are the layer's own (masked to its
    virtual width, not sign-extended), as Volatility's layers take them."""
    paging = paging_of(kernel)
    found: Dict[int, List[int]] = {}
    if paging is None or not frames:
        return found
    frame_mask = ((1 << paging.physical_bits) - 1) & ~(PAGE_SIZE - 1)
    entry_code = "Q" if paging.entry_size == 8 else "I"
    shifts = []
    shift = 12
    for bits, _large in reversed(paging.levels):
        shifts.insert(0, shift)
        shift += bits
    kernel_half = kernel_half_start(kernel.pointer_size)
    self_map = paging.dtb & frame_mask

    def walk(table: int, level: int, virtual: int) -> None:
        bits, large = paging.levels[level]
        count = 1 << bits
        try:
            data = paging.physical.read(table, count * paging.entry_size)
        except exceptions.InvalidAddressException:
            return
        entries = struct.unpack(f"<{count}{entry_code}", data)
        span = 1 << shifts[level]
        last = level == len(paging.levels) - 1
        for index, entry in enumerate(entries):
            if not entry & 1 and not (last and paging.transition and entry & 0xC00 == 0x800):
                continue
            address = virtual + index * span
            if level == 0 and address < kernel_half:
                continue
            target = entry & frame_mask
            if last:
                if target >> 12 in frames:
                    found.setdefault(target >> 12, []).append(address)
            elif large and entry & 0x80:
                first = (target & ~(span - 1)) >> 12
                for frame in frames:
                    if first <= frame < first + (span >> 12):
                        found.setdefault(frame, []).append(address + ((frame - first) << 12))
            elif not (level == 0 and target == self_map):
                walk(target, level + 1, address)

    # The top table is as large as its entries (PAE: a 32-byte PDPT; otherwise a page).
    top_size = (1 << paging.levels[0][0]) * paging.entry_size
    walk(paging.dtb & ~(top_size - 1) & ((1 << paging.physical_bits) - 1), 0, 0)
    return found
