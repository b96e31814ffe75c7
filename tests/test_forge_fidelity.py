"""Forged images read back through Volatility's own plugins and helpers, not only ours."""

import json
import struct

import pefile
import pytest

from tests.conftest import BUILTIN_PROFILES, SCENARIO_NAMES, real_isf_params, require_real_isf
from tests.forge.profiles.layout import KNOWN_BUILDS, KernelLayout
from tests.unit.memory import MASK48
from tests.volatility_harness import driverscan_rows, kernel_context, module_rows, read_directory, vol_json, volatility_plugin_rows
from volatility3_plugins.common import crashdump_header

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


def check_inverted_table(paths, fmt, cache):
    """``nt!PsInvertedFunctionTable`` read with Volatility's objects: every image the truth says
    keeps an entry (the kernel first from 8.1 on, the rest sorted by base), each entry's
    ``FunctionTable`` and ``SizeOfTable`` the image's exception directory; an even ``Epoch``, no
    ``Overflow``; on 17763 and later ``RtlpInvertedFunctionTable`` points at it. x86: no table."""
    truth = paths["truth_data"]
    context, kernel_name = kernel_context(paths[fmt], paths["symbols"], cache)
    kernel = context.modules[kernel_name]
    if truth["architecture"] == "x86":
        assert truth["inverted_function_table"] == []
        return
    address = kernel.get_symbol("PsInvertedFunctionTable").address
    if kernel.has_type("_INVERTED_FUNCTION_TABLE"):
        table = kernel.object("_INVERTED_FUNCTION_TABLE", offset=address)
    else:  # 7601's ISF lacks the type: the plugin's supplement table describes it
        from volatility3_plugins.windows.kernelread import symbol_files

        name = symbol_files.load_table(context, "fidelity", "kernel-supplement-x64.json", "supplement")
        table = context.object(name + "!_INVERTED_FUNCTION_TABLE", kernel.layer_name, kernel.offset + address)
    entries = [table.TableEntry[index] for index in range(table.CurrentSize)]
    found = [(int(e.ImageBase) & MASK48, int(e.SizeOfImage)) for e in entries]
    assert found == [(record["base"], record["size"]) for record in truth["inverted_function_table"]]
    keeping = {m["base"] for m in truth["modules"] if m["inverted_table"]}
    assert {base for base, _ in found} == keeping
    bases = [base for base, _ in found]
    assert bases[1:] == sorted(bases[1:]) and (truth["build"] != 7601 or bases == sorted(bases))
    assert table.MaximumSize == 256 and table.Epoch % 2 == 0 and table.Overflow == 0
    modules = {m["base"]: m for m in truth["modules"]}
    for entry, (base, _size) in zip(entries, found):
        rva, size = modules[base]["exception_directory"]
        assert (int(entry.FunctionTable) & MASK48, int(entry.SizeOfTable)) == (base + rva, size)
    if kernel.has_symbol("RtlpInvertedFunctionTable"):
        pointer = kernel.object("pointer", offset=kernel.get_symbol("RtlpInvertedFunctionTable").address)
        assert int(pointer) & MASK48 == (kernel.offset + address) & MASK48


def _mapped_image(layer, base: int, size: int, names) -> bytes:
    """The image at ``base`` as mapped, with only its headers and the sections named read."""
    image = bytearray(size)
    image[:0x1000] = layer.read(base, 0x1000)
    headers = pefile.PE(data=bytes(image[:0x1000]), fast_load=True)
    for section in headers.sections:
        if section.Name.rstrip(b"\0").decode() in names:
            length = (section.Misc_VirtualSize + 0xFFF) & ~0xFFF
            image[section.VirtualAddress : section.VirtualAddress + length] = layer.read(base + section.VirtualAddress, length)
    return bytes(image)


def check_exception_directories(paths, fmt, cache):
    """Each x64 image's exception directory, read through Volatility's layer and parsed by
    pefile: one entry per non-leaf function and per cold fragment, sorted; each primary entry's
    UNWIND_INFO describing MSVC's prologue, each fragment's chained to its function's entry."""
    truth = paths["truth_data"]
    if truth["architecture"] == "x86":
        assert all(m["exception_directory"] is None for m in truth["modules"])
        return
    context, kernel_name = kernel_context(paths[fmt], paths["symbols"], cache)
    layer = context.layers[context.modules[kernel_name].layer_name]
    for module in truth["modules"]:
        image = pefile.PE(data=_mapped_image(layer, module["base"], module["size"], (".rdata", ".pdata")), fast_load=True)
        for section in image.sections:
            section.PointerToRawData = section.VirtualAddress
            section.PointerToRawData_adj = None
            section.SizeOfRawData = max(section.SizeOfRawData, section.Misc_VirtualSize)
            section.section_min_addr = section.section_max_addr = None
        image.parse_data_directories(directories=[pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_EXCEPTION"]])
        entries = image.DIRECTORY_ENTRY_EXCEPTION
        primaries = {f["rva"]: f for f in module["functions"] if not f["leaf"]}
        fragments = {f["fragment"]: f for f in module["functions"] if f["fragment"] is not None}
        assert [e.struct.BeginAddress for e in entries] == sorted(set(primaries) | set(fragments)), module["name"]
        for entry in entries:
            unwind = entry.unwindinfo
            begin = entry.struct.BeginAddress
            if begin in primaries:
                assert entry.struct.EndAddress == begin + primaries[begin]["size"]
                assert (unwind.Version, unwind.Flags, unwind.SizeOfProlog) == (1, 0, 10)
                codes = [(c.struct.CodeOffset, str(c)) for c in unwind.UnwindCodes]
                assert codes == [(10, ".ALLOCSTACK 0x20"), (6, ".PUSHREG RDI"), (5, ".SAVEREG RBX, 0x30")], codes
            else:
                assert unwind.UNW_FLAG_CHAININFO and unwind.FunctionEntry == fragments[begin]["rva"], module["name"]


def check_planted_code(paths, fmt, cache):
    """The evasion plants as capstone decodes the bytes Volatility's layer reads: each gadget
    is the instruction a gadget hunter looks for, found inside another instruction of a
    legitimate function on x64; each stub holds its landing as an immediate."""
    import capstone

    truth = paths["truth_data"]
    x64 = truth["architecture"] == "x64"
    context, kernel_name = kernel_context(paths[fmt], paths["symbols"], cache)
    layer = context.layers[context.modules[kernel_name].layer_name]
    decoder = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if x64 else capstone.CS_MODE_32)
    gadgets = {(None, True): ["jmp rcx"], (0x10, True): ["jmp qword ptr [rcx + 0x10]"],
               (None, False): ["jmp dword ptr [esp + 4]"], (0x10, False): ["mov eax, dword ptr [esp + 4]", "jmp dword ptr [eax + 0x10]"]}
    assert len(truth["code_plants"]) == 4
    for plant in truth["code_plants"]:
        decoded = [f"{i.mnemonic} {i.op_str}".strip() for i in decoder.disasm(layer.read(plant["address"], 32), plant["address"])]
        if plant["argument"] is not None:
            wanted = gadgets[(plant["through"], x64)]
            assert decoded[: len(wanted)] == wanted, decoded
        else:
            landing = plant["landing"] | (0xFFFF000000000000 if x64 else 0)
            assert any(f"{landing:#x}" in text for text in decoded[:3]), (decoded, hex(landing))
    if x64:  # each gadget lies inside an instruction of its function
        for module in truth["modules"]:
            for function in module["functions"]:
                start = module["base"] + function["rva"]
                boundaries = {i.address for i in decoder.disasm(layer.read(start, function["size"]), start)}
                for plant in truth["code_plants"]:
                    if start < plant["address"] < start + function["size"]:
                        assert plant["address"] not in boundaries


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
@pytest.mark.parametrize("scenario", SCENARIO_NAMES + ("evasion",))
def test_volatility_reads_forged_modules_and_directories(forged, vol_cache, scenario, profile, fmt):
    paths = forged(scenario, profile)
    check_modules(paths, fmt, vol_cache)
    check_callback_directory(paths, fmt, vol_cache)
    check_driver_directory(paths, fmt, vol_cache)
    if scenario in ("rootkit", "evasion"):  # DKOM-hidden drivers: in driverscan, not in modules
        check_driver_objects(paths, fmt, vol_cache)
    if scenario == "evasion":
        check_inverted_table(paths, fmt, vol_cache)
        check_exception_directories(paths, fmt, vol_cache)
        check_planted_code(paths, fmt, vol_cache)


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


@pytest.mark.parametrize("profile", BUILTIN_PROFILES)
def test_volatility_reads_the_memory_managers_globals(forged, vol_cache, profile):
    """What the forge writes for the memory manager, read back through Volatility: its own
    ``windows.unloadedmodules`` lists the unloaded driver with its range and unload time;
    ``nt!MmPhysicalMemoryBlock``, read with Volatility's objects of the kernel's ISF, holds the
    RAM's runs, the same the crash dump's header carries; every process of a session has a
    ``Session`` whose ``SessionId`` reads back (what ``windows.modules --dump`` picks its layer by),
    the others none."""
    paths = forged("rootkit", profile)
    truth = paths["truth_data"]
    rows, _warnings = volatility_plugin_rows(paths["raw"], paths["symbols"], vol_cache, "windows.unloadedmodules.UnloadedModules")
    assert [(row["Name"], row["StartAddress"], row["EndAddress"]) for row in rows] == [
        (entry["name"], entry["start"], entry["end"]) for entry in truth["unloaded_drivers"]] != []
    assert all(row["Time"].strftime("%Y-%m-%d %H:%M") == "2024-11-21 14:28" for row in rows)
    unloaded = {module["name"]: module for module in truth["unloaded_modules"]}
    assert all(row["StartAddress"] == unloaded[row["Name"]]["base"] for row in rows)

    context, kernel_name = kernel_context(paths["raw"], paths["symbols"], vol_cache)
    kernel = context.modules[kernel_name]
    block = int(kernel.object("pointer", offset=kernel.get_symbol("MmPhysicalMemoryBlock").address))
    descriptor = kernel.object("_PHYSICAL_MEMORY_DESCRIPTOR", offset=block, absolute=True)
    run_size = kernel.get_type("_PHYSICAL_MEMORY_RUN").size
    first_run = block + kernel.get_type("_PHYSICAL_MEMORY_DESCRIPTOR").relative_child_offset("Run")
    runs = [kernel.object("_PHYSICAL_MEMORY_RUN", offset=first_run + index * run_size, absolute=True)
            for index in range(int(descriptor.NumberOfRuns))]
    runs = [[int(run.BasePage), int(run.PageCount)] for run in runs]
    assert runs == truth["physical_memory_runs"] and int(descriptor.NumberOfPages) == sum(count for _, count in runs)
    with open(paths["dump"], "rb") as handle:
        header = crashdump_header.read_first_header(lambda offset, length: (handle.seek(offset), handle.read(length))[1])
    assert [list(run) for run in header.memory_runs] == runs

    from volatility3.plugins.windows import pslist

    sessions = {}
    for process in pslist.PsList.list_processes(context, kernel_name):
        session = int(process.Session)
        sessions[int(process.UniqueProcessId)] = (
            int(kernel.object("_MM_SESSION_SPACE", offset=session, absolute=True).SessionId) if session else None)
    # The process list holds the running processes; an exited one (freed history) is off it.
    assert sessions == {record["pid"]: record["session"] for record in truth["processes"] if not record["exited"]}
    assert set(sessions.values()) == {None, 0, 1}


@pytest.mark.parametrize("isf", real_isf_params())
def test_real_isf_evasion_reads_back(forged, vol_cache, isf):
    """Every real kernel ISF: the inverted function table through the build's own
    ``_INVERTED_FUNCTION_TABLE`` (the project's supplement table on 7601, whose ISF lacks it),
    each image's exception directory with pefile, the planted code with capstone, the hidden
    driver with driverscan; raw image (the dump holds the same pages: test_crash_dumps)."""
    require_real_isf(isf)
    paths = forged("evasion", isf)
    check_driver_objects(paths, "raw", vol_cache)
    check_inverted_table(paths, "raw", vol_cache)
    check_exception_directories(paths, "raw", vol_cache)
    check_planted_code(paths, "raw", vol_cache)


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
               "UnregisterWaiting", "Module", "Symbol", "Flags", "Landing", "LandingOwner", "Evidence", "requires_scan",
               "scan_flags"}
    assert all(set(row) == columns for row in truth["rows"])
