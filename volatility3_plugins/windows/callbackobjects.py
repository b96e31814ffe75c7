"""``windows.callbackobjects``: every callback object, its registrations and their owners.

The work lives in :mod:`volatility3.plugins.windows.callback_objects`; this module declares the
requirements, exposes the reusable classmethods and renders the rows.
"""

import logging
from typing import Dict, Iterator, List, Optional, Set, Tuple

from volatility3.framework import constants, interfaces, renderers
from volatility3.framework.configuration import requirements
from volatility3.framework.renderers import format_hints
from volatility3.plugins.windows import handles, modules, poolscanner

from volatility3.plugins.windows.callback_objects import (
    attribution,
    discovery,
    expected,
    flags,
    inventory,
    poolscan,
    registrations,
    structures,
)

vollog = logging.getLogger(__name__)

#: Column names and types: users script against them, never rename or reorder.
COLUMNS = [
    ("Object", format_hints.Hex),
    ("Name", str),
    ("AllowMultiple", bool),
    ("FoundBy", str),
    ("Registration", format_hints.Hex),
    ("Routine", format_hints.Hex),
    ("Context", format_hints.Hex),
    ("Busy", int),
    ("UnregisterWaiting", bool),
    ("Module", str),
    ("Symbol", str),
    ("Flags", str),
]


def _hex(value):
    """Hex for numbers, the absent value unchanged (UnreadableValue stays visible)."""
    if isinstance(value, interfaces.renderers.BaseAbsentValue):
        return value
    return format_hints.Hex(value)


class CallbackObjects(interfaces.plugins.PluginInterface):
    """Lists kernel callback objects (ExCreateCallback), their registered routines and owners,
    and flags tampering."""

    _required_framework_version = (2, 0, 0)
    # 1.1.0: pool scanning (scan route, orphan/freed rows, hidden modules), --no-scan
    _version = (1, 1, 0)

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return [
            requirements.ModuleRequirement(
                name="kernel",
                description="Windows kernel",
                architectures=["Intel32", "Intel64"],
            ),
            requirements.VersionRequirement(
                name="modules", component=modules.Modules, version=(3, 0, 0)
            ),
            requirements.VersionRequirement(
                name="handles", component=handles.Handles, version=(4, 0, 0)
            ),
            requirements.VersionRequirement(
                name="poolscanner", component=poolscanner.PoolScanner, version=(3, 0, 0)
            ),
            requirements.BooleanRequirement(
                name="no_scan",
                description="Skip pool scanning: list, directory and globals only (faster; "
                "no orphan_registration, freed or hidden_module)",
                default=False,
                optional=True,
            ),
            requirements.BooleanRequirement(
                name="suspicious",
                description="Only show rows with at least one suspicious flag",
                default=False,
                optional=True,
            ),
        ]

    @classmethod
    def create_callback_symbol_table(
        cls,
        context: interfaces.context.ContextInterface,
        kernel_module_name: str,
        config_path: str,
    ) -> str:
        """Loads our ISF for ``_CALLBACK_OBJECT``/``_CALLBACK_REGISTRATION`` with the layout
        matching the kernel (pointer size; ExpCallbackListHead present = 8.1+ layout)."""
        return structures.create_symbol_table(context, config_path, kernel_module_name)

    @classmethod
    def list_callback_objects(
        cls,
        context: interfaces.context.ContextInterface,
        kernel_module_name: str,
        callback_table_name: Optional[str] = None,
        config_path: str = "plugins.CallbackObjects",
        scan: Optional[poolscan.ScanResult] = None,
        headers: Optional[discovery.ObjectHeaders] = None,
    ) -> List[inventory.CallbackObjectRecord]:
        """Every callback object found by the list, directory and global routes (and by the
        pool scan ``scan`` when given), merged by body address and sorted by it. Loads our
        ISF when ``callback_table_name`` is None."""
        if callback_table_name is None:
            callback_table_name = cls.create_callback_symbol_table(
                context, kernel_module_name, config_path
            )
        return inventory.collect_objects(
            context,
            kernel_module_name,
            callback_table_name,
            scanned=scan.objects if scan is not None else None,
            headers=headers,
        )

    @classmethod
    def scan_pool(
        cls,
        context: interfaces.context.ContextInterface,
        kernel_module_name: str,
        callback_table_name: Optional[str] = None,
        config_path: str = "plugins.CallbackObjects",
        objects: bool = True,
        registrations: bool = True,
        modules: bool = True,
        progress_callback: Optional[constants.ProgressCallback] = None,
        headers: Optional[discovery.ObjectHeaders] = None,
        loaded_modules: Optional[List[attribution.LoadedModule]] = None,
    ) -> poolscan.ScanResult:
        """One pass over kernel pool for callback objects (``Call``), registration blocks
        (``CBRe``) and loader entries (``MmLd``), every hit validated (see ``poolscan``).
        The images of ``loaded_modules`` (PsLoadedModuleList when None) are not searched."""
        if callback_table_name is None:
            callback_table_name = cls.create_callback_symbol_table(
                context, kernel_module_name, config_path
            )
        if headers is None:
            headers = inventory.object_headers(context, kernel_module_name)
        if loaded_modules is None:
            loaded_modules = attribution.list_loaded_modules(context, kernel_module_name)
        scanner = poolscan.CallbackPoolScan(
            context, kernel_module_name, callback_table_name, headers
        )
        images = [(module.base, module.size) for module in loaded_modules or []]
        return scanner.run(objects, registrations, modules, progress_callback, images)

    @classmethod
    def scan_callback_objects(
        cls,
        context: interfaces.context.ContextInterface,
        kernel_module_name: str,
        callback_table_name: Optional[str] = None,
        config_path: str = "plugins.CallbackObjects",
    ) -> List[int]:
        """Bodies of the callback objects found in pool (allocated, header type Callback)."""
        return cls.scan_pool(
            context, kernel_module_name, callback_table_name, config_path,
            objects=True, registrations=False, modules=False,
        ).objects

    @classmethod
    def scan_registrations(
        cls,
        context: interfaces.context.ContextInterface,
        kernel_module_name: str,
        callback_table_name: Optional[str] = None,
        config_path: str = "plugins.CallbackObjects",
    ) -> List[Tuple[int, bool]]:
        """``(address, in freed pool)`` of every registration block found in pool whose
        routine and CallbackObject are kernel pointers (linked ones included)."""
        return cls.scan_pool(
            context, kernel_module_name, callback_table_name, config_path,
            objects=False, registrations=True, modules=False,
        ).registrations

    @staticmethod
    def hidden_modules(scan: poolscan.ScanResult) -> List[attribution.LoadedModule]:
        """Loader entries found in pool, one per image base (an allocated entry wins over a
        freed one); the Attributor keeps those PsLoadedModuleList does not cover."""
        chosen: Dict[int, poolscan.ScannedModule] = {}
        for module in scan.modules:
            current = chosen.get(module.base)
            if current is None or (current.free and not module.free):
                chosen[module.base] = module
        return [
            attribution.LoadedModule(m.base, m.size, m.name, is_kernel=False, hidden=True)
            for m in list(chosen.values())[: attribution.MAX_MODULES]
        ]

    @classmethod
    def list_registrations(
        cls,
        context: interfaces.context.ContextInterface,
        kernel_module_name: str,
        callback_object: inventory.CallbackObjectRecord,
    ) -> List[registrations.Registration]:
        """The registrations linked from the object's ``RegisteredCallbacks`` (bounded)."""
        regs, _walked = inventory.read_registrations(context, callback_object)
        return regs

    @classmethod
    def classify(
        cls,
        context: interfaces.context.ContextInterface,
        kernel_module_name: str,
        callback_object: inventory.CallbackObjectRecord,
        registration_list: List[registrations.Registration],
        attributor: Optional[attribution.Attributor] = None,
        rules: Optional[expected.ExpectedRegistrants] = None,
    ) -> List[inventory.Row]:
        """The output rows of one object (one per registration, or one without), with owner
        attribution and flags sorted by severity. Pass a shared ``attributor`` when
        classifying many objects: it caches the module list and parsed PE headers."""
        attributor = attributor or attribution.Attributor(context, kernel_module_name)
        rules = rules if rules is not None else expected.load()
        return inventory.classify(callback_object, registration_list, attributor, rules)

    @staticmethod
    def row_values(row: inventory.Row) -> Tuple:
        """The TreeGrid values of a row, in ``COLUMNS`` order."""
        record = row.record
        na = renderers.NotApplicableValue
        name = record.name if record.name is not None else na()
        values = [
            format_hints.Hex(record.address),
            name,
            record.body.allow_multiple,
            record.found_by,
        ]
        reg = row.registration
        if reg is None:
            values += [na() for _ in range(7)]
        else:
            attrib = row.attribution
            if attrib is None or attrib.module is None:
                module, symbol = na(), na()
            else:
                module = attrib.module.name if attrib.module.name else renderers.UnreadableValue()
                symbol = attrib.symbol if attrib.symbol else na()
            values += [
                format_hints.Hex(reg.address),
                _hex(reg.routine),
                _hex(reg.context),
                reg.busy,
                reg.unregister_waiting,
                module,
                symbol,
            ]
        values.append(",".join(row.flags))
        return tuple(values)

    def _generator(self) -> Iterator[Tuple[int, Tuple]]:
        kernel_module_name = self.config["kernel"]
        table_name = self.create_callback_symbol_table(
            self.context, kernel_module_name, self.config_path
        )
        # Built once: the type map and header offsets serve both the scan and the routes, the
        # module list both the scan (images it skips) and attribution.
        headers = inventory.object_headers(self.context, kernel_module_name)
        loaded_modules = attribution.list_loaded_modules(self.context, kernel_module_name)
        scan: Optional[poolscan.ScanResult] = None
        if not self.config.get("no_scan", False):
            scan = self.scan_pool(
                self.context,
                kernel_module_name,
                table_name,
                progress_callback=self._progress_callback,
                headers=headers,
                loaded_modules=loaded_modules,
            )
        records = self.list_callback_objects(
            self.context, kernel_module_name, table_name, scan=scan, headers=headers
        )
        attributor = attribution.Attributor(
            self.context,
            kernel_module_name,
            loaded_modules=loaded_modules,
            hidden_modules=self.hidden_modules(scan) if scan is not None else (),
        )
        rules = expected.load()
        only_suspicious = bool(self.config.get("suspicious", False))
        counts = {"registrations": 0, "flagged": 0, "suspicious": 0}

        def emit(row: inventory.Row) -> Iterator[Tuple[int, Tuple]]:
            is_suspicious = any(flags.is_suspicious(f) for f in row.flags)
            counts["flagged"] += bool(row.flags)
            counts["suspicious"] += is_suspicious
            # Counted before filtering: the log line describes the whole image.
            if not (only_suspicious and not is_suspicious):
                yield 0, self.row_values(row)

        # Registrations reached by a list walk: a scanned block among them is not reported
        # again. Only addresses are kept, so memory stays flat with the number of rows.
        linked: Set[int] = set()
        for record in records:
            regs = self.list_registrations(self.context, kernel_module_name, record)
            counts["registrations"] += len(regs)
            if scan is not None:
                linked.update(reg.address for reg in regs)
            for row in self.classify(
                self.context, kernel_module_name, record, regs, attributor, rules
            ):
                yield from emit(row)
        loose = 0
        if scan is not None:
            by_address = {record.address: record for record in records}
            kernel = self.context.modules[kernel_module_name]
            found = poolscan.loose_registrations(
                self.context, kernel.layer_name, table_name, scan.registrations, linked,
                set(by_address),
            )
            # Grouped by the object they name, after every listed row.
            found.sort(key=lambda item: (int(item[0].callback_object), item[0].address))
            for reg, freed in found:
                loose += 1
                record = by_address[int(reg.callback_object)]
                yield from emit(inventory.classify_loose(record, reg, freed, attributor))
        vollog.info(
            f"{len(records)} callback objects, {counts['registrations']} linked registrations"
            + (f", {loose} unlinked or freed blocks from the pool scan" if scan is not None else "")
            + f", {counts['flagged']} flagged rows ({counts['suspicious']} suspicious)"
        )

    def run(self) -> renderers.TreeGrid:
        return renderers.TreeGrid(COLUMNS, self._generator())
