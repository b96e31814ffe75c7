"""Imperfect memory (issue 9): a broken walk or a missing page is never evidence, and an image
that cannot support a verdict says so with a non-zero exit.

Each case damages a freshly forged image (``tests/forge/stories/damage.py``) and checks the plugin's
rows against the undamaged ground truth: damage never adds a suspicious flag, every object the
damage did not touch is still reported, and what it touched carries the informational
``unreadable`` / ``list_incomplete`` where it could not be judged.
"""

import json
import random

import pytest

from tests.conftest import real_isf_params, require_real_isf
from tests.forge.profiles.layout import KernelLayout
from tests.forge.scenarios import forge_scenario
from tests.forge.stories.damage import Damage, truncate, untouched_rows, write_mismatched_symbols
from tests.test_plugin_truth import PLUGIN, SUSPICIOUS
from tests.volatility_harness import run_vol


MASK48 = (1 << 48) - 1


def forge(scenario, profile):
    image = forge_scenario(scenario, profile)
    return image, Damage(image.forge)


def run(image, damage, tmp_path, cache, fmt="raw", *args):
    paths = image.write(tmp_path / "image", formats=(fmt,))
    result = run_vol(paths[fmt], paths["symbols"], PLUGIN, *args, cache=cache)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result


def rows_of(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def flags_of(row):
    return set(filter(None, row["Flags"].split(",") if isinstance(row["Flags"], str) else row["Flags"]))


def key(row):
    return row["Object"], row["Registration"]


def assert_damage_never_accuses(rows, truth_rows, damage):
    """Damage adds no suspicious flag to any row, nothing untouched reads as unreadable, and
    every object the damage did not touch is still reported."""
    expected = {key(row): flags_of(row) for row in truth_rows}
    for row in rows:
        added = (flags_of(row) & SUSPICIOUS) - expected.get(key(row), set())
        assert not added, (row, damage.log)
        if row["Object"] not in damage.touched_objects and row["Registration"] not in damage.touched_registrations:
            assert "unreadable" not in flags_of(row), (row, damage.log)
    reported = {row["Object"] for row in rows}
    missing = {row["Object"] for row in untouched_rows(truth_rows, damage)} - reported
    assert not missing, ([hex(m) for m in missing], damage.log)


# -- fixed cases --------------------------------------------------------------------------


def test_zeroed_page_under_an_object(tmp_path, vol_cache):
    image, damage = forge("baseline", "win10")
    power = next(c for c in image.forge.callbacks.callback_objects if c.name == "PowerState")
    damage.zero_page(power.address)
    rows = rows_of(run(image, damage, tmp_path, vol_cache))
    assert_damage_never_accuses(rows, image.truth["rows_with_scan"], damage)
    zeroed = [row for row in rows if row["Object"] == power.address & MASK48]
    assert [row for row in zeroed if row["Registration"] is None and flags_of(row) == {"unreadable"}]
    assert all("directory" in row["FoundBy"] for row in zeroed)  # its directory entry is intact
    # Its registrations, now on no list that can be walked, are loose: never orphans.
    assert all(flags_of(row) <= {"unreadable", "list_incomplete", "freed"} for row in zeroed)


def test_zeroed_page_under_a_registration(tmp_path, vol_cache):
    """A page holding registrations (and no callback object) is lost: the lists still reach
    those registrations (their neighbours point at them), which read as zeros: unreadable."""
    image, damage = forge("baseline", "win10")
    object_pages = set().union(*(damage.object_pages(c) for c in image.forge.callbacks.callback_objects))
    registration = next(r for c in image.forge.callbacks.callback_objects for r in c.registrations
                        if r.linked and not damage.registration_pages(r) & object_pages)
    damage.zero_page(registration.address)
    rows = rows_of(run(image, damage, tmp_path, vol_cache))
    assert_damage_never_accuses(rows, image.truth["rows_with_scan"], damage)
    zeroed = [row for row in rows if row["Registration"] == registration.address & MASK48]
    assert zeroed and all(flags_of(row) == {"unreadable"} for row in zeroed)


def test_zeroed_name_of_a_fixed_registrant(tmp_path, vol_cache):
    """The page under a driver's BaseDllName is lost: its routines still lie in its range, but
    an owner without a name is no evidence of an unexpected registrant on an object whose
    registrants are fixed (mssecflt.sys on the PatchGuard channel)."""
    image, damage = forge("baseline", "win10")
    mssecflt = next(m for m in image.forge.loader.modules if m.name.lower() == "mssecflt.sys")
    damage.zero_page(mssecflt.blocks[2].body)
    rows = rows_of(run(image, damage, tmp_path, vol_cache))
    assert_damage_never_accuses(rows, image.truth["rows_with_scan"], damage)
    nameless = [row for row in rows if row["Routine"] is not None and mssecflt.contains(row["Routine"])]
    assert nameless and all(row["Module"] is None for row in nameless)


def test_zeroed_page_under_the_list_head(tmp_path, vol_cache):
    """The kernel page holding nt!ExpCallbackListHead (and the ExCb* globals) is lost: no object
    is reached by the list, none may be called unlinked."""
    image, damage = forge("baseline", "win10")
    layout = image.forge.layout
    damage.zero_page(image.forge.kernel.base + layout.symbol("ExpCallbackListHead"))
    result = run(image, damage, tmp_path, vol_cache)
    rows = rows_of(result)
    assert_damage_never_accuses(rows, image.truth["rows_with_scan"], damage)
    assert all("list" not in row["FoundBy"].split("+") for row in rows)
    assert all("list_incomplete" in flags_of(row) for row in rows if "freed" not in flags_of(row))
    assert "list incomplete" in result.stderr and "Evidence degraded (list incomplete" in result.stderr
    assert {row["Evidence"] for row in rows} == {"degraded"}


def test_global_list_cut_with_the_ring_intact_is_recovered_by_blink(tmp_path, vol_cache):
    image, damage = forge("baseline", "win10")
    listed = [c for c in image.forge.callbacks.callback_objects if c.in_callback_list]
    damage.cut_link(listed[5].address + damage.callback_list_offset)  # a Flink lost to smear
    rows = rows_of(run(image, damage, tmp_path, vol_cache))
    assert sorted(map(key, rows)) == sorted(map(key, image.truth["rows_with_scan"]))
    assert not any(flags_of(row) & ({"list_incomplete", "unlinked_object"}) for row in rows)


def test_global_list_cut_both_ways(tmp_path, vol_cache):
    """A Flink and, further on, a Blink cut: the objects between the cuts are reached by no
    walk; they are list_incomplete, never unlinked_object."""
    image, damage = forge("baseline", "win10")
    listed = [c for c in image.forge.callbacks.callback_objects if c.in_callback_list]
    pointer = image.forge.layout.pointer_size
    damage.cut_link(listed[3].address + damage.callback_list_offset)
    damage.cut_link(listed[8].address + damage.callback_list_offset + pointer, image.forge.unmapped_address)
    rows = rows_of(run(image, damage, tmp_path, vol_cache))
    assert_damage_never_accuses(rows, image.truth["rows_with_scan"], damage)
    between = {c.address & MASK48 for c in listed[4:8]}
    rows_between = [row for row in rows if row["Object"] in between and "freed" not in flags_of(row)]
    assert rows_between and all(flags_of(row) == {"list_incomplete"} for row in rows_between)
    assert not any("unlinked_object" in flags_of(row) for row in rows)


def test_truncated_dump_fails_loudly(tmp_path, vol_cache):
    image, damage = forge("baseline", "win10")
    paths = image.write(tmp_path / "image", formats=("dump",))
    truncate(paths["dump"], 0.5)
    for mode in ((), ("--no-scan",)):
        result = run_vol(paths["dump"], paths["symbols"], PLUGIN, *mode, cache=vol_cache)
        assert result.returncode != 0, result.stdout[-2000:]
        assert "Traceback" not in result.stderr
        assert "cannot give a verdict" in result.stderr and "truncated" in result.stderr
        assert not result.stdout.strip().strip("[]").strip()


def assert_refused_with_other_symbols(tmp_path, profile, other: KernelLayout) -> None:
    """The image of ``profile`` read with ``other``'s tables under its own PDB GUID: refused,
    with the symbol table named as the cause, no traceback."""
    image = forge_scenario("baseline", profile)
    paths = image.write(tmp_path / "image", formats=("raw",))
    write_mismatched_symbols(image, other, paths["symbols"])
    result = run_vol(paths["raw"], paths["symbols"], PLUGIN, cache=tmp_path / "cache")
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr
    assert "symbol table" in result.stderr


@pytest.mark.parametrize("profile,other", [("win10", "win7"), ("win7", "win10"), ("win10x86", "win7x86")])
def test_mismatched_symbol_table_fails_loudly(tmp_path, profile, other):
    assert_refused_with_other_symbols(tmp_path, profile, KernelLayout.builtin(other))


@pytest.mark.parametrize("isf", real_isf_params())
def test_mismatched_real_symbol_table_fails_loudly(tmp_path, isf):
    """A real build's image read with another real build's tables."""
    isf = require_real_isf(isf)
    pointer_size = KernelLayout.from_isf(isf).pointer_size
    other = next(p.values[0] for p in real_isf_params()
                 if p.values[0] != isf and KernelLayout.from_isf(p.values[0]).pointer_size == pointer_size)
    assert_refused_with_other_symbols(tmp_path, isf, KernelLayout.from_isf(other))


def test_clean_image_ends_with_a_verdict_line_even_when_quiet(tmp_path, vol_cache):
    image, damage = forge("rootkit", "win10")
    result = run(image, damage, tmp_path, vol_cache)
    verdicts = [line for line in result.stderr.splitlines() if "Verdict:" in line]
    assert len(verdicts) == 1
    assert "suspicious rows (outside_modules" in verdicts[0] and "routes: module list complete" in verdicts[0]
    assert "list complete" in verdicts[0] and "scan complete" in verdicts[0]


# -- damaged pool metadata ----------------------------------------------------------------


def expected_with_unknown_frees(truth):
    """The truth's rows when no free can be told from the metadata: freed rows become unknown,
    and the deleted callback objects, which the scan still finds, are rows of unknown state."""
    expected = {key(row): ({"allocation_unknown"} if row["Flags"] == ["freed"] else set(row["Flags"]))
                for row in truth["rows_with_scan"]}
    for deleted in truth["deleted_callback_objects"]:
        expected[(deleted, None)] = {"allocation_unknown", "not_in_directory"}
    return expected


def test_smeared_page_segment_signature_falls_back_to_the_kernel_half(tmp_path, vol_cache):
    """A page segment whose signature no longer validates (smear, or tampering with the heap's
    own metadata): the scan reads the whole kernel half instead, blocks of that segment are of
    unknown allocation, and nothing is accused."""
    image, damage = forge("baseline", "win10")
    heap = next(h for h in image.truth["pool"]["heaps"] if h["pool"] == "nonpaged")
    segment = heap["segments"][0]
    signature = segment + image.forge.layout.offset_of("_HEAP_PAGE_SEGMENT", "Signature")
    damage.cut_link(signature, 0x4141414141414141)
    result = run(image, damage, tmp_path, vol_cache)
    rows = rows_of(result)
    assert_damage_never_accuses(rows, image.truth["rows_with_scan"], damage)
    assert "metadata is incomplete: scanning the whole kernel half" in result.stderr
    unknown = expected_with_unknown_frees(image.truth)
    known = {key(row): set(row["Flags"]) for row in image.truth["rows_with_scan"]}
    for row in rows:
        # In the smeared segment blocks are unknown; elsewhere the metadata still tells.
        assert flags_of(row) in (unknown[key(row)], known.get(key(row))), row
    assert any("allocation_unknown" in flags_of(row) for row in rows)


def test_lost_heap_keys_make_every_free_unknown(tmp_path, vol_cache):
    """The page of the heap globals (HeapKey, LfhKey) is lost: no page segment validates, every
    scanned block is of unknown allocation, and the freed history is allocation_unknown."""
    image, damage = forge("baseline", "win10")
    damage.zero_page(image.truth["pool"]["heap_globals"])
    result = run(image, damage, tmp_path, vol_cache)
    rows = rows_of(result)
    assert_damage_never_accuses(rows, image.truth["rows_with_scan"], damage)
    assert {key(row): flags_of(row) for row in rows} == expected_with_unknown_frees(image.truth)


# -- randomised ---------------------------------------------------------------------------

#: Seeded trials: each damages one to three structures of a scenario (see Damage.random).
TRIALS = [
    (seed, scenario, profile)
    for seed, (scenario, profile) in enumerate(
        [("baseline", "win10"), ("rootkit", "win10"), ("baseline", "win7"), ("rootkit", "win7x86"),
         ("corrupt", "win10"), ("baseline", "win10x86"), ("rootkit_unlinked", "win10"), ("baseline", "win7x86nopae")] * 2
    )
]


@pytest.mark.parametrize("seed,scenario,profile", TRIALS)
def test_random_damage_never_accuses(tmp_path, vol_cache, seed, scenario, profile):
    """Sixteen seeded trials, about two seconds each."""
    rng = random.Random(seed)
    image, damage = forge(scenario, profile)
    damage.at_random(rng, rng.randint(1, 3))
    result = run(image, damage, tmp_path, vol_cache)
    if result.returncode != 0:
        # Refusing is right only with the reason said, never silently.
        assert "cannot give a verdict" in result.stderr, (damage.log, result.stderr[-2000:])
        return
    assert_damage_never_accuses(json.loads(result.stdout), image.truth["rows_with_scan"], damage)


# -- code, exception directories, the inverted function table (issue 18) -------------------


def verdict_routes(result):
    line = next(line for line in result.stderr.splitlines() if "Verdict:" in line)
    return line.split("routes: ", 1)[1]


def test_zeroed_code_page_under_a_routine(tmp_path, vol_cache):
    """The page of ndis.sys holding three registered routines and the jmp rcx gadget reads as
    zeros: no routine there can be judged by its code (the gadget's row keeps what the exception
    directory says, mid_function, and loses trampoline and its landing); the code route is
    incomplete; nothing untouched gains a flag."""
    image, damage = forge("evasion", "win10")
    ndis = next(m for m in image.forge.loader.modules if m.name == "ndis.sys")
    gadget = ndis.code_address("ndisBindUnbindCallback", "argument")
    damage.zero_page(gadget)
    result = run(image, damage, tmp_path, vol_cache)
    rows = rows_of(result)
    assert_damage_never_accuses(rows, image.truth["rows_with_scan"], damage)
    row = next(row for row in rows if row["Routine"] == gadget & MASK48)
    assert flags_of(row) == {"mid_function"} and row["Landing"] is None
    assert "code incomplete" in verdict_routes(result)


def test_zeroed_exception_directory(tmp_path, vol_cache):
    """tcpip.sys's .pdata reads as zeros: no mid_function verdict in it (its gadget's row keeps
    trampoline, from its code); the exception-directory route is incomplete."""
    image, damage = forge("evasion", "win10")
    tcpip = next(m for m in image.forge.loader.modules if m.name == "tcpip.sys")
    damage.zero_page(tcpip.base + tcpip.image.pdata_rva)
    result = run(image, damage, tmp_path, vol_cache)
    rows = rows_of(result)
    assert_damage_never_accuses(rows, image.truth["rows_with_scan"], damage)
    gadget = tcpip.code_address("TcpTimerStarvationCallback", "through")
    assert [flags_of(row) for row in rows if row["Routine"] == gadget & MASK48] == [{"trampoline"}]
    assert "exception directories incomplete" in verdict_routes(result)


@pytest.mark.parametrize("cut", ["zeroed page", "odd epoch"])
def test_cut_inverted_function_table(tmp_path, vol_cache, cut):
    """The inverted function table lost (its page reads as zeros) or caught mid-update (an odd
    Epoch): the image known only to it is outside_modules and no more; the hidden driver that
    kept its driver object is still hidden_module; the route is incomplete."""
    image, damage = forge("evasion", "win10")
    table = image.forge.kernel.base + image.forge.layout.symbol("PsInvertedFunctionTable")
    if cut == "zeroed page":
        damage.zero_page(table)
    else:
        damage.cut_link(table + image.forge.layout.offset_of("_INVERTED_FUNCTION_TABLE", "Epoch"), 3)
    result = run(image, damage, tmp_path, vol_cache)
    rows = rows_of(result)
    assert_damage_never_accuses(rows, image.truth["rows_with_scan"], damage)
    mapped = next(m for m in image.forge.loader.modules if m.name == "mapped.sys")
    shade = next(m for m in image.forge.loader.modules if m.name == "shade.sys")
    assert [(flags_of(row), row["Module"]) for row in rows if mapped.contains(row["Routine"] or 0)] == [({"outside_modules"}, None)]
    assert [flags_of(row) for row in rows if shade.contains(row["Routine"] or 0)] == [{"outside_modules", "hidden_module"}]
    assert "inverted function table incomplete" in verdict_routes(result)


@pytest.mark.parametrize("profile", ["win10", "win10x86"])
def test_zeroed_image_headers(tmp_path, vol_cache, profile):
    """afd.sys's PE headers read as zeros (a page lost, or wiped by whoever hides in the image):
    the stub in its .text slack keeps what its code says (trampoline, its landing) and loses
    code_cave, which only the section table can tell; the image-headers route is incomplete, so
    every row's evidence is degraded; nothing gains a flag."""
    image, damage = forge("evasion", profile)
    afd = next(m for m in image.forge.loader.modules if m.name == "afd.sys")
    damage.zero_page(afd.base)
    result = run(image, damage, tmp_path, vol_cache)
    rows = rows_of(result)
    assert_damage_never_accuses(rows, image.truth["rows_with_scan"], damage)
    planted = [row for row in image.truth["rows_with_scan"] if "code_cave" in flags_of(row) and afd.contains(row["Routine"])]
    assert len(planted) == 1
    found = [row for row in rows if key(row) == key(planted[0])]
    assert [flags_of(row) for row in found] == [flags_of(planted[0]) - {"code_cave"}]
    assert found[0]["Landing"] == planted[0]["Landing"]
    assert "image headers incomplete (" in verdict_routes(result)
    assert {row["Evidence"] for row in rows} == {"degraded"}
    assert "Image headers unreadable or no PE" in result.stderr and "afd.sys" in result.stderr
