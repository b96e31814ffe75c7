"""The kernel half of the address space, searched at memory speed.

Volatility's ``layer.scan`` translates every page of the virtual range it scans through Python
and reads it on its own; on a busy machine's image, whose kernel space maps most of its RAM,
that costs more than a minute for 4 GiB. Here physical memory is read in large sequential
chunks (the raw file, or the crash dump's data runs), pool tags are searched only at the
positions a pool header can hold them (every ``unit`` bytes: the 4-byte words at the tag's
offset are gathered by a strided memory view and searched with ``bytes.find``), and the few
frames holding a hit are mapped back to kernel virtual addresses by one walk of the page tables
(the kernel half only, large pages included, the page-table self-map skipped:
:func:`.translation.kernel_mappings`). Memory grows with the hits the caller finds plausible, not
with the image: one chunk is read at a time, and a hit the caller's first look rejects (a pool
header too small for its tag's structure, on a busy machine most of them) is never kept.

For layers that are not Intel paging over a physical layer, :func:`physical_search` returns None
and the caller scans through Volatility.
"""

import array
import functools
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from volatility3.framework import exceptions

from .addresses import PAGE_SIZE
from .translation import kernel_mappings, read_uncached  # noqa: F401 (re-exported: the full scan's helpers)

if TYPE_CHECKING:
    from .context import KernelContext
    from .translation import Buffer, BulkReader

#: Bytes read from the physical layer at once.
CHUNK = 4 << 20
#: The array type code of a 4-byte word (None where no type has four bytes: memory views gather).
_WORD = next((code for code in "IL" if array.array(code).itemsize == 4), None)
#: Hits kept before the search stops (a real system has thousands of each tag, not millions).
MAX_HITS = 4_000_000


class PhysicalHit(NamedTuple):
    """A tag at a pool-header position of physical memory. A tuple, not a dataclass: a full scan
    of a busy machine keeps hundreds of thousands of them until they are mapped back."""

    frame: int  # physical page number
    offset: int  # of the pool header in the page
    tag: bytes
    #: The first bytes at the hit (as many as the caller kept: its pool header), read with the
    #: search: a hit whose header already rules it out costs no read through the page tables.
    head: bytes = b""


#: Whether to keep a hit: (tag, the chunk read, the header's offset in it) -> keep. The caller's
#: cheap first look (a pool header whose size cannot hold the tag's structure, say), asked
#: before a hit is copied and kept, so that memory grows with the plausible hits only.
Accept = Callable[[bytes, "Buffer", int], bool]


def search_tags(
    data: "Buffer", base: int, tags: Sequence[bytes], tag_offset: int, unit: int
) -> Iterator[Tuple[int, bytes]]:
    """(physical address of the pool header, tag) of every tag at a header position in ``data``
    (which starts at ``base``, a multiple of ``unit``)."""
    whole = memoryview(data)[: len(data) - len(data) % unit]
    if _WORD is not None:
        # An array's strided slice copies the words about twice as fast as a strided memory
        # view's tobytes (0.21 against 0.37 ms a megabyte here), the array's copy included.
        words = array.array(_WORD)
        words.frombytes(whole)
        gathered = words[tag_offset // 4 :: unit // 4].tobytes()
    else:
        gathered = whole.cast("I")[tag_offset // 4 :: unit // 4].tobytes()
    for needle, group in _needles(tuple(tags)):
        if len(group) == 1:
            tag = group[0]
            position = gathered.find(tag)
            while position >= 0:
                if position % 4 == 0:
                    yield base + (position // 4) * unit, tag
                position = gathered.find(tag, position + 1)
            continue
        # Tags that differ only in their last byte ("Call" and its protected "Cal\xec"): one
        # search for what they share, each hit then told apart (yielded tag by tag, as before).
        found: Dict[bytes, List[int]] = {tag: [] for tag in group}
        position = gathered.find(needle)
        while position >= 0:
            if position % 4 == 0:
                hits = found.get(gathered[position : position + 4])
                if hits is not None:
                    hits.append(base + (position // 4) * unit)
            position = gathered.find(needle, position + 1)
        for tag in group:
            for header in found[tag]:
                yield header, tag


@functools.lru_cache(maxsize=64)
def _needles(tags: Tuple[bytes, ...]) -> List[Tuple[bytes, Tuple[bytes, ...]]]:
    """(what to search for, the tags it finds) for ``tags``, in their order: 4-byte tags that
    share their first three bytes searched together by those three (a search of the gathered
    words costs the same for three bytes as for four), any other tag on its own. Every tag's
    hits still come out in ``tags``' order."""
    shared: Dict[bytes, List[bytes]] = {}
    for tag in tags:
        if len(tag) == 4:
            shared.setdefault(tag[:3], []).append(tag)
    result: List[Tuple[bytes, Tuple[bytes, ...]]] = []
    done = set()
    for tag in tags:
        if tag in done:
            continue
        group = shared.get(tag[:3], []) if len(tag) == 4 else []
        if len(group) > 1 and len(set(group)) == len(group):
            # Yielded in tags' order: the group's tags must be adjacent there.
            if list(tags[tags.index(group[0]) : tags.index(group[0]) + len(group)]) == group:
                result.append((tag[:3], tuple(group)))
                done.update(group)
                continue
        result.append((tag, (tag,)))
    return result


def search_ranges(
    read: Callable[[int, int], bytes],
    ranges: Sequence[Tuple[int, int]],
    tags: Sequence[bytes],
    tag_offset: int,
    unit: int,
    chunk: int,
    progress: Optional[Callable[[float, str], None]] = None,
    description: str = "",
) -> Iterator[Tuple[int, bytes, bytes, int]]:
    """(address of the pool header, tag, the chunk read, the header's offset in it) of every tag
    at a header position in the (start, length) ``ranges``, read ``chunk`` bytes at a time by
    ``read(start, length)`` (zeros where nothing is mapped; the chunk may be a buffer the next
    read reuses: take what is needed of it before asking for the next hit); ``progress`` is
    told after each chunk."""
    total = sum(length for _start, length in ranges) or 1
    done = 0
    for start, length in ranges:
        position = start - start % unit
        while position < start + length:
            size = min(chunk, start + length - position)
            try:
                data = read(position, size)
            except exceptions.InvalidAddressException:
                data = b""
            for header, tag in search_tags(data, position, tags, tag_offset, unit):
                yield header, tag, data, header - position
            position += size
            done += size
            if progress is not None:
                progress(100.0 * done / total, description)


def virtual_reader(kernel: "KernelContext") -> Callable[[int, int], "Buffer"]:
    """How a scan reads kernel ranges: the bulk reader when the layer has one (no per-page
    translation through Volatility; one buffer reused, each piece valid until the next read),
    else through the layers' mappings, around their cache."""
    bulk: Optional["BulkReader"] = kernel.bulk
    if bulk is not None:
        buffer = bytearray()

        def read(start: int, length: int) -> "Buffer":
            nonlocal buffer
            if len(buffer) < length:
                buffer = bytearray(length)
            return bulk.read(start, length, buffer)[0]

        return read
    return lambda start, length: read_uncached(kernel.context, kernel.layer, start, length)


def physical_search(
    kernel: "KernelContext",
    tags: Sequence[bytes],
    tag_offset: int,
    unit: int,
    progress: Optional[Callable[[float, str], None]] = None,
    keep: int = 0,
    accept: Optional[Accept] = None,
) -> Optional[List[PhysicalHit]]:
    """Every pool-header position in physical memory that carries one of ``tags`` (and that
    ``accept``, when given, keeps), with the ``keep`` bytes that start there (within its chunk,
    copied: the chunk's buffer is reused); None when this layer is not searched this way."""
    bulk = kernel.bulk
    if bulk is None or tag_offset % 4 or unit % 4:
        return None
    hits: List[PhysicalHit] = []
    found = search_ranges(
        bulk.physical.reader(), bulk.physical.runs, tags, tag_offset, unit, CHUNK, progress,
        "Searching physical memory for pool tags",
    )
    for header, tag, data, offset in found:
        if accept is not None and not accept(tag, data, offset):
            continue
        hits.append(PhysicalHit(header >> 12, header & (PAGE_SIZE - 1), tag, bytes(data[offset : offset + keep])))
        if len(hits) >= MAX_HITS:
            kernel.diagnostics.warning(f"More than {MAX_HITS} pool-tag hits in physical memory: the rest not searched")
            return hits
    return hits
