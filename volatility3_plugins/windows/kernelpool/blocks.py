"""What a pool map's blocks are asked for: filters, per-tag totals, the object a block holds.

- :class:`BlockFilter`: tags (``?`` matches any byte; shorter than four characters means padded
  with spaces, as the kernel's tags are), states and pools;
- :func:`summarise`: per tag and pool, how many blocks and bytes are allocated, freed or of
  unknown state, as poolmon gives them on a live machine (counted from the batches' columns,
  without a :class:`~.state.Block` each);
- :func:`describe_object`: the object type and name of a block that holds an object, from its
  ``_OBJECT_HEADER`` (placed through its ``InfoMask`` as the kernel places optional headers).
"""

import collections
import dataclasses
import fnmatch
import itertools
from typing import TYPE_CHECKING, Collection, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from volatility3.framework import exceptions

from ..kernelread.addresses import PAGE_SIZE
from ..kernelread.object_headers import Name
from .headers import PROTECTED_BIT, block_unit
from .state import BIG_PAGE, LARGE, Block, BlockBatch, BlockState

if TYPE_CHECKING:
    from ..kernelread.context import KernelContext



def tag_text(tag: Optional[bytes]) -> Optional[str]:
    """A tag as printed: printable characters as they are, others as ``\\xNN``; None when absent."""
    if tag is None:
        return None
    return "".join(chr(byte) if 32 <= byte < 127 else f"\\x{byte:02x}" for byte in tag)


@dataclasses.dataclass(frozen=True)
class BlockFilter:
    """Which blocks a caller wants; empty collections want everything."""

    tags: Sequence[str] = ()
    states: Collection[BlockState] = ()
    pools: Collection[str] = ()

    def __post_init__(self) -> None:
        patterns = [pattern.ljust(4) if len(pattern) < 4 else pattern for pattern in self.tags]
        # fnmatch's only wildcard here is ?: the others match literally.
        escaped = ["".join(f"[{c}]" if c in "*[]" else c for c in pattern) for pattern in patterns]
        object.__setattr__(self, "_patterns", escaped)
        object.__setattr__(self, "_cache", {})

    @property
    def selects_all(self) -> bool:
        return not self.tags and not self.states and not self.pools

    def wants_pool(self, pool: str) -> bool:
        return not self.pools or pool in self.pools

    def wants_tag(self, tag: Optional[int]) -> bool:
        if not self._patterns:  # type: ignore[attr-defined]
            return True
        if tag is None:
            return False
        cache: Dict[int, bool] = self._cache  # type: ignore[attr-defined]
        if tag not in cache:
            names = {(tag & 0xFFFF_FFFF).to_bytes(4, "little").decode("latin-1"),
                     (tag & ~PROTECTED_BIT & 0xFFFF_FFFF).to_bytes(4, "little").decode("latin-1")}
            cache[tag] = any(fnmatch.fnmatchcase(name, pattern) for name in names for pattern in self._patterns)  # type: ignore[attr-defined]
        return cache[tag]

    def wants(self, block: Block) -> bool:
        tag = int.from_bytes(block.tag, "little") if block.tag is not None else None
        return self.wants_pool(block.pool) and (not self.states or block.state in self.states) and self.wants_tag(tag)

    def select(self, batches: Iterable[BlockBatch]) -> Iterable[Block]:
        for batch in batches:
            if not self.wants_pool(batch.pool):
                continue
            for index in range(len(batch)):
                if (not self.states or batch.states[index] in self.states) and self.wants_tag(batch.tags[index]):
                    yield batch.block(index)


@dataclasses.dataclass
class TagSummary:
    """Blocks and bytes of one tag in one pool, by state."""

    tag: Optional[bytes]
    pool: str
    allocated: int = 0
    allocated_bytes: int = 0
    freed: int = 0
    freed_bytes: int = 0
    unknown: int = 0
    unknown_bytes: int = 0

    def add(self, state: BlockState, count: int, size: int) -> None:
        if state == BlockState.ALLOCATED:
            self.allocated += count
            self.allocated_bytes += size
        elif state == BlockState.FREED:
            self.freed += count
            self.freed_bytes += size
        else:
            self.unknown += count
            self.unknown_bytes += size


#: Busy bits (one byte each, 0 or 1) to free bits.
_FREE = bytes([1]) + bytes(255)
#: LFH slots whose columns wait to be counted together (memory: a few hundred kilobytes).
_PENDING = 1 << 15


def summarise(batches: Iterable[BlockBatch], wanted: BlockFilter = BlockFilter()) -> List[TagSummary]:
    """Per tag and pool, the blocks and bytes in each state, most allocated bytes first.

    Counted column by column: every (pool, tag, state, size) of a batch goes into one counter
    at C speed, and the few thousand distinct keys are summed and filtered at the end."""
    counted: Dict[Tuple[str, Optional[int], BlockState, int], int] = collections.Counter()
    # A batch whose blocks share one size and whose states are busy bits (an LFH subsegment's,
    # most of a server's heap) is counted by its tags alone, allocated and freed apart, into
    # counters kept per (pool, size): no key tuple built per block. Its columns wait, joined
    # with those of the same (pool, size), until ``_PENDING`` blocks are waiting in all: a
    # subsegment holds a few dozen slots, and a counter's update costs more than that many.
    by_size: Dict[Tuple[str, int], Tuple[collections.Counter, collections.Counter]] = {}
    pending: Dict[Tuple[str, int], Tuple[List[int], bytearray]] = {}
    waiting = 0

    def flush() -> None:
        for key, (tags, busy) in pending.items():
            counters = by_size.get(key)
            if counters is None:
                counters = by_size[key] = (collections.Counter(), collections.Counter())
            counters[0].update(itertools.compress(tags, busy))
            counters[1].update(itertools.compress(tags, busy.translate(_FREE)))
        pending.clear()

    for batch in batches:
        if not wanted.wants_pool(batch.pool):
            continue
        busy = getattr(batch.states, "busy", None)
        if isinstance(busy, bytes) and isinstance(batch.sizes, int):
            columns = pending.get((batch.pool, batch.sizes))
            if columns is None:
                columns = pending[batch.pool, batch.sizes] = ([], bytearray())
            columns[0].extend(batch.tags)
            columns[1].extend(busy)
            waiting += len(busy)
            if waiting >= _PENDING:
                flush()
                waiting = 0
            continue
        sizes = itertools.repeat(batch.sizes) if isinstance(batch.sizes, int) else batch.sizes
        counted.update(zip(itertools.repeat(batch.pool), batch.tags, batch.states, sizes))  # type: ignore[attr-defined]
    flush()
    for (pool, size), (allocated, freed) in by_size.items():
        for state, counter in ((BlockState.ALLOCATED, allocated), (BlockState.FREED, freed)):
            for tag, count in counter.items():
                counted[pool, tag, state, size] += count
    totals: Dict[Tuple[Optional[int], str], TagSummary] = {}
    for (pool, tag, state, size), count in counted.items():
        if (wanted.states and state not in wanted.states) or not wanted.wants_tag(tag):
            continue
        summary = totals.get((tag, pool))
        if summary is None:
            summary = totals[tag, pool] = TagSummary(None if tag is None else tag.to_bytes(4, "little"), pool)
        summary.add(state, count, count * size)
    return sorted(totals.values(), key=lambda s: (-s.allocated_bytes, -s.freed_bytes, s.tag or b"", s.pool))


@dataclasses.dataclass(frozen=True)
class ObjectFacts:
    """The object a block holds: its type's name and its own name (None: unnamed)."""

    type_name: str
    name: Union[Name, None]


def describe_object(kernel: "KernelContext", block: Block) -> Optional[ObjectFacts]:
    """The object in ``block`` when one of its possible ``_OBJECT_HEADER`` positions decodes to
    an object type whose pool tag (``_OBJECT_TYPE.Key``, what ``ObCreateObject`` tags the
    allocation with) is the block's own tag, the protected bit aside (the one nearest the
    block's end when several do: the body ends the allocation); None otherwise. Random bytes
    pass the ``InfoMask`` check now and then; they do not also name the type the tag says."""
    headers = kernel.object_headers
    if headers is None or block.tag is None:
        return None
    # A pool header is one block unit long; big and large allocations have none.
    start = 0 if block.allocator in (BIG_PAGE, LARGE) else block_unit(kernel.pointer_size)
    size = min(block.size, PAGE_SIZE)

    def read(offset: int, length: int) -> Optional[bytes]:
        try:
            return kernel.reader.read(block.address + offset, length)
        except exceptions.InvalidAddressException:
            return None

    tag = int.from_bytes(block.tag, "little") & ~PROTECTED_BIT
    found = [(offset, index) for offset, index in headers.headers_in_block(block.address, read, start, size)
             if headers.type_name(index) is not None and (headers.type_key(index) or 0) & ~PROTECTED_BIT == tag
             and headers.counts_plausible((block.address + offset) & kernel.mask)]
    if not found:
        return None
    offset, index = found[-1]
    info = headers.info((block.address + offset + headers.body_offset) & kernel.mask)
    return ObjectFacts(headers.type_name(index) or "", info.name)
