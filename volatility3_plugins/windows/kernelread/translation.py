"""Kernel virtual ranges read at memory speed: one walk of the page tables, large physical reads.

Why: Volatility's Intel layers translate every page on its own (``_translate``, a Python descent
of the page tables per 4 KiB page, about 20 microseconds each) and keep the result of their last
512 ``read`` calls; a pool reader that reads hundreds of megabytes of heap spends most of its
time there. Here a range is translated by one descent of the page tables it needs (each
page-table page read whole, once, and kept in a bounded cache; large pages honoured), into runs
of physical memory, which are read straight from the layers below the physical layer (the image
file, or the file under a crash dump's layer, through its own mapping, built once): no per-page
call into Volatility's translation, and no per-read cache holding what was read.

The translation is Volatility's own, rule for rule (``volatility3.framework.layers.intel``):
an entry is valid when present or, on Windows layers, in transition (bit 11 set, prototype bit
10 clear); a large page drops its PAT bit (12) and keeps the address bits below its size; a
page-table page whose entries are all the same is not a table (Volatility's guard against the
repeated entries Windows 10 maps). Layers that are not Intel paging over linearly mapped layers,
or that have swap layers, are not read this way (:meth:`BulkReader.for_layer` gives None): the
caller reads through Volatility as usual.

:class:`PageTables` also walks the whole kernel half for :mod:`.physical_search` (frames mapped
back to virtual pages): one page-table walker for both.
"""

import array
import bisect
import dataclasses
import os
import urllib.parse
import urllib.request
import weakref
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from volatility3.framework import interfaces
from volatility3.framework.layers import intel, linear, physical

from .addresses import PAGE_SIZE, kernel_half_start

if TYPE_CHECKING:
    from .context import KernelContext

#: Page-table pages kept (4 KiB each): the tables of 2 GiB of 4 KiB pages.
MAX_CACHED_TABLES = 1024
#: Windows keeps standby pages mapped by transition PTEs: present bit clear, bit 11 set, bit 10
#: (prototype) clear; their contents are in memory (Volatility's ``WindowsMixin``).
TRANSITION = 1 << 11
PROTOTYPE = 1 << 10
LARGE_PAGE = 1 << 7
PAT_LARGE = 1 << 12

#: (virtual address, physical address, length) of a mapped piece of a virtual range.
Run = Tuple[int, int, int]
Buffer = Union[bytearray, memoryview]


def local_file(layer: interfaces.layers.DataLayerInterface) -> Optional[str]:
    """The path of the local file a file layer reads as it is (not decompressed, not fetched):
    its ``location`` is a ``file:`` URL of a regular file exactly as long as the layer."""
    if not isinstance(layer, physical.FileLayer):
        return None
    location = layer.config.get("location", "")
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme != "file":
        return None
    path = urllib.request.url2pathname(parsed.path)
    try:
        return path if os.path.isfile(path) and os.path.getsize(path) == layer.maximum_address + 1 else None
    except OSError:
        return None


@dataclasses.dataclass(frozen=True)
class Paging:
    """What a page-table walk needs of an Intel layer."""

    physical: interfaces.layers.DataLayerInterface
    dtb: int
    levels: Sequence[Tuple[int, bool]]  # (index bits, large pages allowed) per level, top first
    entry_size: int
    physical_bits: int
    transition: bool


def paging_of(layer: interfaces.layers.DataLayerInterface, context: interfaces.context.ContextInterface) -> Optional[Paging]:
    """The paging of an Intel layer over another layer; None for anything else."""
    if not isinstance(layer, intel.Intel):
        return None
    try:
        physical = context.layers[layer.config["memory_layer"]]
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


class PhysicalReader:
    """Reads a physical layer below its per-read cache: through the layer's own mapping (built
    once: the whole file for a raw image, the data runs of a crash dump) straight from the layers
    under it. Zeros where the layer has nothing."""

    def __init__(self, context: interfaces.context.ContextInterface, layer: interfaces.layers.DataLayerInterface) -> None:
        self._context = context
        self._layer = layer
        self._starts: List[int] = []
        self._pieces: List[Tuple[int, int, interfaces.layers.DataLayerInterface, int]] = []
        self._built = False
        #: Our own descriptor of each local image file below (by layer name), None where the
        #: layer must be read through Volatility: a positioned read into the caller's buffer is
        #: a system call and no copy, where a layer read is a lock, a seek, a read and a copy.
        self._files: Dict[str, Optional[int]] = {}

    def _descriptor(self, layer: interfaces.layers.DataLayerInterface) -> Optional[int]:
        if layer.name not in self._files:
            path = local_file(layer) if hasattr(os, "preadv") else None
            descriptor = None
            if path is not None:
                try:
                    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
                    weakref.finalize(self, os.close, descriptor)
                except OSError:
                    descriptor = None
            self._files[layer.name] = descriptor
        return self._files[layer.name]

    def _build(self) -> None:
        """(start, end, layer below, offset there) of each piece of the layer, sorted."""
        layer = self._layer
        end = layer.maximum_address + 1
        if not isinstance(layer, linear.LinearlyMappedLayer):
            # A file (or any layer that decodes nothing): read as itself.
            self._pieces = [(0, end, layer, 0)]
        else:
            for offset, length, mapped, mapped_length, name in layer.mapping(0, end, ignore_errors=True):
                below = self._context.layers[name]
                if mapped_length != length:
                    below, mapped = layer, offset  # not linear here: read through the layer itself
                if self._pieces and self._pieces[-1][1] == offset and self._pieces[-1][2] is below \
                        and self._pieces[-1][3] + (offset - self._pieces[-1][0]) == mapped:
                    start, _end, same, at = self._pieces[-1]
                    self._pieces[-1] = (start, offset + length, same, at)
                else:
                    self._pieces.append((offset, offset + length, below, mapped))
        self._starts = [piece[0] for piece in self._pieces]
        self._built = True

    @property
    def runs(self) -> List[Tuple[int, int]]:
        """(offset, length) of the layer's data, coalesced."""
        if not self._built:
            self._build()
        merged: List[Tuple[int, int]] = []
        for start, end, _below, _at in self._pieces:
            if merged and merged[-1][0] + merged[-1][1] == start:
                merged[-1] = (merged[-1][0], end - merged[-1][0])
            else:
                merged.append((start, end - start))
        return merged

    def read_into(self, buffer: Buffer, at: int, address: int, length: int) -> None:
        """``length`` bytes from ``address`` into ``buffer[at:]`` (left as they are, zeros in a
        fresh buffer, where the layer has nothing)."""
        if not self._built:
            self._build()
        view = memoryview(buffer)
        end = address + length
        index = max(0, bisect.bisect_right(self._starts, address) - 1)
        while address < end and index < len(self._pieces):
            start, stop, below, mapped = self._pieces[index]
            index += 1
            if stop <= address:
                continue
            if start >= end:
                return
            if start > address:
                at, address = at + start - address, start
            take = min(stop, end) - address
            descriptor = self._descriptor(below)
            if descriptor is not None:
                os.preadv(descriptor, [view[at : at + take]], mapped + address - start)
            else:
                if below is self._layer:
                    data = self._layer.read(address, take, pad=True)
                else:
                    data = read_uncached(self._context, below, mapped + address - start, take)
                view[at : at + len(data)] = data
            at, address = at + take, address + take

    def read(self, address: int, length: int) -> bytes:
        buffer = bytearray(length)
        self.read_into(buffer, 0, address, length)
        return bytes(buffer)

    def reader(self) -> Callable[[int, int], memoryview]:
        """A reader of long pieces that reuses one buffer: each result is valid until the next
        read (for a scan, which looks at each piece once before reading the next)."""
        state = {"buffer": bytearray()}

        def read(address: int, length: int) -> memoryview:
            if len(state["buffer"]) < length:
                state["buffer"] = bytearray(length)
            view = memoryview(state["buffer"])[:length]
            if not self._covers(address, length):
                view[:] = bytes(length)
            self.read_into(view, 0, address, length)
            return view

        return read

    def single_file(self) -> Optional[Tuple[int, int, int, int]]:
        """(our descriptor of the image file, the file offset of physical address 0, the first
        and the end of the physical addresses there) when one run of the file holds the whole
        layer: a raw image, or a crash dump of one run of physical memory. None otherwise."""
        if not self._built:
            self._build()
        if len(self._pieces) != 1:
            return None
        start, stop, below, mapped = self._pieces[0]
        descriptor = self._descriptor(below)
        return None if descriptor is None else (descriptor, mapped - start, start, stop)

    def _covers(self, address: int, length: int) -> bool:
        """Whether one piece of the layer holds all of [address, address + length)."""
        if not self._built:
            self._build()
        index = bisect.bisect_right(self._starts, address) - 1
        return index >= 0 and self._pieces[index][1] >= address + length


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


class PageTables:
    """The page tables of one address space, read through a :class:`PhysicalReader`, each table
    page read whole once and kept (bounded)."""

    def __init__(self, paging: Paging, physical: PhysicalReader) -> None:
        self.paging = paging
        self._physical = physical
        self._code = "Q" if paging.entry_size == 8 else "I"
        self._frame_mask = ((1 << paging.physical_bits) - 1) & ~(PAGE_SIZE - 1)
        self._shifts: List[int] = []
        shift = 12
        for bits, _large in reversed(paging.levels):
            self._shifts.insert(0, shift)
            shift += bits
        self.top_shift = shift  # bits of the address space
        # The top table is as large as its entries (PAE: a 32-byte PDPT; otherwise a page).
        top_size = (1 << paging.levels[0][0]) * paging.entry_size
        self.top = paging.dtb & ~(top_size - 1) & ((1 << paging.physical_bits) - 1)
        self._tables: Dict[Tuple[int, int], Optional[array.array]] = {}

    def _valid(self, entry: int) -> bool:
        return bool(entry & 1) or (self.paging.transition and entry & (TRANSITION | PROTOTYPE) == TRANSITION)

    def _table(self, address: int, level: int) -> Optional[array.array]:
        key = (address, level)
        try:
            return self._tables[key]
        except KeyError:
            pass
        if len(self._tables) >= MAX_CACHED_TABLES:
            self._tables.clear()  # walks are local: dropping everything now and then costs little
        count = 1 << self.paging.levels[level][0]
        size = count * self.paging.entry_size
        data = self._physical.read(address, size)
        entries: Optional[array.array] = array.array(self._code)
        entries.frombytes(data)
        # Volatility's rule: a table whose entries are all alike is no table.
        if count > 1 and data == data[: self.paging.entry_size] * count:
            entries = None
        self._tables[key] = entries
        return entries

    def _leaf_physical(self, entry: int, span: int) -> int:
        if span > PAGE_SIZE and entry & PAT_LARGE:
            entry -= PAT_LARGE
        return entry & self._frame_mask

    def leaves(self, start: int, end: int, skip_self_map: bool = False) -> Iterator[Tuple[int, int, int]]:
        """(virtual, physical, span) of every valid leaf entry (a page or a large page) that
        covers part of [start, end), in address order; ``skip_self_map`` leaves out the
        top-level entry that maps the tables themselves."""
        return self._leaves(self.top, 0, 0, start, end, skip_self_map)

    def _level(self, table: int, level: int, base: int, start: int,
               end: int) -> Optional[Tuple[array.array, int, bool, bool, range]]:
        """What a walk needs of the table at ``table``, of level ``level``, mapping from ``base``:
        its entries, the bits each maps, whether it is the last level, whether it may map large
        pages, and the indices that cover part of [start, end); None when it is no table."""
        entries = self._table(table, level)
        if entries is None:
            return None
        shift = self._shifts[level]
        indices = range(max(0, (start - base) >> shift), min(len(entries) - 1, (end - 1 - base) >> shift) + 1)
        return entries, shift, level == len(self.paging.levels) - 1, self.paging.levels[level][1], indices

    def _leaves(self, table: int, level: int, base: int, start: int, end: int,
                skip_self_map: bool) -> Iterator[Tuple[int, int, int]]:
        found = self._level(table, level, base, start, end)
        if found is None:
            return
        entries, shift, last, large_allowed, indices = found
        self_map = self.paging.dtb & self._frame_mask if skip_self_map and level == 0 else None
        for index in indices:
            entry = entries[index]
            if not entry & 1 and not self._valid(entry):
                continue
            virtual = base + (index << shift)
            if last or (large_allowed and entry & LARGE_PAGE):
                yield virtual, self._leaf_physical(entry, 1 << shift), 1 << shift
                continue
            target = entry & self._frame_mask
            if target != self_map:
                yield from self._leaves(target, level + 1, virtual, start, end, skip_self_map)

    def runs(self, start: int, length: int) -> List[Run]:
        """The mapped pieces of [start, start + length), in order, each as long as virtual and
        physical memory stay contiguous (one descent, appending as it goes: this is the hot
        path of every bulk read)."""
        found: List[Run] = []
        self._runs(self.top, 0, 0, start, start + length, found)
        return found

    def _runs(self, table: int, level: int, base: int, start: int, end: int, found: List[Run]) -> None:
        level_found = self._level(table, level, base, start, end)
        if level_found is None:
            return
        entries, shift, last, large_allowed, indices = level_found
        span = 1 << shift
        frame_mask = self._frame_mask
        transition = self.paging.transition
        for index in indices:
            entry = entries[index]
            if not entry & 1 and not (transition and entry & (TRANSITION | PROTOTYPE) == TRANSITION):
                continue
            virtual = base + (index << shift)
            if last or (large_allowed and entry & LARGE_PAGE):
                address = self._leaf_physical(entry, span) if not last else entry & frame_mask
                low = virtual if virtual > start else start
                high = virtual + span if virtual + span < end else end
                address += low - virtual
                if found:
                    previous = found[-1]
                    if previous[0] + previous[2] == low and previous[1] + previous[2] == address:
                        found[-1] = (previous[0], previous[1], previous[2] + high - low)
                        continue
                found.append((low, address, high - low))
            else:
                self._runs(entry & frame_mask, level + 1, virtual, start, end, found)

class BulkReader:
    """Kernel virtual ranges read by one translation and large physical reads (see the module
    docstring)."""

    def __init__(self, tables: PageTables, physical: PhysicalReader, mask: int) -> None:
        self.tables = tables
        self.physical = physical
        self.mask = mask

    @classmethod
    def for_layer(
        cls, context: interfaces.context.ContextInterface, layer: interfaces.layers.DataLayerInterface
    ) -> Optional["BulkReader"]:
        """The bulk reader of ``layer``; None when it is not Intel paging read this way (or it
        reads swap layers too, which this reader does not)."""
        paging = paging_of(layer, context)
        # A layer's dependencies are its physical layer and its swap layers (page files).
        if paging is None or len(layer.dependencies) > 1:
            return None
        physical = PhysicalReader(context, paging.physical)
        return cls(PageTables(paging, physical), physical, layer.address_mask)

    def read(self, start: int, length: int, into: Optional[bytearray] = None) -> Tuple[Buffer, List[Tuple[int, int]]]:
        """The bytes of [start, start + length) (zeros where nothing is mapped) and the
        (start, length) of the pieces that are not mapped. With ``into`` (at least ``length``
        long) they are read into it and a view of it is returned: a scan reuses one buffer
        instead of allocating a megabyte per read."""
        start &= self.mask
        buffer: Buffer = bytearray(length) if into is None else memoryview(into)[:length]
        holes: List[Tuple[int, int]] = []
        cursor = start
        single = self.physical.single_file()
        view = memoryview(buffer)
        for virtual, address, size in self.tables.runs(start, length):
            if virtual > cursor:
                holes.append((cursor, virtual - cursor))
            if single is not None and single[2] <= address and address + size <= single[3]:
                # One run of the file holds physical memory: a positioned read (the hot loop).
                os.preadv(single[0], [view[virtual - start : virtual - start + size]], address + single[1])
            else:
                self.physical.read_into(buffer, virtual - start, address, size)
            cursor = virtual + size
        if cursor < start + length:
            holes.append((cursor, start + length - cursor))
        if into is not None:
            for hole, size in holes:
                buffer[hole - start : hole - start + size] = bytes(size)
        return buffer, holes


def kernel_mappings(kernel: "KernelContext", frames: Sequence[int]) -> Dict[int, List[int]]:
    """Virtual addresses (pages) in the kernel half that map each of ``frames`` (page numbers),
    from one walk of the page tables, the self-map left out. Addresses are the layer's own
    (masked to its virtual width, not sign-extended), as Volatility's layers take them."""
    found: Dict[int, List[int]] = {}
    bulk = kernel.bulk
    if bulk is None or not frames:
        return found
    wanted = sorted(set(frames))
    start = kernel_half_start(kernel.pointer_size) & kernel.mask
    tables = bulk.tables
    for virtual, address, span in tables.leaves(start, 1 << tables.top_shift, skip_self_map=True):
        first = address >> 12
        if span == PAGE_SIZE:
            position = bisect.bisect_left(wanted, first)
            if position < len(wanted) and wanted[position] == first:
                found.setdefault(first, []).append(virtual)
            continue
        position = bisect.bisect_left(wanted, first)
        while position < len(wanted) and wanted[position] < first + (span >> 12):
            frame = wanted[position]
            found.setdefault(frame, []).append(virtual + ((frame - first) << 12))
            position += 1
    return found

