"""Owner module, export symbol and section of routines, from a hand-built PE in memory."""

import struct

from volatility3.framework import renderers
from volatility3_plugins.windows.callback_objects import expected, inventory, registrations, rows
from volatility3_plugins.windows.kernelread import attribution, loaded_modules, pe_image

from tests.unit import memory

KERNEL = 0xFFFFF80010000000
DRIVER = 0xFFFFF80020000000
HIDDEN_HEADERS = 0xFFFFF80030000000  # a module whose headers are not mapped
EXPORT_RVA = 0x2000


def build_pe() -> bytes:
    """A 0x3000-byte mapped PE32+ image: headers, .text (RX) at 0x1000, .rdata (R) at 0x2000
    holding an export directory with two named exports."""
    image = bytearray(0x3000)
    image[0:2] = b"MZ"
    struct.pack_into("<I", image, 0x3C, 0x80)
    image[0x80:0x84] = b"PE\x00\x00"
    struct.pack_into("<HHIIIHH", image, 0x84, 0x8664, 2, 0, 0, 0, 0xF0, 0x22)
    opt = 0x98
    struct.pack_into(
        "<HBBIIIIIQIIHHHHHHIIIIHHQQQQII", image, opt,
        0x20B, 14, 0, 0x800, 0x1000, 0, 0x1000, 0x1000, DRIVER, 0x1000, 0x200,
        10, 0, 10, 0, 10, 0, 0, 0x3000, 0x400, 0, 1, 0, 0x40000, 0x1000, 0x100000, 0x1000, 0, 16,
    )
    struct.pack_into("<II", image, opt + 112, EXPORT_RVA, 0x100)  # export data directory
    sections = opt + 0xF0
    struct.pack_into("<8sIIIIIIHHI", image, sections, b".text", 0x800, 0x1000, 0x800, 0x400, 0, 0, 0, 0, 0x60000020)
    struct.pack_into("<8sIIIIIIHHI", image, sections + 40, b".rdata", 0x1000, 0x2000, 0x1000, 0xC00, 0, 0, 0, 0, 0x40000040)
    # IMAGE_EXPORT_DIRECTORY
    struct.pack_into("<IIHHIIIIIII", image, EXPORT_RVA, 0, 0, 0, 0, EXPORT_RVA + 0x60, 1, 2, 2,
                     EXPORT_RVA + 0x28, EXPORT_RVA + 0x30, EXPORT_RVA + 0x38)
    struct.pack_into("<II", image, EXPORT_RVA + 0x28, 0x1010, 0x1020)
    struct.pack_into("<II", image, EXPORT_RVA + 0x30, EXPORT_RVA + 0x40, EXPORT_RVA + 0x50)
    struct.pack_into("<HH", image, EXPORT_RVA + 0x38, 0, 1)
    image[EXPORT_RVA + 0x40 : EXPORT_RVA + 0x4D] = b"AlphaRoutine\x00"
    image[EXPORT_RVA + 0x50 : EXPORT_RVA + 0x5C] = b"BetaRoutine\x00"
    image[EXPORT_RVA + 0x60 : EXPORT_RVA + 0x69] = b"test.sys\x00"
    return bytes(image)


def listed_modules():
    """The kernel, a driver with a PE image, and a driver whose headers are not mapped."""
    return [
        loaded_modules.LoadedModule(KERNEL & memory.MASK48, 0x100000, "ntoskrnl.exe", True),
        loaded_modules.LoadedModule(DRIVER & memory.MASK48, 0x3000, "test.sys", False),
        loaded_modules.LoadedModule(HIDDEN_HEADERS & memory.MASK48, 0x3000, "paged.sys", False),
    ]


def _setup(complete=True):
    kernel, layer = memory.make_kernel()
    layer.map(DRIVER, 0x3000)
    layer.write(DRIVER, build_pe())
    layer.map(KERNEL, 0x1000)  # kernel headers absent (zeros): not a PE
    module_list = loaded_modules.ModuleList(listed_modules(), available=True, complete=complete)
    return kernel, layer, attribution.Attributor(kernel, module_list)


def _addr(value):
    return value & memory.MASK48


def test_pe_image_sections_and_exports():
    kernel, _layer, _attributor = _setup()
    image = pe_image.read_pe_image(kernel, DRIVER, 0x3000)
    assert [(s.name, s.start, s.end, s.executable) for s in image.sections] == [
        (".text", 0x1000, 0x2000, True),
        (".rdata", 0x2000, 0x3000, False),
    ]
    assert image.exports == {0x1010: "AlphaRoutine", 0x1020: "BetaRoutine"}


def test_export_symbol_and_executable_section():
    _kernel, _layer, attributor = _setup()
    found = attributor.attribute(_addr(DRIVER + 0x1010))
    assert found.module.name == "test.sys"
    assert found.symbol == "AlphaRoutine"
    assert found.section == ".text" and found.executable is True


def test_no_export_gives_module_offset():
    _kernel, _layer, attributor = _setup()
    found = attributor.attribute(_addr(DRIVER + 0x1100))
    assert found.symbol == "test.sys+0x1100"
    assert found.executable is True


def test_data_section_and_headers_are_not_executable():
    _kernel, _layer, attributor = _setup()
    assert attributor.attribute(_addr(DRIVER + 0x2010)).executable is False
    assert attributor.attribute(_addr(DRIVER + 0x2010)).section == ".rdata"
    assert attributor.attribute(_addr(DRIVER + 0x100)).executable is False


def test_outside_modules():
    _kernel, _layer, attributor = _setup()
    found = attributor.attribute(_addr(0xFFFFF80055550000))
    assert found.module is None and found.symbol is None and not found.in_module


def test_unreadable_headers_mean_unknown_not_non_executable():
    _kernel, _layer, attributor = _setup()
    found = attributor.attribute(_addr(HIDDEN_HEADERS + 0x1234))
    assert found.module.name == "paged.sys"
    assert found.symbol == "paged.sys+0x1234"
    assert found.executable is None


def test_kernel_without_isf_symbol_falls_back_to_offset():
    _kernel, _layer, attributor = _setup()
    found = attributor.attribute(_addr(KERNEL + 0x4242))
    assert found.symbol == "ntoskrnl.exe+0x4242"


def _record(name, allow_multiple):
    obj = _addr(0xFFFFF80040000100)
    body = memory.record(obj, Signature=0x6C6C6143, AllowMultipleCallbacks=allow_multiple)
    return inventory.CallbackObjectRecord(
        address=obj, name=name, routes={"list", "directory"}, body=body, registrations_head=obj + 0x10,
        list_state="complete", directory_complete=True,
    )


def _reg(address, routine, owner, zeroed=False):
    return registrations.Registration(address, owner, routine, 0, 0, False, zeroed=zeroed)


def _listed(*regs):
    return registrations.RegistrationList(list(regs), complete=True)


def test_rows_combine_attribution_rules_and_structure_checks():
    _kernel, _layer, attributor = _setup()
    rules = expected.parse({"objects": [{"name": "\\Callback\\Fixed", "allowed_modules": ["test.sys"]}]})
    record = _record("\\Callback\\Fixed", allow_multiple=False)
    regs = _listed(
        _reg(1, _addr(DRIVER + 0x1010), record.address),  # allowed module, but a second one...
        _reg(2, _addr(0xFFFFF80055550000), record.address),  # outside any module
        _reg(3, _addr(DRIVER + 0x2010), record.address + 8),  # data section, wrong backlink
        _reg(4, renderers.UnreadableValue(), renderers.UnreadableValue()),
        _reg(5, 0, 0, zeroed=True),  # a zeroed block: no evidence of anything
        _reg(6, 0, record.address),  # a routine of zero: not "outside every module"
    )
    found = rows.object_rows(record, regs, attributor, rules)
    assert [row.flags for row in found] == [
        ["multiple_on_exclusive"],
        ["outside_modules", "multiple_on_exclusive", "unexpected_registrant"],
        ["non_executable", "bad_backlink", "multiple_on_exclusive"],
        ["multiple_on_exclusive"],  # nothing readable: no guess about the routine
        ["unreadable"],
        ["multiple_on_exclusive"],
    ]


def test_incomplete_module_list_proves_no_routine_outside_modules():
    _kernel, _layer, attributor = _setup(complete=False)
    rules = expected.parse({"objects": [{"name": "\\Callback\\Fixed", "allowed_modules": ["test.sys"]}]})
    record = _record("\\Callback\\Fixed", allow_multiple=True)
    regs = _listed(
        _reg(1, _addr(0xFFFFF80055550000), record.address),  # in no module seen: maybe past the break
        _reg(2, _addr(DRIVER + 0x1010), record.address),  # in a listed module: still attributed
    )
    found = rows.object_rows(record, regs, attributor, rules)
    assert [row.flags for row in found] == [["list_incomplete"], []]
    assert found[1].attribution.module.name == "test.sys"


def test_object_without_registrations_gives_one_row():
    _kernel, _layer, attributor = _setup()
    record = _record(None, allow_multiple=True)
    record.directory_walked, record.routes = True, {"list"}
    found = rows.object_rows(record, _listed(), attributor, expected.ExpectedRegistrants({}))
    assert len(found) == 1 and found[0].registration is None
    assert found[0].flags == ["not_in_directory"]


def test_unavailable_module_list_raises_no_outside_modules():
    kernel, _layer, _attributor = _setup()
    attributor = attribution.Attributor(kernel, loaded_modules.ModuleList())
    assert not attributor.modules_available
    record = _record(None, allow_multiple=True)
    found = rows.object_rows(
        record, _listed(_reg(1, _addr(0xFFFFF80055550000), record.address)), attributor,
        expected.ExpectedRegistrants({}),
    )
    assert found[0].flags == []
