"""Searching physical memory for pool tags and mapping hits back through hand-made page tables."""

import struct

from volatility3.framework import contexts
from volatility3.framework.layers import intel, physical

from volatility3_plugins.windows.kernelread import physical_search
from volatility3_plugins.windows.kernelread.context import KernelContext

from tests.unit import memory

PAGE = 0x1000
DTB = 0x1000
PRESENT, LARGE = 0x3, 0x80


def _tables():
    """Physical memory: a PML4 at 0x1000 mapping, in the kernel half,
    0xFFFF800000000000 -> frame 0x10 (4 KiB page) and 0xFFFF800000200000 -> frames 0x200-0x3FF
    (a 2 MiB page); user space 0x0 -> frame 0x11; PML4 entry 0x1ED maps the PML4 itself."""
    ram = bytearray(0x400000)

    def entry(table, index, value):
        struct.pack_into("<Q", ram, table + index * 8, value)

    entry(DTB, 256, 0x2000 | PRESENT)  # PML4[256] -> PDPT
    entry(DTB, 0x1ED, DTB | PRESENT)  # self-map
    entry(DTB, 0, 0x5000 | PRESENT)  # user half -> PDPT
    entry(0x2000, 0, 0x3000 | PRESENT)  # PDPT[0] -> PD
    entry(0x3000, 0, 0x4000 | PRESENT)  # PD[0] -> PT
    entry(0x3000, 1, 0x200000 | PRESENT | LARGE)  # PD[1]: 2 MiB page at frame 0x200
    entry(0x4000, 0, 0x10000 | PRESENT)  # PT[0] -> frame 0x10
    entry(0x5000, 0, 0x6000 | PRESENT)
    entry(0x6000, 0, 0x7000 | PRESENT)
    entry(0x7000, 0, 0x11000 | PRESENT)  # user page -> frame 0x11
    return ram


def _kernel(ram):
    context = contexts.Context()
    context.add_layer(physical.BufferDataLayer(context, "layers.memory", "memory", bytes(ram)))
    context.config["layers.virtual.memory_layer"] = "memory"
    context.config["layers.virtual.page_map_offset"] = DTB
    context.add_layer(intel.Intel32e(context, "layers.virtual", "virtual"))
    table = memory.load_our_table(context)
    module = context.module(table, layer_name="virtual", offset=0xFFFFF80000000000)
    return KernelContext(context, module.name)


def test_hits_map_back_to_kernel_addresses_only():
    ram = _tables()
    ram[0x10000 + 0x104 : 0x10000 + 0x108] = b"CBRe"  # kernel 4 KiB page
    ram[0x11000 + 0x204 : 0x11000 + 0x208] = b"CBRe"  # user page: not kernel pool
    ram[0x250000 + 0x304 : 0x250000 + 0x308] = b"Call"  # inside the 2 MiB page
    ram[0x30000 + 0x404 : 0x30000 + 0x408] = b"CBRe"  # a frame nothing maps
    kernel = _kernel(ram)
    hits = physical_search.physical_search(kernel, [b"CBRe", b"Call"], 4, 0x10)
    assert sorted((hit.frame, hit.offset, hit.tag) for hit in hits) == [
        (0x10, 0x100, b"CBRe"), (0x11, 0x200, b"CBRe"), (0x30, 0x400, b"CBRe"), (0x250, 0x300, b"Call")]
    mapped = physical_search.kernel_mappings(kernel, {hit.frame for hit in hits})
    # The layer's addresses: 48 bits, not sign-extended (callers mask theirs the same way).
    assert mapped == {0x10: [0x800000000000], 0x250: [0x800000200000 + 0x50 * PAGE]}


def test_reads_bypass_the_layers_cache_and_zero_fill_gaps():
    ram = _tables()
    ram[0x10000:0x10004] = b"ABCD"
    kernel = _kernel(ram)
    data = physical_search.read_uncached(kernel.context, kernel.layer, 0xFFFF800000000000 - PAGE, 2 * PAGE)
    assert data[:PAGE] == bytes(PAGE) and data[PAGE : PAGE + 4] == b"ABCD"
