"""What another plugin can use of this project, on forged images: the run context and the pool
map without any callback code, and each public classmethod of ``windows.callbackobjects``
against the forge's ground truth (the classmethods are the path ``run`` takes)."""

import json
import subprocess
import sys
import textwrap
from typing import Any, Dict, List

import pytest

from tests.volatility_harness import REPO, kernel_context

#: Modules of ours that a plugin reading only the kernel and its pool must not load.
CALLBACK_SIDE = ("callback_objects", "callbackobjects", "volatility3_plugins.schema", "volatility3_plugins.fleet")

POOL_MAP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    from tests.volatility_harness import kernel_context_without_our_plugins

    image, symbols, cache = (Path(arg) for arg in sys.argv[1:4])
    context, kernel_name = kernel_context_without_our_plugins(image, symbols, cache)

    from volatility3_plugins.windows.kernelpool.maps import open_pool_map
    from volatility3_plugins.windows.kernelread.context import KernelContext

    kernel = KernelContext(context, kernel_name)
    pool_map = open_pool_map(kernel)
    regions = pool_map.regions() or []
    headers = [int(header) for header in sys.argv[4:]]
    print(json.dumps({
        "name": pool_map.name,
        "complete": pool_map.complete,
        "regions": len(regions),
        "states": [str(pool_map.state(header)) for header in headers],
        "ours": sorted(name for name in sys.modules if name.startswith("volatility3_plugins")
                       or name.startswith("volatility3.plugins.")),
    }))
    """
)


def test_another_plugin_builds_the_run_context_and_the_pool_map_without_callback_code(forged, vol_cache):
    paths = forged("baseline", "win10")
    truth = paths["truth_data"]
    nonpaged = [block for block in truth["blocks"] if block["pool"] in ("nonpaged", "nonpaged_execute")]
    allocated = [block["header"] for block in nonpaged if block["state"] == "allocated"]
    # A VS block on the delay-free list still decodes allocated: the reader reads that list.
    freed = [block["header"] for block in nonpaged if block["state"] == "freed"]
    assert allocated and freed and any(block["how"] == "vs_delay" for block in nonpaged), "the forge plants all three"
    result = subprocess.run(
        [sys.executable, "-c", POOL_MAP_SCRIPT, str(paths["raw"]), str(paths["symbols"]), str(vol_cache)]
        + [str(header) for header in allocated + freed],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    found = json.loads(result.stdout.splitlines()[-1])
    loaded = [name for name in found["ours"] if any(part in name for part in CALLBACK_SIDE)]
    assert loaded == [], f"callback code loaded by the run context and the pool map: {loaded}"
    assert found["name"] == "segment heap" and found["complete"] and found["regions"] > 0
    assert found["states"] == ["allocated"] * len(allocated) + ["freed"] * len(freed)


def _rows(truth: Dict[str, Any]) -> List[Dict[str, Any]]:
    """What a default (scanning) run prints, by the forge."""
    return truth["rows_with_scan"]


def test_each_classmethod_against_the_ground_truth(forged, vol_cache):
    paths = forged("rootkit", "win10")
    truth = paths["truth_data"]
    context, name = kernel_context(paths["raw"], paths["symbols"], vol_cache)  # imports the plugins
    from volatility3.plugins.windows.callbackobjects import CallbackObjects
    from volatility3.plugins.windows.kernelpool.state import BlockState

    kernel = CallbackObjects.build_kernel_context(context, name, "plugins.ReuseTest")
    assert kernel.build_number == truth["build"] and kernel.pointer_size == 8
    listed_modules = sorted(module["name"] for module in truth["modules"] if module["in_module_list"])
    assert sorted(module.name for module in kernel.loaded_modules.modules) == listed_modules

    scan = CallbackObjects.scan_pool(context, name, kernel=kernel)
    rows = _rows(truth)
    assert scan.ran
    assert {block.address for block in scan.objects} == {row["Object"] for row in rows if "scan" in row["FoundBy"]}

    objects = CallbackObjects.list_callback_objects(context, name, scan=scan, kernel=kernel)
    want = {row["Object"]: (row["Name"], "+".join(row["FoundBy"]), row["AllowMultiple"]) for row in rows}
    assert {record.address: (record.name if isinstance(record.name, str) else None, record.found_by,
                             record.allow_multiple) for record in objects} == want
    assert [record.address for record in objects] == sorted(want)

    registrations = {row["Registration"]: row for row in rows if row["Registration"] is not None}
    linked = set()
    for record in objects:
        listed = CallbackObjects.list_registrations(context, name, record, kernel=kernel)
        assert listed.complete
        for registration in listed.registrations:
            row = registrations[registration.address]
            assert (row["Object"], row["Routine"], row["Context"]) == (
                record.address, registration.routine, registration.context)
            linked.add(registration.address)

    loose = CallbackObjects.list_loose_registrations(context, name, objects, scan, kernel=kernel)
    assert loose == CallbackObjects.list_loose_registrations(context, name, objects, scan, kernel=kernel, linked=linked)
    assert not linked & {registration.address for registration, _state in loose}
    assert linked | {registration.address for registration, _state in loose} == set(registrations)
    for registration, state in loose:
        row = registrations[registration.address]
        assert (row["Object"], row["Routine"]) == (registration.callback_object, registration.routine)
        assert ("freed" in row["Flags"]) == (state == BlockState.FREED), row
    assert any(state == BlockState.FREED for _registration, state in loose)
    assert any("orphan_registration" in registrations[r.address]["Flags"] for r, _state in loose)


@pytest.mark.parametrize("profile", ["win10", "win7", "win10x86", "win7x86"])
def test_block_containing_names_each_block_of_the_truth(forged, vol_cache, profile):
    """The pool map's ``block_containing``: for an address inside each non-paged block the forge
    wrote, the block's pool header, tag and allocation state, on the segment heap (LFH and VS)
    and the classic pool (page header chains), x64 and x86. Freed blocks whose free changed the
    chain or the chunk (a VS chunk merged, a classic block merged or on ListHeads) are left out:
    there the allocator holds another block now."""
    paths = forged("baseline", profile)
    truth = paths["truth_data"]
    context, name = kernel_context(paths["raw"], paths["symbols"], vol_cache)
    from volatility3.plugins.windows.kernelpool.maps import open_pool_map
    from volatility3.plugins.windows.kernelread.context import KernelContext

    pool_map = open_pool_map(KernelContext(context, name))
    kept = {"allocated": (None,), "freed": ("lfh", "lookaside", "pending")}
    blocks = [block for block in truth["blocks"] if block["pool"] in ("nonpaged", "nonpaged_execute")
              and block["container"] != "big" and block["header_intact"] and block["how"] in kept[block["state"]]]
    assert {block["state"] for block in blocks} == {"allocated", "freed"}
    for block in blocks:
        inside = block["body"] + (block["size"] - (block["body"] - block["header"])) // 2
        found = pool_map.block_containing(inside)
        assert found is not None, block
        assert (found.address, found.tag.decode("latin-1"), str(found.state)) == (block["header"], block["tag"], block["state"]), block
    assert pool_map.block_containing(truth["kernel_base"] + 0x1000) is None  # an image, not pool
