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
from .code import CodeLayout
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
# LoadedModule.loader_entry
ENTRY_ALLOCATED = "allocated"
ENTRY_ERASED = "erased"
ENTRY_NONE = "none"
#: Sections of one page: the directories (and x64 unwind data), the RUNTIME_FUNCTION table.
ONE_PAGE_SECTIONS = ("rdata", "pdata")
#: A kernel function is never given more room than this (built-in profiles' tables hold only the
#: forge's symbols, whose gaps say nothing of function sizes).
MAX_KERNEL_FUNCTION = 0x200
#: Kernel functions whose cold fragments the forge writes (in POOLCODE).
KERNEL_FRAGMENTS = 2
#: A kernel code section's VirtualSize ends this far after its last function's padding.
CODE_SLACK_MARGIN = 0x10
#: A driver's .text ends this many bytes before its last page does: slack, zeros the loader maps.
TEXT_SLACK = 0x90
#: The end of a driver's .text (before the slack) where its cold fragments go.
FRAGMENT_ZONE = 0x400
DRIVER_ENTRY = "DriverEntry"
DATA_SECTION_NAMES = (".data", "ALMOSTRO", "CACHEALI", "PAGEDATA", "PAGEVRFD")
# Kernel globals larger than a few pointers: the image must extend past their end.
DATA_SYMBOL_TYPES = {"ExPoolState": "_EX_POOL_HEAP_MANAGER_STATE", "NonPagedPoolDescriptor": "_POOL_DESCRIPTOR",
                     "PsInvertedFunctionTable": "_INVERTED_FUNCTION_TABLE"}


def _page_floor(value: int) -> int:
    return value & ~(PAGE_SIZE - 1)


def kernel_image(layout: KernelLayout) -> PeImage:
    """ntoskrnl.exe with sections placed around the layout's code and data symbols, and code at
    its code symbols (``code.py``): each function as large as the gap to the next symbol of the
    whole table allows (the ISF knows no function sizes; up to :data:`MAX_KERNEL_FUNCTION`), the
    code sections' ``VirtualSize`` ending after the last function's padding."""
    symbols = layout.symbols(FORGE_SYMBOLS)
    points = sorted((rva, name in KERNEL_CODE_SYMBOLS) for name, rva in symbols.items())
    ends = [rva + layout.size_of(DATA_SYMBOL_TYPES[name]) for name, rva in symbols.items()
            if name in DATA_SYMBOL_TYPES and layout.has_type(DATA_SYMBOL_TYPES[name])]
    size_of_image = (max([points[-1][0]] + ends) + 0x20000) & ~0xFFFF
    used_pages = {_page_floor(rva) for rva, _ in points}
    # x64: the RUNTIME_FUNCTION table gets the page after the directories' (its own .pdata).
    wanted = (0, PAGE_SIZE) if layout.is_64bit else (0,)
    metadata_page = next((page for page in range(0x1000, 0x400000, PAGE_SIZE)
                          if not any(page + offset in used_pages for offset in wanted)), None)
    if metadata_page is None:
        raise ValueError(f"{layout.name}: no free pages in the first 4 MiB for the debug directory")

    # Runs of same-kind symbols become sections; each starts where the previous one ends.
    marks = [(_page_floor(rva), "code" if is_code else "data") for rva, is_code in points] + [(metadata_page, "rdata")]
    if layout.is_64bit:
        marks.append((metadata_page + PAGE_SIZE, "pdata"))
    starts: List[Tuple[int, str]] = []
    for page, kind in sorted(marks):
        if starts and starts[-1][1] == kind:
            continue
        if starts and starts[-1][1] in ONE_PAGE_SECTIONS:
            page = starts[-1][0] + PAGE_SIZE
        if starts and page <= starts[-1][0]:
            raise ValueError(f"{layout.name}: code and data symbols share the page at RVA {page:#x}")
        starts.append((page, kind))
    starts[0] = (0x1000, starts[0][1]) if starts[0][1] not in ONE_PAGE_SECTIONS else starts[0]
    spans = [(start, starts[index + 1][0] if index + 1 < len(starts) else size_of_image, kind)
             for index, (start, kind) in enumerate(starts)]
    # The pool allocator's code section, one page after everything else (the kernel's cold
    # fragments go there: its real code is not modelled).
    pool_code = size_of_image
    size_of_image += PAGE_SIZE
    code = _kernel_code(layout, symbols, [(start, end) for start, end, kind in spans if kind == "code"], pool_code)

    sections: List[Section] = []
    counters = {"code": 0, "data": 0}
    for start, end, kind in spans:
        if kind in ONE_PAGE_SECTIONS:
            table = code.table_size() if kind == "pdata" else 0
            sections.append(Section("." + kind, start, table or end - start, READ_ONLY_DATA))
            continue
        names = CODE_SECTION_NAMES if kind == "code" else DATA_SECTION_NAMES
        name = names[min(counters[kind], len(names) - 1)]
        counters[kind] += 1
        size = end - start
        if kind == "code":
            written = max(stop for begin, stop in code.extent() if start <= begin < end)
            size = min(size, ((written - start + 15) & ~15) + CODE_SLACK_MARGIN)
        sections.append(Section(name, start, size, CODE if kind == "code" else WRITABLE_DATA))
    sections.append(Section(POOL_CODE_SECTION, pool_code, PAGE_SIZE, CODE))

    exports = {name: symbols[name] for name in KERNEL_EXPORTS if name in symbols}
    entry = symbols.get("KiSystemStartup", 0)
    return PeImage(
        "ntoskrnl.exe", size_of_image, sections, exports,
        CodeView(layout.pdb_name, layout.guid, layout.age), metadata_rva=metadata_page,
        is_64bit=layout.is_64bit, entry_point_rva=entry, code=code,
        pdata_rva=metadata_page + PAGE_SIZE if layout.is_64bit else None,
    )


def _kernel_code(layout: KernelLayout, symbols: Dict[str, int], code_spans: Sequence[Tuple[int, int]],
                 pool_code: int) -> CodeLayout:
    """The kernel's functions at its code symbols, each bounded by the next symbol of the whole
    table and by its section's end; cold fragments of the first few in ``POOLCODE``."""
    every = sorted(set(layout.symbols().values()))
    code = CodeLayout(layout.is_64bit)
    for name, rva in sorted(((n, r) for n, r in symbols.items() if n in KERNEL_CODE_SYMBOLS), key=lambda item: item[1]):
        following = every[bisect_right(every, rva)] if bisect_right(every, rva) < len(every) else rva + MAX_KERNEL_FUNCTION
        section_end = next(end for start, end in code_spans if start <= rva < end)
        code.add(name, rva, min(following, section_end, rva + MAX_KERNEL_FUNCTION) - rva)
    fragments = [f for f in sorted(code.functions.values(), key=lambda f: f.name) if code.wants_fragment(f)]
    position = pool_code + 0x100
    for function in fragments[:KERNEL_FRAGMENTS]:
        position += code.add_fragment(function, position)
    return code


def driver_image(
    name: str,
    text_size: int = 0x8000,
    functions: Optional[Dict[str, int]] = None,
    exported: Sequence[str] = (),
    data_size: int = 0x2000,
    is_64bit: bool = True,
    gadgets: Optional[Dict[str, str]] = None,
) -> PeImage:
    """A driver with .text, .rdata (exports, unwind data), .pdata (x64), .data and INIT, like a
    typical WDM driver, with code at its functions and its entry point (``DriverEntry``, INIT).

    ``functions`` maps routine names to RVAs; only the names in ``exported`` are exported, the
    rest are internal routines a symbol reader can only name as ``module+offset``. ``gadgets``
    names the functions whose bodies carry a gadget (``code.ARGUMENT_GADGET``, ...). A function
    outside .text (a routine planted in a data section) is written as a leaf. .text ends
    :data:`TEXT_SLACK` bytes before its last page does; its last stretch before that holds the
    cold fragments.
    """
    functions = functions or {}
    gadgets = gadgets or {}
    text = Section(".text", 0x1000, text_size - TEXT_SLACK, CODE)
    rdata = Section(".rdata", text.rva + text_size, 0x1000, READ_ONLY_DATA)
    after = rdata.rva + 0x1000
    code = CodeLayout(is_64bit)
    routines = sorted(functions.items(), key=lambda item: item[1])
    fragment_zone = text.rva + text.virtual_size - FRAGMENT_ZONE
    for index, (routine, rva) in enumerate(routines):
        inside = text.rva <= rva < fragment_zone
        limit = fragment_zone if inside else (rva + 0x100)
        following = routines[index + 1][1] if index + 1 < len(routines) else limit
        code.add(routine, rva, min(following, limit) - rva, gadgets.get(routine), leaf=None if inside else True)
    position = fragment_zone
    for function in [f for f in code.functions.values() if code.wants_fragment(f)]:
        position += code.add_fragment(function, position)
    sections = [text, rdata]
    pdata_rva = None
    if is_64bit:
        pdata_rva = after
        sections.append(Section(".pdata", pdata_rva, 0x1000, READ_ONLY_DATA))
        after += 0x1000
    data = Section(".data", after, data_size, WRITABLE_DATA)
    init = Section("INIT", data.rva + data_size, 0x1000, CODE)
    sections += [data, init]
    code.add(DRIVER_ENTRY, init.rva, init.virtual_size, leaf=False)
    if is_64bit:
        sections[2] = Section(".pdata", pdata_rva, code.table_size(), READ_ONLY_DATA)
    exports = {routine: functions[routine] for routine in exported}
    return PeImage(name, init.rva + 0x1000, sections, exports, is_64bit=is_64bit,
                   entry_point_rva=init.rva, code=code, pdata_rva=pdata_rva)


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
    #: What the loader left of it besides the list: its loader entry (ENTRY_ALLOCATED;
    #: ENTRY_ERASED: zeroed and freed by a rootkit; ENTRY_NONE: a manually mapped image never had
    #: one), its driver object, its nt!PsInvertedFunctionTable entry (x64).
    loader_entry: str = ENTRY_ALLOCATED
    has_driver_object: bool = True
    in_inverted_table: bool = True
    _names_by_rva: Optional[Dict[int, str]] = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return self.image.size_of_image

    @property
    def code(self) -> CodeLayout:
        assert self.image.code is not None, f"{self.name} has no code"
        return self.image.code

    def code_address(self, function: str, mark: str) -> int:
        """The address of a mark (``code.RET``, a gadget kind) of one of its functions."""
        return self.base + self.code.functions[function].address_of(mark)

    def padding_after(self, function: str) -> int:
        """Where the int3 padding after a function starts."""
        return self.base + self.code.functions[function].end

    def text_slack(self) -> int:
        """The first 16-byte boundary in the slack after .text's VirtualSize."""
        text = self.image.sections[0]
        return self.base + ((text.rva + text.virtual_size + 15) & ~15)

    def contains(self, address: int) -> bool:
        return masked(self.base) <= masked(address) < masked(self.base) + self.size

    def address_of(self, function: str) -> int:
        return self.base + self.functions[function]

    def section_of(self, address: int) -> Optional[Section]:
        return self.image.section_for(masked(address) - masked(self.base))

    def exact_symbol(self, address: int) -> Optional[str]:
        """The symbol a reader finds at exactly this address (kernel symbol, export), if any."""
        if self._names_by_rva is None:
            self._names_by_rva = {}
            for symbol, symbol_rva in sorted(self.symbols.items()):
                self._names_by_rva.setdefault(symbol_rva, symbol)
        return self._names_by_rva.get(masked(address) - masked(self.base))

    def symbol_for(self, address: int, label: Optional[str] = None) -> str:
        """The name a symbol reader should give this address: exact symbol, else
        ``label+offset`` (``label``: the name the reader knows the module by, its own by default)."""
        exact = self.exact_symbol(address)
        return exact if exact is not None else f"{label or self.name}+{masked(address) - masked(self.base):#x}"


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
        # Headers, directories and the code at every function (a reader may disassemble it).
        for rva, blob in image.blobs(base):
            space.write(base + rva, blob)
        functions = dict(functions or {})
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
        everything = [module for module in self.modules + self.unloaded if module.loader_entry != ENTRY_NONE]
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
            directory = module.image.exception_directory()
            if directory is not None and layout.has_field(entry_type, "ExceptionTable"):
                # KLDR_DATA_TABLE_ENTRY keeps the image's .pdata for the unwinder (WRK ntldr.h).
                values.update(ExceptionTable=module.base + directory[0], ExceptionTableSize=directory[1])
            values.update(machine.unicode_string_values("FullDllName", module.path, full))
            values.update(machine.unicode_string_values("BaseDllName", module.name, base_name))
            machine.write_struct(block.body, entry_type, values)
        machine.write_list(list_head, [(module.entry, module.in_module_list) for module in everything])
        for module in everything:
            if module.loader_entry == ENTRY_ERASED:
                # What a rootkit does that wants modscan blind: zero its entry and names, free them.
                for block in module.blocks:
                    machine.space.write(block.body, bytes(block.size - (block.body - block.header)))
        return [block for module in everything if module.unloaded or module.loader_entry == ENTRY_ERASED
                for block in module.blocks]

    def owner_of(self, address: int) -> Optional[LoadedModule]:
        """The loaded (mapped) module holding ``address``, if any."""
        if len(self._by_base) != len(self.modules):
            self._by_base = sorted(self.modules, key=lambda module: masked(module.base))
            self._bases = [masked(module.base) for module in self._by_base]
        index = bisect_right(self._bases, masked(address)) - 1
        if index >= 0 and self._by_base[index].contains(address):
            return self._by_base[index]
        return None
