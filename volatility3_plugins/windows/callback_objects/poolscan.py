"""Pool scanning: callback objects, registration blocks and loader entries that no list shows.

What is scanned for is one declared table, :func:`builtin_targets` (as ``poolscanner``'s
``PoolConstraint`` table): each :class:`ScanTarget` names its pool tags, the size a block must
have to hold its structure and the validation of a hit; the tags, size checks, dispatch and
counters all derive from it.

- ``CBRe``: ``_CALLBACK_REGISTRATION`` blocks (``ExRegisterCallback``);
- ``Call`` (``Cal\\xec`` with the protected bit on Windows 7 and older): object allocations
  ``_POOL_HEADER | optional headers | _OBJECT_HEADER | _CALLBACK_OBJECT``;
- ``MmLd``: the loader's ``_LDR_DATA_TABLE_ENTRY`` blocks, the tag ``windows.modscan`` scans:
  a driver unlinked from ``PsLoadedModuleList`` keeps its entry in pool.

Where: the pool allocator's own metadata (:mod:`..kernelpool`) says where the non-paged blocks
lie (the LFH and VS subsegments of the segment heap's non-paged heaps, from build 18362), and
only those ranges are read. Where it cannot say (the classic pool, damaged heap metadata) or
when asked (``full``), the whole kernel half is searched at memory speed
(:mod:`.kernelspace`). Every hit's allocation state comes from the allocator: on the segment
heap a freed block keeps its pool header, tag and all, so only the metadata can tell.

Every hit is validated before anyone sees it: pool header aligned, ``BlockSize`` covering the
structure and within a page (these are small-pool allocations), at a block start where the
allocator knows its blocks; an object's ``InfoMask`` must place its ``_OBJECT_HEADER`` inside the
block with the type ``Callback``; a registration's ``CallbackObject`` and ``CallbackFunction``
must be kernel pointers; a loader entry's ``DllBase`` a page-aligned kernel address with ``MZ``
there and a sane ``SizeOfImage``.
"""

import dataclasses
import logging
from typing import TYPE_CHECKING, Callable, Collection, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from volatility3.framework import constants, exceptions, interfaces

from ..kernelpool.headers import block_unit, pool_header_view
from ..kernelpool.maps import open_pool_map
from ..kernelpool.state import ALLOCATED, FREED, NOT_A_BLOCK, UNKNOWN, PoolMap, Region
from ..kernelread import diagnostics
from ..kernelread import physical_search as kernelspace
from ..kernelread.addresses import PAGE_SIZE
from ..kernelread.loaded_modules import MAX_IMAGE_SIZE, LoadedModule, entry_view
from ..kernelread.views import ViewError
from . import isf, routes

if TYPE_CHECKING:
    from .context import CallbackContext

vollog = logging.getLogger(__name__)

ROUTE_NAME = "scan"

#: Scan targets by kind.
OBJECTS = "objects"
REGISTRATIONS = "registrations"
LOADER_ENTRIES = "loader entries"
ALL_KINDS = (OBJECTS, REGISTRATIONS, LOADER_ENTRIES)

#: Callback objects and registrations are small-pool blocks: never more than a page.
MAX_BLOCK = PAGE_SIZE
#: Bytes read at once from a region of the heap.
REGION_READ = 1 << 20
#: Bounds against hostile memory: a real system has hundreds of each, not millions.
MAX_HITS_PER_KIND = 1_000_000

__all__ = ["ALLOCATED", "FREED", "UNKNOWN", "ScanResult", "ScanTarget", "builtin_targets", "scan_pool"]


@dataclasses.dataclass(frozen=True)
class PoolHit:
    header: int  # address of the _POOL_HEADER
    tag: bytes
    block_size: int  # bytes, header included
    pool_type: int  # the header's PoolType
    data: bytes  # the block's bytes as far as they were read with the hit


@dataclasses.dataclass(frozen=True)
class ScannedBlock:
    """A validated block: the address of the structure it holds and its allocation state."""

    address: int
    state: str


@dataclasses.dataclass(frozen=True)
class ScannedModule:
    """A loader entry found in pool."""

    entry: int
    base: int
    size: int
    name: Optional[str]
    state: str


@dataclasses.dataclass
class ScanResult:
    """What one pass found, validated as far as possible without the lists; empty when the
    scan did not run (``ran`` False)."""

    objects: List[ScannedBlock] = dataclasses.field(default_factory=list)
    registrations: List[ScannedBlock] = dataclasses.field(default_factory=list)
    modules: List[ScannedModule] = dataclasses.field(default_factory=list)
    rejected: Dict[str, int] = dataclasses.field(default_factory=dict)
    ran: bool = False
    #: "heap" when only the allocator's regions were read, "kernel half" otherwise.
    extent: str = ""

    def reject(self, why: str) -> None:
        self.rejected[why] = self.rejected.get(why, 0) + 1

    def object_state(self, address: int) -> Optional[str]:
        """The allocation state of a callback object the scan found, None when it did not."""
        for block in self.objects:
            if block.address == address:
                return block.state
        return None

    def hidden_module_candidates(self) -> List[LoadedModule]:
        """Allocated loader entries found in pool, one per image base; the Attributor keeps
        those the module list does not cover. A freed entry is the remains of an unloaded
        driver, and one of unknown state proves nothing: neither makes a hidden module."""
        chosen: Dict[int, ScannedModule] = {}
        for module in self.modules:
            if module.state == ALLOCATED:
                chosen.setdefault(module.base, module)
        return [LoadedModule(m.base, m.size, m.name, is_kernel=False, hidden=True) for m in chosen.values()]


@dataclasses.dataclass(frozen=True)
class ScanTarget:
    """One kind of block the scan looks for."""

    kind: str
    tags: Tuple[bytes, ...]
    #: Bytes the block must hold after its pool header; None when this kernel cannot validate
    #: such blocks (the target is then left out of the scan).
    body_size: Callable[["PoolScan"], Optional[int]]
    validate: Callable[["PoolScan", PoolHit, str, ScanResult], None]


def _size_text(length: int) -> str:
    """A byte count a reader takes in at a glance: KiB below a MiB (a small heap is not "0 MiB")."""
    return f"{length >> 20} MiB" if length >= 1 << 20 else f"{length >> 10} KiB"


def builtin_targets() -> Tuple[ScanTarget, ...]:
    """The declared table of what the scan looks for."""
    return (
        ScanTarget(REGISTRATIONS, (b"CBRe",), lambda scan: scan.kernel.registration.size, lambda s, h, st, r: s.validate_registration(h, st, r)),
        ScanTarget(OBJECTS, (b"Call", b"Cal\xec"), lambda scan: scan.object_body_size(), lambda s, h, st, r: s.validate_object(h, st, r)),
        ScanTarget(LOADER_ENTRIES, (b"MmLd",), lambda scan: scan.loader_entry_size(), lambda s, h, st, r: s.validate_loader_entry(h, st, r)),
    )


def kernel_half(kernel: "CallbackContext") -> List[Tuple[int, int]]:
    """The kernel half of the address space (pool, images), as the layer addresses it."""
    start = ((1 << 47) if kernel.pointer_size == 8 else 0x80000000) & kernel.mask
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
        return kernelspace.search_tags(data[: self.chunk_size], data_offset, self._tags, self._tag_offset, self._unit)


class PoolScan:
    """One scanning pass over the kernel's pool and the validation of its hits."""

    def __init__(self, kernel: "CallbackContext", targets: Sequence[ScanTarget], pool_map: PoolMap) -> None:
        self.kernel = kernel
        self.pool_map = pool_map
        self.header = pool_header_view(kernel)
        self.unit = block_unit(kernel)
        self.headers = kernel.object_headers
        self._object_size = kernel.callback_object.size
        self._loader = entry_view(kernel)
        self._tag_offset = self.header.offset("PoolTag")
        self._block_size = self.header.fields["BlockSize"]
        self._pool_type = self.header.fields["PoolType"]
        self._targets: Dict[bytes, ScanTarget] = {}
        self._minimum: Dict[bytes, int] = {}
        for target in targets:
            size = target.body_size(self)
            if size is None:
                kernel.diagnostics.warning(f"Pool scan: {target.kind} cannot be validated on this kernel: not scanned")
                continue
            for tag in target.tags:
                self._targets[tag] = target
                self._minimum[tag] = self.header.size + size

    # -- sizes ---------------------------------------------------------------------------

    def object_body_size(self) -> Optional[int]:
        if self.headers is None:
            return None
        return self.headers.body_offset + self._object_size

    def loader_entry_size(self) -> Optional[int]:
        return self._loader.size if self._loader is not None else None

    @property
    def tags(self) -> List[bytes]:
        return list(self._targets)

    # -- where the hits come from ----------------------------------------------------------

    def hits_in_regions(self, ranges: Sequence[Tuple[int, int]], progress: Optional[constants.ProgressCallback]) -> Iterator[PoolHit]:
        """Hits in virtual ``ranges`` (the allocator's regions), read a megabyte at a time."""
        total = sum(length for _start, length in ranges) or 1
        done = 0
        for start, length in ranges:
            position = start
            while position < start + length:
                size = min(REGION_READ, start + length - position)
                try:
                    data = kernelspace.read_uncached(self.kernel.context, self.kernel.layer, position, size)
                except exceptions.InvalidAddressException:
                    data = b""
                for header, tag in kernelspace.search_tags(data, position, self.tags, self._tag_offset, self.unit):
                    hit = self._hit(header, tag, data, header - position)
                    if hit is not None:
                        yield hit
                position += size
                done += size
                if progress is not None:
                    progress(100.0 * done / total, "Scanning the non-paged heap")

    def hits_in_kernel_half(self, images: Sequence[Tuple[int, int]], progress: Optional[constants.ProgressCallback]) -> Iterator[PoolHit]:
        """Hits anywhere in the kernel half (except loaded images): physical memory searched in
        large reads, or Volatility's scan where that is not possible."""
        found = kernelspace.physical_search(self.kernel, self.tags, self._tag_offset, self.unit, progress)
        if found is None:
            sections = without_ranges(kernel_half(self.kernel), images)
            scanner = TagScanner(self.tags, self._tag_offset, self.unit)
            for header, tag in self.kernel.layer.scan(self.kernel.context, scanner, progress, sections):
                hit = self._hit(header, tag)
                if hit is not None:
                    yield hit
            return
        mappings = kernelspace.kernel_mappings(self.kernel, {hit.frame for hit in found})
        for physical in found:
            for page in mappings.get(physical.frame, ()):
                header = (page + physical.offset) & self.kernel.mask
                if any(base <= header < base + size for base, size in images):
                    continue
                hit = self._hit(header, physical.tag)
                if hit is not None:
                    yield hit

    def _hit(self, header: int, tag: bytes, data: bytes = b"", offset: int = 0) -> Optional[PoolHit]:
        """The hit at ``header`` if its pool header's size can hold the tag's structure; the block's
        bytes come from ``data`` (where ``data[offset]`` is the header) or are read."""
        if header % self.unit:
            return None
        block = data[offset : offset + MAX_BLOCK]
        if len(block) < self.header.size:
            try:
                block = self.kernel.reader.read(header, self.header.size)
            except exceptions.InvalidAddressException:
                return None
        size = self._block_size.unpack(block) * self.unit
        if size < self._minimum[tag] or size > MAX_BLOCK:
            return None
        return PoolHit(header, tag, size, self._pool_type.unpack(block), block[:size])

    # -- the pass ------------------------------------------------------------------------

    def run(self, hits: Iterable[PoolHit], result: ScanResult) -> ScanResult:
        counts: Dict[str, int] = {}
        for hit in hits:
            target = self._targets[hit.tag]
            counts[target.kind] = counts.get(target.kind, 0) + 1
            if counts[target.kind] > MAX_HITS_PER_KIND:
                if counts[target.kind] == MAX_HITS_PER_KIND + 1:
                    self.kernel.diagnostics.warning(f"More than {MAX_HITS_PER_KIND} {target.kind} pool hits: rest ignored")
                continue
            state = self.pool_map.state(hit.header, hit.pool_type)
            if state == NOT_A_BLOCK:
                # Inside a block the allocator knows, not at its start: data, not a pool header.
                result.reject(f"{target.kind}: not at a block start")
                continue
            target.validate(self, hit, state, result)
        if result.rejected:
            vollog.info(f"Pool scan rejected: {result.rejected}")
        return result

    def _block(self, hit: PoolHit, start: int, length: int) -> Optional[bytes]:
        """Bytes ``start`` into the block: from the hit when it holds them."""
        if start + length <= len(hit.data):
            return hit.data[start : start + length]
        try:
            return self.kernel.reader.read(hit.header + start, length)
        except exceptions.InvalidAddressException:
            return None

    # -- validation ----------------------------------------------------------------------

    def validate_registration(self, hit: PoolHit, state: str, result: ScanResult) -> None:
        view = self.kernel.registration
        data = self._block(hit, self.header.size, view.size)
        if data is None:
            result.reject("registration unreadable")
            return
        routine = view.fields["CallbackFunction"].unpack(data)
        owner = view.fields["CallbackObject"].unpack(data)
        if not self.kernel.is_kernel_pointer(routine):
            result.reject("registration routine not a kernel pointer")
            return
        if not self.kernel.is_kernel_pointer(owner):
            result.reject("registration CallbackObject not a kernel pointer")
            return
        body = (hit.header + self.header.size) & self.kernel.mask
        result.registrations.append(ScannedBlock(body, state))

    def validate_object(self, hit: PoolHit, state: str, result: ScanResult) -> None:
        if state == FREED:
            # A freed object is no evidence of anything, and its registrations' rows are
            # reported through the objects that still exist.
            result.reject("object in freed pool")
            return
        headers = self.headers
        assert headers is not None
        callback_index = headers.type_index(routes.CALLBACK_TYPE, routes.CALLBACK_TYPE_GLOBAL)
        body_offset = headers.body_offset
        table = headers.info_mask_to_offset
        signature = isf.CALLBACK_SIGNATURE.to_bytes(4, "little")
        found: List[Tuple[bool, int, int]] = []
        # Every total of optional headers an InfoMask can describe, smallest first.
        for optional in sorted(set(table)):
            start = self.header.size + optional
            if start + body_offset + self._object_size > hit.block_size:
                break
            info = self._block(hit, start, body_offset)
            if info is None:
                continue
            mask = headers.info_mask(info)
            # The header's own InfoMask must account for exactly the optional headers in
            # front of it (and a mask with bits set never means "no optional header").
            if mask >= len(table) or table[mask] != optional or (optional == 0) != (mask == 0):
                continue
            header = (hit.header + start) & self.kernel.mask
            decoded = headers.decode_type_index(header, headers.raw_type_index(info))
            if callback_index is None or decoded != callback_index:
                continue
            body = self._block(hit, start + body_offset, 4)
            found.append((body == signature, optional, (header + body_offset) & self.kernel.mask))
        if not found:
            result.reject("object header not of type Callback")
            return
        # Bytes inside optional headers can pass for a header by chance: prefer the candidate
        # whose body carries the signature, then the one nearest the block's end (the body
        # ends the allocation, which is why Volatility reads objects top-down on 8+).
        result.objects.append(ScannedBlock(max(found)[2], state))

    def validate_loader_entry(self, hit: PoolHit, state: str, result: ScanResult) -> None:
        view = self._loader
        assert view is not None
        entry = (hit.header + self.header.size) & self.kernel.mask
        record = view.read(self.kernel.reader, entry)
        if not record.readable("DllBase") or not record.readable("SizeOfImage"):
            result.reject("loader entry unreadable")
            return
        base, size = record.DllBase, record.SizeOfImage
        if not base or base % PAGE_SIZE or not 0 < size <= MAX_IMAGE_SIZE:
            result.reject("loader entry with an implausible image range")
            return
        try:
            if self.kernel.reader.read(base, 2) != b"MZ":
                result.reject("loader entry whose image has no MZ header")
                return
        except exceptions.InvalidAddressException:
            result.reject("loader entry whose image is not mapped")
            return
        name = None
        if all(record.readable(f"BaseDllName.{f}") for f in ("Length", "MaximumLength", "Buffer")):
            name = self.kernel.read_unicode(
                record["BaseDllName.Length"], record["BaseDllName.MaximumLength"], record["BaseDllName.Buffer"]
            )
        result.modules.append(ScannedModule(entry, base, size, name, state))


def scan_pool(
    kernel: "CallbackContext",
    kinds: Collection[str] = ALL_KINDS,
    progress_callback: Optional[constants.ProgressCallback] = None,
    images: Iterable[Tuple[int, int]] = (),
    full: bool = False,
) -> ScanResult:
    """One pass for the scan targets of ``kinds``: the allocator's non-paged regions, or the
    whole kernel half (loaded images ``images`` left out) when the allocator cannot say where
    its blocks lie or ``full`` asks for it."""
    pool_map = open_pool_map(kernel)
    try:
        scan = PoolScan(kernel, [target for target in builtin_targets() if target.kind in kinds], pool_map)
    except ViewError as excp:
        kernel.diagnostics.warning(f"Pool headers cannot be decoded ({excp}): pool scan skipped")
        kernel.diagnostics.route(ROUTE_NAME, diagnostics.UNAVAILABLE, "pool headers cannot be decoded")
        return ScanResult()
    regions = None if full else pool_map.regions()
    images = [(base, size) for base, size in images if 0 < size <= MAX_IMAGE_SIZE]
    if regions is not None:
        ranges = coalesce(regions)
        result = scan.run(scan.hits_in_regions(ranges, progress_callback), ScanResult(ran=True, extent="heap"))
        extent = f"{pool_map.name}, {_size_text(sum(length for _s, length in ranges))}"
    else:
        if not full and pool_map.name == "segment heap":
            kernel.diagnostics.warning("The non-paged heap's metadata is incomplete: scanning the whole kernel half instead")
        result = scan.run(scan.hits_in_kernel_half(images, progress_callback), ScanResult(ran=True, extent="kernel half"))
        extent = f"kernel half, {pool_map.name}"
    kernel.diagnostics.route(
        ROUTE_NAME,
        diagnostics.COMPLETE,
        f"{extent}: {len(result.objects)} objects, {len(result.registrations)} registration blocks, "
        f"{len(result.modules)} loader entries",
    )
    return result
