"""``windows.callbackobjects``: every callback object, its registrations and their owners.

The work lives in the ``callback_objects`` package beside this file; this module declares the
requirements, exposes the reusable classmethods and renders the rows. An image goes to its rows
through :mod:`.callback_objects.report` (routes, scan, merge) and
:mod:`.callback_objects.rows` (classification).
"""

import logging
from typing import Dict, Iterator, List, Optional, Tuple

from volatility3.framework import constants, exceptions, interfaces, renderers
from volatility3.framework.configuration import requirements
from volatility3.framework.renderers import format_hints
from volatility3.framework.symbols import windows as windows_symbols  # noqa: F401 (before poolscanner: it breaks their import cycle)
from volatility3.plugins.windows import poolscanner

from ..schema import baseline, columns, outputs
from .callback_objects import merge, registrations, report, rows, scan_targets, verdict
from .callback_objects.context import CallbackContext

vollog = logging.getLogger(__name__)

#: The TreeGrid type of each kind of column value (:mod:`..schema.columns`).
RENDERED_TYPES = {columns.HEX: format_hints.Hex, columns.TEXT: str, columns.BOOL: bool, columns.INT: int}
#: Column names and types: users script against them, never rename or reorder.
COLUMNS = [(column.name, RENDERED_TYPES[column.kind]) for column in columns.COLUMNS]

DEFAULT_CONFIG_PATH = "plugins.CallbackObjects"


def _hex(value):
    """Hex for numbers, the absent value unchanged (UnreadableValue stays visible)."""
    if isinstance(value, interfaces.renderers.BaseAbsentValue):
        return value
    return format_hints.Hex(value)


class BaselineUnreadable(exceptions.VolatilityException):
    """A baseline that could be read when the plugin was constructed no longer can."""


class CallbackObjects(interfaces.plugins.PluginInterface):
    """Lists kernel callback objects (ExCreateCallback), their registered routines and owners,
    and flags tampering."""

    _required_framework_version = (2, 0, 0)
    # 2.0.0: one run context (CallbackContext) for every step; classmethods take it
    # 2.1.0: allocation states from the pool allocator; scan_pool(full=...)
    # 2.2.0: known-good comparison (--baseline, not_in_baseline)
    _version = (2, 2, 0)

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return [
            requirements.ModuleRequirement(
                name="kernel",
                description="Windows kernel",
                architectures=["Intel32", "Intel64"],
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
                name="full_scan",
                description="Scan the whole kernel half of the address space, not only where the pool "
                "allocator's metadata says non-paged blocks lie (slower; for when that metadata is "
                "not trusted)",
                default=False,
                optional=True,
            ),
            requirements.BooleanRequirement(
                name="suspicious",
                description="Only show rows with at least one suspicious flag",
                default=False,
                optional=True,
            ),
            requirements.ListRequirement(
                name="baseline",
                element_type=str,
                description="JSON outputs of this plugin (-r json) from known-good machines, or folders of "
                "them, all after one --baseline: a registration none of them has is flagged not_in_baseline",
                optional=True,
            ),
        ]

    @classmethod
    def unsatisfied(
        cls, context: interfaces.context.ContextInterface, config_path: str
    ) -> Dict[str, interfaces.configuration.RequirementInterface]:
        """Also refuses, before any memory is read, a ``--baseline`` path that is not a JSON
        output of this plugin or a folder of them: the command line then names the requirement
        and exits non-zero, and the error line says what is wrong with which file."""
        unmet = super().unsatisfied(context, config_path)
        path = interfaces.configuration.path_join(config_path, "baseline")
        paths = context.config.get(path, None)
        if not paths:  # the command line gives [] when the option is absent
            return unmet
        try:
            baseline.load(paths)
        except outputs.OutputError as error:
            vollog.error(f"--baseline: {error}")
            unmet[path] = next(r for r in cls.get_requirements() if r.name == "baseline")
        return unmet

    @classmethod
    def build_kernel_context(
        cls,
        context: interfaces.context.ContextInterface,
        kernel_module_name: str,
        config_path: str = DEFAULT_CONFIG_PATH,
    ) -> CallbackContext:
        """Builds the state a run shares (layer, pointer size, our structure layouts, page
        cache, ...), once; pass it to the other classmethods when calling several.

        Args:
            context: The context to retrieve required elements (layers, symbol tables) from
            kernel_module_name: The name of the kernel module on which to operate
            config_path: Where our symbol table's configuration goes

        Returns:
            The run context
        """
        return CallbackContext.build(context, kernel_module_name, config_path)

    @classmethod
    def list_callback_objects(
        cls,
        context: interfaces.context.ContextInterface,
        kernel_module_name: str,
        config_path: str = DEFAULT_CONFIG_PATH,
        scan: Optional[scan_targets.ScanResult] = None,
        kernel: Optional[CallbackContext] = None,
    ) -> List[merge.CallbackObjectRecord]:
        """Every callback object found by the list, directory and global routes (and by a pool
        scan's result when given), merged by body address and sorted by it.

        Args:
            context: The context to retrieve required elements (layers, symbol tables) from
            kernel_module_name: The name of the kernel module on which to operate
            config_path: Where our symbol table's configuration goes
            scan: A result of :meth:`scan_pool`, whose callback objects join the routes
            kernel: A run context from :meth:`build_kernel_context` (built when None)

        Returns:
            One record per callback object
        """
        kernel = kernel or cls.build_kernel_context(context, kernel_module_name, config_path)
        scanned = [(block.address, block.state) for block in scan.objects] if scan is not None else []
        return merge.collect_objects(kernel, scanned).objects

    @classmethod
    def list_registrations(
        cls,
        context: interfaces.context.ContextInterface,
        kernel_module_name: str,
        callback_object: merge.CallbackObjectRecord,
        config_path: str = DEFAULT_CONFIG_PATH,
        kernel: Optional[CallbackContext] = None,
    ) -> registrations.RegistrationList:
        """The registrations linked from an object's ``RegisteredCallbacks`` list (bounded).

        Args:
            context: The context to retrieve required elements (layers, symbol tables) from
            kernel_module_name: The name of the kernel module on which to operate
            callback_object: A record from :meth:`list_callback_objects`
            config_path: Where our symbol table's configuration goes
            kernel: A run context from :meth:`build_kernel_context` (built when None)

        Returns:
            The registrations, and whether the list walk closed
        """
        kernel = kernel or cls.build_kernel_context(context, kernel_module_name, config_path)
        return registrations.list_registrations(kernel, callback_object.registrations_head)

    @classmethod
    def scan_pool(
        cls,
        context: interfaces.context.ContextInterface,
        kernel_module_name: str,
        config_path: str = DEFAULT_CONFIG_PATH,
        kinds=scan_targets.ALL_KINDS,
        progress_callback: Optional[constants.ProgressCallback] = None,
        kernel: Optional[CallbackContext] = None,
        full: bool = False,
    ) -> scan_targets.ScanResult:
        """One pass over kernel pool for the scan targets of ``kinds`` (callback objects,
        registration blocks, loader entries; see ``scan_targets.CallbackTargets.targets``), every hit
        validated; the images of loaded modules are not searched.

        Args:
            context: The context to retrieve required elements (layers, symbol tables) from
            kernel_module_name: The name of the kernel module on which to operate
            config_path: Where our symbol table's configuration goes
            kinds: Which targets to look for (``scan_targets.OBJECTS``, ``REGISTRATIONS``, ``LOADER_ENTRIES``)
            progress_callback: Receives the scan's progress
            kernel: A run context from :meth:`build_kernel_context` (built when None)
            full: Scan the whole kernel half even where the allocator says where its blocks lie

        Returns:
            The validated blocks, with their allocation state from the pool allocator's metadata
        """
        kernel = kernel or cls.build_kernel_context(context, kernel_module_name, config_path)
        images = [(module.base, module.size) for module in kernel.loaded_modules.modules]
        return scan_targets.scan_pool(kernel, kinds, progress_callback, images, full)

    @classmethod
    def list_loose_registrations(
        cls,
        context: interfaces.context.ContextInterface,
        kernel_module_name: str,
        callback_objects: List[merge.CallbackObjectRecord],
        scan: scan_targets.ScanResult,
        config_path: str = DEFAULT_CONFIG_PATH,
        kernel: Optional[CallbackContext] = None,
    ) -> List[Tuple[registrations.Registration, str]]:
        """The loose registrations: blocks the scan found on none of the objects' lists whose
        ``CallbackObject`` names one of ``callback_objects``.

        Args:
            context: The context to retrieve required elements (layers, symbol tables) from
            kernel_module_name: The name of the kernel module on which to operate
            callback_objects: Records from :meth:`list_callback_objects`
            scan: A result of :meth:`scan_pool` that looked for registrations
            config_path: Where our symbol table's configuration goes
            kernel: A run context from :meth:`build_kernel_context` (built when None)

        Returns:
            (registration, allocation state) pairs, grouped by the object they name
        """
        kernel = kernel or cls.build_kernel_context(context, kernel_module_name, config_path)
        linked = set()
        for record in callback_objects:
            listed = registrations.list_registrations(kernel, record.registrations_head)
            linked.update(reg.address for reg in listed.registrations)
        known = {record.address for record in callback_objects}
        return registrations.loose_registrations(kernel, scan.registrations, linked, known)

    @staticmethod
    def row_values(row: rows.Row) -> Tuple:
        """The TreeGrid values of a row, in ``COLUMNS`` order."""
        record = row.record
        na = renderers.NotApplicableValue
        name = record.name if record.name is not None else na()
        values = [format_hints.Hex(record.address), name, record.allow_multiple, record.found_by]
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

    def _generator(self, found: report.Report) -> Iterator[Tuple[int, Tuple]]:
        only_suspicious = bool(self.config.get("suspicious", False))
        for row in found.rows():
            if only_suspicious and not row.suspicious:
                continue
            yield 0, self.row_values(row)
        # Said at warning level: the responder sees it without -v, also with -q.
        vollog.warning(verdict.line_of(found))

    def _known_good(self) -> Optional[baseline.Baseline]:
        """The baseline of ``--baseline``, None without one (its requirement validated it)."""
        paths = self.config.get("baseline")
        if not paths:
            return None
        try:
            return baseline.load(paths)
        except outputs.OutputError as error:
            vollog.error(f"--baseline: {error}")
            raise BaselineUnreadable(str(error)) from None

    def run(self) -> renderers.TreeGrid:
        """Refuses, before printing anything, an image that cannot support a verdict (wrong
        symbol table, truncated or unreadable memory): an exception the command line explains,
        with a non-zero exit, instead of a clean-looking table."""
        known_good = self._known_good()
        kernel = self.build_kernel_context(self.context, self.config["kernel"], self.config_path)
        verdict.check_symbols(kernel)
        if known_good is not None:
            for note in known_good.notes(kernel.build_number):
                kernel.diagnostics.warning(note)
        found = report.collect(
            kernel,
            scan=not self.config.get("no_scan", False),
            progress_callback=self._progress_callback,
            full_scan=bool(self.config.get("full_scan", False)),
            known_good=known_good,
        )
        verdict.check_usable(found)
        return renderers.TreeGrid(COLUMNS, self._generator(found))
