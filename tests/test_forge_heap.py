"""The forge's pool read back through Volatility's own objects of the kernel's ISF: every block of
the ground truth is where its allocator's metadata says, in the state the truth records.

Segment heap builds (18362 and later, the ``win10`` and ``win10x86`` profiles): ``nt!ExPoolState``
down to segment signatures, range descriptors, decoded LFH offsets and bitmaps, VS chunk headers,
the VS delay-free list and free tree. Classic builds: the lookaside lists of every processor from
``nt!KiProcessorBlock``, the descriptors' pending lists and ``ListHeads``, the pool pages' header
chains. See tests/volatility_heap.py for the walks and the rules they follow.
"""

import copy
from typing import Any, Dict, Iterable, List

import pytest

from tests.conftest import BUILTIN_PROFILES, real_isf_params, require_real_isf
from tests.forge.memory.physical import PAGE_SIZE
from tests.forge.scenarios import forge_scenario
from tests.volatility_harness import kernel_context
from tests.volatility_heap import PoolReading, read_classic_pool, read_segment_heap

FORMATS = ("raw", "dump")


def read_pool(paths: Dict[str, Any], fmt: str, cache) -> PoolReading:
    truth = paths["truth_data"]
    context, kernel = kernel_context(paths[fmt], paths["symbols"], cache)
    if truth["pool"]["allocator"] == "segment_heap":
        return read_segment_heap(context, kernel, truth["build"])
    return read_classic_pool(context, kernel, {block["header"] & ~0xFFF for block in truth["blocks"]})


def mismatches(truth_blocks: List[Dict[str, Any]], reading: PoolReading, bulk: Iterable[int] = ()) -> List[str]:
    """What the metadata says of each truth block, where it disagrees with the truth; the
    blocks of ``bulk`` subsegments (bulk noise, counted but not listed by the truth) aside."""
    wrong = []
    for block in truth_blocks:
        header, tag, how = block["header"], block["tag"].encode("latin-1"), block["how"]
        found = reading.blocks.get(header)
        label = f"{block['role']} {block['tag']!r} at {header:#x} ({block['state']} {how or ''} in {block['container']})"
        if block["state"] == "allocated":
            ok = found is not None and found.allocated and found.tag == tag and found.size == block["size"] \
                and found.container == block["container"]
        elif how in ("vs", "list") and found is None or how == "vs":
            # Freed into a free range: its header heads that range or lies inside it.
            ok = reading.free_range_of(header) == how or not block["header_intact"] and how == "list"
        else:
            ok = found is not None and not found.allocated and found.how == how
            if ok and block["header_intact"]:
                ok = found.tag == tag
        if not ok:
            wrong.append(f"{label}: read back as {found}")
    truth_by_header = {block["header"]: block for block in truth_blocks}
    bulk = set(bulk)
    for header, found in reading.blocks.items():
        if found.subsegment in bulk:
            continue
        if found.allocated or found.how in ("lookaside", "pending", "vs_delay"):
            expected = truth_by_header.get(header)
            state = "allocated" if found.allocated else "freed"
            if expected is None or expected["state"] != state or (not found.allocated and expected["how"] != found.how):
                wrong.append(f"{found} is not in the truth as such")
    return wrong


def check_pool(paths: Dict[str, Any], fmt: str, cache) -> PoolReading:
    reading = read_pool(paths, fmt, cache)
    assert not reading.problems, "\n".join(reading.problems[:40])
    truth = paths["truth_data"]
    wrong = mismatches(truth["blocks"], reading, truth["pool"].get("bulk_subsegments", ()))
    assert not wrong, "\n".join(wrong[:40])
    return reading


def misstated(truth_blocks: List[Dict[str, Any]], how: str) -> List[Dict[str, Any]]:
    """The truth with one block of ``how`` (or the first allocated one) claimed otherwise."""
    changed = copy.deepcopy(truth_blocks)
    victim = next(block for block in changed if block["how"] == how or how == "allocated" and block["state"] == how)
    if victim["state"] == "allocated":
        victim.update(state="freed", how="lfh" if victim["container"] == "lfh" else "list")
    else:
        victim.update(state="allocated", how=None)
    return changed


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("profile", BUILTIN_PROFILES)
def test_pool_reads_back_as_the_truth_says(forged, vol_cache, profile, fmt):
    paths = forged("baseline", profile)
    reading = check_pool(paths, fmt, vol_cache)
    counts = reading.counts
    blocks = paths["truth_data"]["blocks"]
    if paths["truth_data"]["pool"]["allocator"] == "segment_heap":
        assert counts["lfh_subsegments"] and counts["vs_subsegments"] and counts["vs_delayed"] and counts["vs_tree_nodes"]
        hows = ("allocated", "lfh", "vs", "vs_delay")
    else:
        assert counts["lookaside_entries"] and counts["pending_entries"] and counts["list_entries"]
        hows = ("allocated", "lookaside", "pending", "list")
    # The comparison can fail: a truth that misstates one block of each kind is caught.
    for how in hows:
        assert mismatches(misstated(blocks, how), reading), how


@pytest.mark.parametrize("isf", real_isf_params())
def test_real_isf_pool_reads_back_as_the_truth_says(forged, vol_cache, isf):
    require_real_isf(isf)
    paths = forged("baseline", isf)
    for fmt in FORMATS:
        check_pool(paths, fmt, vol_cache)


@pytest.mark.parametrize("scenario", ("busy", "busy_server"))
def test_busy_generator_on_a_small_machine(tmp_path, vol_cache, scenario):
    """The busy scenarios at 64 MiB: their heap noise reads back through Volatility with no
    inconsistency, most of RAM is mapped and in use, no mapped page is all zeros, decoys are
    there, and the heap's noise is not stored: produced when the image is written (the 4 and
    8 GiB images are the benchmark's, never built here)."""
    image = forge_scenario(scenario, "win10", memory_size=64 << 20)
    paths = dict(image.write(tmp_path, formats=("dump",)), truth_data=image.truth)
    notes = image.truth["notes"]["busy"]
    reading = check_pool(paths, "dump", vol_cache)
    heap = notes["heap_noise"]
    bulk = set(image.truth["pool"]["bulk_subsegments"])
    in_bulk = [block for block in reading.blocks.values() if block.subsegment in bulk]
    assert sum(1 for block in in_bulk if block.container == "lfh" and block.allocated) == heap["lfh_blocks"]
    assert sum(1 for block in in_bulk if block.container == "vs" and block.allocated) == heap["vs_blocks"]
    physical = image.forge.machine.physical
    space = image.forge.machine.space
    # Each bulk subsegment's first page holds the most metadata (header, bitmap, list links):
    # even it is produced when written, the metadata laid over it, not stored.
    first_pages = [space.translate(address) // PAGE_SIZE for address in bulk]
    assert first_pages and not any(physical.is_stored(frame) for frame in first_pages), \
        "the heap's noise pages are procedural, not stored"
    frames = physical.size // PAGE_SIZE
    assert notes["filler_pages"] > 0.6 * frames and notes["decoy_pages"] > 0  # the kernel image takes its share at 64 MiB
    region = notes["filler_region"]
    for page in range(0, notes["filler_pages"], 97):
        assert any(space.read(region + page * PAGE_SIZE, PAGE_SIZE))
