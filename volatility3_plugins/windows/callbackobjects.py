"""``windows.callbackobjects``: every callback object, its registrations and their owners.

The work lives in the packages beside this file (``kernelread``: reading the kernel;
``kernelpool``: the pool allocators and the pool-scan engine; ``callback_objects``: what is
callback-specific; ``..schema``: what the output means). This module declares the
requirements, exposes the reusable classmethods, runs them (``run`` takes exactly the path
another plugin would) and renders the rows.
"""

import logging
from typing import Collection, Dict, Iterator, List, Optional, Tuple

from volatility3.framework import constants, exceptions, interfaces, renderers
from volatility3.framework.configuration import requirements
from volatility3.framework.renderers import format_hints
from volatility3.framework.symbols import windows as windows_symbols  # noqa: F401 (before poolscanner: it breaks their import cycle)
from volatility3.plugins.windows import poolscanner

from ..schema import baseline, columns, outputs
from .callback_objects import inventory, pipeline, registrations, rows, scan_targets, verdict
from .callback_objects.context import CallbackContext
from .kernelpool.state import BlockState

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
    and flags tampering.

    Reusing it from another plugin: the classmethods below, like those of Volatility's
    ``windows.callbacks`` and ``windows.ssdt``. Declare
    ``requirements.VersionRequirement(name="callbackobjects", component=CallbackObjects,
    version=(3, 2, 0))`` (or the oldest version whose additions it uses), build the run context
    once with :meth:`build_kernel_context` and pass it as ``kernel=`` to the others (each builds
    one when it is None)::

        kernel = CallbackObjects.build_kernel_context(context, kernel_module_name)
        scan = CallbackObjects.scan_pool(context, kernel_module_name, kernel=kernel)
        objects = CallbackObjects.list_callback_objects(context, kernel_module_name, scan=scan, kernel=kernel)
        for record in objects:
            listed = CallbackObjects.list_registrations(context, kernel_module_name, record, kernel=kernel)
        loose = CallbackObjects.list_loose_registrations(context, kernel_module_name, objects, scan, kernel=kernel)

    This is the path :meth:`run` takes. A plugin that only needs the kernel's pool (where its
    blocks lie, whether one is allocated) needs none of this: ``KernelContext(context,
    kernel_module_name)`` (``kernelread.context``) and ``open_pool_map(kernel)``
    (``kernelpool.maps``) import nothing of callbacks.
    """

    _required_framework_version = (2, 0, 0)
    # 2.0.0: one run context (KernelContext) for every step; classmethods take it
    # 2.1.0: allocation states from the pool allocator; scan_pool(full=...)
    # 2.2.0: known-good comparison (--baseline, not_in_baseline)
    # 3.0.0: the run context is a CallbackContext (KernelContext plus our views);
    #        list_callback_objects returns the records; allocation states are BlockState
    #        values; list_loose_registrations(linked=...); run() goes through these methods
    # 3.1.0: the Evidence column (row_values(row, evidence)); list_registrations names the object
    #        in its warnings; the run context says what the image file lacks (image_shortfalls)
    # 3.2.0: scan_pool also finds driver objects (ScanResult.driver_objects, image_traces());
    #        rows carry Landing and LandingOwner
    # 3.2.1: the verdict line's route "image headers" (images whose PE headers could not be read)
    _version = (3, 2, 1)

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
                "no orphan_registration or freed; hidden_module from \\Driver and the inverted function table only)",
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
        """Builds the state a run shares, once, like ``ssdt.SSDT.build_module_collection``: the
        kernel module and its layer, pointer size, build number, page cache, the kernel's
        symbols, the module list and object headers (on first use), and the views of
        ``_CALLBACK_OBJECT`` / ``_CALLBACK_REGISTRATION`` from our own ISF (loaded here, under
        ``config_path``). Pass it as ``kernel=`` to the other classmethods.

        Args:
            context: The context to retrieve required elements (layers, symbol tables) from
            kernel_module_name: The name of the kernel module on which to operate
            config_path: Where our symbol table's configuration goes

        Returns:
            The run context (its ``diagnostics`` holds the warnings said and each route's state)
        """
        return CallbackContext.build(context, kernel_module_name, config_path)

    @classmethod
    def scan_pool(
        cls,
        context: interfaces.context.ContextInterface,
        kernel_module_name: str,
        config_path: str = DEFAULT_CONFIG_PATH,
        kinds: Collection[str] = scan_targets.ALL_KINDS,
        progress_callback: Optional[constants.ProgressCallback] = None,
        kernel: Optional[CallbackContext] = None,
        full: bool = False,
    ) -> scan_targets.ScanResult:
        """One pass over the kernel's non-paged pool for the blocks of ``kinds`` (callback
        objects, registration blocks, loader entries, driver objects), every hit validated; where the pool
        allocator's metadata says its blocks lie, else (or with ``full``) the whole kernel half,
        the images of loaded modules left out.

        Args:
            context: The context to retrieve required elements (layers, symbol tables) from
            kernel_module_name: The name of the kernel module on which to operate
            config_path: Where our symbol table's configuration goes
            kinds: Which targets to look for (``scan_targets.OBJECTS``, ``REGISTRATIONS``, ``LOADER_ENTRIES``,
                ``DRIVER_OBJECTS``)
            progress_callback: Receives the scan's progress
            kernel: A run context from :meth:`build_kernel_context` (built when None)
            full: Scan the whole kernel half even where the allocator says where its blocks lie

        Returns:
            The validated blocks (``objects``, ``registrations``, ``modules``, ``driver_objects``),
            each with its allocation state (a ``BlockState``) from the pool allocator's metadata; ``ran`` is
            False when pool headers cannot be decoded on this kernel
        """
        kernel = kernel or cls.build_kernel_context(context, kernel_module_name, config_path)
        images = [(module.base, module.size) for module in kernel.loaded_modules.modules]
        return scan_targets.scan_pool(kernel, kinds, progress_callback, images, full)

    @classmethod
    def list_callback_objects(
        cls,
        context: interfaces.context.ContextInterface,
        kernel_module_name: str,
        config_path: str = DEFAULT_CONFIG_PATH,
        scan: Optional[scan_targets.ScanResult] = None,
        kernel: Optional[CallbackContext] = None,
    ) -> List[inventory.CallbackObjectRecord]:
        """Every callback object the list (``nt!ExpCallbackListHead``, 8.1+), directory
        (``\\Callback``) and global (``nt!ExCb*``) routes reach, and those a pool scan's result
        confirmed, merged by body address and sorted by it.

        Args:
            context: The context to retrieve required elements (layers, symbol tables) from
            kernel_module_name: The name of the kernel module on which to operate
            config_path: Where our symbol table's configuration goes
            scan: A result of :meth:`scan_pool`, whose callback objects join the routes
            kernel: A run context from :meth:`build_kernel_context` (built when None)

        Returns:
            One record per object: body address, name, the routes that found it (``found_by``),
            its body's fields, its ``RegisteredCallbacks`` head, the globals pointing at it
        """
        kernel = kernel or cls.build_kernel_context(context, kernel_module_name, config_path)
        return inventory.collect_objects(kernel, scan.objects if scan is not None else ())

    @classmethod
    def list_registrations(
        cls,
        context: interfaces.context.ContextInterface,
        kernel_module_name: str,
        callback_object: inventory.CallbackObjectRecord,
        config_path: str = DEFAULT_CONFIG_PATH,
        kernel: Optional[CallbackContext] = None,
    ) -> registrations.RegistrationList:
        """The registrations linked from an object's ``RegisteredCallbacks`` list, walked both
        ways and bounded.

        Args:
            context: The context to retrieve required elements (layers, symbol tables) from
            kernel_module_name: The name of the kernel module on which to operate
            callback_object: A record from :meth:`list_callback_objects`
            config_path: Where our symbol table's configuration goes
            kernel: A run context from :meth:`build_kernel_context` (built when None)

        Returns:
            The registrations (routine, context, owner object, ...) and whether the list walk
            closed (``complete``: only then is a block on no list really off it)
        """
        kernel = kernel or cls.build_kernel_context(context, kernel_module_name, config_path)
        return registrations.list_registrations(
            kernel, callback_object.registrations_head, owner=callback_object.display_name
        )

    @classmethod
    def list_loose_registrations(
        cls,
        context: interfaces.context.ContextInterface,
        kernel_module_name: str,
        callback_objects: List[inventory.CallbackObjectRecord],
        scan: scan_targets.ScanResult,
        config_path: str = DEFAULT_CONFIG_PATH,
        kernel: Optional[CallbackContext] = None,
        linked: Optional[Collection[int]] = None,
    ) -> List[Tuple[registrations.Registration, BlockState]]:
        """The loose registrations: registration blocks the scan found on none of the objects'
        lists, whose ``CallbackObject`` names one of ``callback_objects``.

        Args:
            context: The context to retrieve required elements (layers, symbol tables) from
            kernel_module_name: The name of the kernel module on which to operate
            callback_objects: Records from :meth:`list_callback_objects`
            scan: A result of :meth:`scan_pool` that looked for registrations
            config_path: Where our symbol table's configuration goes
            kernel: A run context from :meth:`build_kernel_context` (built when None)
            linked: The addresses of the registrations :meth:`list_registrations` returned for
                ``callback_objects``, when the caller walked every list already (``run`` does);
                the lists are walked here when None

        Returns:
            (registration, allocation state of its block) pairs, grouped by the object they
            name, then by address
        """
        kernel = kernel or cls.build_kernel_context(context, kernel_module_name, config_path)
        if linked is None:
            linked = {
                registration.address
                for record in callback_objects
                for registration in cls.list_registrations(
                    context, kernel_module_name, record, config_path, kernel=kernel
                ).registrations
            }
        known = {record.address for record in callback_objects}
        return registrations.loose_registrations(kernel, scan.registrations, linked, known)

    @staticmethod
    def row_values(row: rows.Row, evidence: str = columns.COMPLETE) -> Tuple:
        """The TreeGrid values of a row, in ``COLUMNS`` order; ``evidence`` is the run's
        ``Evidence`` (``columns.COMPLETE`` or ``columns.DEGRADED``)."""
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
        found = row.code
        landing = found.landing if found is not None and found.landing is not None else na()
        values += [_hex(landing), found.owner if found is not None and found.owner is not None else na()]
        values.append(evidence)
        return tuple(values)

    def _generator(self, kernel: CallbackContext, found: pipeline.Report) -> Iterator[Tuple[int, Tuple]]:
        only_suspicious = bool(self.config.get("suspicious", False))
        evidence = found.evidence
        for row in found.rows():
            if only_suspicious and not row.suspicious:
                continue
            yield 0, self.row_values(row, evidence)
        kernel.diagnostics.flush()
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
        """The classmethods' path, in order; refuses, before printing anything, an image that
        cannot support a verdict (wrong symbol table, truncated or unreadable memory): an
        exception the command line explains, with a non-zero exit, instead of a clean-looking
        table."""
        known_good = self._known_good()
        name = self.config["kernel"]
        kernel = self.build_kernel_context(self.context, name, self.config_path)
        verdict.check_symbols(kernel)
        kernel.image_shortfalls  # what the image file lacks, said before anything is read from it
        if known_good is not None:
            for note in known_good.notes(kernel.build_number):
                kernel.diagnostics.warning(note)
        # The module list is walked first, scan or not (the scan leaves its images out): the
        # verdict line names the routes in the order they ran.
        kernel.loaded_modules
        if self.config.get("no_scan", False):
            scan = scan_targets.not_scanned(kernel, "--no-scan")
        else:
            scan = self.scan_pool(
                self.context,
                name,
                self.config_path,
                progress_callback=self._progress_callback,
                kernel=kernel,
                full=bool(self.config.get("full_scan", False)),
            )
        objects = self.list_callback_objects(self.context, name, self.config_path, scan=scan, kernel=kernel)
        found = pipeline.Report(kernel, objects, scan, known_good)
        # Every registration is read, and every row classified (its routine's code, the images
        # only other traces show), before the first row: each row says whether the whole
        # image's evidence is complete, those routes included.
        found.read_registrations(
            registrations_of=lambda record: self.list_registrations(
                self.context, name, record, self.config_path, kernel=kernel
            ),
            loose_of=lambda linked: self.list_loose_registrations(
                self.context, name, objects, scan, self.config_path, kernel=kernel, linked=linked
            ),
        )
        found.examine()
        verdict.check_usable(found)
        return renderers.TreeGrid(COLUMNS, self._generator(kernel, found))
