"""``nt!PsInvertedFunctionTable``: every image the loader registered for exception dispatch (x64).

As the loader keeps it: ``MiProcessLoaderEntry`` inserts a module into ``PsLoadedModuleList`` and,
in the same locked step, into this table (``RtlInsertInvertedFunctionTable``, WRK
``base/ntos/mm/sysload.c`` and ``base/ntos/rtl/lookup.c``): ``FunctionTable`` the image's
``.pdata`` (``ImageBase`` + its exception directory's RVA), ``SizeOfTable`` that directory's size
in bytes, ``ImageBase``, ``SizeOfImage``. Entries are sorted by ``ImageBase``: from index 0 in the
WRK (Windows 7's layout), from index 1 on Windows 8.1 and later, whose index 0 is the kernel's
(public decompilations of ``RtlpInsertInvertedFunctionTableEntry``); ``Epoch`` counts two per
change (a sequence lock: even when no update is in progress); ``Overflow`` 0 (the table was never
full); ``MaximumSize`` the array's length. From 17763 on, ``nt!RtlpInvertedFunctionTable`` points
at the table (an inference from the decompiled lookup code that reads the table through it).

A driver that unlinks itself from the list keeps its entry (``LoadedModule.in_inverted_table``);
a manually mapped image may insert one without any loader entry. Unloaded images are removed.

Layout from the build's ``_INVERTED_FUNCTION_TABLE``; 7601's ISF lacks the type, so its layout is
written down here (the same as every typed build's, which the symbol spacing of 7601 fits),
independently of the plugin's own supplement table. No table on x86.
"""

from typing import Dict, List, Sequence

from ..memory.physical import masked
from .machine import KernelMachine
from .modules import LoadedModule

SYMBOL = "PsInvertedFunctionTable"
POINTER_SYMBOL = "RtlpInvertedFunctionTable"
#: 7601's layout, where the ISF has no type: (header field offsets, entries at 0x10, 0x18 each, 256).
FALLBACK_HEADER = {"CurrentSize": 0x0, "MaximumSize": 0x4, "Epoch": 0x8, "Overflow": 0xC}
FALLBACK_ENTRIES = (0x10, 0x18, 256)
FALLBACK_ENTRY = {"FunctionTable": 0x0, "ImageBase": 0x8, "SizeOfImage": 0x10, "SizeOfTable": 0x14}
FIELD_SIZES = {"CurrentSize": 4, "MaximumSize": 4, "Epoch": 4, "Overflow": 1, "FunctionTable": 8, "ImageBase": 8,
               "SizeOfImage": 4, "SizeOfTable": 4}


class InvertedFunctionTable:
    """Writes the table for the modules that keep an entry."""

    def __init__(self, machine: KernelMachine, kernel_base: int) -> None:
        self.machine = machine
        self.layout = machine.layout
        self.kernel_base = kernel_base
        self.entries: List[LoadedModule] = []

    @property
    def present(self) -> bool:
        return self.layout.is_64bit and self.layout.has_symbol(SYMBOL)

    def _layout(self):
        layout = self.layout
        if layout.has_type("_INVERTED_FUNCTION_TABLE"):
            header = {name: layout.offset_of("_INVERTED_FUNCTION_TABLE", name) for name in FALLBACK_HEADER}
            entries = (layout.offset_of("_INVERTED_FUNCTION_TABLE", "TableEntry"), layout.size_of("_INVERTED_FUNCTION_TABLE_ENTRY"),
                       layout.array_count("_INVERTED_FUNCTION_TABLE", "TableEntry"))
            entry = {name: layout.offset_of("_INVERTED_FUNCTION_TABLE_ENTRY", name) for name in FALLBACK_ENTRY}
            return header, entries, entry
        return FALLBACK_HEADER, FALLBACK_ENTRIES, FALLBACK_ENTRY

    def write(self, kernel: LoadedModule, modules: Sequence[LoadedModule]) -> None:
        """The table holding the kernel and every other module that keeps an entry."""
        if not self.present:
            return
        header, (entries_offset, entry_size, count), entry = self._layout()
        others = sorted((m for m in modules if m is not kernel and m.in_inverted_table and not m.unloaded),
                        key=lambda module: module.base)
        # 8.1 and later reserve index 0 for the kernel; the WRK sorts the kernel in with the rest.
        ordered = [kernel] + others if self.layout.nt_version > (6, 1) else sorted([kernel] + others, key=lambda m: m.base)
        if len(ordered) > count:
            raise ValueError(f"{len(ordered)} images do not fit the {count} entries of the inverted function table")
        self.entries = ordered
        table = bytearray(entries_offset + entry_size * count)
        values: Dict[str, int] = {"CurrentSize": len(ordered), "MaximumSize": count, "Epoch": 2 * len(ordered), "Overflow": 0}
        for name, offset in header.items():
            table[offset : offset + FIELD_SIZES[name]] = values[name].to_bytes(FIELD_SIZES[name], "little")
        for index, module in enumerate(ordered):
            directory = module.image.exception_directory()
            rva, size = directory if directory is not None else (0, 0)
            fields = {"FunctionTable": module.base + rva if rva else 0, "ImageBase": module.base,
                      "SizeOfImage": module.size, "SizeOfTable": size}
            base = entries_offset + index * entry_size
            for name, offset in entry.items():
                value = fields[name] & ((1 << (8 * FIELD_SIZES[name])) - 1)
                table[base + offset : base + offset + FIELD_SIZES[name]] = value.to_bytes(FIELD_SIZES[name], "little")
        address = self.kernel_base + self.layout.symbol(SYMBOL)
        self.machine.space.write(address, bytes(table))
        if self.layout.has_symbol(POINTER_SYMBOL):
            self.machine.write_pointer(self.kernel_base + self.layout.symbol(POINTER_SYMBOL), address)

    def records(self) -> List[Dict[str, int]]:
        """The ground truth's view (``inverted_function_table``): the entries in table order."""
        return [{"module": module.name, "base": masked(module.base), "size": module.size} for module in self.entries]

