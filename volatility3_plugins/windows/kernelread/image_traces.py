"""Images the loader list does not show, recognised from the other traces a loaded image leaves.

Loading a driver leaves more than its ``PsLoadedModuleList`` entry, and a rootkit that unlinks
itself rarely cleans everything:

- its loader entry, a pool block tagged ``MmLd`` (what ``windows.modscan`` scans for), found by a
  caller's pool scan;
- its entry in ``nt!PsInvertedFunctionTable`` (x64, :mod:`.inverted_table`);
- its driver object, in ``\\Driver`` or found in pool (tag ``Driv``, what ``windows.driverscan``
  scans for) (:mod:`.driver_objects`).

An image is recognised when a trace names a base that no listed module covers and an image
header (``MZ``) is read there. Each such image becomes a :class:`~.loaded_modules.LoadedModule`
marked ``hidden``, named by the best trace: a loader entry's ``BaseDllName`` (from the entry
itself, or the one a driver object's ``DriverSection`` names), else the driver object's
``DriverName``, else ``hidden@0xBASE``; sized by its loader entry, else its inverted-table entry,
else its driver object.
"""

import dataclasses
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Tuple

from volatility3.framework import exceptions

from . import diagnostics, driver_objects, inverted_table
from .addresses import PAGE_SIZE
from .driver_objects import DirectoryDrivers, DriverObjectInfo
from .inverted_table import InvertedTable, read_inverted_table
from .loaded_modules import MAX_IMAGE_SIZE, MAX_MODULES, LoadedModule, ModuleList

if TYPE_CHECKING:
    from .context import KernelContext

# Traces, most trusted first for an image's size; names rank by NAME_ORDER.
LOADER_ENTRY = "loader entry"
INVERTED_TABLE = "inverted function table"
DRIVER_OBJECT = "driver object"
SIZE_ORDER = (LOADER_ENTRY, INVERTED_TABLE, DRIVER_OBJECT)
#: The warning when a trace could not be read whole (its subject: the route).
TRACES_INCOMPLETE = "Traces of hidden images not read whole: images only they show are missed"
#: A loader entry's name (BaseDllName), then a driver object's (DriverName).
NAME_ORDER = ("loader", "driver")


@dataclasses.dataclass(frozen=True)
class ImageTrace:
    """One trace of an image: where it says the image is, and the name it gives (``name_kind``
    one of :data:`NAME_ORDER`, None without a name)."""

    base: int
    size: int
    source: str
    name: Optional[str] = None
    name_kind: Optional[str] = None


def from_loader_entry(base: int, size: int, name: Optional[str]) -> ImageTrace:
    return ImageTrace(base, size, LOADER_ENTRY, name, "loader" if name else None)


def from_inverted_table(entries: Iterable[Tuple[int, int]]) -> List[ImageTrace]:
    """Traces of the (ImageBase, SizeOfImage) of inverted-function-table entries."""
    return [ImageTrace(base, size, INVERTED_TABLE) for base, size in entries]


def from_driver_objects(objects: Iterable[DriverObjectInfo]) -> List[ImageTrace]:
    traces = []
    for found in objects:
        if found.loader_name:
            traces.append(ImageTrace(found.start, found.size, DRIVER_OBJECT, found.loader_name, "loader"))
        else:
            traces.append(ImageTrace(found.start, found.size, DRIVER_OBJECT, found.name, "driver" if found.name else None))
    return traces


def hidden_label(base: int) -> str:
    """The name of an image no trace names."""
    return f"hidden@{base:#x}"


def image_problem(kernel: "KernelContext", base: int, size: int) -> Optional[str]:
    """Why no image lies at ``base`` with ``size`` bytes, as a trace gives them (an implausible
    range, nothing mapped there, no MZ header); None when one does."""
    if not base or base % PAGE_SIZE or not 0 < size <= MAX_IMAGE_SIZE:
        return "with an implausible image range"
    try:
        if kernel.reader.read(base, 2) != b"MZ":
            return "whose image has no MZ header"
    except exceptions.InvalidAddressException:
        return "whose image is not mapped"
    return None


def hidden_images(kernel: "KernelContext", listed: ModuleList, traces: Iterable[ImageTrace]) -> List[LoadedModule]:
    """One hidden module per image base that some trace gives, that no listed module covers and
    where an image header is read; sorted by base, at most :data:`MAX_MODULES`."""
    by_base: Dict[int, List[ImageTrace]] = {}
    for trace in traces:
        by_base.setdefault(trace.base & kernel.mask, []).append(trace)
    found: List[LoadedModule] = []
    for base in sorted(by_base):
        if any(module.contains(base) for module in listed.modules):
            continue
        usable = [trace for trace in by_base[base] if image_problem(kernel, trace.base, trace.size) is None]
        if not usable:
            continue
        sized = min(usable, key=lambda trace: SIZE_ORDER.index(trace.source))
        named = [trace for trace in usable if trace.name_kind is not None]
        name = min(named, key=lambda trace: NAME_ORDER.index(trace.name_kind)).name if named else hidden_label(base)
        found.append(LoadedModule(base, sized.size, name, is_kernel=False, hidden=True))
        if len(found) >= MAX_MODULES:
            break
    return found


class OtherImages:
    """The images the loader list lacks, from the inverted function table, ``\\Driver`` and the
    traces a caller's pool scan found (``extra``), read the first time they are asked for (an
    :class:`~.attribution.Attributor` asks on the first address in no listed module); then the
    state of the two routes read here for the run's verdict."""

    def __init__(self, kernel: "KernelContext", listed: ModuleList, extra: Iterable[ImageTrace] = (),
                 pool_driver_objects: Optional[int] = None) -> None:
        self._kernel = kernel
        self._listed = listed
        self._extra = list(extra)
        #: How many driver objects the caller's pool scan found (None: no scan ran).
        self._pool_driver_objects = pool_driver_objects
        self._inverted: Optional[InvertedTable] = None
        self._drivers: Optional[DirectoryDrivers] = None

    def __call__(self) -> List[LoadedModule]:
        kernel = self._kernel
        self._inverted = read_inverted_table(kernel)
        self._drivers = driver_objects.from_directory(kernel)
        traces = self._extra + from_inverted_table(self._inverted.entries) + from_driver_objects(self._drivers.objects)
        return hidden_images(kernel, self._listed, traces)

    def record_routes(self) -> None:
        """Each route's state; ``skipped`` when no address needed them (never read)."""
        said = self._kernel.diagnostics
        if self._kernel.pointer_size != 8:
            said.route(inverted_table.ROUTE_NAME, diagnostics.NOT_ON_THIS_BUILD, "no inverted function table on x86")
        if self._inverted is None or self._drivers is None:
            why = "no routine outside the listed modules"
            if self._kernel.pointer_size == 8:
                said.route(inverted_table.ROUTE_NAME, diagnostics.SKIPPED, why)
            said.route(driver_objects.ROUTE_NAME, diagnostics.SKIPPED, why)
            return
        for name, found in ((inverted_table.ROUTE_NAME, self._inverted.route), (driver_objects.ROUTE_NAME, self._drivers.route)):
            if found.state in diagnostics.DEGRADING:
                said.warning(TRACES_INCOMPLETE, name, found.detail)
        if self._kernel.pointer_size == 8:
            said.route(inverted_table.ROUTE_NAME, self._inverted.route.state, self._inverted.route.detail)
        detail = self._drivers.route.detail
        if self._pool_driver_objects is not None:
            detail += f", {self._pool_driver_objects} in pool"
        said.route(driver_objects.ROUTE_NAME, self._drivers.route.state, detail)
