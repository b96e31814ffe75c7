"""``nt!PsInvertedFunctionTable``: the images the loader registered for exception dispatch (x64).

``MiProcessLoaderEntry`` inserts a module into ``PsLoadedModuleList`` and into this table in one
locked step, and removes it from both together (WRK ``base/ntos/mm/sysload.c``, calling
``RtlInsertInvertedFunctionTable`` of ``base/ntos/rtl/lookup.c``). A driver that unlinks itself
from the list by hand usually leaves its entry here; a manual mapper that wants its exceptions
dispatched inserts one on purpose. Either way an entry whose image the list lacks is evidence of
an image the loader list does not show.

Layout: the kernel's own ``_INVERTED_FUNCTION_TABLE`` (every x64 ISF from 9600 on: 256 entries of
0x18 bytes), else this project's ``symbols/windows/kernel-supplement-x64.json`` (7601's ISF has
the symbol but not the type; the same layout, inferred from the symbol spacing). Header:
``CurrentSize``, ``MaximumSize``, ``Epoch`` (a sequence count, odd while an update is in progress:
the entries may then be half moved, so none is used), ``Overflow`` (an insert found the table
full: some loaded images are legitimately missing, which proves nothing here since only present
entries are used). Entries: ``FunctionTable`` (the image's ``.pdata``), ``ImageBase``,
``SizeOfImage``, ``SizeOfTable``, sorted by ``ImageBase`` (from index 1 on 8.1 and later, entry
0 being the kernel's). There is no such table on x86.
"""

import dataclasses
from typing import TYPE_CHECKING, List, Optional, Tuple

from . import diagnostics
from .addresses import PAGE_SIZE, kernel_half_start
from .loaded_modules import MAX_IMAGE_SIZE
from .views import StructView, ViewError, array_member, type_name

if TYPE_CHECKING:
    from .context import KernelContext

ROUTE_NAME = "inverted function table"
SYMBOL = "PsInvertedFunctionTable"
TABLE_TYPE = "_INVERTED_FUNCTION_TABLE"
ENTRY_TYPE = "_INVERTED_FUNCTION_TABLE_ENTRY"


@dataclasses.dataclass
class InvertedTable:
    """What the table gave: the (ImageBase, SizeOfImage) of its usable entries, and how the read
    fared (for the verdict)."""

    entries: List[Tuple[int, int]]
    route: diagnostics.RouteState


def _table_name(kernel: "KernelContext") -> Optional[str]:
    """The symbol table describing the inverted table: the kernel's, else our supplement."""
    if kernel.kernel_module.has_type(TABLE_TYPE):
        return kernel.kernel_module.symbol_table_name
    return kernel.supplement_table


def _views(kernel: "KernelContext") -> Optional[Tuple[StructView, StructView, int, int]]:
    """(header view, entry view, offset of TableEntry, its element count)."""
    table = _table_name(kernel)
    if table is None:
        return None
    try:
        header = StructView.compile(kernel.context, type_name(table, TABLE_TYPE),
                                    ["CurrentSize", "MaximumSize", "Epoch", "Overflow"], kernel.mask)
        entry = StructView.compile(kernel.context, type_name(table, ENTRY_TYPE),
                                   ["FunctionTable", "ImageBase", "SizeOfImage", "SizeOfTable"], kernel.mask)
        offset, count, _size = array_member(kernel.context, type_name(table, TABLE_TYPE), "TableEntry")
    except ViewError:
        return None
    return header, entry, offset, count


def read_inverted_table(kernel: "KernelContext") -> InvertedTable:
    """The table's entries, bounded by its array; never raises for missing memory."""
    if kernel.pointer_size != 8:
        return InvertedTable([], diagnostics.RouteState(diagnostics.NOT_ON_THIS_BUILD, "no inverted function table on x86"))
    address = kernel.symbols.address(SYMBOL)
    views = _views(kernel) if address is not None else None
    if address is None or views is None:
        return InvertedTable([], diagnostics.RouteState(diagnostics.UNAVAILABLE, f"no nt!{SYMBOL} or no layout for it"))
    header_view, entry_view, entries_offset, count = views
    header = header_view.read(kernel.reader, address)
    if not header.complete or header.zeroed:
        return InvertedTable([], diagnostics.RouteState(diagnostics.INCOMPLETE, "header unreadable or zeros"))
    current, maximum = header.CurrentSize, header.MaximumSize
    if not 0 < current <= maximum <= count:
        return InvertedTable([], diagnostics.RouteState(diagnostics.INCOMPLETE, f"CurrentSize {current}, MaximumSize {maximum}: implausible"))
    if header.Epoch & 1:
        return InvertedTable([], diagnostics.RouteState(diagnostics.INCOMPLETE, "caught in the middle of an update (odd Epoch)"))
    found: List[Tuple[int, int]] = []
    problems = 0
    lowest = kernel_half_start(kernel.pointer_size) & kernel.mask
    for index in range(current):
        record = entry_view.read(kernel.reader, address + entries_offset + index * entry_view.size)
        base, size = record.ImageBase, record.SizeOfImage
        if not record.complete or record.zeroed or base < lowest or base % PAGE_SIZE or not 0 < size <= MAX_IMAGE_SIZE:
            problems += 1
            continue
        found.append((base, size))
    detail = f"{len(found)} entries" + (", overflowed" if header.Overflow else "")
    if problems:
        return InvertedTable(found, diagnostics.RouteState(diagnostics.INCOMPLETE, f"{detail}, {problems} unreadable or implausible"))
    return InvertedTable(found, diagnostics.RouteState(diagnostics.COMPLETE, detail))

