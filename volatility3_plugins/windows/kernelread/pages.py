"""A bounded page cache over a Volatility layer: every structure of a run is read through it.

Why: the hot paths (list walks, registrations, object bodies and headers, pool-scan validation)
touch the same pool pages again and again; reading a page once and slicing it is much cheaper
than one ``layer.read`` per field. A memory image does not change during a run, so caching is
safe; the cache is bounded and belongs to one run (:class:`.context.KernelContext` owns it).

A read of many pages (a heap subsegment, a page segment's descriptors) goes through the bulk
reader when the layer has one (:mod:`.translation`: one walk of the page tables, large physical
reads) and is not cached: it is read once, and caching it would only push out the pages that
are read again and again.
"""

from typing import TYPE_CHECKING, Dict, Optional

from volatility3.framework import exceptions, interfaces

from .addresses import PAGE_SIZE

if TYPE_CHECKING:
    from .translation import BulkReader

#: Pages kept (4 MiB): enough for the pool pages of tens of thousands of blocks, small against
#: the peak memory of a Volatility run.
MAX_CACHED_PAGES = 1024
#: Reads of at least this many pages go through the bulk reader, uncached.
BULK_PAGES = 4


class PageReader:
    """Reads a layer through a bounded page cache; raises ``InvalidAddressException`` for
    memory that is not there, as ``layer.read`` does. Addresses are masked to the layer's
    width first, so a canonical x64 pointer and its 48-bit rendering read the same bytes."""

    def __init__(
        self,
        layer: interfaces.layers.DataLayerInterface,
        max_pages: int = MAX_CACHED_PAGES,
        bulk: Optional["BulkReader"] = None,
    ) -> None:
        self.layer = layer
        self.mask: int = layer.address_mask
        self._max_pages = max_pages
        self._pages: Dict[int, Optional[bytes]] = {}
        self._bulk = bulk

    def invalidate(self) -> None:
        """Forget every cached page (for layers a test writes to; an image never changes)."""
        self._pages.clear()

    def _page(self, page: int) -> Optional[bytes]:
        try:
            return self._pages[page]
        except KeyError:
            pass
        if len(self._pages) >= self._max_pages:
            # Simple and bounded: accesses are local (one pool page holds many blocks), so
            # dropping everything now and then costs little.
            self._pages.clear()
        try:
            data: Optional[bytes] = self.layer.read(page, PAGE_SIZE)
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
            # A layer whose mapped ranges are not page-granular (hand-made test layers, the
            # tail of a truncated file): ask it directly, uncached; it raises if absent.
            return self.layer.read(address, length)
        if self._bulk is not None and length >= BULK_PAGES * PAGE_SIZE:
            data, holes = self._bulk.read(address, length)
            if not holes:
                return data
            # Some page is missing: the layer raises for it, as for any read.
            return self.layer.read(address, length)
        pieces = []
        position, remaining = address, length
        while remaining > 0:
            page = position & ~(PAGE_SIZE - 1)
            take = min(remaining, page + PAGE_SIZE - position)
            data = self._page(page)
            if data is None:
                return self.layer.read(address, length)
            pieces.append(data[position - page : position - page + take])
            position += take
            remaining -= take
        return b"".join(pieces)

    def pointer(self, address: int, pointer_size: int) -> int:
        """A little-endian pointer masked to the layer's width, as Volatility renders them."""
        return int.from_bytes(self.read(address, pointer_size), "little") & self.mask

    def u8(self, address: int) -> int:
        return self.read(address, 1)[0]
