"""``windows.callbackobjects``: every callback object, its registrations and their owners.

The work lives in :mod:`volatility3.plugins.windows.callback_objects`; this module declares the
requirements, exposes the reusable classmethods and renders the rows.
"""

import logging
from typing import Iterator, List, Optional, Tuple

from volatility3.framework import interfaces, renderers
from volatility3.framework.configuration import requirements
from volatility3.framework.renderers import format_hints
from volatility3.plugins.windows import handles, modules

from volatility3.plugins.windows.callback_objects import (
    attribution,
    expected,
    flags,
    inventory,
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
    _version = (1, 0, 0)

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
    ) -> List[inventory.CallbackObjectRecord]:
        """Every callback object found by the list, directory and global routes, merged by
        body address and sorted by it. Loads our ISF when ``callback_table_name`` is None."""
        if callback_table_name is None:
            callback_table_name = cls.create_callback_symbol_table(
                context, kernel_module_name, config_path
            )
        return inventory.collect_objects(context, kernel_module_name, callback_table_name)

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
        records = self.list_callback_objects(
            self.context, kernel_module_name, config_path=self.config_path
        )
        attributor = attribution.Attributor(self.context, kernel_module_name)
        rules = expected.load()
        only_suspicious = bool(self.config.get("suspicious", False))
        registration_count = flagged_rows = suspicious_rows = 0
        for record in records:
            regs = self.list_registrations(self.context, kernel_module_name, record)
            registration_count += len(regs)
            for row in self.classify(
                self.context, kernel_module_name, record, regs, attributor, rules
            ):
                is_suspicious = any(flags.is_suspicious(f) for f in row.flags)
                if row.flags:
                    flagged_rows += 1
                if is_suspicious:
                    suspicious_rows += 1
                # Counted before filtering: the log line describes the whole image.
                if only_suspicious and not is_suspicious:
                    continue
                yield 0, self.row_values(row)
        vollog.info(
            f"{len(records)} callback objects, {registration_count} registrations, "
            f"{flagged_rows} flagged rows ({suspicious_rows} suspicious)"
        )

    def run(self) -> renderers.TreeGrid:
        return renderers.TreeGrid(COLUMNS, self._generator())
