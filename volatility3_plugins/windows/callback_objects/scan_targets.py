"""What the pool scan looks for on behalf of ``windows.callbackobjects``: callback objects,
registration blocks, loader entries and driver objects that no list shows, as targets of the
generic engine (:mod:`..kernelpool.scan`), in one pass.

- ``CBRe``: ``_CALLBACK_REGISTRATION`` blocks (``ExRegisterCallback``);
- ``Call`` (``Cal\\xec`` with the protected bit on Windows 7 and older): object allocations
  ``_POOL_HEADER | optional headers | _OBJECT_HEADER | _CALLBACK_OBJECT``
  (:func:`..kernelpool.objects.object_target`);
- ``MmLd``: the loader's ``_LDR_DATA_TABLE_ENTRY`` blocks, the tag ``windows.modscan`` scans:
  a driver unlinked from ``PsLoadedModuleList`` keeps its entry in pool;
- ``Driv`` (``Dri\\xf6``): driver objects, the generic target of
  :data:`..kernelpool.objects.DRIVER_OBJECTS` (as ``windows.driverscan``): a hidden driver keeps
  its driver object, which names its image.

Every hit is validated before anyone sees it (the engine checks the pool header: aligned,
``BlockSize`` covering the structure and within a page, at a block start where the allocator
knows its blocks): an object's ``InfoMask`` must place its ``_OBJECT_HEADER`` inside the block
with the type ``Callback`` (``Driver``); a registration's ``CallbackObject`` and ``CallbackFunction`` must be
kernel pointers; a loader entry's ``DllBase`` a page-aligned kernel address with ``MZ`` there and
a sane ``SizeOfImage``.
"""

import dataclasses
import functools
from typing import TYPE_CHECKING, Collection, Dict, Iterable, List, Optional, Tuple

from volatility3.framework import constants

from ..kernelpool import objects, scan
from ..kernelpool.scan import PoolHit, PoolScanner, Rejected, ScanTarget
from ..kernelpool.state import BlockState
from ..kernelread import diagnostics, driver_objects, image_traces
from ..kernelread.loaded_modules import entry_view
from ..kernelread.views import StructView, ViewError
from . import isf, routes

if TYPE_CHECKING:
    from .context import CallbackContext

#: Scan targets by kind.
OBJECTS = "objects"
REGISTRATIONS = "registrations"
LOADER_ENTRIES = "loader entries"
DRIVER_OBJECTS = objects.DRIVER_OBJECTS.kind
ALL_KINDS = (OBJECTS, REGISTRATIONS, LOADER_ENTRIES, DRIVER_OBJECTS)
#: Callback objects (``ExCreateCallback``): their body starts with ``Call``.
CALLBACK_OBJECTS = objects.ObjectKind(OBJECTS, (b"Call", b"Cal\xec"), routes.CALLBACK_TYPE, routes.CALLBACK_TYPE_GLOBAL,
                                      signature=isf.CALLBACK_SIGNATURE.to_bytes(4, "little"))


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


@dataclasses.dataclass(frozen=True)
class ScannedDriverObject:
    """A driver object found in pool, and the image it names."""

    driver: driver_objects.DriverObjectInfo
    state: BlockState


@dataclasses.dataclass
class ScanResult:
    """What one pass found, validated as far as possible without the lists; empty when the
    scan did not run (``ran`` False)."""

    objects: List[ScannedBlock] = dataclasses.field(default_factory=list)
    registrations: List[ScannedBlock] = dataclasses.field(default_factory=list)
    modules: List[ScannedModule] = dataclasses.field(default_factory=list)
    driver_objects: List[ScannedDriverObject] = dataclasses.field(default_factory=list)
    rejected: Dict[str, int] = dataclasses.field(default_factory=dict)
    ran: bool = False
    #: Where it read: the allocator's regions (its name and their size) or the kernel half.
    extent: str = ""

    def image_traces(self) -> List[image_traces.ImageTrace]:
        """What the scan found of loaded images: allocated loader entries and driver objects. A
        freed one is the remains of an unloaded driver, and one of unknown state proves nothing:
        neither is a trace of a loaded image."""
        found = [image_traces.from_loader_entry(m.base, m.size, m.name) for m in self.modules if m.state == BlockState.ALLOCATED]
        return found + image_traces.from_driver_objects(
            d.driver for d in self.driver_objects if d.state == BlockState.ALLOCATED
        )


class CallbackTargets:
    """The validators of our three targets on one kernel."""

    def __init__(self, kernel: "CallbackContext") -> None:
        self.kernel = kernel

    @functools.cached_property
    def _loader(self) -> Optional[StructView]:
        return entry_view(self.kernel)

    def targets(self, kinds: Collection[str] = ALL_KINDS) -> List[ScanTarget]:
        """The declared table of what the scan looks for, the kinds asked for only."""
        kernel = self.kernel
        table = (
            ScanTarget(REGISTRATIONS, (b"CBRe",), lambda: kernel.registration.size, self.validate_registration),
            objects.object_target(kernel, CALLBACK_OBJECTS, ScannedBlock, lambda: kernel.callback_object.size),
            ScanTarget(LOADER_ENTRIES, (b"MmLd",), self.loader_entry_size, self.validate_loader_entry),
            objects.object_target(kernel, objects.DRIVER_OBJECTS, self.keep_driver_object),
        )
        return [target for target in table if target.kind in kinds]

    # -- sizes ---------------------------------------------------------------------------

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

    def keep_driver_object(self, body: int, state: BlockState) -> ScannedDriverObject:
        """A driver object that names an image (``DriverStart`` set); others are no trace."""
        found = driver_objects.read_driver_object(self.kernel, body)
        if found is None:
            raise Rejected("driver object without an image")
        return ScannedDriverObject(found, state)

    def validate_loader_entry(self, scanner: PoolScanner, hit: PoolHit, state: BlockState) -> ScannedModule:
        view = self._loader
        assert view is not None
        entry = scanner.body(hit)
        record = view.read(self.kernel.reader, entry)
        if not record.readable("DllBase") or not record.readable("SizeOfImage"):
            raise Rejected("loader entry unreadable")
        base, size = record.DllBase, record.SizeOfImage
        problem = image_traces.image_problem(self.kernel, base, size)
        if problem is not None:
            raise Rejected(f"loader entry {problem}")
        return ScannedModule(entry, base, size, self.kernel.record_unicode(record, "BaseDllName"), state)


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
        outcome = scan.scan_pool(kernel, CallbackTargets(kernel).targets(kinds), progress_callback, images, full, kernel.pool_map)
    except ViewError as excp:
        kernel.diagnostics.warning(f"Pool headers cannot be decoded ({excp}): pool scan skipped")
        kernel.diagnostics.route(routes.ROUTE_SCAN, diagnostics.UNAVAILABLE, "pool headers cannot be decoded")
        return ScanResult()
    result = ScanResult(
        objects=outcome.found.get(OBJECTS, []),
        registrations=outcome.found.get(REGISTRATIONS, []),
        modules=outcome.found.get(LOADER_ENTRIES, []),
        driver_objects=outcome.found.get(DRIVER_OBJECTS, []),
        rejected=outcome.rejected,
        ran=True,
        extent=outcome.extent,
    )
    kernel.diagnostics.route(
        routes.ROUTE_SCAN,
        diagnostics.COMPLETE,
        f"{outcome.extent}: {len(result.objects)} objects, {len(result.registrations)} registration blocks, "
        f"{len(result.modules)} loader entries, {len(result.driver_objects)} driver objects",
    )
    return result


def not_scanned(kernel: "CallbackContext", reason: str) -> ScanResult:
    """The result of a scan that was not asked for (``--no-scan``), its route said skipped."""
    kernel.diagnostics.route(routes.ROUTE_SCAN, diagnostics.SKIPPED, reason)
    return ScanResult()
