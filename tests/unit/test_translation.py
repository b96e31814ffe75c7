"""Kernel ranges read in bulk (kernelread/translation.py) give exactly what Volatility's own
layers read: hand-made page tables with 4 KiB, 2 MiB (PAT bit set) and transition pages, a
page table whose entries are all alike (no table, for Volatility), PAE and 2-level paging. The
walk is common/page_tables.py's, the one the file check counts a raw image's pages with."""

import struct

import pytest
from volatility3.framework import contexts, exceptions
from volatility3.framework.layers import intel, physical

from volatility3_plugins.common import page_tables
from volatility3_plugins.windows.kernelread.pages import PageReader
from volatility3_plugins.windows.kernelread.translation import BulkReader

PAGE = 0x1000
P, LARGE, PAT, TRANSITION, PROTOTYPE = 0x3, 0x80, 0x1000, 0x800, 0x400


def _layer(ram: bytearray, layer_class, dtb: int):
    context = contexts.Context()
    context.add_layer(physical.BufferDataLayer(context, "layers.memory", "memory", bytes(ram)))
    context.config["layers.virtual.memory_layer"] = "memory"
    context.config["layers.virtual.page_map_offset"] = dtb
    layer = layer_class(context, "layers.virtual", "virtual")
    context.add_layer(layer)
    return context, layer


def _x64_memory() -> bytearray:
    """PML4 at 0x1000: 0xFFFF800000000000 -> frames 0x10 (4 KiB), 0x11 (transition), 0x12
    (prototype: not valid); 0xFFFF800000200000 -> a 2 MiB page at 0x200000 whose entry has the
    PAT bit; 0xFFFF800000400000 -> a page table whose 512 entries are all the same."""
    ram = bytearray(0x500000)

    def entry(table, index, value):
        struct.pack_into("<Q", ram, table + index * 8, value)

    entry(0x1000, 256, 0x2000 | P)
    entry(0x1000, 0x1ED, 0x1000 | P)  # self-map
    entry(0x2000, 0, 0x3000 | P)
    entry(0x3000, 0, 0x4000 | P)
    entry(0x3000, 1, 0x200000 | P | LARGE | PAT)
    entry(0x3000, 2, 0x5000 | P)
    entry(0x4000, 0, 0x10000 | P)
    entry(0x4000, 1, 0x11000 | TRANSITION)
    entry(0x4000, 2, 0x12000 | TRANSITION | PROTOTYPE)
    entry(0x4000, 3, 0x13000 | P | (1 << 63))  # no-execute
    for index in range(512):
        entry(0x5000, index, 0x14000 | P)
    for frame in (0x10, 0x11, 0x12, 0x13, 0x14):
        ram[frame * PAGE : frame * PAGE + 4] = frame.to_bytes(4, "little")
    ram[0x200000 + 0x56789 : 0x200000 + 0x5678D] = b"LARG"
    return ram


def _same_as_volatility(context, layer, ranges):
    bulk = BulkReader.for_layer(context, layer)
    assert bulk is not None
    for start, length in ranges:
        data, holes = bulk.read(start, length)
        assert data == layer.read(start, length, pad=True), hex(start)
        for hole_start, hole_length in holes:
            with pytest.raises(exceptions.InvalidAddressException):
                layer.read(hole_start, 1)
        mapped = [(s, n) for s, n in _complement(start, length, holes)]
        for piece_start, piece_length in mapped:
            layer.read(piece_start, piece_length)  # Volatility maps it all
    return bulk


def _complement(start, length, holes):
    cursor = start
    for hole_start, hole_length in holes:
        if hole_start > cursor:
            yield cursor, hole_start - cursor
        cursor = hole_start + hole_length
    if cursor < start + length:
        yield cursor, start + length - cursor


def test_x64_pages_large_pages_transition_and_alike_tables():
    context, layer = _layer(_x64_memory(), intel.WindowsIntel32e, 0x1000)
    base = 0x800000000000
    bulk = _same_as_volatility(context, layer, [
        (base - PAGE, 6 * PAGE),  # unmapped, 4 KiB, transition, prototype (no), no-execute, unmapped
        (base + 0x200000, 0x200000),  # the large page
        (base + 0x200000 + 0x56000, 3 * PAGE),
        (base + 0x400000, 4 * PAGE),  # a table of alike entries: nothing, as Volatility reads it
        (base + 0x1FF000, 0x2000),
    ])
    data, holes = bulk.read(base + 0x256789, 4)
    assert data == b"LARG" and not holes
    assert bulk.read(base + PAGE, 4) == ((0x11).to_bytes(4, "little"), [])  # transition: in memory
    assert bulk.read(base + 2 * PAGE, 4)[1] == [(base + 2 * PAGE, 4)]  # prototype: not
    assert bulk.read(base + 0x400000, PAGE)[1] == [(base + 0x400000, PAGE)]


def test_one_walker_maps_what_volatility_maps_and_counts_what_a_file_lacks():
    ram = _x64_memory()
    context, layer = _layer(ram, intel.WindowsIntel32e, 0x1000)
    tables = BulkReader.for_layer(context, layer).tables
    assert isinstance(tables, page_tables.PageTables)
    base, length = 0x800000000000, 0x600000
    mapped = {page for offset, size, _m, _n, _l in layer.mapping(base, length, ignore_errors=True)
              for page in range(offset, offset + size, PAGE)}
    leaves = {page for virtual, _p, span in tables.leaves(base, base + length) for page in range(virtual, virtual + span, PAGE)}
    assert leaves == mapped
    # The file check walks the same tables by the same rules: five tables entered (the alike one
    # included, its entries no pages), the 4 KiB and transition pages and the no-execute one
    # (the PAT large page is not write-back); only the no-execute page's frame lies past 0x12000.
    read = lambda offset, size: bytes(ram[offset : offset + size])  # noqa: E731
    assert page_tables.pages_past(read, 0x1000, tables.paging, 0x12000, 1 << 47) == (1, 8)


def test_not_windows_transition_is_not_valid():
    context, layer = _layer(_x64_memory(), intel.Intel32e, 0x1000)
    bulk = _same_as_volatility(context, layer, [(0x800000000000, 4 * PAGE)])
    assert bulk.read(0x800000000000 + PAGE, 4)[1] == [(0x800000000000 + PAGE, 4)]


def test_pae_and_two_level_paging():
    ram = bytearray(0x400000)
    # PAE: PDPT at 0x1000 -> directory 0x2000 (for 0x80000000: index 2) -> table 0x3000
    struct.pack_into("<Q", ram, 0x1000 + 2 * 8, 0x2000 | 1)
    struct.pack_into("<Q", ram, 0x2000, 0x3000 | P)
    struct.pack_into("<Q", ram, 0x2000 + 8, 0x200000 | P | LARGE)
    struct.pack_into("<Q", ram, 0x3000 + 8, 0x10000 | P)
    ram[0x10000:0x10004] = b"PAE!"
    context, layer = _layer(ram, intel.WindowsIntelPAE, 0x1000)
    _same_as_volatility(context, layer, [(0x80000000, 3 * PAGE), (0x80200000 - PAGE, 0x3000)])
    flat = bytearray(0x800000)
    struct.pack_into("<I", flat, 0x1000 + 0x200 * 4, 0x2000 | P)  # 0x80000000 -> table 0x2000
    struct.pack_into("<I", flat, 0x1000 + 0x201 * 4, 0x400000 | P | LARGE)  # 4 MiB page
    struct.pack_into("<I", flat, 0x2000 + 4, 0x10000 | P)
    context, layer = _layer(flat, intel.WindowsIntel, 0x1000)
    _same_as_volatility(context, layer, [(0x80000000, 3 * PAGE), (0x80400000 - PAGE, 0x3000)])


def test_page_reader_reads_long_ranges_in_bulk_and_raises_where_volatility_does():
    context, layer = _layer(_x64_memory(), intel.WindowsIntel32e, 0x1000)
    reader = PageReader(layer, bulk=BulkReader.for_layer(context, layer))
    start = 0x800000200000
    assert reader.read(start, 0x10000) == layer.read(start, 0x10000)
    with pytest.raises(exceptions.InvalidAddressException):
        reader.read(0x800000000000 + 2 * PAGE, 8 * PAGE)  # a prototype page in the middle


def test_no_bulk_reader_where_the_layer_is_not_intel_paging():
    context = contexts.Context()
    layer = physical.BufferDataLayer(context, "layers.memory", "memory", bytes(PAGE))
    assert BulkReader.for_layer(context, layer) is None
