"""``windows.poolmap`` against the forge's ground truth: its rows are the truth's pool blocks, block
for block, on every built-in profile and real ISF, raw and every crash-dump format; its summary
adds up; it names the block holding an address; it tells which hits of Volatility's own pool
scanners are freed; a damaged heap gives what can be read and one warning.

The rules of the comparison (docs/POOLMAP.md says why): a block of the truth is a row at its
pool header, in its state, pool and allocator, with its tag where the free left the header
intact; or, freed, it lies inside a freed row (a VS chunk merged into the free chunk before it,
a classic block merged on ``ListHeads``), or nothing holds it (its page went back to memory
management). A row the truth does not list is a free VS chunk or free page tail that never held
a block, or a big-pool allocation of the truth's ``big_pool``.
"""

import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from tests.conftest import BUILTIN_PROFILES, real_isf_params, require_real_isf
from tests.forge.image import dump
from tests.volatility_harness import kernel_context, volatility_plugin_rows
from volatility3_plugins.windows.kernelpool.blocks import tag_text

POOLMAP = "windows.poolmap.PoolMap"
#: The truth's pools by allocator: the classic header cannot tell no-execute non-paged pool.
POOLS = {
    "segment_heap": {"nonpaged": "NonPagedPoolNx", "nonpaged_execute": "NonPagedPool", "paged": "PagedPool"},
    "classic": {"nonpaged": "NonPagedPool", "nonpaged_execute": "NonPagedPool", "paged": "PagedPool"},
}
ALLOCATORS = {"lfh": "LFH", "vs": "VS", "page": "classic"}
#: Object blocks the forge writes, by role, and their type.
OBJECT_ROLES = {"callback_object": "Callback", "process_object": "Process", "driver_object": "Driver",
                "type_object": "Type", "directory_object": "Directory"}


def poolmap_rows(image: Path, symbols: Path, cache: Path, **options: Any) -> Tuple[List[Dict[str, Any]], List[str]]:
    return volatility_plugin_rows(image, symbols, cache, POOLMAP, **options)


def shown(tag: str) -> str:
    """A tag of the truth as the plugin prints it (a protected tag's top byte as ``\\xNN``)."""
    return tag_text(tag.encode("latin-1"))


def truth_disagreements(truth: Dict[str, Any], rows: List[Dict[str, Any]]) -> List[str]:
    """Where the rows and the truth's blocks disagree (see the module docstring)."""
    allocator = truth["pool"]["allocator"]
    pools = POOLS[allocator]
    granule = 16 if truth["architecture"] == "x64" else 8
    by_address = {row["Address"]: row for row in rows}
    spans = sorted((row["Address"], row["Address"] + row["Size"], row) for row in rows)
    starts = [span[0] for span in spans]

    def holder(address: int) -> Optional[Dict[str, Any]]:
        import bisect
        index = bisect.bisect_right(starts, address) - 1
        return spans[index][2] if index >= 0 and address < spans[index][1] else None

    wrong: List[str] = []
    for block in truth["blocks"]:
        label = f"{block['role']} {block['tag']!r} at {block['header']:#x} ({block['state']} {block['how'] or ''})"
        row = by_address.get(block["header"])
        if row is None:
            inside = holder(block["header"])
            if block["state"] != "freed" or (inside is not None and inside["State"] != "freed") \
                    or (inside is None and block["header_intact"]):
                wrong.append(f"{label}: no row, held by {inside}")
            continue
        expected = (block["state"], pools[block["pool"]], ALLOCATORS[block["container"]])
        if (row["State"], row["Pool"], row["Allocator"]) != expected:
            wrong.append(f"{label}: row {row}")
        elif block["header_intact"] and row["Tag"] != shown(block["tag"]):
            wrong.append(f"{label}: tag {row['Tag']!r}")
        elif (block["state"] == "allocated" or block["container"] == "lfh") and row["Size"] not in (block["size"], block["size"] + granule):
            # A freed block may have been merged with free neighbours: the row is their range.
            wrong.append(f"{label}: size {row['Size']:#x}, the truth's {block['size']:#x}")
        elif block["role"] in OBJECT_ROLES and block["header_intact"] and row["Type"] != OBJECT_ROLES[block["role"]]:
            wrong.append(f"{label}: object type {row['Type']}")
    listed = {block["header"] for block in truth["blocks"]}
    objects = {block["header"] for block in truth["blocks"] if block["role"] in OBJECT_ROLES}
    big = {entry["va"]: entry for entry in (truth["big_pool"] or {}).get("allocations", [])}
    for address, row in by_address.items():
        if row["Type"] is not None and address not in objects:
            wrong.append(f"row {address:#x}: decodes as a {row['Type']} object, the truth has none there")
        if address in listed:
            continue
        if address in big:
            entry = big[address]
            # A big-page entry keeps the caller's whole _POOL_TYPE (wdm.h: 1 paged, 0x200 no-execute).
            pool = "PagedPool" if entry["pool_type"] & 1 else "NonPagedPoolNx" if entry["pool_type"] & 0x200 else "NonPagedPool"
            if (row["Tag"], row["State"], row["Pool"]) != (shown(entry["tag"]), entry["state"], pool) \
                    or row["Allocator"] not in ("large", "big page"):
                wrong.append(f"big allocation {address:#x}: row {row}, the truth's {entry}")
        elif not (row["State"] == "freed" and row["Tag"] is None and row["Allocator"] in ("VS", "classic")):
            wrong.append(f"row {address:#x} is no block of the truth: {row}")
    missing_big = [va for va in big if va not in by_address]
    if missing_big:
        wrong.append(f"big allocations without a row: {[hex(va) for va in missing_big]}")
    return wrong


def check(paths: Dict[str, Any], fmt: str, cache: Path) -> None:
    rows, warnings = poolmap_rows(paths[fmt], paths["symbols"], cache)
    truth = paths["truth_data"]
    wrong = truth_disagreements(truth, rows)
    assert not wrong, f"{truth['profile']} {fmt}:\n" + "\n".join(wrong[:30])
    assert not [w for w in warnings if "Pool" in w], warnings
    assert [row["Address"] for row in rows] == sorted(row["Address"] for row in rows)


@pytest.mark.parametrize("scenario", ("baseline", "rootkit"))
@pytest.mark.parametrize("profile", BUILTIN_PROFILES)
def test_rows_are_the_truths_blocks_on_every_builtin_profile(forged, vol_cache, scenario, profile):
    paths = forged(scenario, profile)
    check(paths, "raw", vol_cache)


@pytest.mark.parametrize("profile", ("win10", "win7", "win10x86"))
def test_rows_are_the_same_from_every_dump_format(forged_formats, vol_cache, profile):
    paths = forged_formats("rootkit", profile)
    raw, _warnings = poolmap_rows(paths["raw"], paths["symbols"], vol_cache)
    for fmt in [name for name in dump.FORMATS if name in paths and name != "raw"]:
        rows, _warnings = poolmap_rows(paths[fmt], paths["symbols"], vol_cache)
        assert rows == raw, fmt
    check(paths, "raw", vol_cache)


@pytest.mark.parametrize("isf", real_isf_params())
def test_rows_are_the_truths_blocks_on_every_real_isf(forged, vol_cache, isf):
    check(forged("baseline", require_real_isf(isf)), "raw", vol_cache)


def test_filters_and_summary_add_up(forged, vol_cache):
    paths = forged("rootkit", "win10")
    image, symbols = paths["raw"], paths["symbols"]
    rows, _ = poolmap_rows(image, symbols, vol_cache)
    totals: Dict[Tuple[Optional[str], str], Dict[str, int]] = {}
    for row in rows:
        entry = totals.setdefault((row["Tag"], row["Pool"]), {})
        entry[row["State"]] = entry.get(row["State"], 0) + 1
        entry[row["State"] + " bytes"] = entry.get(row["State"] + " bytes", 0) + row["Size"]
    summary, _ = poolmap_rows(image, symbols, vol_cache, summary=True)
    assert {(s["Tag"], s["Pool"]): {key: value for key, value in (
        ("allocated", s["Allocated"]), ("allocated bytes", s["AllocatedBytes"]), ("freed", s["Freed"]),
        ("freed bytes", s["FreedBytes"]), ("unknown", s["Unknown"]), ("unknown bytes", s["UnknownBytes"])) if value}
        for s in summary} == totals
    assert [s["AllocatedBytes"] for s in summary] == sorted((s["AllocatedBytes"] for s in summary), reverse=True)
    chosen, _ = poolmap_rows(image, symbols, vol_cache, tag=["CBR?", "Ca"], state=["freed"], pool=["nonpagednx"])
    assert chosen and chosen == [row for row in rows if row["Tag"] in ("CBRe", "Ca  ") and row["State"] == "freed"
                                 and row["Pool"] == "NonPagedPoolNx"]


def test_address_gives_the_block_holding_it_and_its_neighbours(forged, vol_cache):
    paths = forged("rootkit", "win10")
    truth = paths["truth_data"]
    freed = next(row["Registration"] for row in truth["rows_with_scan"] if row["Flags"] == ["freed"])
    block = next(b for b in truth["blocks"] if b["body"] == freed)
    rows, _ = poolmap_rows(paths["raw"], paths["symbols"], vol_cache, address=[freed, freed + 8, 0x10])
    holds = [row for row in rows if row["Relation"] == "holds"]
    assert [(row["Query"], row["Address"], row["Tag"], row["State"]) for row in holds] == [
        (freed, block["header"], "CBRe", "freed"), (freed + 8, block["header"], "CBRe", "freed")]
    assert [row["Relation"] for row in rows if row["Query"] == 0x10] == ["no block"]
    neighbours = [row for row in rows if row["Query"] == freed and row["Relation"] in ("before", "after")]
    assert neighbours and all(row["Address"] != block["header"] for row in neighbours)
    before = [row for row in neighbours if row["Relation"] == "before"]
    assert all(row["Address"] + row["Size"] <= block["header"] for row in before)


def scanner_json(paths: Dict[str, Any], cache: Path, plugin: str, folder: Path) -> Path:
    """A Volatility scanner's rows as ``-r json`` writes them."""
    rows, _ = volatility_plugin_rows(paths["raw"], paths["symbols"], cache, plugin)
    path = folder / f"{plugin.split('.')[1]}.json"
    path.write_text(json.dumps(rows, default=str))
    return path


def test_join_tells_which_scanner_hits_are_freed(forged, vol_cache, tmp_path):
    """Volatility's psscan, modscan and driverscan report the exited process, the unloaded
    driver's loader entry and its deleted driver object as they report live ones; joined with
    the pool map, exactly those hits are freed."""
    paths = forged("rootkit", "win10")
    truth = paths["truth_data"]
    files = [scanner_json(paths, vol_cache, plugin, tmp_path) for plugin in (
        "windows.psscan.PsScan", "windows.modscan.ModScan", "windows.driverscan.DriverScan")]
    rows, _ = poolmap_rows(paths["raw"], paths["symbols"], vol_cache, join=[str(path) for path in files])
    freed = {row["Query"] for row in rows if row["State"] == "freed"}
    exited = {p["eprocess"] for p in truth["processes"] if p["exited"]}
    unloaded = {m["entry"] for m in truth["unloaded_modules"]}
    deleted = {d["address"] for d in truth["deleted_driver_objects"]}
    assert exited and unloaded and deleted
    assert freed == exited | unloaded | deleted
    assert all(row["Relation"] == "holds" and row["Hit"] for row in rows)
    assert {row["State"] for row in rows if row["Query"] not in freed} == {"allocated"}
    assert len(rows) == sum(len(json.loads(path.read_text())) for path in files)


def test_a_damaged_heap_gives_what_can_be_read_and_one_warning(forged, vol_cache, tmp_path):
    """Zeroed subsegment headers (an LFH and a VS subsegment) and a zeroed delay-free list head:
    the rest of the heap is listed as before, the damaged subsegments as unknown blocks, one
    warning, no traceback."""
    paths = forged("baseline", "win10")
    truth = paths["truth_data"]
    context, kernel = kernel_context(paths["raw"], paths["symbols"], vol_cache)
    layer = context.layers[context.modules[kernel].layer_name]
    lfh = next(b["subsegment"] for b in truth["blocks"] if b["container"] == "lfh")
    vs = next(b["subsegment"] for b in truth["blocks"] if b["container"] == "vs")
    image = tmp_path / "damaged.raw"
    shutil.copy(paths["raw"], image)
    with open(image, "r+b") as handle:
        for address in (lfh, vs):
            handle.seek(layer.translate(address)[0])
            handle.write(bytes(0x40))
    rows, warnings = poolmap_rows(image, paths["symbols"], vol_cache)
    unknown = [row for row in rows if row["State"] == "unknown"]
    assert {row["Address"] for row in unknown} == {lfh, vs}
    damaged = {lfh, vs}
    intact = [b for b in truth["blocks"] if b["subsegment"] not in damaged]
    assert not truth_disagreements(dict(truth, blocks=intact), [r for r in rows if r["State"] != "unknown"])
    assert len([w for w in warnings if "partly unreadable" in w]) == 1, warnings


def test_summary_of_a_server_heap_counts_every_noise_block(tmp_path, vol_cache):
    """``busy_server`` scaled down (256 MiB of RAM, a 16 MiB procedural heap of noise): the
    summary counts every block the forge planted, by allocator state, in the non-paged heap."""
    from tests.forge.scenarios import forge_scenario

    image = forge_scenario("busy_server", "win10", memory_size=256 << 20)
    paths = dict(image.write(tmp_path, formats=("raw",)), truth_data=image.truth)
    truth = image.truth
    noise = truth["notes"]["busy"]["heap_noise"]
    summary, warnings = poolmap_rows(paths["raw"], paths["symbols"], vol_cache, summary=True, pool=["NonPagedNx"])
    assert not warnings
    planted = [b for b in truth["blocks"] if b["pool"] == "nonpaged"]
    big = [entry for entry in truth["big_pool"]["allocations"] if entry["pool"] == "nonpaged" and entry["state"] == "allocated"]
    allocated = sum(1 for b in planted if b["state"] == "allocated") + len(big) + noise["lfh_blocks"] + noise["vs_blocks"]
    assert sum(row["Allocated"] for row in summary) == allocated
    freed_lfh = sum(1 for b in planted if b["state"] == "freed" and b["container"] == "lfh") + noise["lfh_freed"]
    listing, _ = poolmap_rows(paths["raw"], paths["symbols"], vol_cache, pool=["NonPagedNx"], state=["freed"])
    assert sum(1 for row in listing if row["Allocator"] == "LFH") == freed_lfh
    assert {row["Pool"] for row in summary} == {"NonPagedPoolNx"}
