"""Driver objects: the image each one says its driver was loaded from.

``IopLoadDriver`` (WRK ``base/ntos/io/iomgr/internal.c``) creates a ``Driver`` object per loaded
driver, permanent and named ``\\Driver\\<service>``, with ``DriverStart`` (the image base),
``DriverSize`` (its ``SizeOfImage``), ``DriverSection`` (its loader entry) and ``DriverName``. A
driver that unlinks itself from ``PsLoadedModuleList`` usually keeps it: the ``\\Driver``
directory and a pool scan (Volatility's ``windows.driverscan``, tag ``Driv``) still find it.
Objects that ``IoCreateDriver`` makes (built-in drivers, and drivers a manual mapper creates
that way) have ``DriverStart`` 0: no image, nothing to learn here.

The name a driver object gives its image: the ``BaseDllName`` of the loader entry its
``DriverSection`` names, when that can still be read, else its ``DriverName``.
"""

import dataclasses
from typing import TYPE_CHECKING, List, Optional

from . import diagnostics, object_directory
from .loaded_modules import entry_view

if TYPE_CHECKING:
    from .context import KernelContext

ROUTE_NAME = "driver objects"
DIRECTORY = "Driver"
TYPE_NAME = "Driver"
#: The kernel global that points at the ``Driver`` object type.
TYPE_GLOBAL = "IoDriverObjectType"


@dataclasses.dataclass(frozen=True)
class DriverObjectInfo:
    address: int  # the object's body
    start: int  # DriverStart
    size: int  # DriverSize
    name: Optional[str]  # DriverName
    #: BaseDllName of the loader entry DriverSection points at, when it reads as one
    loader_name: Optional[str] = None


@dataclasses.dataclass
class DirectoryDrivers:
    """The driver objects of ``\\Driver`` and how the walk fared (for the verdict)."""

    objects: List[DriverObjectInfo]
    route: diagnostics.RouteState


def read_driver_object(kernel: "KernelContext", body: int) -> Optional[DriverObjectInfo]:
    """The driver object at ``body``; None when it cannot be read, reads as zeros, or names no
    image (``DriverStart`` 0)."""
    view = kernel.kernel_view(
        "_DRIVER_OBJECT",
        ["DriverStart", "DriverSize", "DriverSection", "DriverName.Length", "DriverName.MaximumLength", "DriverName.Buffer"],
    )
    if view is None:
        return None
    record = view.read(kernel.reader, body)
    if record.zeroed or not record.readable("DriverStart") or not record.readable("DriverSize") or not record.DriverStart:
        return None
    name = kernel.record_unicode(record, "DriverName")
    loader_name = None
    loader = entry_view(kernel)
    if loader is not None and record.readable("DriverSection") and record.DriverSection:
        entry = loader.read(kernel.reader, record.DriverSection)
        # The entry must still describe this image: a freed and reused block names another.
        if entry.readable("DllBase") and entry.DllBase == record.DriverStart:
            loader_name = kernel.record_unicode(entry, "BaseDllName")
    return DriverObjectInfo(body & kernel.mask, record.DriverStart, record.DriverSize, name, loader_name)


def from_directory(kernel: "KernelContext") -> DirectoryDrivers:
    """The driver objects in ``\\Driver`` (type ``Driver`` by their headers)."""
    headers = kernel.object_headers
    if headers is None:
        return DirectoryDrivers([], diagnostics.RouteState(diagnostics.UNAVAILABLE, "object headers unusable"))
    directory, why = object_directory.find_root_directory(kernel, headers, DIRECTORY)
    if directory is None:
        return DirectoryDrivers([], diagnostics.RouteState(diagnostics.UNAVAILABLE, why))
    driver_index = headers.type_index(TYPE_NAME, TYPE_GLOBAL)
    if driver_index is None:
        return DirectoryDrivers([], diagnostics.RouteState(diagnostics.UNAVAILABLE, "the Driver object type cannot be identified"))
    walked = object_directory.directory_entries(kernel, headers, directory)
    found = []
    for entry in walked.entries:
        if entry.readable and entry.type_index == driver_index:
            info = read_driver_object(kernel, entry.body)
            if info is not None:
                found.append(info)
    unreadable = sum(1 for entry in walked.entries if not entry.readable)
    complete = walked.complete and not unreadable
    detail = f"{len(found)} in \\{DIRECTORY}" + ("" if complete else f", {unreadable} unreadable or a chain cut")
    return DirectoryDrivers(found, diagnostics.RouteState(diagnostics.COMPLETE if complete else diagnostics.INCOMPLETE, detail))
