"""Kernel virtual ranges read at memory speed: one walk of the page tables, large physical reads.

Why: Volatility's Intel layers translate every page on its own (``_translate``, a Python descent
of the page tables per 4 KiB page, about 20 microseconds each) and keep the result of their last
512 ``read`` calls; a pool reader that reads hundreds of megabytes of heap spends most of its
time there. Here a range is translated by one descent of the page tables it needs (each
page-table page read whole, once, and kept in a bounded cache; large pages honoured), into runs
of physical memory, which are read straight from the layers below the physical layer (the image
file, or the file under a crash dump's layer, through its own mapping, built once): no per-page
call into Volatility's translation, and no per-read cache holding what was read.

The walk itself is the project's one page-table walker (``common/page_tables.py``, Volatility's
rules rule for rule: transition pages, the PAT bit of large pages, tables whose entries are all
alike are no table); this module is its Volatility glue: the paging of a layer
(:func:`paging_of`), the physical reader below the layers' caches (:class:`PhysicalReader`), the
bulk reader of kernel ranges (:class:`BulkReader`) and the frames mapped back to kernel pages for
the full scan (:func:`kernel_mappings`). Layers that are not Intel paging over linearly mapped
layers, or that have swap layers, are not read this way (:meth:`BulkReader.for_layer` gives
None): the caller reads through Volatility as usual.
"""

import bisect
import dataclasses
import os
import urllib.parse
import urllib.request
import weakref
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple, Union

from volatility3.framework import interfaces
from volatility3.framework.layers import intel, linear, physical

from ...common import page_tables
from .addresses import PAGE_SIZE, kernel_half_start

if TYPE_CHECKING:
    from .context import KernelContext

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
class LayerPaging:
    """What a page-table walk needs of an Intel layer: the layer below, the root, the format."""

    physical: interfaces.layers.DataLayerInterface
    dtb: int
    format: page_tables.Paging


def paging_of(layer: interfaces.layers.DataLayerInterface, context: interfaces.context.ContextInterface) -> Optional[LayerPaging]:
    """The paging of an Intel layer over another layer; None for anything else."""
    if not isinstance(layer, intel.Intel):
        return None
    try:
        physical = context.layers[layer.config["memory_layer"]]
        dtb = int(layer.config["page_map_offset"])
    except (KeyError, TypeError):
        return None
    wide = isinstance(layer, (intel.Intel32e, intel.IntelPAE))
    return LayerPaging(physical, dtb, page_tables.Paging(
        tuple((bits, large) for _name, bits, large in layer.structure),
        8 if wide else 4,
        getattr(layer, "_maxphyaddr", 52),
        isinstance(layer, intel.WindowsMixin),
    ))


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


class BulkReader:
    """Kernel virtual ranges read by one translation and large physical reads (see the module
    docstring)."""

    def __init__(self, tables: page_tables.PageTables, physical: PhysicalReader, mask: int) -> None:
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
        return cls(page_tables.PageTables(physical.read, paging.dtb, paging.format), physical, layer.address_mask)

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
        # (descriptor, file offset of physical 0, first and end physical address) as locals.
        descriptor, delta, lowest, highest = single if single is not None else (-1, 0, 1, 0)
        preadv = os.preadv
        view = memoryview(buffer)
        for virtual, address, size in self.tables.runs(start, length):
            if virtual > cursor:
                holes.append((cursor, virtual - cursor))
            if lowest <= address and address + size <= highest:
                # One run of the file holds physical memory: a positioned read (the hot loop).
                preadv(descriptor, [view[virtual - start : virtual - start + size]], address + delta)
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

