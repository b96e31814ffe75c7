"""Choosing the reader of a kernel's pool allocator."""

import logging
from typing import TYPE_CHECKING, Sequence

from .classic import ClassicPoolMap
from .segment_heap import FIRST_BUILD, SegmentHeapMap
from .state import NONPAGED_POOLS, PoolMap, PoolMetadataUnavailable, Unknown

if TYPE_CHECKING:
    from ..kernelread.context import KernelContext

vollog = logging.getLogger(__name__)


def uses_segment_heap(kernel: "KernelContext") -> bool:
    """Whether the kernel allocates pool from the segment heap: by its build number (from build
    18362), else by Volatility's reading of its symbol table. The symbols alone cannot say:
    17763's table already has the segment heap's types and ``ExPoolState``, and 18362's still
    has the classic pool's descriptors."""
    build = kernel.build_number
    if build is not None:
        return build >= FIRST_BUILD
    from volatility3.framework.symbols.windows import versions

    return versions.is_win10_18362_or_later(kernel.context, kernel.kernel_module.symbol_table_name)


def open_pool_map(kernel: "KernelContext", pools: Sequence[str] = NONPAGED_POOLS) -> PoolMap:
    """The allocator reader for this kernel: the segment heap from build 18362, the classic pool
    up to 17763. Never the classic reader on a segment-heap kernel: there a freed block keeps
    an allocated header, so the classic rule would call every free alive. When the metadata
    cannot be read, every block is unknown (said once)."""
    reader = SegmentHeapMap if uses_segment_heap(kernel) else ClassicPoolMap
    try:
        found = reader(kernel, pools)
    except PoolMetadataUnavailable as excp:
        reason = f"{reader.name}: {excp}"
        kernel.diagnostics.warning(f"Pool allocation states unknown: {reason}")
        return Unknown(reason)
    if not found.complete:
        kernel.diagnostics.warning(
            f"Pool metadata ({found.name}) partly unreadable: " + "; ".join(found.problems[:3])
            + (f" (and {len(found.problems) - 3} more)" if len(found.problems) > 3 else "")
        )
    return found
