"""Forged images read back through Volatility's own plugins and helpers, not only ours."""

import json
import struct

import pefile
import pytest

from tests.conftest import BUILTIN_PROFILES, SCENARIO_NAMES, real_isf_params, require_real_isf
from tests.forge.profiles.layout import KNOWN_BUILDS, KernelLayout
from tests.volatility_harness import driverscan_rows, kernel_context, module_rows, read_directory, vol_json

FORMATS = ("raw", "dump")


def listed_modules(truth):
    return [(m["name"], m["base"], m["size"]) for m in truth["modules"] if m["in_module_list"]]


def check_modules(paths, fmt, cache):
    """Volatility's ``Modules.list_modules`` (in-process: automagic once per image)."""
    assert module_rows(paths[fmt], paths["symbols"], cache) == listed_modules(paths["truth_data"])


def check_callback_directory(paths, fmt, cache):
    truth = paths["truth_data"]
    context, kernel = kernel_context(paths[fmt], paths["symbols"], cache)
    callback_dir = read_directory(context, kernel, ["Callback"])
    readable_names = {row["Name"] for row in truth["rows"]} - {None}  # a lying name length reads as no name
    expected = {name for name in truth["callback_directory"] if "\\Callback\\" + name in readable_names}
    assert set(callback_dir) == expected
    assert set(callback_dir.values()) == {"Callback"}
    types = read_directory(context, kernel, ["ObjectTypes"])
    assert set(types) == set(truth["object_types"]) and set(types.values()) == {"Type"}


def check_driver_directory(paths, fmt, cache):
    """``\\Driver`` holds one object of type Driver per forged driver object, hidden drivers too."""
    context, kernel = kernel_context(paths[fmt], paths["symbols"], cache)
    drivers = read_directory(context, kernel, ["Driver"])
    assert set(drivers) == {record["name"].rsplit("\\", 1)[1] for record in paths["truth_data"]["driver_objects"]}
    assert set(drivers.values()) == {"Driver"}


def check_driver_objects(paths, fmt, cache):
    """Volatility's own ``windows.driverscan`` lists every forged driver object with its name,
    service key, start and size; ``windows.modules`` gives the same start and size for each
    listed driver and does not list the hidden ones. driverscan scans the kernel's virtual layer
    from Windows 10 and the physical layer before: the offset is the object's address in one of
    the two. Any other row must lie inside a driver object's pool block: from Windows 8 on,
    Volatility carves an object at every 16-byte step after the pool header whose would-be
    ``PointerCount`` looks plausible, and prints a carving whenever some name reads (on 9600 one
    reads a "name" from the MajorFunction pointers); no row may come from elsewhere, such as the
    noise blocks tagged ``Driv``."""
    truth = paths["truth_data"]
    expected = truth["driver_objects"]
    assert any(record["hidden"] for record in expected) == any(not m["in_module_list"] for m in truth["modules"])
    context, kernel = kernel_context(paths[fmt], paths["symbols"], cache)
    layer = context.layers[context.modules[kernel].layer_name]
    rows = driverscan_rows(paths[fmt], paths["symbols"], cache)
    blocks = [(b["header"], b["header"] + b["size"]) for b in truth["blocks"] if b["role"] == "driver_object"]
    spans = []  # (start, end) of each driver object's block, on both layers driverscan may scan
    for start, end in blocks:
        spans += [(start, end), (layer.translate(start)[0], layer.translate(start)[0] + end - start)]
    by_offset = {row["Offset"]: row for row in rows}
    listed = {name: (base, size) for name, base, size in module_rows(paths[fmt], paths["symbols"], cache)}
    for record in expected:
        offsets = [offset for offset in (record["address"], layer.translate(record["address"])[0]) if offset in by_offset]
        assert len(offsets) == 1, f"{record['name']} at {record['address']:#x} not in driverscan"
        row = by_offset.pop(offsets[0])
        assert row["Name"] == record["name"]
        assert (row["Driver Name"], row["Service Key"]) == (record["name"].rsplit("\\", 1)[1], record["service_key"])
        assert (row["Start"], row["Size"]) == (record["start"], record["size"])
        assert listed.get(record["module"]) == (None if record["hidden"] else (record["start"], record["size"]))
    for offset in by_offset:
        assert any(start <= offset < end for start, end in spans), f"driverscan row at {offset:#x} is in no driver object"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("profile", BUILTIN_PROFILES)
@pytest.mark.parametrize("scenario", SCENARIO_NAMES)
def test_volatility_reads_forged_modules_and_directories(forged, vol_cache, scenario, profile, fmt):
    paths = forged(scenario, profile)
    check_modules(paths, fmt, vol_cache)
    check_callback_directory(paths, fmt, vol_cache)
    check_driver_directory(paths, fmt, vol_cache)
    if scenario == "rootkit":  # its DKOM-hidden ghost.sys: in driverscan, not in modules
        check_driver_objects(paths, fmt, vol_cache)


@pytest.mark.parametrize("profile", BUILTIN_PROFILES)
def test_vol_command_line_lists_forged_modules(forged, vol_cache, profile):
    """The user's view: ``vol windows.modules`` on the crash dump, rendered as JSON."""
    paths = forged("baseline", profile)
    rows = vol_json(paths["dump"], paths["symbols"], "windows.modules", cache=vol_cache)
    assert [(r["Name"], r["Base"], r["Size"]) for r in rows] == listed_modules(paths["truth_data"])


@pytest.mark.parametrize("isf", real_isf_params())
def test_real_isf_baseline_matrix(forged, vol_cache, isf):
    """Every real kernel ISF: globals at that build's offsets, read back by Volatility."""
    require_real_isf(isf)
    paths = forged("baseline", isf)
    layout = KernelLayout.from_isf(isf)
    assert paths["truth_data"]["build"] == KNOWN_BUILDS[layout.guid]
    for fmt in FORMATS:
        check_modules(paths, fmt, vol_cache)
        check_callback_directory(paths, fmt, vol_cache)
        check_driver_directory(paths, fmt, vol_cache)
    # driverscan (a pool scan) on the raw image only; the built-in profiles' test runs it on dumps too
    check_driver_objects(paths, "raw", vol_cache)


def test_kernel_pe_is_a_valid_image_with_rsds(forged):
    """pefile parses the forged kernel headers and finds the CodeView record naming the PDB."""
    paths = forged("baseline", "win10")
    truth = paths["truth_data"]
    layout = KernelLayout.builtin("win10")
    from tests.forge.forge import ImageForge

    forge = ImageForge(layout)
    image = forge.build()
    kernel = forge.kernel
    headers = forge.machine.space.read(kernel.base, 0x1000)
    pe = pefile.PE(data=headers, fast_load=True)
    assert pe.OPTIONAL_HEADER.SizeOfImage == kernel.size
    names = {s.Name.rstrip(b"\0").decode(): s.Characteristics for s in pe.sections}
    assert names[".text"] & pefile.SECTION_CHARACTERISTICS["IMAGE_SCN_MEM_EXECUTE"]
    assert not names[".data"] & pefile.SECTION_CHARACTERISTICS["IMAGE_SCN_MEM_EXECUTE"]
    debug = pe.OPTIONAL_HEADER.DATA_DIRECTORY[6]
    entry = forge.machine.space.read(kernel.base + debug.VirtualAddress, 28)
    record_rva = struct.unpack_from("<I", entry, 20)[0]
    record = forge.machine.space.read(kernel.base + record_rva, 24 + len("ntkrnlmp.pdb") + 1)
    assert record[:4] == b"RSDS" and record[24:].rstrip(b"\0") == b"ntkrnlmp.pdb"
    assert image.truth["pdb"]["guid"] == layout.guid and truth["pdb"]["guid"] == layout.guid


def test_truth_is_json_and_names_every_column(forged):
    truth = json.loads(forged("rootkit", "win10")["truth"].read_text())
    columns = {"Object", "Name", "AllowMultiple", "FoundBy", "Registration", "Routine", "Context", "Busy",
               "UnregisterWaiting", "Module", "Symbol", "Flags", "Landing", "LandingOwner", "requires_scan", "scan_flags"}
    assert all(set(row) == columns for row in truth["rows"])
