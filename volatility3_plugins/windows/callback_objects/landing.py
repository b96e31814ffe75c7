"""What a registration's routine does with control, judged from its code and its image's tables:
the flags ``trampoline``, ``mid_function`` and ``code_cave``, and the ``Landing`` columns.

``ExNotifyCallback`` calls every registration as ``Routine(CallbackContext, Argument1,
Argument2)`` (WRK ``base/ntos/ex/callback.c``): argument 0 is the registration's own
``CallbackContext``, the only argument a registration stores; arguments 1 and 2 come with each
notification. So a routine whose first instructions go to argument 0 (``jmp rcx``, ``jmp
[rcx+0x10]``, ``push rcx; ret``, on x86 ``jmp [esp+4]``, ...: :mod:`..kernelread.code`) runs the
context, or the pointer read through it: that is where control lands. One that goes to argument
1 or 2 lands where each notification says. A fixed-target chain (a stub) lands at its last
target: a ``trampoline`` when that lies outside every listed module (read from a completely
walked ``PsLoadedModuleList``), a thunk otherwise (an import thunk ``jmp [rip+IAT]``, an
incremental-linking ``jmp rel32``): its landing is shown, without a flag.

Judged only for routines inside a module image (listed or hidden): a routine in no module is
``outside_modules`` already, and nothing more is said of its code. Each routine is decoded once,
each image's exception directory read once; what could not be read makes its route incomplete
and never raises a flag.
"""

import dataclasses
from typing import TYPE_CHECKING, Dict, Optional, Set, Tuple

from volatility3.framework import exceptions, renderers

from ..kernelpool.blocks import tag_text
from ..kernelpool.state import BlockState
from ..kernelread import code, diagnostics, exception_directory
from ..kernelread.attribution import Attribution, Attributor
from ..kernelread.views import Value, is_absent
from .registrations import Registration

if TYPE_CHECKING:
    from .context import CallbackContext

ROUTE_CODE = "code"
ROUTE_IMAGE_HEADERS = "image headers"
ROUTE_EXCEPTION_DIRECTORIES = "exception directories"
#: Warnings (causes; their subjects are the routines and images concerned).
CAPSTONE_MISSING = "capstone cannot be imported: routines not decoded (no trampoline verdict)"
CODE_UNREADABLE = "Routine code (or a pointer on its way) unreadable or zeros: no trampoline verdict there"
EXCEPTION_DIRECTORY_UNUSABLE = "Exception directories unusable: no mid_function verdict there"
IMAGE_HEADERS_UNREADABLE = ("Image headers unreadable or no PE: no non_executable, mid_function or code_cave "
                            "verdict there")
#: The argument a registration stores (its CallbackContext), and those each notification passes.
CONTEXT_ARGUMENT = 0
NOTIFICATION_ARGUMENTS = (1, 2)


@dataclasses.dataclass(frozen=True)
class CodeFacts:
    """What a routine's code and its image say. ``landing``: where control lands (an int; an
    UnreadableValue when a pointer on the way cannot be read; None when control does not go
    elsewhere, or goes where only a notification says); ``owner``: who owns it."""

    trampoline: bool = False
    mid_function: bool = False
    code_cave: bool = False
    landing: Optional[Value] = None
    owner: Optional[str] = None


class RoutineCode:
    """Examines the routines of one run (see the module docstring), and reports the code and
    exception-directory routes once the rows are done."""

    def __init__(self, kernel: "CallbackContext", attributor: Attributor) -> None:
        self.kernel = kernel
        self.attributor = attributor
        self._transfers: Dict[int, code.Transfer] = {}
        self._owners: Dict[int, str] = {}
        self._facts: Dict[Tuple[int, object], CodeFacts] = {}
        #: Routines whose landing could not be read (the context, or a pointer through it).
        self._unreadable_landings: Set[int] = set()

    def examine(self, registration: Registration, attribution: Optional[Attribution]) -> Optional[CodeFacts]:
        """The code facts of a readable registration's routine; None when it lies in no module
        (nothing is judged there)."""
        if attribution is None or attribution.module is None:
            return None
        routine = int(registration.routine)  # type: ignore[arg-type]
        key = (routine, registration.context)
        if key not in self._facts:
            self._facts[key] = self._examine(routine, registration.context, attribution)
        return self._facts[key]

    def _examine(self, routine: int, context: Value, attribution: Attribution) -> CodeFacts:
        module = attribution.module
        assert module is not None
        image = self.attributor.image(module)
        rva = routine - module.base
        mid_function = False
        # A routine at a symbol (an assembler routine's alternate entry point, say) is a named
        # entry even inside another function's range.
        if self.kernel.pointer_size == 8 and image is not None and not attribution.exact:
            position = self.kernel.exception_directories.position(module, image, rva)
            mid_function = position in exception_directory.NOT_AN_ENTRY
        code_cave = image is not None and image.in_cave(rva)
        trampoline, landing, owner = self._control(routine, context)
        return CodeFacts(trampoline, mid_function, code_cave, landing, owner)

    def _transfer(self, routine: int) -> code.Transfer:
        if routine not in self._transfers:
            self._transfers[routine] = self.kernel.code.follow(routine)
        return self._transfers[routine]

    def _control(self, routine: int, context: Value) -> Tuple[bool, Optional[Value], Optional[str]]:
        """(trampoline, landing, owner) from where the routine's first instructions go."""
        transfer = self._transfer(routine)
        if transfer.kind == code.ARGUMENT:
            if transfer.argument in NOTIFICATION_ARGUMENTS:
                return True, None, f"argument {transfer.argument} (per notification)"
            if transfer.argument != CONTEXT_ARGUMENT:
                return False, None, None  # no such argument: nothing a notification passes
            landing = self._through_context(context, transfer.through)
            if landing is None:
                self._unreadable_landings.add(routine)
                where = "the context" if transfer.through is None else f"the pointer at context+{transfer.through:#x}"
                return True, renderers.UnreadableValue(), f"{where} unreadable"
            return True, landing, self.owner(landing)
        if transfer.kind == code.FIXED and transfer.landing:
            landing = transfer.landing
            placed = self.attributor.attribute(landing)
            outside = self.attributor.modules_complete and not placed.in_module
            return outside, landing, self.owner(landing)
        return False, None, None

    def _through_context(self, context: Value, through: Optional[int]) -> Optional[int]:
        """The context's value, or the pointer read at context + ``through``; None when it
        cannot be read."""
        if is_absent(context):
            return None
        if through is None:
            return int(context)  # type: ignore[arg-type]
        try:
            return self.kernel.read_pointer(int(context) + through)  # type: ignore[arg-type]
        except exceptions.InvalidAddressException:
            return None

    def owner(self, address: int) -> str:
        """Who owns ``address``: ``module!symbol`` or ``module+0xOFF`` (hidden images too), the
        pool block holding it (``pool TAG STATE``), else ``none`` (``unknown`` when the module
        list was not read to its end)."""
        if address not in self._owners:
            self._owners[address] = self._owner(address)
        return self._owners[address]

    def _owner(self, address: int) -> str:
        placed = self.attributor.attribute(address)
        if placed.module is not None:
            return f"{placed.module.label}!{placed.symbol}" if placed.exact else str(placed.symbol)
        block = self.kernel.pool_map.block_containing(address)
        if block is not None:
            if block.tag is None and block.state == BlockState.UNKNOWN:
                return f"pool {BlockState.UNKNOWN}"  # where the allocator's metadata does not decode
            return f"pool {tag_text(block.tag) or '?'} {block.state}"
        return "none" if self.attributor.modules_complete else "unknown"

    # -- the routes ----------------------------------------------------------------------

    def record_routes(self) -> None:
        """The code route (capstone decoding), the image-headers route and the exception-directory
        route, as the rows needed them: incomplete only when a routine's bytes, a pointer on its
        way, or the headers or table of an image holding a routine or landing could not be read.
        Each routine or image that could not be is a subject of one warning."""
        kernel = self.kernel
        decoded = len(self._transfers)
        if decoded and not kernel.code.available:
            kernel.diagnostics.warning(CAPSTONE_MISSING)
            kernel.diagnostics.route(ROUTE_CODE, diagnostics.UNAVAILABLE, "capstone not installed")
        else:
            lost = sorted({routine for routine, transfer in self._transfers.items() if not transfer.complete}
                          | self._unreadable_landings)
            for routine in lost:
                kernel.diagnostics.warning(CODE_UNREADABLE, self.owner(routine))
            detail = f"{decoded} routines decoded" + (f", {len(lost)} with bytes or pointers unreadable" if lost else "")
            kernel.diagnostics.route(ROUTE_CODE, diagnostics.INCOMPLETE if lost else diagnostics.COMPLETE, detail)
        # An image whose headers cannot be read has no sections and no exception directory to
        # judge by: said here, once, instead of as a table that could not be read.
        asked, headerless = self.attributor.image_headers()
        for label in headerless:
            kernel.diagnostics.warning(IMAGE_HEADERS_UNREADABLE, label)
        detail = f"{asked} images" + (f", {len(headerless)} unreadable" if headerless else "")
        kernel.diagnostics.route(ROUTE_IMAGE_HEADERS, diagnostics.INCOMPLETE if headerless else diagnostics.COMPLETE, detail)
        if kernel.pointer_size != 8:
            kernel.diagnostics.route(ROUTE_EXCEPTION_DIRECTORIES, diagnostics.NOT_ON_THIS_BUILD, "no .pdata on x86")
            return
        tables = kernel.exception_directories
        failures = tables.failures()
        for label, problem in failures:
            kernel.diagnostics.warning(EXCEPTION_DIRECTORY_UNUSABLE, label, problem)
        detail = f"{tables.valid()} modules" + (f", {len(failures)} unusable" if failures else "")
        kernel.diagnostics.route(ROUTE_EXCEPTION_DIRECTORIES, diagnostics.INCOMPLETE if failures else diagnostics.COMPLETE, detail)
