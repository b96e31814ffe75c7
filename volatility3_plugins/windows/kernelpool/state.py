"""What a pool reader answers: block allocation states, the regions blocks lie in, and the
blocks themselves (:class:`Block`, enumerated in address order by :meth:`PoolMap.batches`)."""

import bisect
import dataclasses
import enum
from typing import TYPE_CHECKING, Generic, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

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
ALL_POOLS = (NONPAGED, NONPAGED_NX, PAGED)
#: Pools a block can be said to belong to beyond those a reader is asked for: session pool, where
#: a big-page entry's pool type says so.
NONPAGED_SESSION = "NonPagedPoolSession"
PAGED_SESSION = "PagedPoolSession"

#: Which part of the allocator describes a block (the ``Allocator`` of a pool map's row).
LFH = "LFH"  # segment heap: a slot of a low-fragmentation-heap subsegment
VS = "VS"  # segment heap: a chunk of a variable-size subsegment
LARGE = "large"  # segment heap: a backend range of whole pages (RangeFlags 3)
BIG_PAGE = "big page"  # an entry of nt!PoolBigPageTable the heap's ranges do not describe
CLASSIC = "classic"  # classic pool: a block of a pool page's header chain


@dataclasses.dataclass(frozen=True)
class Block:
    """One pool block as the allocator's metadata describes it.

    ``address``: its ``_POOL_HEADER``, or the first byte of a big-page or large allocation
    (which has no header). ``size``: the bytes the allocator gave it, header included (a VS
    chunk less its chunk header, an LFH slot, whole pages). ``tag``: None where the header is
    gone (a free VS chunk's tree node, a delay-free link over it) or unreadable."""

    address: int
    size: int
    tag: Optional[bytes]
    pool: str
    allocator: str
    state: "BlockState"

    @property
    def end(self) -> int:
        return self.address + self.size

    def contains(self, address: int) -> bool:
        return self.address <= address < self.end


@dataclasses.dataclass
class BlockBatch:
    """The blocks of one subsegment, page or big-page entry, column by column (cheap to count
    by tag for a summary); ``tags`` holds the raw 32-bit tag or None, ``sizes`` one size for all
    or one each."""

    pool: str
    allocator: str
    addresses: Sequence[int]
    sizes: Union[int, Sequence[int]]
    tags: Sequence[Optional[int]]
    states: Sequence["BlockState"]

    def __len__(self) -> int:
        return len(self.addresses)

    def size(self, index: int) -> int:
        return self.sizes if isinstance(self.sizes, int) else self.sizes[index]

    def block(self, index: int) -> Block:
        tag = self.tags[index]
        return Block(self.addresses[index], self.size(index), None if tag is None else tag.to_bytes(4, "little"),
                     self.pool, self.allocator, self.states[index])

    def blocks(self) -> Iterator[Block]:
        for index in range(len(self.addresses)):
            yield self.block(index)

    def index_of(self, address: int) -> Optional[int]:
        """The position of the block holding ``address``, None when none does."""
        position = bisect.bisect_right(self.addresses, address) - 1
        if position >= 0 and address < self.addresses[position] + self.size(position):
            return position
        return None


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

    def batches(self) -> Iterator[BlockBatch]:
        """Every block the allocator's metadata describes in the pools the map was opened for,
        in address order, a subsegment (or page, or big-page entry) at a time."""
        return iter(())

    def blocks(self) -> Iterator[Block]:
        """Every block, in address order (:meth:`batches`, one at a time)."""
        for batch in self.batches():
            yield from batch.blocks()

    def batch_containing(self, address: int) -> Optional[BlockBatch]:
        """The blocks of the subsegment, page or allocation that holds ``address``."""
        return None

    def block_containing(self, address: int) -> Optional[Block]:
        """The block that holds ``address`` (its header, its body or its padding), None when no
        block the metadata describes does."""
        batch = self.batch_containing(address)
        if batch is None:
            return None
        index = batch.index_of(address)
        return None if index is None else batch.block(index)

    def neighbours(self, address: int) -> Tuple[Optional[Block], Optional[Block], Optional[Block]]:
        """(the block before, the block holding ``address``, the block after), within the
        subsegment, page or allocation that holds it."""
        batch = self.batch_containing(address)
        if batch is None:
            return None, None, None
        index = batch.index_of(address)
        if index is None:
            after = bisect.bisect_right(batch.addresses, address)
            return (batch.block(after - 1) if after > 0 else None, None,
                    batch.block(after) if after < len(batch) else None)
        return (batch.block(index - 1) if index > 0 else None, batch.block(index),
                batch.block(index + 1) if index + 1 < len(batch) else None)


class MetadataPoolMap(PoolMap):
    """A reader that walks the allocator's metadata for ``pools``; what it could not walk is
    recorded in ``problems`` and makes it incomplete."""

    def __init__(self, kernel: "KernelContext", pools: Sequence[str]) -> None:
        self._kernel = kernel
        self._pools = tuple(pools)
        self.complete = True
        self.problems: List[str] = []

    @property
    def pools(self) -> Tuple[str, ...]:
        return self._pools

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
