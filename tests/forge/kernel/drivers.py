"""Driver objects: the ``\\Driver\\<service>`` object the I/O manager creates for each loaded driver.

As ``IopLoadDriver`` does (Windows Research Kernel, ``base/ntos/io/iomgr/internal.c``; its
``InitializeDriverObject`` macro in ``ioinit.c`` for boot drivers): ``ObCreateObject`` of type
``IoDriverObjectType``, ``OBJ_PERMANENT``, with a body of ``sizeof(DRIVER_OBJECT) +
sizeof(DRIVER_EXTENSION)``; the extension sits right behind the driver object
(``DriverExtension = driverObject + 1``) and points back at it; every ``MajorFunction[i]``
(``i <= IRP_MJ_MAXIMUM_FUNCTION``) is ``IopInvalidDeviceRequest``; ``Type`` is
``IO_TYPE_DRIVER``, ``Size`` ``sizeof(DRIVER_OBJECT)``; ``DriverStart``, ``DriverSize``,
``DriverSection`` (the loader entry) and ``DriverInit`` (the image's entry point) come from the
loaded image. ``DriverName`` (``\\Driver\\<service>``) and the extension's ``ServiceKeyName``
(``<service>``) are NUL-terminated strings in non-paged pool blocks of their own, tagged
``Io  `` as today's ntoskrnl allocates them (decompiled ``IopLoadDriver``/``IopInitializeBuiltinDriver``:
``ExAllocatePoolWithTag(NonPagedPoolNx, ..., 'Io  ')``). Every size and offset comes from the
build's ``_DRIVER_OBJECT`` and ``_DRIVER_EXTENSION``.

A driver hidden from ``PsLoadedModuleList`` (DKOM) keeps its driver object, whose
``DriverSection`` still names its unlinked loader entry: that is what ``windows.driverscan``
finds. An unloaded driver's object was deleted with it (:meth:`DriverObjects.create_deleted`):
its directory entry removed (the entry block is not modelled), its object block and name
buffers freed, ``DriverSection`` still naming the freed loader entry. Only ``.sys`` images get one: DLLs the kernel imports (``hal.dll``) have no driver
object; export drivers (a ``.sys`` loaded only as an import) are not told apart.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from ..allocators.pool import PoolBlock, PoolKind
from ..memory.physical import masked
from .machine import KernelMachine
from .modules import LoadedModule
from .objects import KernelObject, ObjectManager

IO_TYPE_DRIVER = 4  # wdm.h
DRIVER_DIRECTORY = "Driver"
NAME_TAG = b"Io  "
DRIVER_IMAGE_SUFFIX = ".sys"


def service_name(module: LoadedModule) -> str:
    """The service (and object) name of a driver: its file name without ``.sys``. Real service
    names may differ in case or altogether (tcpip.sys is ``\\Driver\\Tcpip``)."""
    return module.name[: -len(DRIVER_IMAGE_SUFFIX)]


@dataclass(eq=False)
class DriverObject:
    """One forged ``_DRIVER_OBJECT`` and the module it stands for."""

    module: LoadedModule
    kernel_object: KernelObject
    extension: int

    @property
    def address(self) -> int:
        return self.kernel_object.body

    @property
    def name(self) -> str:
        return f"\\{DRIVER_DIRECTORY}\\{service_name(self.module)}"

    def record(self) -> Dict[str, object]:
        """The ground truth's view (``driver_objects``)."""
        return {
            "name": self.name,
            "service_key": service_name(self.module),
            "module": self.module.name,
            "address": masked(self.address),
            "start": masked(self.module.base),
            "size": self.module.size,
            "hidden": not self.module.in_module_list,
        }


class DriverObjects:
    """The ``\\Driver`` directory and a driver object per loaded driver."""

    def __init__(self, machine: KernelMachine, objects: ObjectManager, kernel_base: int) -> None:
        self.machine = machine
        self.layout = machine.layout
        self.objects = objects
        self.kernel_base = kernel_base
        self.directory = objects.create_directory(DRIVER_DIRECTORY)
        self.drivers: List[DriverObject] = []
        self.deleted: List[DriverObject] = []  # of unloaded drivers: freed

    @property
    def dispatch_routine(self) -> Optional[int]:
        """``nt!IopInvalidDeviceRequest`` where the layout has it (the x86 profiles' invented
        symbols do not: there each driver's entry point stands in)."""
        if self.layout.has_symbol("IopInvalidDeviceRequest"):
            return self.kernel_base + self.layout.symbol("IopInvalidDeviceRequest")
        return None

    def create_all(self, modules: Sequence[LoadedModule]) -> None:
        """A driver object for every loaded ``.sys`` image; call once the loader entries exist
        (``ModuleLoader.write_module_list``), since ``DriverSection`` points at them."""
        for module in modules:
            if module.name.lower().endswith(DRIVER_IMAGE_SUFFIX) and not module.unloaded and module.has_driver_object:
                self.create(module)
        self.objects.set_type_count("Driver", len(self.drivers))

    def create_deleted(self, module: LoadedModule) -> List[PoolBlock]:
        """The driver object of an unloaded driver, as ``IopLoadDriver`` created it and the
        unload deleted it: in no directory; returns its blocks (object, then names), to free."""
        driver = self.create(module, in_directory=False)
        self.drivers.remove(driver)
        self.deleted.append(driver)
        return list(driver.kernel_object.blocks)

    def create(self, module: LoadedModule, in_directory: bool = True) -> DriverObject:
        if module.entry is None:
            raise ValueError(f"{module.name}: its loader entry is not written yet (ModuleLoader.write_module_list)")
        layout, machine = self.layout, self.machine
        object_size = layout.size_of("_DRIVER_OBJECT")
        kernel_object = self.objects.create_object("Driver", object_size + layout.size_of("_DRIVER_EXTENSION"),
                                                   name=service_name(module), permanent=True)
        if in_directory:
            self.objects.insert(self.directory, kernel_object)
        body = kernel_object.body
        extension = body + object_size
        entry_point = module.base + module.image.entry_point_rva
        driver = DriverObject(module, kernel_object, extension)
        name_block, name_buffer = machine.allocate_string(driver.name, NAME_TAG, PoolKind.NONPAGED, role="driver_name")
        key_block, key_buffer = machine.allocate_string(service_name(module), NAME_TAG, PoolKind.NONPAGED,
                                                        role="driver_service_key")
        kernel_object.blocks += [name_block, key_block]
        values = {
            "Type": IO_TYPE_DRIVER,
            "Size": object_size,
            "DriverStart": module.base,
            "DriverSize": module.size,
            "DriverSection": module.entry,
            "DriverExtension": extension,
            "DriverInit": entry_point,
        }
        values.update(machine.unicode_string_values("DriverName", driver.name, name_buffer))
        machine.write_struct(body, "_DRIVER_OBJECT", values)  # the rest zero, as RtlZeroMemory leaves it
        dispatch = self.dispatch_routine or entry_point
        major_functions = body + layout.offset_of("_DRIVER_OBJECT", "MajorFunction")
        for index in range(layout.array_count("_DRIVER_OBJECT", "MajorFunction")):
            machine.write_pointer(major_functions + index * layout.pointer_size, dispatch)
        extension_values = {"DriverObject": body}
        extension_values.update(machine.unicode_string_values("ServiceKeyName", service_name(module), key_buffer))
        machine.write_struct(extension, "_DRIVER_EXTENSION", extension_values)
        self.drivers.append(driver)
        return driver

    def records(self) -> List[Dict[str, object]]:
        return [driver.record() for driver in self.drivers]

    def deleted_records(self) -> List[Dict[str, object]]:
        return [driver.record() for driver in self.deleted]
