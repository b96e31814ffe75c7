"""Fast, bounded reads of kernel memory: a page cache over a Volatility layer and struct layouts
unpacked from bytes.

Why: building a Volatility object per field costs tens of microseconds; an image with 20,000
registrations spends seconds in ``__getattr__``. The hot paths (list walks, registrations,
object bodies and headers, pool-scan validation) read whole pages once and unpack fields with
:mod:`struct`, using offsets taken from the symbol tables (never hard-coded), and fall back to
Volatility objects only where bytes cannot be read as a whole (so that one unreadable field
still does not hide the others).

Memory images do not change during a run, so caching pages is safe; the cache is bounded.
"""

import dataclasses
import logging
import struct
import weakref
from typing import Dict, Optional, Tuple

from volatility3.framework import constants, exceptions, interfaces

vollog = logging.getLogger(__name__)

PAGE_SIZE = 0x1000
#: Pages kept per layer (4 MiB): enough for the pool pages of tens of thousands of blocks,
#: small against the peak memory of a Volatility run.
MAX_CACHED_PAGES = 1024


class PageReader:
    """Reads a layer through a bounded page cache; raises InvalidAddressException like
    ``layer.read`` does for memory that is not there."""

    def __init__(
        self,
        context: interfaces.context.ContextInterface,
        layer_name: str,
        max_pages: int = MAX_CACHED_PAGES,
    ) -> None:
        self._layer = context.layers[layer_name]
        self.layer_name = layer_name
        self.mask: int = self._layer.address_mask
        self._max_pages = max_pages
        self._pages: Dict[int, Optional[bytes]] = {}

    def _page(self, page: int) -> Optional[bytes]:
        try:
            return self._pages[page]
        except KeyError:
            pass
        if len(self._pages) >= self._max_pages:
            # Simple and bounded: the callers' accesses are local (one pool page holds many
            # blocks), so dropping everything now and then costs little.
            self._pages.clear()
        try:
            data: Optional[bytes] = self._layer.read(page, PAGE_SIZE)
        except exceptions.InvalidAddressException:
            data = None
        self._pages[page] = data
        return data

    def read(self, address: int, length: int) -> bytes:
        address &= self.mask
        if length <= 0:
            return b""
        page = address & ~(PAGE_SIZE - 1)
        start = address - page
        if start + length <= PAGE_SIZE:
            data = self._page(page)
            if data is not None:
                return data[start : start + length]
            # A layer whose mapped ranges are not page-granular (hand-made test layers): ask
            # it directly, uncached.
            return self._layer.read(address, length)
        pieces = []
        position, remaining = address, length
        while remaining > 0:
            page = position & ~(PAGE_SIZE - 1)
            take = min(remaining, page + PAGE_SIZE - position)
            data = self._page(page)
            if data is None:
                return self._layer.read(address, length)
            pieces.append(data[position - page : position - page + take])
            position += take
            remaining -= take
        return b"".join(pieces)

    def pointer(self, address: int, pointer_size: int) -> int:
        """A little-endian pointer masked to the layer's width, as Volatility renders them."""
        return int.from_bytes(self.read(address, pointer_size), "little") & self.mask

    def u8(self, address: int) -> int:
        return self.read(address, 1)[0]


_READERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def shared_reader(context: interfaces.context.ContextInterface, layer_name: str) -> PageReader:
    """One reader per layer object, shared by every step of a run (list walks, registrations,
    headers, scan validation), so a page is read once."""
    layer = context.layers[layer_name]
    try:
        reader = _READERS.get(layer)
    except TypeError:  # unhashable layer: no sharing, still correct
        return PageReader(context, layer_name)
    if reader is None:
        reader = PageReader(context, layer_name)
        _READERS[layer] = reader
    return reader


def forget(layer: interfaces.layers.DataLayerInterface) -> None:
    """Drops the cached pages of ``layer``: for layers that are written to (test fixtures);
    a memory image never changes during a run."""
    try:
        _READERS.pop(layer, None)
    except TypeError:
        pass


# --- struct layouts from symbol tables ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Field:
    offset: int
    size: int
    signed: bool = False

    def get(self, data: bytes, base: int = 0) -> int:
        return int.from_bytes(
            data[base + self.offset : base + self.offset + self.size], "little", signed=self.signed
        )


def member_field(
    context: interfaces.context.ContextInterface, type_name: str, member: str
) -> Field:
    """Offset and size of ``member`` of ``type_name`` (``table!struct``), from the ISF."""
    template = context.symbol_space.get_type(type_name)
    offset, child = template.vol.members[member]
    return Field(offset, child.size)


@dataclasses.dataclass(frozen=True)
class BitField:
    """An unsigned bit field inside a little-endian integer at ``offset``."""

    offset: int
    size: int
    start: int
    end: int

    def get(self, data: bytes, base: int = 0) -> int:
        value = int.from_bytes(data[base + self.offset : base + self.offset + self.size], "little")
        return (value >> self.start) & ((1 << (self.end - self.start)) - 1)


def bit_field(
    context: interfaces.context.ContextInterface, type_name: str, member: str
) -> BitField:
    template = context.symbol_space.get_type(type_name)
    offset, child = template.vol.members[member]
    start = child.vol.get("start_bit")
    end = child.vol.get("end_bit")
    if start is None or end is None:  # a plain integer member
        return BitField(offset, child.size, 0, child.size * 8)
    base_type = child.vol.get("base_type")
    size = base_type.size if base_type is not None else child.size
    return BitField(offset, size, start, end)


def is_canonical(value: int, pointer_size: int) -> bool:
    """x64: bits 63..47 all equal. 32-bit pointers are always canonical."""
    if pointer_size != 8:
        return True
    top = value >> 47
    return top == 0 or top == 0x1FFFF


def is_kernel_pointer(value: int, pointer_size: int) -> bool:
    """A canonical pointer into the kernel half of the address space (raw, unmasked value)."""
    if pointer_size == 8:
        return value >> 47 == 0x1FFFF
    return value >= 0x80000000


def unpack_pointer(data: bytes, offset: int, pointer_size: int) -> int:
    return struct.unpack_from("<Q" if pointer_size == 8 else "<I", data, offset)[0]


def log_unreadable(what: str, address: int) -> None:
    vollog.log(constants.LOGLEVEL_VVV, f"{what} at {address:#x} unreadable")
