"""Kernel pool allocations with the pool headers Windows puts in front of them.

Each pool page is carved into blocks of 16-byte units on x64 and 8-byte units on x86 (the size
of the build's ``_POOL_HEADER``). Every block starts with a ``_POOL_HEADER`` (BlockSize,
PreviousSize, PoolType, PoolTag) exactly as the kernel writes it,
and the tail of every page is closed by a free block, so a pool scanner walking a page sees an
unbroken chain. A freed block keeps its contents; only its header says it is free.
"""

from dataclasses import dataclass
from typing import Optional

from .layout import KernelLayout
from .memory import PAGE_SIZE, KernelAddressSpace

POOL_TYPE_FREE = 0
# Vista and later store the pool type plus one: non-paged allocations read as 2 (even), paged
# ones as 3 (odd); Volatility's POOL_HEADER_VISTA decodes them that way.
POOL_TYPE_NONPAGED = 2
POOL_TYPE_PAGED = 3

BLOCK_UNIT = 0x10  # x64; x86 pools count in 8-byte units, the size of its _POOL_HEADER


def tag_value(tag: bytes) -> int:
    if len(tag) != 4:
        raise ValueError(f"pool tags are four bytes, not {tag!r}")
    return int.from_bytes(tag, "little")


@dataclass(frozen=True)
class PoolBlock:
    header: int  # address of the _POOL_HEADER
    body: int  # address the allocator returned to its caller
    size: int  # bytes of the whole block, header included
    tag: bytes
    free: bool


class PoolAllocator:
    """A bump allocator over a virtual pool region, one page at a time."""

    def __init__(self, space: KernelAddressSpace, layout: KernelLayout, base: int, pool_type: int) -> None:
        self._space = space
        self._layout = layout
        self._pool_type = pool_type
        self._header_size = layout.size_of("_POOL_HEADER")
        # The pool granularity is the header size: 16 bytes on x64, 8 on x86.
        self._unit = BLOCK_UNIT if layout.is_64bit else self._header_size
        self._next_page = base
        self._page: Optional[int] = None
        self._used = 0
        self._previous_units = 0

    def allocate(self, size: int, tag: bytes, free: bool = False) -> PoolBlock:
        """Allocate ``size`` bytes; the returned body follows a fresh pool header."""
        unit = self._unit
        units = (self._header_size + size + unit - 1) // unit
        if units * unit > PAGE_SIZE:
            raise ValueError(f"{size:#x} bytes do not fit a small pool block; the forge has no big-pool allocations")
        if self._page is None or self._used + units * unit > PAGE_SIZE:
            self._new_page()
        assert self._page is not None
        header = self._page + self._used
        self._write_header(header, units, self._previous_units, tag, POOL_TYPE_FREE if free else self._pool_type)
        self._space.write(header + self._header_size, bytes(units * unit - self._header_size))
        self._used += units * unit
        self._previous_units = units
        self._close_page()
        return PoolBlock(header, header + self._header_size, units * unit, tag, free)

    def _new_page(self) -> None:
        self._page = self._next_page
        self._next_page += PAGE_SIZE
        self._space.map_page(self._page, executable=False)
        self._used = 0
        self._previous_units = 0

    def _close_page(self) -> None:
        """Mark the rest of the current page as one free block so the chain stays walkable."""
        assert self._page is not None
        remaining = PAGE_SIZE - self._used
        if remaining >= self._unit:
            self._write_header(self._page + self._used, remaining // self._unit, self._previous_units, b"Free", POOL_TYPE_FREE)

    def _write_header(self, address: int, units: int, previous_units: int, tag: bytes, pool_type: int) -> None:
        header = self._layout.pack(
            "_POOL_HEADER",
            {"BlockSize": units, "PreviousSize": previous_units, "PoolType": pool_type, "PoolTag": tag_value(tag)},
        )
        self._space.write(address, header)
