"""Choosing the reader of a kernel's pool allocator."""

import logging
from typing import TYPE_CHECKING, Sequence

from .classic import LAST_BUILD, ClassicPoolMap
from .segment_heap import FIRST_BUILD, SegmentHeapMap
from .state import NONPAGED_POOLS, PoolMap, PoolMetadataUnavailable, Unknown

if TYPE_CHECKING:
    from ..callback_objects.kernel import KernelContext

vollog = logging.getLogger(__name__)


def open_pool_map(kernel: "KernelContext", pools: Sequence[str] = NONPAGED_POOLS) -> PoolMap:
    """The allocator reader for this kernel: the segment heap from build 18362, the classic pool
    up to 17763 (17763's table already has the segment heap's types, unused by that kernel).
    With no build number, the segment heap is tried first and must validate. When the metadata
    cannot be read, every block is unknown (said once)."""
    build = kernel.build_number
    readers = []
    if build is None or build >= FIRST_BUILD:
        readers.append(SegmentHeapMap)
    if build is None or build <= LAST_BUILD:
        readers.append(ClassicPoolMap)
    problems = []
    for reader in readers:
        try:
            found = reader(kernel, pools)
        except PoolMetadataUnavailable as excp:
            problems.append(f"{reader.name}: {excp}")
            continue
        if not found.complete:
            kernel.log.warning(
                f"Pool metadata ({found.name}) partly unreadable: " + "; ".join(found.problems[:3])
                + (f" (and {len(found.problems) - 3} more)" if len(found.problems) > 3 else "")
            )
        return found
    reason = "; ".join(problems) or f"no pool reader for build {build}"
    kernel.log.warning(f"Pool allocation states unknown: {reason}")
    return Unknown(reason)
