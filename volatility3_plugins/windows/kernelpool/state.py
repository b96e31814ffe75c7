"""What a pool reader answers: block allocation states and the regions blocks lie in."""

import bisect
import dataclasses
import enum
from typing import TYPE_CHECKING, Generic, List, Optional, Sequence, TypeVar

if TYPE_CHECKING:
    from ..kernelread.context import KernelContext

class BlockState(str, enum.Enum):
    """The allocation state of a pool block, as the allocator's metadata tells it (not the flag
    ``freed`` of a row, which says what a row's block is worth as evidence)."""

    ALLOCATED = "allocated"
    FREED = "freed"
    UNKNOWN = "unknown"
    #: Inside memory the allocator accounts for, but not where a block starts: the bytes there
    #: are data of another block, not a pool header.
    NOT_A_BLOCK = "not a block"

    def __str__(self) -> str:
        return self.value

#: Pool types a reader can be asked for.
NONPAGED = "NonPagedPool"
NONPAGED_NX = "NonPagedPoolNx"
PAGED = "PagedPool"
NONPAGED_POOLS = (NONPAGED, NONPAGED_NX)


@dataclasses.dataclass(frozen=True)
class ContainingBlock:
    """The pool block that holds an address, as the allocator's metadata places it: its pool
    header, size (header included), tag and allocation state. ``header``, ``size`` and ``tag``
    are None when the address lies where the allocator keeps blocks but its metadata there
    cannot be read (the state is then UNKNOWN)."""

    header: Optional[int]
    size: Optional[int]
    tag: Optional[bytes]
    state: BlockState


class PoolMetadataUnavailable(Exception):
    """The allocator's metadata cannot be read or does not validate."""


@dataclasses.dataclass(frozen=True)
class Region:
    """A virtual range that holds pool blocks (an LFH or VS subsegment, a pool range)."""

    start: int
    length: int
    kind: str
    pool: str

    @property
    def end(self) -> int:
        return self.start + self.length


class PoolMap:
    """The answers of one allocator reader. ``complete`` is False when some of the metadata
    could not be walked: blocks may then lie outside :meth:`regions`."""

    name = "pool"
    complete = False

    def regions(self, pools: Sequence[str] = NONPAGED_POOLS) -> Optional[List[Region]]:
        """Where the blocks of ``pools`` lie, sorted; None when the allocator does not say
        (then a scanner must read the whole kernel half)."""
        return None

    def state(self, header: int, pool_type: Optional[int] = None) -> BlockState:
        """ALLOCATED, FREED or UNKNOWN for the block whose ``_POOL_HEADER`` is at ``header``
        (NOT_A_BLOCK when the allocator knows that no block starts there); ``pool_type`` is the
        header's ``PoolType`` when the caller has already read it."""
        return BlockState.UNKNOWN

    def block_containing(self, address: int) -> Optional[ContainingBlock]:
        """The block that holds ``address`` (its body or its header); None when no block the
        allocator describes holds it, or when the allocator cannot say."""
        return None


class MetadataPoolMap(PoolMap):
    """A reader that walks the allocator's metadata for ``pools``; what it could not walk is
    recorded in ``problems`` and makes it incomplete."""

    def __init__(self, kernel: "KernelContext", pools: Sequence[str]) -> None:
        self._kernel = kernel
        self._pools = tuple(pools)
        self.complete = True
        self.problems: List[str] = []

    def _incomplete(self, problem: str) -> None:
        self.complete = False
        self.problems.append(problem)


class Unknown(PoolMap):
    """No reader for this kernel (or its metadata is unusable): every block is unknown."""

    name = "none"

    def __init__(self, reason: str) -> None:
        self.reason = reason


T = TypeVar("T", bound=Region)


class RegionIndex(Generic[T]):
    """Sorted, non-overlapping regions, searched by address."""

    def __init__(self, regions: Sequence[T]) -> None:
        self.regions: List[T] = sorted(regions, key=lambda region: region.start)
        self._starts = [region.start for region in self.regions]

    def find(self, address: int) -> Optional[T]:
        index = bisect.bisect_right(self._starts, address) - 1
        if index >= 0 and address < self.regions[index].end:
            return self.regions[index]
        return None

    def __len__(self) -> int:
        return len(self.regions)
