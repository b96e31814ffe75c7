"""What the pool scan looks for on behalf of ``windows.callbackobjects``: callback objects,
registration blocks and loader entries that no list shows, as targets of the generic engine
(:mod:`..kernelpool.scan`).

- ``CBRe``: ``_CALLBACK_REGISTRATION`` blocks (``ExRegisterCallback``);
- ``Call`` (``Cal\\xec`` with the protected bit on Windows 7 and older): object allocations
  ``_POOL_HEADER | optional headers | _OBJECT_HEADER | _CALLBACK_OBJECT``;
- ``MmLd``: the loader's ``_LDR_DATA_TABLE_ENTRY`` blocks, the tag ``windows.modscan`` scans:
  a driver unlinked from ``PsLoadedModuleList`` keeps its entry in pool.

Every hit is validated before anyone sees it (the engine checks the pool header: aligned,
``BlockSize`` covering the structure and within a page, at a block start where the allocator
knows its blocks): an object's ``InfoMask`` must place its ``_OBJECT_HEADER`` inside the block
with the type ``Callback``; a registration's ``CallbackObject`` and ``CallbackFunction`` must be
kernel pointers; a loader entry's ``DllBase`` a page-aligned kernel address with ``MZ`` there and
a sane ``SizeOfImage``.
"""

import dataclasses
import functools
from typing import TYPE_CHECKING, Collection, Dict, Iterable, List, Optional, Tuple

from volatility3.framework import constants, exceptions

from ..kernelpool import scan
from ..kernelpool.scan import PoolHit, PoolScanner, Rejected, ScanTarget
from ..kernelpool.state import BlockState
from ..kernelread import diagnostics
from ..kernelread.addresses import PAGE_SIZE
from ..kernelread.loaded_modules import MAX_IMAGE_SIZE, LoadedModule, entry_view
from ..kernelread.views import StructView, ViewError
from . import isf, routes

if TYPE_CHECKING:
    from .context import CallbackContext

#: Scan targets by kind.
OBJECTS = "objects"
REGISTRATIONS = "registrations"
LOADER_ENTRIES = "loader entries"
ALL_KINDS = (OBJECTS, REGISTRATIONS, LOADER_ENTRIES)


@dataclasses.dataclass(frozen=True)
class ScannedBlock:
    """A validated block: the address of the structure it holds and its allocation state."""

    address: int
    state: BlockState


@dataclasses.dataclass(frozen=True)
class ScannedModule:
    """A loader entry found in pool."""

    entry: int
    base: int
    size: int
    name: Optional[str]
    state: BlockState


@dataclasses.dataclass
class ScanResult:
    """What one pass found, validated as far as possible without the lists; empty when the
    scan did not run (``ran`` False)."""

    objects: List[ScannedBlock] = dataclasses.field(default_factory=list)
    registrations: List[ScannedBlock] = dataclasses.field(default_factory=list)
    modules: List[ScannedModule] = dataclasses.field(default_factory=list)
    rejected: Dict[str, int] = dataclasses.field(default_factory=dict)
    ran: bool = False
    #: Where it read: the allocator's regions (its name and their size) or the kernel half.
    extent: str = ""

    def hidden_module_candidates(self) -> List[LoadedModule]:
        """Allocated loader entries found in pool, one per image base; the Attributor keeps
        those the module list does not cover. A freed entry is the remains of an unloaded
        driver, and one of unknown state proves nothing: neither makes a hidden module."""
        chosen: Dict[int, ScannedModule] = {}
        for module in self.modules:
            if module.state == BlockState.ALLOCATED:
                chosen.setdefault(module.base, module)
        return [LoadedModule(m.base, m.size, m.name, is_kernel=False, hidden=True) for m in chosen.values()]


class CallbackTargets:
    """The validators of our three targets on one kernel."""

    def __init__(self, kernel: "CallbackContext") -> None:
        self.kernel = kernel

    @functools.cached_property
    def _loader(self) -> Optional[StructView]:
        return entry_view(self.kernel)

    def targets(self, kinds: Collection[str] = ALL_KINDS) -> List[ScanTarget]:
        """The declared table of what the scan looks for, the kinds asked for only."""
        table = (
            ScanTarget(REGISTRATIONS, (b"CBRe",), lambda: self.kernel.registration.size, self.validate_registration),
            ScanTarget(OBJECTS, (b"Call", b"Cal\xec"), self.object_size, self.validate_object),
            ScanTarget(LOADER_ENTRIES, (b"MmLd",), self.loader_entry_size, self.validate_loader_entry),
        )
        return [target for target in table if target.kind in kinds]

    # -- sizes ---------------------------------------------------------------------------

    def object_size(self) -> Optional[int]:
        """An object's optional headers aside: its ``_OBJECT_HEADER`` up to the body, and the body."""
        headers = self.kernel.object_headers
        if headers is None:
            return None
        return headers.body_offset + self.kernel.callback_object.size

    def loader_entry_size(self) -> Optional[int]:
        return self._loader.size if self._loader is not None else None

    # -- validation ----------------------------------------------------------------------

    def validate_registration(self, scanner: PoolScanner, hit: PoolHit, state: BlockState) -> ScannedBlock:
        view = self.kernel.registration
        data = scanner.block(hit, scanner.header.size, view.size)
        if data is None:
            raise Rejected("registration unreadable")
        if not self.kernel.is_kernel_pointer(view.fields["CallbackFunction"].unpack(data)):
            raise Rejected("registration routine not a kernel pointer")
        if not self.kernel.is_kernel_pointer(view.fields["CallbackObject"].unpack(data)):
            raise Rejected("registration CallbackObject not a kernel pointer")
        return ScannedBlock(scanner.body(hit), state)

    def validate_object(self, scanner: PoolScanner, hit: PoolHit, state: BlockState) -> ScannedBlock:
        if state == BlockState.FREED:
            # A freed object is no evidence of anything, and its registrations' rows are
            # reported through the objects that still exist.
            raise Rejected("object in freed pool")
        headers = self.kernel.object_headers
        assert headers is not None
        callback_index = headers.type_index(routes.CALLBACK_TYPE, routes.CALLBACK_TYPE_GLOBAL)
        body_offset = headers.body_offset
        signature = isf.CALLBACK_SIGNATURE.to_bytes(4, "little")
        found: List[Tuple[bool, int, int]] = []
        candidates = headers.headers_in_block(
            hit.header, lambda offset, length: scanner.block(hit, offset, length), scanner.header.size, hit.block_size,
            self.kernel.callback_object.size,
        )
        for start, type_index in candidates:
            if callback_index is None or type_index != callback_index:
                continue
            header = (hit.header + start) & self.kernel.mask
            body = scanner.block(hit, start + body_offset, 4)
            found.append((body == signature, start, (header + body_offset) & self.kernel.mask))
        if not found:
            raise Rejected("object header not of type Callback")
        # Bytes inside optional headers can pass for a header by chance: prefer the candidate
        # whose body carries the signature, then the one nearest the block's end (the body
        # ends the allocation, which is why Volatility reads objects top-down on 8+).
        return ScannedBlock(max(found)[2], state)

    def validate_loader_entry(self, scanner: PoolScanner, hit: PoolHit, state: BlockState) -> ScannedModule:
        view = self._loader
        assert view is not None
        entry = scanner.body(hit)
        record = view.read(self.kernel.reader, entry)
        if not record.readable("DllBase") or not record.readable("SizeOfImage"):
            raise Rejected("loader entry unreadable")
        base, size = record.DllBase, record.SizeOfImage
        if not base or base % PAGE_SIZE or not 0 < size <= MAX_IMAGE_SIZE:
            raise Rejected("loader entry with an implausible image range")
        try:
            if self.kernel.reader.read(base, 2) != b"MZ":
                raise Rejected("loader entry whose image has no MZ header")
        except exceptions.InvalidAddressException:
            raise Rejected("loader entry whose image is not mapped") from None
        name = None
        if all(record.readable(f"BaseDllName.{f}") for f in ("Length", "MaximumLength", "Buffer")):
            name = self.kernel.read_unicode(
                record["BaseDllName.Length"], record["BaseDllName.MaximumLength"], record["BaseDllName.Buffer"]
            )
        return ScannedModule(entry, base, size, name, state)


def scan_pool(
    kernel: "CallbackContext",
    kinds: Collection[str] = ALL_KINDS,
    progress_callback: Optional[constants.ProgressCallback] = None,
    images: Iterable[Tuple[int, int]] = (),
    full: bool = False,
) -> ScanResult:
    """One pass of the engine for our targets of ``kinds`` (see :func:`..kernelpool.scan.scan_pool`);
    the scan route's state is recorded in the run's diagnostics."""
    try:
        outcome = scan.scan_pool(kernel, CallbackTargets(kernel).targets(kinds), progress_callback, images, full)
    except ViewError as excp:
        kernel.diagnostics.warning(f"Pool headers cannot be decoded ({excp}): pool scan skipped")
        kernel.diagnostics.route(routes.ROUTE_SCAN, diagnostics.UNAVAILABLE, "pool headers cannot be decoded")
        return ScanResult()
    result = ScanResult(
        objects=outcome.found.get(OBJECTS, []),
        registrations=outcome.found.get(REGISTRATIONS, []),
        modules=outcome.found.get(LOADER_ENTRIES, []),
        rejected=outcome.rejected,
        ran=True,
        extent=outcome.extent,
    )
    kernel.diagnostics.route(
        routes.ROUTE_SCAN,
        diagnostics.COMPLETE,
        f"{outcome.extent}: {len(result.objects)} objects, {len(result.registrations)} registration blocks, "
        f"{len(result.modules)} loader entries",
    )
    return result


def not_scanned(kernel: "CallbackContext", reason: str) -> ScanResult:
    """The result of a scan that was not asked for (``--no-scan``), its route said skipped."""
    kernel.diagnostics.route(routes.ROUTE_SCAN, diagnostics.SKIPPED, reason)
    return ScanResult()
