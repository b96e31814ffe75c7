"""The x64 exception directory reader (kernelread/exception_directory.py): entry points, inside a
function, chained fragments, indirect entries, and tables that must be refused."""

import struct

import pytest

from volatility3_plugins.windows.kernelread import exception_directory as ed
from volatility3_plugins.windows.kernelread.loaded_modules import LoadedModule
from volatility3_plugins.windows.kernelread.pages import PageReader
from volatility3_plugins.windows.kernelread.pe_image import PeImage, Section

from tests.unit import memory

BASE = 0xFFFFF80020000000 & memory.MASK48
SIZE = 0x5000
TABLE = 0x3800  # in .rdata
IMAGE = PeImage(
    sections=[Section(".text", 0x1000, 0x3000, 0x60000020, 0x1A00), Section(".rdata", 0x3000, 0x4000, 0x40000040, 0x1000)],
    exception_directory=(TABLE, 6 * 12),
)
NORMAL = bytes([1, 10, 2, 0, 10, 0x32, 6, 0x70])  # version 1, no flags, two codes
CHAINED = bytes([1 | ed.UNW_FLAG_CHAININFO << 3, 0, 0, 0]) + struct.pack("<III", 0x1100, 0x1180, 0x3000)
VERSION_3 = bytes([3, 0, 0, 0])
#: (begin, end, unwind data): primary, primary, its cold fragment, an indirect entry resolving to
#: the first, one resolving to the fragment, one with an unwind version no kernel writes.
ENTRIES = [
    (0x1000, 0x1040, 0x3000),
    (0x1100, 0x1180, 0x3000),
    (0x1800, 0x1810, 0x3020),
    (0x1900, 0x1950, TABLE + 0 * 12 + 1),
    (0x1960, 0x1970, TABLE + 2 * 12 + 1),
    (0x1980, 0x1990, 0x3040),
]


def table_bytes(entries=ENTRIES) -> bytes:
    return b"".join(struct.pack("<III", *entry) for entry in entries)


def image_in_memory(entries=ENTRIES):
    _context, layer = memory.make_context()
    layer.map(BASE, SIZE)
    layer.write(BASE + 0x3000, NORMAL)
    layer.write(BASE + 0x3020, CHAINED)
    layer.write(BASE + 0x3040, VERSION_3)
    layer.write(BASE + TABLE, table_bytes(entries))
    return PageReader(layer), layer


def test_positions():
    reader, _layer = image_in_memory()
    found = ed.read_table(reader, BASE, SIZE, IMAGE)
    assert found.state == ed.VALID and len(found.table) == 6
    where = lambda rva: ed.position(reader, BASE, found.table, rva)  # noqa: E731
    assert where(0x1000) == ed.ENTRY_POINT
    assert where(0x1001) == where(0x103F) == where(0x1150) == ed.INSIDE
    assert where(0x1040) == where(0x10FF) == where(0x2000) == ed.UNCOVERED  # leaf functions, padding
    assert where(0x1800) == ed.FRAGMENT  # a chained fragment's start is no entry point
    assert where(0x1900) == ed.ENTRY_POINT  # indirect: the first entry's unwind data
    assert where(0x1960) == ed.FRAGMENT  # indirect: the fragment's
    assert where(0x1980) == ed.UNKNOWN and where(0x1981) == ed.INSIDE


def test_unreadable_unwind_data_gives_no_verdict_at_an_entry():
    reader, layer = image_in_memory()
    found = ed.read_table(reader, BASE, SIZE, IMAGE)
    layer.write(BASE + 0x3000, bytes(8))
    reader.invalidate()
    assert ed.position(reader, BASE, found.table, 0x1000) == ed.UNKNOWN
    assert ed.position(reader, BASE, found.table, 0x1010) == ed.INSIDE


@pytest.mark.parametrize("why,entries", [
    ("out of order", [ENTRIES[1], ENTRIES[0]] + ENTRIES[2:]),
    ("overlapping", [(0x1000, 0x1120, 0x3000)] + ENTRIES[1:]),
    ("past the image", ENTRIES[:5] + [(0x1980, SIZE + 0x10, 0x3040)]),
    ("in a data section", ENTRIES[:5] + [(0x3100, 0x3110, 0x3040)]),
    ("across the end of a section", ENTRIES[:5] + [(0x2FF0, 0x3010, 0x3040)]),
    ("unwind data outside the image", ENTRIES[:5] + [(0x1980, 0x1990, SIZE + 0x100)]),
    ("empty range", ENTRIES[:5] + [(0x1980, 0x1980, 0x3040)]),
    ("zeros", [(0, 0, 0)] * 6),
])
def test_tables_that_are_refused(why, entries):
    reader, _layer = image_in_memory(entries)
    assert ed.read_table(reader, BASE, SIZE, IMAGE).state == ed.INVALID, why


def test_directories_that_cannot_be_read():
    reader, _layer = image_in_memory()
    assert ed.read_table(reader, BASE, SIZE, PeImage(sections=IMAGE.sections)).state == ed.ABSENT
    for directory in ((TABLE, 0), (TABLE, (ed.MAX_ENTRIES + 1) * 12), (SIZE - 12, 24)):
        assert ed.read_table(reader, BASE, SIZE, PeImage(IMAGE.sections, exception_directory=directory)).state == ed.INVALID
    _context, empty = memory.make_context()
    empty.map(BASE, 0x1000)  # headers only: the table's page is not mapped
    assert ed.read_table(PageReader(empty), BASE, SIZE, IMAGE).state == ed.UNREADABLE


def test_each_table_is_read_once_and_failures_are_reported():
    reader, layer = image_in_memory()
    tables = ed.ExceptionDirectories(reader)
    module = LoadedModule(BASE, SIZE, "test.sys", False)
    assert tables.position(module, IMAGE, 0x1001) == ed.INSIDE
    layer.write(BASE + TABLE, bytes(12 * 6))  # later damage is not seen: read once
    reader.invalidate()
    assert tables.position(module, IMAGE, 0x1001) == ed.INSIDE
    other = LoadedModule(BASE + 0x100000, SIZE, "paged.sys", False)
    assert tables.position(other, IMAGE, 0x1001) == ed.UNKNOWN  # its table's pages are not mapped
    assert tables.valid() == 1 and [label for label, _problem in tables.failures()] == ["paged.sys"]
