"""Pool scanning for any plugin: tagged small-pool blocks, each hit validated by its target.

What a scan looks for is a list of :class:`ScanTarget` (as ``poolscanner``'s ``PoolConstraint``
table): each names its pool tags, the bytes a block must hold after its pool header, and the
validation that tells a block of its kind from a tag found by chance. The engine finds the hits,
keeps those whose pool header can hold the target's structure, asks the allocator's metadata for
their allocation state and hands each to its target's validator; what the validators keep comes
back by kind.

Where: the pool allocator's own metadata (:func:`.maps.open_pool_map`) says where the non-paged
blocks lie (the LFH and VS subsegments of the segment heap's non-paged heaps, from build 18362),
and only those ranges are read. Where it cannot say (the classic pool, damaged heap metadata) or
when asked (``full``), the whole kernel half is searched at memory speed
(:mod:`..kernelread.physical_search`). Every hit's allocation state comes from the allocator: on
the segment heap a freed block keeps its pool header, tag and all, so only the metadata can tell.
"""

import dataclasses
import logging
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from volatility3.framework import constants, exceptions, interfaces

from ..kernelread import physical_search
from ..kernelread.addresses import PAGE_SIZE, kernel_half_start
from ..kernelread.loaded_modules import MAX_IMAGE_SIZE
from .headers import block_unit, pool_header_view
from .maps import open_pool_map
from .state import BlockState, PoolMap, Region

if TYPE_CHECKING:
    from ..kernelread.context import KernelContext
    from ..kernelread.translation import Buffer

vollog = logging.getLogger(__name__)

#: Small-pool blocks are never more than a page.
MAX_BLOCK = PAGE_SIZE
#: Bytes read at once from a region of the heap.
REGION_READ = 1 << 20
#: Bounds against hostile memory: a real system has hundreds of each kind, not millions.
MAX_HITS_PER_KIND = 1_000_000


class Rejected(Exception):
    """A hit that is not a block of its target; the message says why (the reasons are counted)."""


@dataclasses.dataclass(frozen=True)
class PoolHit:
    header: int  # address of the _POOL_HEADER
    tag: bytes
    block_size: int  # bytes, header included
    pool_type: int  # the header's PoolType
    data: bytes  # the block's bytes as far as they were read with the hit


@dataclasses.dataclass(frozen=True)
class ScanTarget:
    """One kind of block a scan looks for."""

    kind: str
    tags: Tuple[bytes, ...]
    #: Bytes the block must hold after its pool header; None when this kernel cannot validate
    #: such blocks (the target is then left out of the scan). Asked once, when the scan starts.
    body_size: Callable[[], Optional[int]]
    #: What a hit holds (kept under ``kind``); raises :class:`Rejected` for a block that is not one.
    validate: Callable[["PoolScanner", PoolHit, BlockState], Any]
    #: A first look at a hit that needs no allocation state (raises :class:`Rejected`), asked
    #: before the allocator is: a tag found by chance is then rejected without decoding the
    #: metadata of its subsegment (thousands of noise blocks carry an object tag on a busy
    #: machine). What :attr:`validate` keeps must not depend on the order of the two.
    screen: Optional[Callable[["PoolScanner", PoolHit], None]] = None


@dataclasses.dataclass
class ScanOutcome:
    """What one pass kept, by target kind, and how many hits it rejected, by reason."""

    found: Dict[str, List[Any]]
    rejected: Dict[str, int] = dataclasses.field(default_factory=dict)
    #: Where it read: the allocator's name and the bytes of its regions, or the kernel half.
    extent: str = ""

    def reject(self, why: str) -> None:
        self.rejected[why] = self.rejected.get(why, 0) + 1


def size_text(length: int) -> str:
    """A byte count a reader takes in at a glance: KiB below a MiB (a small heap is not "0 MiB")."""
    return f"{length >> 20} MiB" if length >= 1 << 20 else f"{length >> 10} KiB"


def kernel_half(kernel: "KernelContext") -> List[Tuple[int, int]]:
    """The kernel half of the address space (pool, images), as the layer addresses it."""
    start = kernel_half_start(kernel.pointer_size) & kernel.mask
    end = kernel.layer.maximum_address
    return [(start, end - start + 1)] if end > start else []


def without_ranges(sections: List[Tuple[int, int]], holes: Iterable[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """``sections`` (start, length) minus every (start, length) in ``holes``."""
    result: List[Tuple[int, int]] = []
    ordered = sorted((start, start + length) for start, length in holes if length > 0)
    for start, length in sections:
        cursor, end = start, start + length
        for hole_start, hole_end in ordered:
            if hole_end <= cursor or hole_start >= end:
                continue
            if hole_start > cursor:
                result.append((cursor, hole_start - cursor))
            cursor = max(cursor, hole_end)
        if cursor < end:
            result.append((cursor, end - cursor))
    return result


def coalesce(regions: Sequence[Region]) -> List[Tuple[int, int]]:
    """Adjacent regions as one (start, length) range: subsegments tile their page segments."""
    ranges: List[Tuple[int, int]] = []
    for region in sorted(regions, key=lambda r: r.start):
        if ranges and ranges[-1][0] + ranges[-1][1] == region.start:
            ranges[-1] = (ranges[-1][0], ranges[-1][1] + region.length)
        else:
            ranges.append((region.start, region.length))
    return ranges


class TagScanner(interfaces.layers.ScannerInterface):
    """The header positions carrying a tag, for Volatility's ``layer.scan`` (the fallback where
    physical memory cannot be searched directly)."""

    thread_safe = True
    _version = (1, 0, 0)
    _required_framework_version = (2, 0, 0)

    def __init__(self, tags: Sequence[bytes], tag_offset: int, unit: int) -> None:
        super().__init__()
        self.chunk_size = REGION_READ
        self.overlap = 0  # a header is found in the chunk its position lies in
        self._tags, self._tag_offset, self._unit = tags, tag_offset, unit

    def __call__(self, data: bytes, data_offset: int) -> Iterable[Tuple[int, bytes]]:
        return physical_search.search_tags(data[: self.chunk_size], data_offset, self._tags, self._tag_offset, self._unit)


class PoolScanner:
    """One scanning pass over the kernel's pool for some targets, and the dispatch of its hits.

    Raises ViewError when this kernel's pool headers cannot be decoded."""

    def __init__(self, kernel: "KernelContext", targets: Sequence[ScanTarget], pool_map: PoolMap) -> None:
        self.kernel = kernel
        self.pool_map = pool_map
        self.header = pool_header_view(kernel)
        self.unit = block_unit(kernel.pointer_size)
        self._tag_offset = self.header.offset("PoolTag")
        self._block_size = self.header.fields["BlockSize"]
        self._pool_type = self.header.fields["PoolType"]
        self._targets: Dict[bytes, ScanTarget] = {}
        self._minimum: Dict[bytes, int] = {}
        self.kinds: List[str] = []
        for target in targets:
            size = target.body_size()
            if size is None:
                kernel.diagnostics.warning(f"Pool scan: {target.kind} cannot be validated on this kernel: not scanned")
                continue
            self.kinds.append(target.kind)
            for tag in target.tags:
                self._targets[tag] = target
                self._minimum[tag] = self.header.size + size

    @property
    def tags(self) -> List[bytes]:
        return list(self._targets)

    # -- where the hits come from ----------------------------------------------------------

    def hits_in_regions(self, ranges: Sequence[Tuple[int, int]], progress: Optional[constants.ProgressCallback]) -> Iterator[PoolHit]:
        """Hits in virtual ``ranges`` (the allocator's regions), read a megabyte at a time."""
        found = physical_search.search_ranges(
            physical_search.virtual_reader(self.kernel), ranges, self.tags, self._tag_offset, self.unit, REGION_READ,
            progress, "Scanning the non-paged heap",
        )
        for header, tag, data, offset in found:
            hit = self._hit(header, tag, data, offset)
            if hit is not None:
                yield hit

    def hits_in_kernel_half(self, images: Sequence[Tuple[int, int]], progress: Optional[constants.ProgressCallback]) -> Iterator[PoolHit]:
        """Hits anywhere in the kernel half (except loaded images): physical memory searched in
        large reads, or Volatility's scan where that is not possible."""
        found = physical_search.physical_search(self.kernel, self.tags, self._tag_offset, self.unit, progress,
                                                keep=self.header.size, accept=self._may_hold)
        if found is None:
            sections = without_ranges(kernel_half(self.kernel), images)
            scanner = TagScanner(self.tags, self._tag_offset, self.unit)
            for header, tag in self.kernel.layer.scan(self.kernel.context, scanner, progress, sections):
                hit = self._hit(header, tag)
                if hit is not None:
                    yield hit
            return
        mappings = physical_search.kernel_mappings(self.kernel, {hit.frame for hit in found})
        for physical in found:
            for page in mappings.get(physical.frame, ()):
                header = (page + physical.offset) & self.kernel.mask
                if any(base <= header < base + size for base, size in images):
                    continue
                hit = self._hit(header, physical.tag, physical.head)
                if hit is not None:
                    yield hit

    def _may_hold(self, tag: bytes, data: "Buffer", offset: int) -> bool:
        """Whether the pool header at ``data[offset]`` can hold ``tag``'s structure (True where
        the header is not all there: the hit is read later)."""
        return len(data) - offset < self.header.size or self._plausible_size(tag, data, offset) is not None

    def _plausible_size(self, tag: bytes, data: "Buffer", offset: int) -> Optional[int]:
        """The block size the whole pool header at ``data[offset]`` gives, None when it cannot
        hold ``tag``'s structure."""
        size = self._block_size.unpack(data, offset) * self.unit
        return size if self._minimum[tag] <= size <= MAX_BLOCK else None

    def _hit(self, header: int, tag: bytes, data: bytes = b"", offset: int = 0) -> Optional[PoolHit]:
        """The hit at ``header`` if its pool header's size can hold the tag's structure; the block's
        bytes come from ``data`` (where ``data[offset]`` is the header; copied: ``data`` may be
        a buffer the next read reuses) or are read."""
        if header % self.unit:
            return None
        available = len(data) - offset
        if available >= self.header.size:
            # The size first, from the bytes at hand: most hits on a busy heap are too small for
            # their tag's structure, and copying a page for each costs more than the check.
            size = self._plausible_size(tag, data, offset)
            if size is None:
                return None
            block = bytes(data[offset : offset + size])
            return PoolHit(header, tag, size, self._pool_type.unpack(block), block)
        try:
            block = self.kernel.reader.read(header, self.header.size)
        except exceptions.InvalidAddressException:
            return None
        size = self._plausible_size(tag, block, 0)
        if size is None:
            return None
        return PoolHit(header, tag, size, self._pool_type.unpack(block), block[:size])

    # -- the pass ------------------------------------------------------------------------

    def run(self, hits: Iterable[PoolHit]) -> ScanOutcome:
        """Every hit's allocation state, then its target's validation; kept by kind."""
        outcome = ScanOutcome({kind: [] for kind in self.kinds})
        counts: Dict[str, int] = {}
        for hit in hits:
            target = self._targets[hit.tag]
            counts[target.kind] = counts.get(target.kind, 0) + 1
            if counts[target.kind] > MAX_HITS_PER_KIND:
                if counts[target.kind] == MAX_HITS_PER_KIND + 1:
                    self.kernel.diagnostics.warning(f"More than {MAX_HITS_PER_KIND} {target.kind} pool hits: rest ignored")
                continue
            if target.screen is not None:
                try:
                    target.screen(self, hit)
                except Rejected as why:
                    outcome.reject(str(why))
                    continue
            state = self.pool_map.state(hit.header, hit.pool_type)
            if state == BlockState.NOT_A_BLOCK:
                # Inside a block the allocator knows, not at its start: data, not a pool header.
                outcome.reject(f"{target.kind}: not at a block start")
                continue
            try:
                outcome.found[target.kind].append(target.validate(self, hit, state))
            except Rejected as why:
                outcome.reject(str(why))
        if outcome.rejected:
            vollog.info(f"Pool scan rejected: {outcome.rejected}")
        return outcome

    def block(self, hit: PoolHit, start: int, length: int) -> Optional[bytes]:
        """Bytes ``start`` into the block: from the hit when it holds them."""
        if start + length <= len(hit.data):
            return hit.data[start : start + length]
        try:
            return self.kernel.reader.read(hit.header + start, length)
        except exceptions.InvalidAddressException:
            return None

    def body(self, hit: PoolHit) -> int:
        """The address just after the block's pool header, masked."""
        return (hit.header + self.header.size) & self.kernel.mask


def scan_pool(
    kernel: "KernelContext",
    targets: Sequence[ScanTarget],
    progress_callback: Optional[constants.ProgressCallback] = None,
    images: Iterable[Tuple[int, int]] = (),
    full: bool = False,
    pool_map: Optional[PoolMap] = None,
) -> ScanOutcome:
    """One pass for ``targets``: the allocator's non-paged regions, or the whole kernel half
    (loaded images ``images`` left out) when the allocator cannot say where its blocks lie or
    ``full`` asks for it; ``pool_map``: the run's reader of the allocator (opened when None).
    Raises ViewError when pool headers cannot be decoded."""
    pool_map = pool_map if pool_map is not None else open_pool_map(kernel)
    scanner = PoolScanner(kernel, targets, pool_map)
    regions = None if full else pool_map.regions()
    images = [(base, size) for base, size in images if 0 < size <= MAX_IMAGE_SIZE]
    if regions is not None:
        ranges = coalesce(regions)
        outcome = scanner.run(scanner.hits_in_regions(ranges, progress_callback))
        outcome.extent = f"{pool_map.name}, {size_text(sum(length for _s, length in ranges))}"
    else:
        if not full and pool_map.name == "segment heap":
            kernel.diagnostics.warning("The non-paged heap's metadata is incomplete: scanning the whole kernel half instead")
        outcome = scanner.run(scanner.hits_in_kernel_half(images, progress_callback))
        outcome.extent = f"kernel half, {pool_map.name}"
    return outcome
