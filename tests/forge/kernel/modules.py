"""Kernel modules: mapped PE images and the loader's ``PsLoadedModuleList``.

The kernel image is synthesised around the real symbol offsets of the layout: a PDB carries no
section table, so code symbols are put in executable sections and data symbols in writable
data sections, with a small read-only section right after the headers for the debug and export
directories (within the first 4 MiB, where Volatility's PDB scanner looks). The last section is
``POOLCODE``, the section of the real ntoskrnl.exe that holds the pool allocator's code: a
reader that finds the kernel by scanning memory for its headers, as MemProcFS does
(``vmm/vmmwininit.c``, ``VmmWinInit_FindNtosScanHint64``: ``MZ``, ``PE``, the section name
``POOLCODE`` in the first page, the export directory's name ``ntoskrnl.exe``), tells the kernel
from drivers by it. Its code is not modelled: the section is one page of zeros.
"""

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from ..allocators.pool import PoolBlock, PoolKind
from ..memory.machine import streams
from ..memory.physical import PAGE_SIZE, masked
from ..profiles.layout import FORGE_SYMBOLS, KernelLayout
from .machine import KernelMachine
from .pe import CODE, READ_ONLY_DATA, WRITABLE_DATA, CodeView, PeImage, Section

KERNEL_CODE_SYMBOLS = frozenset(
    {
        "KiSystemStartup", "ExCreateCallback", "ExRegisterCallback", "ExUnregisterCallback",
        "ExNotifyCallback", "ExpInitializeCallbacks", "HvlpPowerStateCallback",
        "EtwpPowerStateCallback", "HalpPowerStateCallback", "PopUmpoMessageCallback",
        "PopMonitorAlpcCallback", "SshpAlpcMessageCallback",
        "PipCslStateChangeCallback", "PopKsrCallback", "EtwpKsrCallback", "PipKsrCallback",
        "HalpKsrCallbackRoutine", "ExpMicrocodePowerStateCallback",
        "ExpPowerStateTransitionCallbackForLicensing", "PpmHypervisorEnlightenmentCallback",
        "SepImageVerificationCallbackWorker", "KeRegisterProcessorChangeCallback",
        "IopInvalidDeviceRequest",
    }
)
KERNEL_EXPORTS = ("ExCreateCallback", "ExRegisterCallback", "ExUnregisterCallback", "ExNotifyCallback", "KeRegisterProcessorChangeCallback",
                  # exported data: the build number and the System process, which readers
                  # without symbols take from the export table (MemProcFS does)
                  "NtBuildNumber", "PsInitialSystemProcess")
POOL_CODE_SECTION = "POOLCODE"
CODE_SECTION_NAMES = (".text", "PAGE", "INIT", "PAGEKD", "PAGEVRFY")
# A routine's first bytes (a frame set-up and a return), so a disassembling reader sees code.
ROUTINE_PROLOGUE_X64 = b"\x48\x89\x5c\x24\x08\xc3"  # mov [rsp+8], rbx; ret
ROUTINE_PROLOGUE_X86 = b"\x8b\xff\x55\x8b\xec\xc3"  # mov edi, edi; push ebp; mov ebp, esp; ret
DATA_SECTION_NAMES = (".data", "ALMOSTRO", "CACHEALI", "PAGEDATA", "PAGEVRFD")
# Kernel globals larger than a few pointers: the image must extend past their end.
DATA_SYMBOL_TYPES = {"ExPoolState": "_EX_POOL_HEAP_MANAGER_STATE", "NonPagedPoolDescriptor": "_POOL_DESCRIPTOR"}


def _page_floor(value: int) -> int:
    return value & ~(PAGE_SIZE - 1)


def kernel_image(layout: KernelLayout) -> PeImage:
    """ntoskrnl.exe with sections placed around the layout's code and data symbols."""
    symbols = layout.symbols(FORGE_SYMBOLS)
    points = sorted((rva, name in KERNEL_CODE_SYMBOLS) for name, rva in symbols.items())
    ends = [rva + layout.size_of(DATA_SYMBOL_TYPES[name]) for name, rva in symbols.items()
            if name in DATA_SYMBOL_TYPES and layout.has_type(DATA_SYMBOL_TYPES[name])]
    size_of_image = (max([points[-1][0]] + ends) + 0x20000) & ~0xFFFF
    used_pages = {_page_floor(rva) for rva, _ in points}
    metadata_page = next((page for page in range(0x1000, 0x400000, PAGE_SIZE) if page not in used_pages), None)
    if metadata_page is None:
        raise ValueError(f"{layout.name}: no free page in the first 4 MiB for the debug directory")

    # Runs of same-kind symbols become sections; each starts where the previous one ends.
    marks = sorted([(_page_floor(rva), "code" if is_code else "data") for rva, is_code in points] + [(metadata_page, "rdata")])
    starts: List[Tuple[int, str]] = []
    for page, kind in marks:
        if starts and starts[-1][1] == kind:
            continue
        if starts and starts[-1][1] == "rdata":
            page = starts[-1][0] + PAGE_SIZE
        if starts and page <= starts[-1][0]:
            raise ValueError(f"{layout.name}: code and data symbols share the page at RVA {page:#x}")
        starts.append((page, kind))
    starts[0] = (0x1000, starts[0][1]) if starts[0][1] != "rdata" else starts[0]

    sections: List[Section] = []
    counters = {"code": 0, "data": 0}
    for index, (start, kind) in enumerate(starts):
        end = starts[index + 1][0] if index + 1 < len(starts) else size_of_image
        if kind == "rdata":
            sections.append(Section(".rdata", start, end - start, READ_ONLY_DATA))
            continue
        names = CODE_SECTION_NAMES if kind == "code" else DATA_SECTION_NAMES
        name = names[min(counters[kind], len(names) - 1)]
        counters[kind] += 1
        sections.append(Section(name, start, end - start, CODE if kind == "code" else WRITABLE_DATA))

    # The pool allocator's code section, one page after everything else.
    sections.append(Section(POOL_CODE_SECTION, size_of_image, PAGE_SIZE, CODE))
    size_of_image += PAGE_SIZE

    exports = {name: symbols[name] for name in KERNEL_EXPORTS if name in symbols}
    entry = symbols.get("KiSystemStartup", 0)
    return PeImage(
        "ntoskrnl.exe", size_of_image, sections, exports,
        CodeView(layout.pdb_name, layout.guid, layout.age), metadata_rva=metadata_page,
        is_64bit=layout.is_64bit, entry_point_rva=entry,
    )


def driver_image(
    name: str,
    text_size: int = 0x8000,
    functions: Optional[Dict[str, int]] = None,
    exported: Sequence[str] = (),
    data_size: int = 0x2000,
    is_64bit: bool = True,
) -> PeImage:
    """A driver with .text, .rdata (exports), .data and INIT, like a typical WDM driver.

    ``functions`` maps routine names to RVAs; only the names in ``exported`` are exported, the
    rest are internal routines a symbol reader can only name as ``module+offset``.
    """
    text = Section(".text", 0x1000, text_size, CODE)
    rdata = Section(".rdata", text.rva + text_size, 0x1000, READ_ONLY_DATA)
    data = Section(".data", rdata.rva + 0x1000, data_size, WRITABLE_DATA)
    init = Section("INIT", data.rva + data_size, 0x1000, CODE)
    functions = functions or {}
    exports = {routine: functions[routine] for routine in exported}
    return PeImage(name, init.rva + 0x1000, [text, rdata, data, init], exports, is_64bit=is_64bit,
                   entry_point_rva=init.rva)


@dataclass
class LoadedModule:
    """A module mapped into kernel space, and what the forge knows of it."""

    name: str
    path: str
    base: int
    image: PeImage
    functions: Dict[str, int] = field(default_factory=dict)
    symbols: Dict[str, int] = field(default_factory=dict)  # names a reader can resolve (RVA)
    entry: Optional[int] = None  # its loader entry, when in PsLoadedModuleList
    in_module_list: bool = True
    unloaded: bool = False  # unloaded: its range is unmapped, its loader entry freed
    blocks: List[PoolBlock] = field(default_factory=list)  # loader entry and its two names
    _names_by_rva: Optional[Dict[int, str]] = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return self.image.size_of_image

    def contains(self, address: int) -> bool:
        return masked(self.base) <= masked(address) < masked(self.base) + self.size

    def address_of(self, function: str) -> int:
        return self.base + self.functions[function]

    def section_of(self, address: int) -> Optional[Section]:
        return self.image.section_for(masked(address) - masked(self.base))

    def symbol_for(self, address: int) -> str:
        """The name a symbol reader should give this address: exact symbol, else module+offset."""
        rva = masked(address) - masked(self.base)
        if self._names_by_rva is None:
            self._names_by_rva = {}
            for symbol, symbol_rva in sorted(self.symbols.items()):
                self._names_by_rva.setdefault(symbol_rva, symbol)
        return self._names_by_rva.get(rva, f"{self.name}+{rva:#x}")


class ModuleLoader:
    """Maps images and keeps the loaded-module list in load order."""

    def __init__(self, machine: KernelMachine) -> None:
        self.machine = machine
        self.modules: List[LoadedModule] = []
        self.unloaded: List[LoadedModule] = []
        self._by_base: List[LoadedModule] = []
        self._bases: List[int] = []
        self._next_base = machine.plan.kernel_base
        self._rng = streams(machine.seed, "modules")

    def _reserve(self, image: PeImage) -> int:
        """The next base: 64 KiB aligned, a random distance after the previous image; on
        Windows 7 x64 drivers start in their own region once the kernel is placed."""
        base = self._next_base
        self._next_base = ((base + image.size_of_image + 0x10FFFF) & ~0xFFFF) + self._rng.randrange(16) * 0x10000
        if not self.modules and not self.unloaded and self.machine.plan.driver_base is not None:
            self._next_base = self.machine.plan.driver_base
        return base

    def load(self, image: PeImage, path: str, functions: Optional[Dict[str, int]] = None,
             symbols: Optional[Dict[str, int]] = None, in_module_list: bool = True,
             physical_base: Optional[int] = None) -> LoadedModule:
        """Map ``image`` at the next free base; with ``physical_base``, onto contiguous frames
        from there (how the x86 loader maps the kernel: virtual = physical + 0x80000000)."""
        base = self._reserve(image)
        space = self.machine.space
        for section in [None] + list(image.sections):
            start, size, executable = (0, PAGE_SIZE, False) if section is None else (section.rva, section.virtual_size, section.executable)
            space.map_range(base + start, size, executable=executable,
                            physical=None if physical_base is None else physical_base + start)
        for rva, blob in image.blobs(base):
            space.write(base + rva, blob)
        functions = dict(functions or {})
        # A routine's first bytes are code, not zeros: a real reader may disassemble them.
        prologue = ROUTINE_PROLOGUE_X64 if image.is_64bit else ROUTINE_PROLOGUE_X86
        for rva in functions.values():
            space.write(base + rva, prologue)
        exported = dict(image.exports)
        module = LoadedModule(image.dll_name, path, base, image, functions,
                              symbols if symbols is not None else exported, None, in_module_list)
        self.modules.append(module)
        return module

    def unload(self, image: PeImage, path: str, functions: Optional[Dict[str, int]] = None) -> LoadedModule:
        """A driver that was loaded and is gone: its former range is unmapped (and no later
        image reuses it); its loader entry is written with the others and then freed."""
        module = LoadedModule(image.dll_name, path, self._reserve(image), image, dict(functions or {}),
                              {}, None, in_module_list=False, unloaded=True)
        self.unloaded.append(module)
        return module

    def write_module_list(self, list_head: int) -> List[PoolBlock]:
        """Allocate a loader entry per module and link the listed ones behind ``PsLoadedModuleList``;
        returns the blocks of unloaded drivers' entries, to be freed once written.

        A hidden module keeps its entry in pool with stale links into the list, as after a
        rootkit unlinks itself (DKOM): module scanning still finds it, the list walk does not.
        An unloaded driver's entry was taken off the list the same way before it was freed.
        """
        machine = self.machine
        layout = machine.layout
        entry_type = layout.module_entry_type
        everything = self.modules + self.unloaded
        for module in everything:
            block = machine.pool.allocate(layout.size_of(entry_type), b"MmLd", role="module_entry")
            module.entry = block.body
            full_block, full = machine.allocate_string(module.path, b"MmLn", PoolKind.NONPAGED, role="module_name")
            name_block, base_name = machine.allocate_string(module.name, b"MmLn", PoolKind.NONPAGED, role="module_name")
            module.blocks = [block, full_block, name_block]
            values = {
                "DllBase": module.base,
                "EntryPoint": module.base + module.image.entry_point_rva,
                "SizeOfImage": module.size,
                "Flags": 0x49104000,
                "TimeDateStamp": module.image.timestamp,
            }
            values.update(machine.unicode_string_values("FullDllName", module.path, full))
            values.update(machine.unicode_string_values("BaseDllName", module.name, base_name))
            machine.write_struct(block.body, entry_type, values)
        machine.write_list(list_head, [(module.entry, module.in_module_list) for module in everything])
        return [block for module in self.unloaded for block in module.blocks]

    def owner_of(self, address: int) -> Optional[LoadedModule]:
        """The loaded (mapped) module holding ``address``, if any."""
        if len(self._by_base) != len(self.modules):
            self._by_base = sorted(self.modules, key=lambda module: masked(module.base))
            self._bases = [masked(module.base) for module in self._by_base]
        index = bisect_right(self._bases, masked(address)) - 1
        if index >= 0 and self._by_base[index].contains(address):
            return self._by_base[index]
        return None
