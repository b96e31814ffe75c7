"""The classic pool's pages, found by the invariant the allocator keeps: a chain of pool headers.

Every small-pool page of the classic allocator (Windows 7 to 10 1809) is tiled by its blocks:
the first header has ``PreviousSize`` 0, each header's ``BlockSize`` leads to the next, whose
``PreviousSize`` repeats it, the last block ends at the page's end, and every block carries the
``PoolIndex`` of the descriptor that owns the page (WRK ``pool.c``: ``ExFreePoolWithTag`` checks
these very links before it merges neighbours, and bugchecks when they disagree). A free leaves the
chain whole (merged blocks rewrite their sizes), so the chain gives every block of the page,
freed ones included. The kernel records where its pool lies only partly and differently on every
generation (``MmNonPagedPoolStart`` on 7 and not the paged pool's start; ``MiPagedPoolStart``
on 8.1 and not the non-paged pool; ``MiVisibleState``'s regions from 10 1607), and MemProcFS
reads only 2 MiB windows around the object manager's objects; here every page the kernel half
maps (but loaded images and big allocations) is tried, and only pages whose chain tiles exactly
are pool pages. A page of other data passes such a chain check by chance practically never:
every header must repeat the size before it.
"""

from typing import TYPE_CHECKING, Iterable, Iterator, List, Optional, Sequence, Tuple

from ..kernelread.addresses import PAGE_SIZE, kernel_half_start
from ..kernelread.views import StructView

if TYPE_CHECKING:
    from ..kernelread.context import KernelContext

#: (offset in the page, BlockSize in units, PoolType, raw tag) of one block of a chain.
Link = Tuple[int, int, int, int]
#: Kernel-half pages read at once while looking for pool pages.
READ_SPAN = 4 << 20


def tile_page(data: bytes, base: int, header: StructView, unit: int) -> Optional[List[Link]]:
    """The header chain of the page whose bytes start at ``data[base]``; None when the page is
    not a pool page (the chain breaks, does not end at the page's end, or mixes pool indices)."""
    fields = header.fields
    block_size, previous_size, pool_index = fields["BlockSize"], fields["PreviousSize"], fields["PoolIndex"]
    pool_type, tag = fields["PoolType"], fields["PoolTag"]
    links: List[Link] = []
    offset, expected, index = 0, 0, None
    while offset < PAGE_SIZE:
        units = block_size.unpack(data, base + offset)
        if not units or previous_size.unpack(data, base + offset) != expected or offset + units * unit > PAGE_SIZE:
            return None
        owner = pool_index.unpack(data, base + offset)
        if index is None:
            index = owner
        elif owner != index:
            return None
        links.append((offset, units, pool_type.unpack(data, base + offset), tag.unpack(data, base + offset)))
        expected = units
        offset += units * unit
    return links


def candidate_pages(kernel: "KernelContext", skip: Sequence[Tuple[int, int]]) -> Iterator[int]:
    """Every 4 KiB page the kernel half maps (large pages page by page), in address order, but
    those inside the (start, length) ranges ``skip``."""
    bulk = kernel.bulk
    if bulk is None:
        return
    ordered = sorted((start, start + length) for start, length in skip)
    start = kernel_half_start(kernel.pointer_size) & kernel.mask
    position = 0
    for virtual, _physical, span in bulk.tables.leaves(start, 1 << bulk.tables.top_shift, skip_self_map=True):
        for page in range(virtual, virtual + span, PAGE_SIZE):
            while position < len(ordered) and ordered[position][1] <= page:
                position += 1
            if position < len(ordered) and ordered[position][0] <= page:
                continue
            yield page


def spans(pages: Iterable[int]) -> Iterator[Tuple[int, int]]:
    """Runs of consecutive pages as (start, length), none longer than ``READ_SPAN``."""
    start = end = None
    for page in pages:
        if start is not None and page == end and end - start < READ_SPAN:
            end += PAGE_SIZE
            continue
        if start is not None:
            yield start, end - start
        start, end = page, page + PAGE_SIZE
    if start is not None:
        yield start, end - start
