"""Pool-scan validation without an image: the tag scanner on hand-made chunks, the flags of
blocks found on no list, and hidden-driver attribution."""

import struct

from volatility3_plugins.schema import flags
from volatility3_plugins.windows.callback_objects import classify, scan_targets
from volatility3_plugins.windows.kernelpool import scan
from volatility3_plugins.windows.kernelpool.state import BlockState
from volatility3_plugins.windows.kernelread import (attribution, diagnostics, driver_objects, image_traces, loaded_modules,
                                                    physical_search)
from volatility3_plugins.windows.kernelpool.state import Unknown

from tests.unit import memory
from tests.unit.test_attribution import DRIVER, _setup, listed_modules

BASE = 0xFFFF9A8000000000 & memory.MASK48
TAGS = (b"CBRe", b"Call", b"Cal\xec")


def _header(units: int, pool_type: int, tag: bytes) -> bytes:
    """An x64 _POOL_HEADER: PreviousSize 0-7, PoolIndex 8-15, BlockSize 16-23, PoolType 24-31, tag."""
    return struct.pack("<I", units << 16 | pool_type << 24) + tag + bytes(8)


def test_tags_are_found_only_where_a_pool_header_keeps_them():
    chunk = bytearray(0x3000)
    chunk[0x100:0x110] = _header(4, 2, b"CBRe")
    chunk[0x200:0x210] = _header(4, 0, b"CBRe")
    chunk[0x300:0x310] = _header(0xB, 2, b"Cal\xec")  # Windows 7's protected object tag
    chunk[0x408:0x418] = _header(4, 2, b"CBRe")  # not on a 16-byte boundary
    chunk[0x510:0x514] = b"CBRe"  # a tag where a header keeps its size, not its tag
    chunk[0x600:0x610] = _header(4, 2, b"CBRf")
    found = sorted(physical_search.search_tags(bytes(chunk), BASE, TAGS, 4, 0x10))
    assert found == [(BASE + 0x100, b"CBRe"), (BASE + 0x200, b"CBRe"), (BASE + 0x300, b"Cal\xec")]
    # x86: 8-byte headers, the tag at offset 4 of each.
    found = list(physical_search.search_tags(bytes(chunk), 0x84000000, (b"CBRe",), 4, 8))
    assert sorted(found) == [(0x84000100, b"CBRe"), (0x84000200, b"CBRe"), (0x84000408, b"CBRe")]


def test_volatility_scanner_fallback_finds_the_same_positions():
    chunk = bytearray(scan.REGION_READ)
    chunk[0x100:0x110] = _header(4, 2, b"CBRe")
    chunk[-0x10:] = _header(4, 2, b"CBRe")
    scanner = scan.TagScanner((b"CBRe",), 4, 0x10)
    assert sorted(scanner(bytes(chunk) + bytes(0x100), BASE)) == [(BASE + 0x100, b"CBRe"), (BASE + len(chunk) - 0x10, b"CBRe")]


def test_hits_need_a_block_size_that_holds_their_structure():
    kernel, layer = memory.make_kernel()
    scanner = scan.PoolScanner(kernel, scan_targets.CallbackTargets(kernel).targets([scan_targets.REGISTRATIONS]), Unknown("test"))
    chunk = bytearray(0x1000)
    chunk[0x100:0x110] = _header(4, 2, b"CBRe")  # 0x40 bytes: header and registration
    chunk[0x200:0x210] = _header(2, 2, b"CBRe")  # 0x20 bytes cannot hold a registration
    chunk[0x300:0x310] = _header(0, 2, b"CBRe")  # BlockSize 0
    chunk[0x400:0x410] = _header(0xFF, 2, b"CBRe")  # 0xFF0 bytes: within a page
    hits = [scanner._hit(BASE + offset, b"CBRe", bytes(chunk), offset) for offset in (0x100, 0x200, 0x300, 0x400)]
    assert [(h.block_size, h.pool_type) if h else None for h in hits] == [(0x40, 2), None, None, (0xFF0, 2)]
    assert hits[0].data == bytes(chunk[0x100:0x140])


def test_a_screen_rejects_before_the_allocator_is_asked_and_keeps_what_validate_keeps():
    kernel, _layer = memory.make_kernel()
    asked = []

    class Recording(Unknown):
        def state(self, header, pool_type=None):
            asked.append(header)
            return BlockState.ALLOCATED

    def screen(scanner, hit):
        if hit.data[0x10:0x14] != b"good":
            raise scan.Rejected("not good")

    target = scan.ScanTarget("things", (b"Thng",), lambda: 0x10, lambda scanner, hit, state: (hit.header, state), screen)
    scanner = scan.PoolScanner(kernel, [target], Recording("test"))
    hits = [scan.PoolHit(BASE + offset, b"Thng", 0x20, 2, bytes(0x10) + body + bytes(0xC))
            for offset, body in ((0x100, b"good"), (0x200, b"bad!"), (0x300, b"good"))]
    outcome = scanner.run(hits)
    assert outcome.found["things"] == [(BASE + 0x100, BlockState.ALLOCATED), (BASE + 0x300, BlockState.ALLOCATED)]
    assert asked == [BASE + 0x100, BASE + 0x300] and outcome.rejected == {"not good": 1}


def test_registration_in_hidden_module_keeps_outside_modules_and_adds_hidden_module():
    clean_object = classify.ObjectFacts(True, True, diagnostics.COMPLETE, True, True, True, False, True, 1)
    assert classify.classify(
        clean_object,
        classify.RegistrationFacts(backlink_ok=True, in_module=False, executable=True, hidden_module=True),
    ) == [flags.OUTSIDE_MODULES, flags.HIDDEN_MODULE]


def test_only_allocated_loader_entries_and_driver_objects_are_image_traces():
    result = scan_targets.ScanResult(ran=True)
    result.modules = [
        scan_targets.ScannedModule(0x1000, 0x40000000, 0x3000, "ghost.sys", BlockState.ALLOCATED),
        scan_targets.ScannedModule(0x2000, 0x40000000, 0x3000, "ghost.sys", BlockState.FREED),
        scan_targets.ScannedModule(0x3000, 0x50000000, 0x3000, "unloaded.sys", BlockState.FREED),
    ]
    result.driver_objects = [
        scan_targets.ScannedDriverObject(driver_objects.DriverObjectInfo(0x4000, 0x60000000, 0x5000, "\\Driver\\shade"),
                                         BlockState.ALLOCATED),
        scan_targets.ScannedDriverObject(driver_objects.DriverObjectInfo(0x5000, 0x70000000, 0x5000, "\\Driver\\old"),
                                         BlockState.UNKNOWN),
    ]
    assert [(t.base, t.source, t.name) for t in result.image_traces()] == [
        (0x40000000, image_traces.LOADER_ENTRY, "ghost.sys"),
        (0x60000000, image_traces.DRIVER_OBJECT, "\\Driver\\shade"),
    ]


def test_hidden_modules_only_name_addresses_no_listed_module_covers():
    kernel, _layer, _attributor = _setup()
    ghost_base = 0xFFFFF80040000000 & memory.MASK48  # beside every listed module
    hidden = [
        loaded_modules.LoadedModule(ghost_base, 0x3000, "ghost.sys", False, hidden=True),
        # an entry for a listed driver (its MmLd block is in pool too): ignored
        loaded_modules.LoadedModule(DRIVER & memory.MASK48, 0x3000, "shadow.sys", False, hidden=True),
    ]
    module_list = loaded_modules.ModuleList(listed_modules(), available=True, complete=True)
    attributor = attribution.Attributor(kernel, module_list, hidden_modules=hidden)
    assert [m.name for m in attributor.hidden_modules] == ["ghost.sys"]
    in_ghost = attributor.attribute(ghost_base + 0x1700)
    assert in_ghost.module.name == "ghost.sys" and in_ghost.hidden_module and not in_ghost.in_module
    in_driver = attributor.attribute((DRIVER & memory.MASK48) + 0x1100)
    assert in_driver.module.name == "test.sys" and not in_driver.hidden_module and in_driver.in_module
    nowhere = attributor.attribute(ghost_base + 0x10000)
    assert nowhere.module is None and not nowhere.hidden_module


def test_canonical_kernel_pointers():
    kernel, _layer = memory.make_kernel()
    assert kernel.is_kernel_pointer(0xFFFFF80312345678)
    assert not kernel.is_kernel_pointer(0x00007FF612345678)  # user space
    assert not kernel.is_kernel_pointer(0xDEADF80312345678)  # not canonical
    kernel32, _layer = memory.make_kernel(bits=32)
    assert kernel32.is_kernel_pointer(0x82345678) and not kernel32.is_kernel_pointer(0x7FFE0000)


def test_module_images_are_cut_out_of_the_scanned_sections():
    from volatility3_plugins.windows.kernelpool.scan import without_ranges

    kernel_half = [(0x8000_0000_0000, 0x8000_0000_0000)]
    holes = [(0xF803_1240_0000, 0xD1_0000), (0xF803_1321_0000, 0xD000), (0x1000, 0x1000)]
    assert without_ranges(kernel_half, holes) == [
        (0x8000_0000_0000, 0xF803_1240_0000 - 0x8000_0000_0000),
        (0xF803_1311_0000, 0xF803_1321_0000 - 0xF803_1311_0000),
        (0xF803_1321_D000, 0x1_0000_0000_0000 - 0xF803_1321_D000),
    ]
    # Overlapping and unordered holes, a hole covering a whole section, an empty hole.
    assert without_ranges([(0, 100), (200, 50)], [(50, 30), (40, 20), (190, 100), (10, 0)]) == [(0, 40), (80, 20)]
