"""Windows crash dumps of every type a responder is handed, for Volatility 3.

Volatility 3 (2.27, 2.28) opens crash dumps of ``DumpType`` 1 (complete, physical memory runs)
and 5 (bitmap, ``DUMP_TYPE_BITMAP_FULL``) only. This module adds, without touching Volatility:

- ``DumpType`` 6 (``DUMP_TYPE_BITMAP_KERNEL``, the SDK's ``mindumpdef.h``): the type-5 layout
  holding kernel pages only; what Task Manager's "Create live kernel memory dump file" writes,
  and what Windows writes on a crash with the kernel or automatic dump setting. 64 and 32 bit.
- ``DumpType`` 8, 9 and 10: the kernel, kernel-and-user and complete dumps the debugger engine
  writes (WinDbg ``.dump /k``, ``/ka``, ``/f``), in the ``RDMP`` layout kdmp-parser describes
  (``src/lib/kdmp-parser-structs.h`` and ``kdmp-parser.h``, the only public description); 64-bit
  only, as there.

Where each type puts its pages is read by ``common/crashdump_header.py``, the one definition the
plugin's own check of the file's size uses too.

``WindowsCrashDumpExtendedStacker`` runs before Volatility's own crash-dump stacker
(``stack_order`` 10 < 11), so it sees every crash dump first: it logs the dump's facts once at
info level (``-v``), warns once, in one line, about a dump type nothing here can open, warns once
when the file is shorter than the pages its header places in it (every type whose layout is
known: Volatility's own layer never compares the two, and reads the missing pages as errors or
zeros), and leaves to Volatility every type that the installed Volatility's own layer lists in
``supported_dumptypes``. A Volatility that learns a type (PR #1990 adds 6) therefore takes it over,
and a dump is never stacked twice: ``LayerStacker`` stacks at most one layer per round and drops a
stacker once it has stacked, and this stacker never stacks on a crash-dump layer.

Opening costs one read of the bitmap or of the range list, which become segments (a sorted list
searched by bisection on each read), whatever the number of pages.
"""

import datetime
import logging
from dataclasses import dataclass
from typing import List, Optional, Tuple, Type

from volatility3.framework import constants, exceptions, interfaces
from volatility3.framework.layers import crash
from volatility3.framework.symbols import intermed

# Standard library only, and outside windows/: the layer loads wherever the plugin folder is
# given, volshell included (which imports Volatility's own windows package before our folder).
from ..common import crashdump_header
from ..common.said_once import SaidOnce
from ..common.units import PAGE_SIZE

vollog = logging.getLogger(__name__)

DUMP_TYPE_BITMAP_KERNEL = crashdump_header.DUMP_TYPE_BITMAP_KERNEL
DUMP_TYPE_KERNEL_MEMORY = crashdump_header.DUMP_TYPE_KERNEL_MEMORY
DUMP_TYPE_KERNEL_AND_USER_MEMORY = crashdump_header.DUMP_TYPE_KERNEL_AND_USER_MEMORY
DUMP_TYPE_COMPLETE_MEMORY = crashdump_header.DUMP_TYPE_COMPLETE_MEMORY

# DUMP_TYPE of mindumpdef.h (0-7) and kdmp-parser's DumpType_t (8-10).
DUMP_TYPE_DESCRIPTIONS = {
    0: "DUMP_TYPE_UNKNOWN",
    1: "a complete memory dump in physical memory runs",
    2: "a kernel summary dump (DUMP_TYPE_SUMMARY) of older Windows",
    3: "a header-only dump (DUMP_TYPE_HEADER)",
    4: "a triage dump (small memory dump, minidump)",
    5: "a complete or active memory dump in bitmap form (DUMP_TYPE_BITMAP_FULL)",
    6: "a kernel memory dump in bitmap form (DUMP_TYPE_BITMAP_KERNEL), as a live kernel dump or a kernel or automatic crash dump writes it",
    7: "DUMP_TYPE_AUTOMATIC, a dump setting rather than a dump type",
    8: "a kernel memory dump written by the debugger engine (.dump /k)",
    9: "a kernel and user memory dump written by the debugger engine (.dump /ka)",
    10: "a complete memory dump written by the debugger engine (.dump /f)",
}
# Why a type that nothing here opens cannot be analysed.
UNSUPPORTED_REASONS = {
    2: "neither Volatility nor this package reads its layout",
    3: "it holds no memory pages",
    4: "it holds a few pages around the crash, not the kernel's memory",
}
KERNEL_ONLY_TYPES = (DUMP_TYPE_BITMAP_KERNEL, DUMP_TYPE_KERNEL_MEMORY)
#: Types that hold no kernel memory to analyse (header-only, triage): said as such first.
NOT_MEMORY_DUMPS = (3, 4)

Segment = Tuple[int, int, int, int]  # physical address, file offset, length, mapped length

#: What was said about which file, once per process: the stacker and the layer run again for
#: every automagic pass and every context clone, the facts do not change.
_said = SaidOnce(vollog)


def _say_once(level: int, source: str, message: str) -> None:
    """Log ``message`` about ``source`` once per process."""
    _said.log(level, message, key=(source, message))


def _source(layer: interfaces.layers.DataLayerInterface) -> str:
    """What the user opened: the file's location, else the layer's name."""
    return str(layer.config.get("location", layer.name))


def describe_dump_type(dump_type: int) -> str:
    return DUMP_TYPE_DESCRIPTIONS.get(dump_type, "a dump type no Windows or debugger documentation describes")


def unsupported_reason(dump_type: int, bits: int) -> str:
    if dump_type in WindowsCrashDumpExtended64Layer.supported_dumptypes:
        return f"no public description of its layout exists for {bits}-bit dumps"
    return UNSUPPORTED_REASONS.get(dump_type, "nothing says what it holds")


def truncation_warning(source: str, truncation: crashdump_header.Truncation) -> None:
    """Say once that the file of ``source`` lacks some of its pages."""
    _say_once(logging.WARNING, source, f"{source}: the crash dump is truncated: {truncation}")


def _check_extent(base: interfaces.layers.DataLayerInterface, source: str) -> None:
    """Say once whether the file of a dump Volatility opens itself lacks some of its pages."""
    try:
        found = crashdump_header.truncation(crashdump_header.layer_reader(base), base.maximum_address + 1)
    except crashdump_header.DumpFormatError as error:
        _say_once(logging.INFO, source, f"{source}: its pages cannot be checked against the file's size: {error}")
        return
    if found is not None:
        truncation_warning(source, found)


def settle_segments(layout: crashdump_header.PageLayout, file_size: int, source: str) -> List[Segment]:
    """The layout's pages as segments sorted by address, clipped to the file, without overlaps,
    adjacent ones merged; what a damaged dump loses is said once."""
    settled: List[Segment] = []
    overlapping = 0
    for first, count, offset in sorted(layout.pages_inside(file_size)):
        address, inside = first * PAGE_SIZE, count * PAGE_SIZE
        last = settled[-1] if settled else None
        if last and address < last[0] + last[2]:  # keep only what follows the pages already listed
            repeated = min(inside, last[0] + last[2] - address)
            overlapping += repeated // PAGE_SIZE
            address, offset, inside = address + repeated, offset + repeated, inside - repeated
            if not inside:
                continue
        if last and last[0] + last[2] == address and last[1] + last[2] == offset:
            settled[-1] = (last[0], last[1], last[2] + inside, last[2] + inside)
        else:
            settled.append((address, offset, inside, inside))
    truncated = layout.truncation(file_size)
    if truncated is not None:
        truncation_warning(source, truncated)
    if overlapping:
        _say_once(logging.WARNING, source, f"{source}: the crash dump lists {overlapping} pages more than once; the first copy is used")
    return settled


class _ExtendedDumpTypes:
    """What Volatility's crash-dump layers gain here: DumpType 6 (and 8, 9, 10 in 64-bit dumps).
    Types the Volatility parent opens stay with the parent's own code."""

    volatility_layer: Type[crash.WindowsCrashDump32Layer]
    dump_type: int
    _base_layer: str
    _segments: List[Segment]

    def _load_segments(self) -> None:
        if self.dump_type in self.volatility_layer.supported_dumptypes:
            super()._load_segments()  # type: ignore[misc]
            return
        base = self.context.layers[self._base_layer]  # type: ignore[attr-defined]
        file_size = base.maximum_address + 1
        read = crashdump_header.layer_reader(base)
        try:
            header = crashdump_header.read_first_header(read)
            if header is None:
                raise crashdump_header.DumpFormatError("no crash-dump header")
            layout = crashdump_header.page_layout(read, header, file_size)
        except crashdump_header.DumpFormatError as error:
            raise self._fail(str(error)) from None
        self._segments = settle_segments(layout, file_size, _source(base))
        if not self._segments:
            raise self._fail("the dump holds no pages")

    def _fail(self, message: str) -> crash.WindowsCrashDumpFormatException:
        return crash.WindowsCrashDumpFormatException(self.name, message)  # type: ignore[attr-defined]


class WindowsCrashDumpExtended64Layer(_ExtendedDumpTypes, crash.WindowsCrashDump64Layer):
    """A 64-bit Windows crash dump (``PAGEDU64``) of DumpType 1, 5, 6, 8, 9 or 10."""

    volatility_layer = crash.WindowsCrashDump64Layer
    supported_dumptypes = [0x1, 0x5, DUMP_TYPE_BITMAP_KERNEL, DUMP_TYPE_KERNEL_MEMORY,
                           DUMP_TYPE_KERNEL_AND_USER_MEMORY, DUMP_TYPE_COMPLETE_MEMORY]


class WindowsCrashDumpExtended32Layer(_ExtendedDumpTypes, crash.WindowsCrashDump32Layer):
    """A 32-bit Windows crash dump (``PAGEDUMP``) of DumpType 1, 5 or 6 (no public description
    of the debugger engine's RDMP layout exists for 32-bit dumps)."""

    volatility_layer = crash.WindowsCrashDump32Layer
    supported_dumptypes = [0x1, 0x5, DUMP_TYPE_BITMAP_KERNEL]


@dataclass(frozen=True)
class DumpFacts:
    """The facts of a crash dump's first header that a responder wants to see first."""

    bits: int
    dump_type: int
    bugcheck_code: int
    bugcheck_parameters: Tuple[int, ...]
    system_time: Optional[datetime.datetime]

    @classmethod
    def read(cls, context: interfaces.context.ContextInterface, layer_name: str,
             layer_class: Type[crash.WindowsCrashDump32Layer]) -> "DumpFacts":
        """The first header, read through Volatility's own crash-dump symbol table."""
        table = intermed.IntermediateSymbolTable.create(
            context, interfaces.configuration.path_join("WindowsCrashDumpExtendedStacker", layer_name),
            "windows", layer_class.crashdump_json)
        header = context.object(table + constants.BANG + layer_class.dump_header_name, layer_name=layer_name, offset=0)
        return cls(
            bits=64 if layer_class.dump_header_name.endswith("64") else 32,
            dump_type=int(header.DumpType),
            bugcheck_code=int(header.BugCheckCode),
            bugcheck_parameters=tuple(int(value) for value in header.BugCheckCodeParameter),
            system_time=filetime(int(header.SystemTime)),
        )

    def __str__(self) -> str:
        parameters = ", ".join(f"{value:#x}" for value in self.bugcheck_parameters)
        time = self.system_time.strftime("%Y-%m-%d %H:%M:%S UTC") if self.system_time else "not recorded"
        return (f"{self.bits}-bit Windows crash dump of DumpType {self.dump_type}, {describe_dump_type(self.dump_type)}; "
                f"bug check {self.bugcheck_code:#x} ({parameters}); system time {time}")


def filetime(value: int) -> Optional[datetime.datetime]:
    """A FILETIME (100 ns since 1601) as UTC, or None when it is no plausible date."""
    try:
        moment = datetime.datetime(1601, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(microseconds=value // 10)
    except OverflowError:
        return None
    return moment if 1990 <= moment.year <= 2200 else None


class WindowsCrashDumpExtendedStacker(interfaces.automagic.StackerLayerInterface):
    """Stacks the crash-dump layers above on a dump of a type Volatility does not open itself."""

    stack_order = 10  # before Volatility's WindowsCrashDumpStacker (11): see the module docstring
    exclusion_list = ["linux", "mac"]
    layer_classes = (WindowsCrashDumpExtended32Layer, WindowsCrashDumpExtended64Layer)

    @classmethod
    def stack(
        cls,
        context: interfaces.context.ContextInterface,
        layer_name: str,
        progress_callback: constants.ProgressCallback = None,
    ) -> Optional[interfaces.layers.DataLayerInterface]:
        base = context.layers[layer_name]
        if isinstance(base, crash.WindowsCrashDump32Layer):
            return None  # the physical memory of a dump is no dump file, whatever page 0 holds
        for layer_class in cls.layer_classes:
            try:
                layer_class.check_header(base)
            except crash.WindowsCrashDumpFormatException:
                continue
            return cls._stack_dump(context, layer_name, layer_class)
        return None

    @classmethod
    def _stack_dump(cls, context: interfaces.context.ContextInterface, layer_name: str,
                    layer_class: Type[crash.WindowsCrashDump32Layer]) -> Optional[interfaces.layers.DataLayerInterface]:
        source = _source(context.layers[layer_name])
        try:
            facts = DumpFacts.read(context, layer_name, layer_class)
        except exceptions.InvalidAddressException:
            _say_once(logging.WARNING, source, f"{source}: a Windows crash dump whose first header is cut short")
            return None
        volatility_layer = layer_class.volatility_layer  # type: ignore[attr-defined]
        if facts.dump_type in volatility_layer.supported_dumptypes:
            _say_once(logging.INFO, source, f"{source}: {facts}; left to Volatility's own {volatility_layer.__name__}")
            # Volatility's layer never compares the file's size with its pages: said here.
            _check_extent(context.layers[layer_name], source)
            return None
        if facts.dump_type not in layer_class.supported_dumptypes:
            kind = "not a full or kernel memory dump: " if facts.dump_type in NOT_MEMORY_DUMPS else ""
            _say_once(logging.WARNING, source, f"{source}: {kind}cannot open this {facts.bits}-bit Windows crash dump of DumpType "
                                               f"{facts.dump_type}, {describe_dump_type(facts.dump_type)}: "
                                               f"{unsupported_reason(facts.dump_type, facts.bits)}")
            return None
        new_name = context.layers.free_layer_name(layer_class.__name__)
        context.config[interfaces.configuration.path_join(new_name, "base_layer")] = layer_name
        try:
            layer = layer_class(context, new_name, new_name)
        except (crash.WindowsCrashDumpFormatException, exceptions.InvalidAddressException) as error:
            reason = error.args[-1] if error.args else error
            _say_once(logging.WARNING, source, f"{source}: cannot open this damaged Windows crash dump of DumpType "
                                               f"{facts.dump_type}: {reason}")
            return None
        pages = sum(length for _, _, length, _ in layer._segments) // PAGE_SIZE
        kernel_only = "; it holds kernel memory only" if facts.dump_type in KERNEL_ONLY_TYPES else ""
        _say_once(logging.INFO, source, f"{source}: {facts}; {pages} pages{kernel_only}")
        return layer
