"""Whether the image file holds all the memory it should, by what the image itself says.

- A crash dump, whichever layer opened it: the pages its headers place in the file, read with
  ``common/crashdump_header.py`` (the definition the crash-dump layer uses), against the file's
  size. Volatility's own layer (DumpTypes 1 and 5) never compares the two and reads the missing
  pages as errors or zeros.
- A raw image (the kernel's physical layer is the file itself, physical address X at offset X):
  the RAM the kernel describes in ``nt!MmPhysicalMemoryBlock`` (a ``_PHYSICAL_MEMORY_DESCRIPTOR``
  in non-paged pool: runs of physical pages built from the loader's memory descriptors, WRK
  ``MmInitializeMemoryLimits``) against the file's size: every page of RAM lies inside a whole
  raw image. When that descriptor cannot be read (its own page may be the one cut off), the
  pages the kernel half maps write-back, and its page tables, are counted instead from one walk
  of the page tables (``common/page_tables.py``): none of them may lie past the end of the file.

Other formats (LiME, ELF cores, VMware, ...) are not checked: their layers know their extents.
A check that cannot be made (the descriptor's page is missing, a header that describes no
layout) proves nothing: it is said at info level and gives no shortfall.
"""

import dataclasses
from typing import TYPE_CHECKING, List, Optional, Tuple

from volatility3.framework import exceptions, interfaces

from ...common import crashdump_header, page_tables
from ...common.units import PAGE_SIZE, missing_pages_cause, missing_pages_text, size_text
from .addresses import kernel_half_start
from .translation import PhysicalReader, paging_of
from .views import ViewError, array_member

if TYPE_CHECKING:
    from .context import KernelContext

DESCRIPTOR_SYMBOL = "MmPhysicalMemoryBlock"
#: Most runs a descriptor is believed to hold (a machine has a few dozen at most).
MAX_RUNS = 4096


@dataclasses.dataclass(frozen=True)
class Shortfall:
    """Memory the image file lacks."""

    #: ``crash dump truncated``, ``raw image shorter than RAM`` or ``raw image truncated``.
    what: str
    missing: int
    total: int
    #: The sentence a warning says.
    detail: str

    def __str__(self) -> str:
        """The cause as a verdict line says it."""
        return missing_pages_cause(self.what, self.missing, self.total)


def file_layer(context: interfaces.context.ContextInterface, layer_name: str) -> interfaces.layers.DataLayerInterface:
    """The layer at the bottom of ``layer_name``'s stack (the file, for a file-based image),
    following each layer's first dependency."""
    layer = context.layers[layer_name]
    seen = {layer.name}
    while layer.dependencies and layer.dependencies[0] not in seen:
        layer = context.layers[layer.dependencies[0]]
        seen.add(layer.name)
    return layer


def shortfalls(kernel: "KernelContext") -> List[Shortfall]:
    """What the image file lacks (see the module docstring); empty when nothing is known missing."""
    physical_name = kernel.layer.config.get("memory_layer")
    if physical_name is None:
        return []
    bottom = file_layer(kernel.context, physical_name)
    read = crashdump_header.layer_reader(bottom)
    file_size = bottom.maximum_address + 1
    if crashdump_header.is_crash_dump(read(0, 8)):
        found = _dump_shortfall(kernel, read, file_size)
    elif bottom.name == physical_name:
        found = _raw_shortfall(kernel, file_size)
    else:
        found = None
    return [found] if found is not None else []


def _dump_shortfall(kernel: "KernelContext", read: crashdump_header.Read, file_size: int) -> Optional[Shortfall]:
    try:
        truncation = crashdump_header.truncation(read, file_size)
    except crashdump_header.DumpFormatError as error:
        kernel.diagnostics.info(f"The crash dump's pages cannot be checked against its file's size: {error}")
        return None
    if truncation is None:
        return None
    return Shortfall("crash dump truncated", truncation.missing, truncation.total,
                     f"the crash dump is truncated: {truncation}")


def _raw_shortfall(kernel: "KernelContext", file_size: int) -> Optional[Shortfall]:
    runs = physical_memory_runs(kernel)
    if runs is None:
        return _mapped_shortfall(kernel, file_size)
    in_file = file_size // PAGE_SIZE
    total = sum(count for _, count in runs)
    missing = sum(count - max(0, min(count, in_file - first)) for first, count in runs)
    if not missing:
        return None
    end = max(first + count for first, count in runs) * PAGE_SIZE
    detail = (f"the raw image ends at {size_text(file_size)}, before the RAM the kernel describes "
              f"(nt!{DESCRIPTOR_SYMBOL}: {len(runs)} run{'s' if len(runs) != 1 else ''} up to {size_text(end)}): "
              f"{missing_pages_text(missing, total)} of RAM lie past the end of the file")
    # A crash dump's truncation is said by the crash-dump layer; a raw image's only here.
    kernel.diagnostics.warning(detail[0].upper() + detail[1:])
    return Shortfall("raw image shorter than RAM", missing, total, detail)


def _mapped_shortfall(kernel: "KernelContext", file_size: int) -> Optional[Shortfall]:
    paging = paging_of(kernel.layer, kernel.context)
    if paging is None:
        return None
    missing, total = page_tables.pages_past(PhysicalReader(kernel.context, paging.physical).read, paging.dtb, paging.format,
                                            file_size, kernel_half_start(kernel.pointer_size))
    if not missing:
        return None
    # Said by the layers' file check where it finds the page tables itself (x64); the verdict's
    # causes say it everywhere.
    return Shortfall("raw image truncated", missing, total, page_tables.truncation_text(missing, total, file_size))


def physical_memory_runs(kernel: "KernelContext") -> Optional[List[Tuple[int, int]]]:
    """(first page, page count) of every run of ``nt!MmPhysicalMemoryBlock``; None (said at info
    level) when the symbol, its types or its memory are missing or absurd."""
    address = kernel.read_global_pointer(DESCRIPTOR_SYMBOL)
    descriptor = kernel.kernel_view("_PHYSICAL_MEMORY_DESCRIPTOR", ["NumberOfRuns"], quiet=True)
    run = kernel.kernel_view("_PHYSICAL_MEMORY_RUN", ["BasePage", "PageCount"], quiet=True)
    if not address or descriptor is None or run is None:
        kernel.diagnostics.info(f"nt!{DESCRIPTOR_SYMBOL} or its types are missing: the raw image's size is not checked")
        return None
    try:
        offset, _, size = array_member(kernel.context, kernel.kernel_type("_PHYSICAL_MEMORY_DESCRIPTOR"), "Run")
    except ViewError:
        return None
    count = descriptor.read(kernel.reader, address).NumberOfRuns
    if not isinstance(count, int) or not 0 < count <= MAX_RUNS:
        kernel.diagnostics.info(f"nt!{DESCRIPTOR_SYMBOL} unreadable or absurd: the raw image's size is not checked")
        return None
    try:
        data = kernel.reader.read(address + offset, count * size)
    except exceptions.InvalidAddressException:
        kernel.diagnostics.info(f"nt!{DESCRIPTOR_SYMBOL}'s runs unreadable: the raw image's size is not checked")
        return None
    runs = []
    for index in range(count):
        record = run.unpack(data, address + offset + index * size, index * size)
        first, pages = int(record.BasePage), int(record.PageCount)
        if first + pages > crashdump_header.MAX_PAGE_NUMBER:
            kernel.diagnostics.info(f"nt!{DESCRIPTOR_SYMBOL} holds an absurd run: the raw image's size is not checked")
            return None
        runs.append((first, pages))
    return runs
