"""Images the loader list lacks, from the other traces (kernelread/image_traces.py), and the
Attributor asking for them only when an address lies in no listed module."""

from volatility3_plugins.windows.kernelread import attribution, image_traces, loaded_modules
from volatility3_plugins.windows.kernelread.driver_objects import DriverObjectInfo

from tests.unit import memory

LISTED = 0xFFFFF80050000000 & memory.MASK48
GHOST = 0xFFFFF80060000000 & memory.MASK48
SHADE = 0xFFFFF80061000000 & memory.MASK48
MAPPED = 0xFFFFF80062000000 & memory.MASK48
NO_IMAGE = 0xFFFFF80063000000 & memory.MASK48


def setup():
    kernel, layer = memory.make_kernel()
    for base in (LISTED, GHOST, SHADE, MAPPED):
        layer.map(base, 0x1000)
        layer.write(base, b"MZ")
    layer.map(NO_IMAGE, 0x1000)  # mapped, but no image header there
    listed = loaded_modules.ModuleList([loaded_modules.LoadedModule(LISTED, 0x8000, "listed.sys", False)], True, True)
    return kernel, listed


def test_each_trace_and_the_best_name():
    kernel, listed = setup()
    traces = [
        # ghost.sys: its loader entry in pool, its driver object, its inverted-table entry
        image_traces.from_loader_entry(GHOST, 0x6000, "ghost.sys"),
        *image_traces.from_inverted_table([(GHOST, 0x7000)]),
        *image_traces.from_driver_objects([DriverObjectInfo(0x1000, GHOST, 0x5000, "\\Driver\\ghost")]),
        # shade.sys: its loader entry erased; its driver object and table entry remain
        *image_traces.from_driver_objects([DriverObjectInfo(0x2000, SHADE, 0x5000, "\\Driver\\shade")]),
        *image_traces.from_inverted_table([(SHADE, 0x9000)]),
        # a manually mapped image: its table entry only
        *image_traces.from_inverted_table([(MAPPED, 0x4000)]),
        # a listed driver's own traces, an entry naming no image, an unaligned base
        image_traces.from_loader_entry(LISTED, 0x8000, "listed.sys"),
        *image_traces.from_inverted_table([(NO_IMAGE, 0x4000), (GHOST + 0x10, 0x4000)]),
    ]
    found = image_traces.hidden_images(kernel, listed, traces)
    assert [(m.base, m.size, m.name, m.hidden) for m in found] == [
        (GHOST, 0x6000, "ghost.sys", True),  # the loader entry's name and size
        (SHADE, 0x9000, "\\Driver\\shade", True),  # the driver object's name, the table's size
        (MAPPED, 0x4000, f"hidden@{MAPPED:#x}", True),
    ]


def test_a_driver_object_names_its_image_by_the_loader_entry_it_points_at():
    kernel, listed = setup()
    traces = image_traces.from_driver_objects([DriverObjectInfo(0x1000, GHOST, 0x5000, "\\Driver\\ghost", "ghost.sys")])
    assert [m.name for m in image_traces.hidden_images(kernel, listed, traces)] == ["ghost.sys"]


def test_other_traces_are_read_only_for_an_address_in_no_listed_module():
    kernel, listed = setup()
    asked = []

    def other_images():
        asked.append(True)
        return [loaded_modules.LoadedModule(GHOST, 0x6000, "ghost.sys", False, hidden=True)]

    attributor = attribution.Attributor(kernel, listed, hidden_modules=other_images)
    assert attributor.attribute(LISTED + 0x1000).module.name == "listed.sys"
    assert not attributor.consulted_hidden and not asked
    found = attributor.attribute(GHOST + 0x1700)
    assert found.hidden_module and found.module.name == "ghost.sys" and attributor.consulted_hidden
    attributor.attribute(GHOST + 0x1800)
    assert asked == [True]
