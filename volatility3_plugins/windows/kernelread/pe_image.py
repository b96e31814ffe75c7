"""Section headers, export names and the exception directory's place of a PE image read from
memory, parsed with pefile.

Only the headers page and the export directory range are read, each with a bounded size, so
a hostile ``SizeOfImage`` or export directory size cannot make the plugin read (or allocate)
without limit (the exception directory itself is read by :mod:`.exception_directory`).
"""

import dataclasses
import logging
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import pefile

from volatility3.framework import constants, exceptions, interfaces

if TYPE_CHECKING:
    from .context import KernelContext

vollog = logging.getLogger(__name__)

HEADER_READ_SIZE = 0x1000
MAX_EXPORT_DIRECTORY_SIZE = 4 * 1024 * 1024
#: The export range is parsed in a sparse image buffer as large as its end RVA: bound it.
MAX_EXPORT_END_RVA = 64 * 1024 * 1024
IMAGE_SCN_MEM_EXECUTE = 0x20000000
IMAGE_DIRECTORY_ENTRY_EXCEPTION = 3


@dataclasses.dataclass(frozen=True)
class Section:
    name: str
    start: int  # RVA
    end: int  # RVA, exclusive, rounded up to the section alignment as mapped
    characteristics: int
    #: Bytes the section really holds (``VirtualSize``, else ``SizeOfRawData``); the mapping
    #: rounds it up to ``end``: what lies between is slack, zeros the loader leaves.
    virtual_size: int = 0

    @property
    def executable(self) -> bool:
        return bool(self.characteristics & IMAGE_SCN_MEM_EXECUTE)

    @property
    def virtual_end(self) -> int:
        return self.start + self.virtual_size


@dataclasses.dataclass
class PeImage:
    sections: List[Section]
    #: export RVA -> name (named exports only; forwarders excluded: they are not code here)
    exports: Dict[int, str] = dataclasses.field(default_factory=dict)
    #: (RVA, size in bytes) of the exception directory (``.pdata``); None when the header has none
    exception_directory: Optional[Tuple[int, int]] = None

    def section_at(self, rva: int) -> Optional[Section]:
        for section in self.sections:
            if section.start <= rva < section.end:
                return section
        return None

    def in_cave(self, rva: int) -> bool:
        """Whether ``rva`` lies where the image holds no code of its own although it may be
        executable: in an executable section beyond its ``VirtualSize`` (the slack up to the
        section alignment), or outside every section (headers, gaps)."""
        section = self.section_at(rva)
        if section is None:
            return True
        return section.executable and rva >= section.virtual_end


def _align_up(value: int, alignment: int) -> int:
    if alignment <= 1:
        return value
    return (value + alignment - 1) // alignment * alignment


def read_pe_image(
    kernel: "KernelContext",
    base: int,
    size_of_image: int,
    with_exports: bool = True,
) -> Optional[PeImage]:
    """Parses the in-memory image at ``base``; None when its headers are unreadable or not a PE."""
    layer = kernel.layer
    try:
        headers = layer.read(base, HEADER_READ_SIZE)
    except exceptions.InvalidAddressException:
        vollog.debug(f"PE headers at {base:#x} unreadable")
        return None
    try:
        pe = pefile.PE(data=headers, fast_load=True)
    except (pefile.PEFormatError, ValueError, IndexError, AttributeError) as excp:
        vollog.debug(f"no PE at {base:#x}: {excp}")
        return None

    alignment = pe.OPTIONAL_HEADER.SectionAlignment
    sections: List[Section] = []
    for raw in pe.sections:
        mapped = raw.Misc_VirtualSize or raw.SizeOfRawData
        name = raw.Name.rstrip(b"\x00").decode("ascii", errors="replace")
        sections.append(
            Section(
                name=name,
                start=raw.VirtualAddress,
                end=raw.VirtualAddress + _align_up(mapped, alignment),
                characteristics=raw.Characteristics,
                virtual_size=mapped,
            )
        )
    image = PeImage(sections=sections,
                    exception_directory=_directory(pe, IMAGE_DIRECTORY_ENTRY_EXCEPTION))
    if with_exports:
        image.exports = _read_exports(pe, layer, base, size_of_image)
    return image


def _directory(pe: "pefile.PE", index: int) -> Optional[Tuple[int, int]]:
    """(RVA, size) of a data directory, None when absent or empty."""
    try:
        directory = pe.OPTIONAL_HEADER.DATA_DIRECTORY[index]
    except IndexError:
        return None
    if not directory.VirtualAddress or not directory.Size:
        return None
    return directory.VirtualAddress, directory.Size


def _read_exports(
    pe: "pefile.PE", layer: interfaces.layers.DataLayerInterface, base: int, size_of_image: int
) -> Dict[int, str]:
    export_index = pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_EXPORT"]
    directory = _directory(pe, export_index)
    if directory is None:
        return {}
    rva, size = directory
    if (
        size > MAX_EXPORT_DIRECTORY_SIZE
        or rva + size > MAX_EXPORT_END_RVA
        or (size_of_image and rva + size > size_of_image)
    ):
        vollog.debug(f"export directory of {base:#x} out of bounds ({rva:#x}+{size:#x})")
        return {}
    try:
        # The directory header must be there; the rest may be paged out (zeros, no name).
        layer.read(base + rva, min(size, 40))
        data = layer.read(base + rva, size, pad=True)
    except exceptions.InvalidAddressException:
        vollog.debug(f"export directory of {base:#x} unreadable")
        return {}

    # A sparse copy of the mapped image: headers at 0 and the export range at its RVA. With
    # every section's raw pointer set to its RVA, pefile's RVA->offset mapping is the identity.
    image = bytearray(rva + size)
    header_bytes = pe.__data__[:HEADER_READ_SIZE]
    image[: len(header_bytes)] = header_bytes
    image[rva : rva + size] = data
    try:
        mapped = pefile.PE(data=bytes(image), fast_load=True)
        for section in mapped.sections:
            section.PointerToRawData = section.VirtualAddress
            section.PointerToRawData_adj = None
            section.SizeOfRawData = max(section.SizeOfRawData, section.Misc_VirtualSize)
            section.section_min_addr = None
            section.section_max_addr = None
        mapped.parse_data_directories(directories=[export_index])
    except (pefile.PEFormatError, ValueError, IndexError, AttributeError, TypeError) as excp:
        vollog.debug(f"export directory of {base:#x} unparsable: {excp}")
        return {}

    exports: Dict[int, str] = {}
    for symbol in getattr(getattr(mapped, "DIRECTORY_ENTRY_EXPORT", None), "symbols", []):
        if symbol.forwarder or not symbol.name or not symbol.address:
            continue
        name = symbol.name.decode("ascii", errors="replace")
        exports.setdefault(symbol.address, name)
    vollog.log(constants.LOGLEVEL_VVV, f"{len(exports)} exports at {base:#x}")
    return exports
