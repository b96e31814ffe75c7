"""Portable Executable images as the Windows loader leaves them in memory.

The forge needs of a PE image: headers with real section headers (so a reader can tell
executable from non-executable sections, and a section's ``VirtualSize`` from the slack the
mapping rounds it up to), an export directory (so a reader can name exported routines), for the
kernel a debug directory with the CodeView RSDS record that Volatility's PDB scanner uses to
identify the kernel build, and code where routines are with, on x64, the exception directory
that describes it (``code.py``): unwind data after the other directories in the read-only data
section, the ``RUNTIME_FUNCTION`` table at ``pdata_rva`` (its own ``.pdata`` section, as MSVC
links it). Images are produced already "mapped": every part is placed at its RVA.
"""

import struct
import uuid
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from .code import CodeLayout

IMAGE_SCN_CNT_CODE = 0x0000_0020
IMAGE_SCN_CNT_INITIALIZED_DATA = 0x0000_0040
IMAGE_SCN_MEM_DISCARDABLE = 0x0200_0000
IMAGE_SCN_MEM_NOT_PAGED = 0x0800_0000
IMAGE_SCN_MEM_EXECUTE = 0x2000_0000
IMAGE_SCN_MEM_READ = 0x4000_0000
IMAGE_SCN_MEM_WRITE = 0x8000_0000

CODE = IMAGE_SCN_CNT_CODE | IMAGE_SCN_MEM_EXECUTE | IMAGE_SCN_MEM_READ
READ_ONLY_DATA = IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ
WRITABLE_DATA = IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ | IMAGE_SCN_MEM_WRITE

IMAGE_DEBUG_TYPE_CODEVIEW = 2
IMAGE_DIRECTORY_ENTRY_EXPORT = 0
IMAGE_DIRECTORY_ENTRY_EXCEPTION = 3
IMAGE_DIRECTORY_ENTRY_DEBUG = 6
SECTION_ALIGNMENT = 0x1000

MACHINE_AMD64 = 0x8664
MACHINE_I386 = 0x014C

HEADERS_SIZE = 0x1000
E_LFANEW = 0x100


@dataclass(frozen=True)
class Section:
    name: str
    rva: int
    virtual_size: int  # what the section holds; the mapping rounds it up to the alignment
    characteristics: int

    @property
    def executable(self) -> bool:
        return bool(self.characteristics & IMAGE_SCN_MEM_EXECUTE)

    @property
    def mapped_size(self) -> int:
        return (self.virtual_size + SECTION_ALIGNMENT - 1) & ~(SECTION_ALIGNMENT - 1)

    def contains(self, rva: int) -> bool:
        """In the section as mapped (its slack included)."""
        return self.rva <= rva < self.rva + self.mapped_size

    def in_slack(self, rva: int) -> bool:
        """Beyond ``VirtualSize``, in what the mapping adds."""
        return self.rva + self.virtual_size <= rva < self.rva + self.mapped_size


@dataclass(frozen=True)
class CodeView:
    """The RSDS record that names the PDB a binary was built with."""

    pdb_name: str
    guid: str
    age: int

    def record(self) -> bytes:
        return b"RSDS" + uuid.UUID(hex=self.guid).bytes_le + struct.pack("<I", self.age) + self.pdb_name.encode() + b"\x00"


@dataclass
class PeImage:
    """A PE image laid out by RVA. ``blobs()`` gives everything to write into memory."""

    dll_name: str
    size_of_image: int
    sections: List[Section]
    exports: Dict[str, int] = field(default_factory=dict)
    codeview: Optional[CodeView] = None
    metadata_rva: Optional[int] = None
    is_64bit: bool = True
    timestamp: int = 0x5F3A1C2B
    entry_point_rva: int = 0
    #: The functions written into the image (None: no code at all)
    code: Optional[CodeLayout] = None
    #: Where the RUNTIME_FUNCTION table goes (x64 images with non-leaf functions)
    pdata_rva: Optional[int] = None

    def __post_init__(self) -> None:
        if self.metadata_rva is None:
            # Export and debug directories go at the start of the first read-only data section.
            rdata = [s for s in self.sections if not s.executable and not s.characteristics & IMAGE_SCN_MEM_WRITE]
            if (self.exports or self.codeview) and not rdata:
                raise ValueError(f"{self.dll_name}: exports or a debug record need a read-only data section")
            self.metadata_rva = rdata[0].rva if rdata else None
        for rva in self.exports.values():
            if not 0 < rva < self.size_of_image:
                raise ValueError(f"{self.dll_name}: export RVA {rva:#x} outside the image")

    def section_for(self, rva: int) -> Optional[Section]:
        for section in self.sections:
            if section.contains(rva):
                return section
        return None

    def exception_directory(self) -> Optional[Tuple[int, int]]:
        """(RVA, size) of the RUNTIME_FUNCTION table, None without one."""
        size = self.code.table_size() if self.code is not None else 0
        if self.pdata_rva is None or not size:
            return None
        return self.pdata_rva, size

    def in_cave(self, rva: int) -> bool:
        """In an executable section's slack, or outside every section."""
        section = self.section_for(rva)
        return section is None or (section.executable and section.in_slack(rva))

    # -- directories ---------------------------------------------------------------------

    def _metadata(self) -> Tuple[bytes, Dict[int, Tuple[int, int]], bytes]:
        """Debug and export directories and the unwind data packed together at ``metadata_rva``;
        the RUNTIME_FUNCTION table for ``pdata_rva``."""
        assert self.metadata_rva is not None
        base = self.metadata_rva
        blob = bytearray()
        directories: Dict[int, Tuple[int, int]] = {}
        if self.codeview is not None:
            record = self.codeview.record()
            record_rva = base + 28
            blob += struct.pack(
                "<IIHHIIII", 0, self.timestamp, 0, 0, IMAGE_DEBUG_TYPE_CODEVIEW, len(record), record_rva, 0
            )
            blob += record
            directories[IMAGE_DIRECTORY_ENTRY_DEBUG] = (base, 28)
            blob += bytes(-len(blob) % 16)
        if self.exports:
            export_rva = base + len(blob)
            blob += self._export_directory(export_rva)
            directories[IMAGE_DIRECTORY_ENTRY_EXPORT] = (export_rva, base + len(blob) - export_rva)
        table = b""
        if self.pdata_rva is not None and self.code is not None and self.code.runtime_functions():
            blob += bytes(-len(blob) % 4)  # UNWIND_INFO is DWORD-aligned
            unwind, table = self.code.exception_directory(base + len(blob))
            blob += unwind
            directories[IMAGE_DIRECTORY_ENTRY_EXCEPTION] = (self.pdata_rva, len(table))
        return bytes(blob), directories, table

    def _export_directory(self, rva: int) -> bytes:
        names = sorted(self.exports)
        count = len(names)
        functions_rva = rva + 40
        names_rva = functions_rva + 4 * count
        ordinals_rva = names_rva + 4 * count
        strings_rva = ordinals_rva + 2 * count
        strings = bytearray(self.dll_name.encode() + b"\x00")
        name_pointers = []
        for name in names:
            name_pointers.append(strings_rva + len(strings))
            strings += name.encode() + b"\x00"
        header = struct.pack(
            "<IIHHIIIIIII", 0, self.timestamp, 0, 0, strings_rva, 1, count, count,
            functions_rva, names_rva, ordinals_rva,
        )
        functions = b"".join(struct.pack("<I", self.exports[name]) for name in names)
        pointers = b"".join(struct.pack("<I", pointer) for pointer in name_pointers)
        ordinals = b"".join(struct.pack("<H", index) for index in range(count))
        return header + functions + pointers + ordinals + bytes(strings)

    # -- headers -------------------------------------------------------------------------

    def headers(self, image_base: int, directories: Dict[int, Tuple[int, int]]) -> bytes:
        page = bytearray(HEADERS_SIZE)
        page[0:2] = b"MZ"
        struct.pack_into("<I", page, 0x3C, E_LFANEW)
        page[0x40:0x4E] = b"\x0e\x1f\xba\x0e\x00\xb4\x09\xcd\x21\xb8\x01\x4c\xcd\x21"
        page[0x4E:0x76] = b"This program cannot be run in DOS mode.\r"  # 40 bytes: the page stays a page

        optional_size = 0xF0 if self.is_64bit else 0xE0
        machine = MACHINE_AMD64 if self.is_64bit else MACHINE_I386
        characteristics = 0x0022 if self.is_64bit else 0x0102
        offset = E_LFANEW
        page[offset : offset + 4] = b"PE\x00\x00"
        struct.pack_into("<HHIIIHH", page, offset + 4, machine, len(self.sections), self.timestamp, 0, 0,
                         optional_size, characteristics)

        code = [s for s in self.sections if s.executable]
        size_of_code = sum(s.virtual_size for s in code)
        size_of_data = sum(s.virtual_size for s in self.sections if not s.executable)
        base_of_code = code[0].rva if code else 0
        optional = offset + 24
        if self.is_64bit:
            struct.pack_into(
                "<HBBIIIIIQIIHHHHHHIIIIHHQQQQII", page, optional,
                0x20B, 14, 20, size_of_code, size_of_data, 0, self.entry_point_rva, base_of_code,
                image_base, 0x1000, 0x200, 10, 0, 10, 0, 10, 0, 0, self.size_of_image, 0x400, 0,
                1, 0x4160, 0x80000, 0x1000, 0x100000, 0x1000, 0, 16,
            )
            directory_table = optional + 112
        else:
            struct.pack_into(
                "<HBBIIIIIIIIIHHHHHHIIIIHHIIIIII", page, optional,
                0x10B, 14, 20, size_of_code, size_of_data, 0, self.entry_point_rva, base_of_code, 0,
                image_base, 0x1000, 0x200, 10, 0, 10, 0, 10, 0, 0, self.size_of_image, 0x400, 0,
                1, 0x4140, 0x40000, 0x1000, 0x100000, 0x1000, 0, 16,
            )
            directory_table = optional + 96
        for index, (rva, size) in directories.items():
            struct.pack_into("<II", page, directory_table + 8 * index, rva, size)

        section_table = optional + optional_size
        raw_pointer = 0x400
        for number, section in enumerate(self.sections):
            raw_size = (section.virtual_size + 0x1FF) & ~0x1FF
            struct.pack_into(
                "<8sIIIIIIHHI", page, section_table + 40 * number,
                section.name.encode()[:8], section.virtual_size, section.rva, raw_size, raw_pointer,
                0, 0, 0, 0, section.characteristics,
            )
            raw_pointer += raw_size
        return bytes(page)

    def blobs(self, image_base: int) -> List[Tuple[int, bytes]]:
        """(RVA, bytes) pairs that make up the mapped image's non-zero content; raises
        ValueError when two of them overlap (a routine placed over a directory, say)."""
        directories: Dict[int, Tuple[int, int]] = {}
        parts: List[Tuple[int, bytes]] = []
        if self.metadata_rva is not None and (self.exports or self.codeview or self.pdata_rva is not None):
            metadata, directories, table = self._metadata()
            parts.append((self.metadata_rva, metadata))
            if table:
                parts.append((self.pdata_rva, table))
        if self.code is not None:
            parts += self.code.blobs()
        parts.insert(0, (0, self.headers(image_base, directories)))
        ordered = sorted((rva, rva + len(data)) for rva, data in parts)
        for (_start, end), (following, _end) in zip(ordered, ordered[1:]):
            if following < end:
                raise ValueError(f"{self.dll_name}: image contents overlap at RVA {following:#x}")
        return parts
