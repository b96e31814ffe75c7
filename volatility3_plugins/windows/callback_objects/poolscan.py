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

One pass over the kernel half of the kernel's virtual layer, through Volatility's own scanning
machinery (``layer.scan``: mapped pages only, in chunks, with its progress callback), finds
every tag at once; the images of loaded modules are left out (pool never lies inside one).
Why not ``PoolScanner.generate_pool_scan``: it builds a ``_POOL_HEADER`` object per hit and,
for objects, tries every header layout through Volatility objects; with tens of thousands of
registrations that is the whole run time. Fields are unpacked from the chunk's bytes with the
kernel's own ``_POOL_HEADER`` layout (or Volatility's pool-header table where the kernel's ISF
lacks it).

Every hit is validated before anyone sees it: pool header aligned, ``BlockSize`` covering the
structure and within a page (these are small-pool allocations); an object's ``InfoMask`` must
place its ``_OBJECT_HEADER`` inside the block with the type ``Callback``; a registration's
``CallbackObject`` and ``CallbackFunction`` must be kernel pointers; a loader entry's
``DllBase`` a page-aligned kernel address with ``MZ`` there and a sane ``SizeOfImage``.
"""

import dataclasses
import logging
import re
from typing import TYPE_CHECKING, Callable, Collection, Dict, Iterable, List, Optional, Sequence, Tuple

from volatility3.framework import constants, exceptions, interfaces

from . import diagnostics, structures
from .loaded_modules import MAX_IMAGE_SIZE, LoadedModule, entry_view
from .pagecache import PAGE_SIZE
from .views import StructView, ViewError

if TYPE_CHECKING:
    from .kernel import KernelContext

vollog = logging.getLogger(__name__)

ROUTE_NAME = "scan"

#: Scan targets by kind.
OBJECTS = "objects"
REGISTRATIONS = "registrations"
LOADER_ENTRIES = "loader entries"
ALL_KINDS = (OBJECTS, REGISTRATIONS, LOADER_ENTRIES)

#: Allocation states of a scanned block.
ALLOCATED = "allocated"
FREED = "freed"

#: Callback objects and registrations are small-pool blocks: never more than a page.
MAX_BLOCK = PAGE_SIZE
#: Scan chunk: small, so a scan adds little to peak memory (Volatility's default is 16 MiB).
CHUNK_SIZE = 0x100000
#: Bounds against hostile memory: a real system has hundreds of each, not millions.
MAX_HITS_PER_KIND = 1_000_000


@dataclasses.dataclass(frozen=True)
class PoolHit:
    header: int  # address of the _POOL_HEADER
    tag: bytes
    block_size: int  # bytes, header included
    free: bool  # the header's in-use bit is clear
    data: bytes  # the block's bytes as far as the scanned chunk holds them


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

    def reject(self, why: str) -> None:
        self.rejected[why] = self.rejected.get(why, 0) + 1

    def hidden_module_candidates(self) -> List[LoadedModule]:
        """Allocated loader entries found in pool, one per image base; the Attributor keeps
        those the module list does not cover. A freed entry is the remains of an unloaded
        driver, no evidence of a hidden one."""
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
    validate: Callable[["PoolScan", PoolHit, ScanResult], None]


def builtin_targets() -> Tuple[ScanTarget, ...]:
    """The declared table of what the scan looks for."""
    return (
        ScanTarget(REGISTRATIONS, (b"CBRe",), lambda scan: scan.kernel.registration.size, lambda s, h, r: s.validate_registration(h, r)),
        ScanTarget(OBJECTS, (b"Call", b"Cal\xec"), lambda scan: scan.object_body_size(), lambda s, h, r: s.validate_object(h, r)),
        ScanTarget(LOADER_ENTRIES, (b"MmLd",), lambda scan: scan.loader_entry_size(), lambda s, h, r: s.validate_loader_entry(h, r)),
    )


def pool_header_view(kernel: "KernelContext") -> StructView:
    """The kernel's ``_POOL_HEADER``, or Volatility's pool-header table where the kernel's ISF
    has none."""
    if kernel.module.has_type("_POOL_HEADER"):
        table = kernel.module.symbol_table_name
    else:
        from volatility3.plugins.windows import poolscanner  # imported late: it imports the Windows symbols

        table = poolscanner.PoolScanner.get_pool_header_table(kernel.context, kernel.module.symbol_table_name)
    return StructView.compile(
        kernel.context, table + constants.BANG + "_POOL_HEADER", ["BlockSize", "PoolType", "PoolTag"], kernel.mask
    )


class PoolTagScanner(interfaces.layers.ScannerInterface):
    """Finds pool headers carrying one of the tags in a chunk and checks their size."""

    thread_safe = True
    _version = (1, 0, 0)
    _required_framework_version = (2, 0, 0)

    def __init__(self, header: StructView, unit: int, minimum_sizes: Dict[bytes, int]) -> None:
        super().__init__()
        self.chunk_size = CHUNK_SIZE
        self.overlap = MAX_BLOCK  # a block starting in this chunk is whole in its data
        self._unit = unit
        self._header_size = header.size
        self._tag_offset = header.offset("PoolTag")
        self._block_size = header.fields["BlockSize"]
        self._pool_type = header.fields["PoolType"]
        self._minimum = minimum_sizes
        self._regex = re.compile(b"|".join(re.escape(tag) for tag in minimum_sizes))

    def __call__(self, data: bytes, data_offset: int) -> Iterable[PoolHit]:
        for match in self._regex.finditer(data):
            position = match.start() - self._tag_offset
            # Hits in the overlap belong to the next chunk (ScannerInterface contract).
            if position < 0 or position >= self.chunk_size:
                continue
            address = data_offset + position
            if address % self._unit:
                continue
            if position + self._header_size > len(data):
                continue
            block = self._block_size.unpack(data, position) * self._unit
            tag = match.group()
            if block < self._minimum[tag] or block > MAX_BLOCK:
                continue
            yield PoolHit(
                header=address,
                tag=tag,
                block_size=block,
                free=self._pool_type.unpack(data, position) == 0,
                data=data[position : position + block],
            )


def kernel_half(kernel: "KernelContext") -> List[Tuple[int, int]]:
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


class PoolScan:
    """One scanning pass over the kernel's pool and the validation of its hits."""

    def __init__(self, kernel: "KernelContext", targets: Sequence[ScanTarget]) -> None:
        self.kernel = kernel
        self.header = pool_header_view(kernel)
        #: BlockSize unit and header alignment: 16 bytes on x64, 8 on x86.
        self.unit = 0x10 if kernel.pointer_size == 8 else 8
        self.headers = kernel.object_headers
        self._object_size = kernel.callback_object.size
        self._loader = entry_view(kernel)
        self._targets: Dict[bytes, ScanTarget] = {}
        self._minimum: Dict[bytes, int] = {}
        for target in targets:
            size = target.body_size(self)
            if size is None:
                kernel.log.warning(f"Pool scan: {target.kind} cannot be validated on this kernel: not scanned")
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

    # -- the pass ------------------------------------------------------------------------

    def run(
        self,
        progress_callback: Optional[constants.ProgressCallback] = None,
        images: Iterable[Tuple[int, int]] = (),
    ) -> ScanResult:
        """Scan the kernel half except ``images`` ((base, size) of loaded modules)."""
        result = ScanResult(ran=True)
        if not self._targets:
            return result
        sections = without_ranges(
            kernel_half(self.kernel), [(base, size) for base, size in images if 0 < size <= MAX_IMAGE_SIZE]
        )
        scanner = PoolTagScanner(self.header, self.unit, self._minimum)
        counts: Dict[str, int] = {}
        for hit in self.kernel.layer.scan(self.kernel.context, scanner, progress_callback, sections):
            target = self._targets[hit.tag]
            counts[target.kind] = counts.get(target.kind, 0) + 1
            if counts[target.kind] > MAX_HITS_PER_KIND:
                if counts[target.kind] == MAX_HITS_PER_KIND + 1:
                    self.kernel.log.warning(f"More than {MAX_HITS_PER_KIND} {target.kind} pool hits: rest ignored")
                continue
            target.validate(self, hit, result)
        if result.rejected:
            vollog.info(f"Pool scan rejected: {result.rejected}")
        return result

    def state(self, hit: PoolHit) -> str:
        return FREED if hit.free else ALLOCATED

    def _block(self, hit: PoolHit, start: int, length: int) -> Optional[bytes]:
        """Bytes ``start`` into the block: from the hit when the chunk held them."""
        if start + length <= len(hit.data):
            return hit.data[start : start + length]
        try:
            return self.kernel.reader.read(hit.header + start, length)
        except exceptions.InvalidAddressException:
            return None

    # -- validation ----------------------------------------------------------------------

    def validate_registration(self, hit: PoolHit, result: ScanResult) -> None:
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
        result.registrations.append(ScannedBlock(body, self.state(hit)))

    def validate_object(self, hit: PoolHit, result: ScanResult) -> None:
        if hit.free:
            # A freed object is no evidence of anything, and its registrations' rows are
            # reported through the objects that still exist.
            result.reject("object in freed pool")
            return
        headers = self.headers
        assert headers is not None
        callback_index = headers.type_index("Callback")
        body_offset = headers.body_offset
        table = headers.info_mask_to_offset
        signature = structures.CALLBACK_SIGNATURE.to_bytes(4, "little")
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
        result.objects.append(ScannedBlock(max(found)[2], self.state(hit)))

    def validate_loader_entry(self, hit: PoolHit, result: ScanResult) -> None:
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
        result.modules.append(ScannedModule(entry, base, size, name, self.state(hit)))


def scan_pool(
    kernel: "KernelContext",
    kinds: Collection[str] = ALL_KINDS,
    progress_callback: Optional[constants.ProgressCallback] = None,
    images: Iterable[Tuple[int, int]] = (),
) -> ScanResult:
    """One pass for the scan targets of ``kinds``; loaded images ``images`` are not searched."""
    try:
        scan = PoolScan(kernel, [target for target in builtin_targets() if target.kind in kinds])
    except ViewError as excp:
        kernel.log.warning(f"Pool headers cannot be decoded ({excp}): pool scan skipped")
        kernel.log.route(ROUTE_NAME, diagnostics.UNAVAILABLE, "pool headers cannot be decoded")
        return ScanResult()
    result = scan.run(progress_callback, images)
    kernel.log.route(
        ROUTE_NAME,
        diagnostics.COMPLETE,
        f"{len(result.objects)} objects, {len(result.registrations)} registration blocks, "
        f"{len(result.modules)} loader entries",
    )
    return result
