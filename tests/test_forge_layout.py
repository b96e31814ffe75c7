"""The forge's seed: the same seed gives the same image, another seed another layout of the same
inventory (physical frames, KASLR bases, pool placement, noise contents). No Volatility here:
these read the forge's own records (the fidelity tests read the images through Volatility)."""

from collections import Counter
from typing import Any, Dict, List

import pytest

from tests.forge.memory.machine import KERNEL_ALIGNMENT_WIN10, WIN10_IMAGE_RANGE, WIN7_KERNEL_RANGE, AddressPlan, streams
from tests.forge.memory.physical import PAGE_SIZE
from tests.forge.profiles.layout import KernelLayout
from tests.forge.scenarios import forge_scenario


def inventory(truth: Dict[str, Any]) -> Dict[str, Any]:
    """What was planted, without where: rows without addresses, modules, blocks by kind."""
    address_columns = {"Object", "Registration", "Routine", "Context"}

    def row(entry: Dict[str, Any]) -> tuple:
        return tuple(sorted((key, str(value)) for key, value in entry.items() if key not in address_columns))

    return {
        "rows": sorted(map(row, truth["rows_with_scan"])),
        "modules": [(m["name"], m["size"], m["in_module_list"]) for m in truth["modules"]],
        "unloaded": [(m["name"], m["size"]) for m in truth["unloaded_modules"]],
        "blocks": Counter((b["role"], b["size"], b["pool"], b["state"]) for b in truth["blocks"]),
        "directory": truth["callback_directory"],
    }


@pytest.fixture(scope="module")
def seeded() -> Dict[int, Any]:
    return {seed: forge_scenario("rootkit", "win10", seed=seed) for seed in (1, 2)}


def test_same_seed_same_image(seeded):
    again = forge_scenario("rootkit", "win10", seed=1)
    assert again.truth == seeded[1].truth
    physical, other = again.forge.machine.physical, seeded[1].forge.machine.physical
    assert physical.page_numbers() == other.page_numbers()
    assert all(physical.page_bytes(n) == other.page_bytes(n) for n in physical.page_numbers())


def test_another_seed_moves_everything_but_the_inventory(seeded):
    first, second = seeded[1].truth, seeded[2].truth
    assert inventory(first) == inventory(second)
    assert first["kernel_base"] != second["kernel_base"]
    assert {m["base"] for m in first["modules"]}.isdisjoint({m["base"] for m in second["modules"]})
    assert [b["header"] for b in first["blocks"]] != [b["header"] for b in second["blocks"]]
    assert first["pool"]["heaps"] != second["pool"]["heaps"]
    frames = [seeded[seed].forge.machine.space.translate(seeded[seed].forge.kernel.base) for seed in (1, 2)]
    assert frames[0] != frames[1]


@pytest.mark.parametrize("profile", ["win10", "win7"])
def test_kernel_base_in_the_loader_range(profile):
    layout = KernelLayout.builtin(profile)
    bases = {AddressPlan(layout, streams(seed, "layout")).kernel_base for seed in range(1, 50)}
    start, span = WIN10_IMAGE_RANGE if profile == "win10" else WIN7_KERNEL_RANGE
    assert len(bases) > 40 and all(start <= base < start + span for base in bases)
    assert all(base % (KERNEL_ALIGNMENT_WIN10 if profile == "win10" else PAGE_SIZE) == 0 for base in bases)


def test_frames_are_scattered(seeded):
    """Virtual neighbours are almost never physical neighbours, as on a machine that has run."""
    forge = seeded[1].forge
    space = forge.machine.space
    pages: List[int] = sorted({b["header"] & ~(PAGE_SIZE - 1) for b in seeded[1].truth["blocks"]})
    pairs = [(page, page + PAGE_SIZE) for page in pages if page + PAGE_SIZE in set(pages)]
    assert len(pairs) >= 20
    adjacent = sum(1 for a, b in pairs if space.translate(b) - space.translate(a) == PAGE_SIZE)
    assert adjacent < len(pairs) // 10


@pytest.mark.parametrize("scenario", ["baseline", "rootkit", "rootkit_unlinked", "corrupt", "scale"])
def test_freed_history_in_every_scenario(forged, scenario):
    for profile in ("win7", "win10"):
        truth = forged(scenario, profile)["truth_data"]
        freed = Counter(b["role"] for b in truth["blocks"] if b["state"] == "freed")
        assert freed["registration"] >= 6 and freed["callback_object"] == 1 and freed["module_entry"] == 1
        rows = [row for row in truth["rows_with_scan"] if "freed" in row["Flags"]]
        assert len(rows) >= 6 and all(row["Flags"] == ["freed"] for row in rows)
        assert any(row["Module"] is None for row in rows) and any(row["Module"] for row in rows)
        # The deleted object and the unloaded driver's entry give no row at all.
        assert len(truth["deleted_callback_objects"]) == 1 and len(truth["unloaded_modules"]) == 1
        assert not set(truth["deleted_callback_objects"]) & {row["Object"] for row in truth["rows_with_scan"]}
