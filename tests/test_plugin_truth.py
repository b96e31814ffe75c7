"""windows.callbackobjects on forged images, compared row by row with the forge's ground truth,
in both modes: ``--no-scan`` (list, directory and globals) and the default (with pool scanning).

Every scenario carries a freed history (registrations undone, a deleted object, an unloaded
driver's loader entry): on segment-heap builds those blocks keep their pool headers, so only the
allocator's metadata tells they are freed, and no row may accuse them.
"""

import csv
import io
import json

import pytest

from tests.conftest import BUILTIN_PROFILES, real_isf_params, require_real_isf
from tests.volatility_harness import plugin_rows, run_vol

PLUGIN = "windows.callbackobjects"
COLUMNS = ["Object", "Name", "AllowMultiple", "FoundBy", "Registration", "Routine", "Context", "Busy",
           "UnregisterWaiting", "Module", "Symbol", "Flags", "Landing", "LandingOwner", "Evidence"]
SUSPICIOUS = {"outside_modules", "hidden_module", "trampoline", "non_executable", "code_cave", "mid_function",
              "unlinked_object", "orphan_registration", "bad_backlink", "multiple_on_exclusive", "bad_signature",
              "unexpected_registrant", "global_mismatch"}
#: The flags only the evasion scenario plants.
CODE_FLAGS = {"trampoline", "code_cave", "mid_function"}


def run_plugin(paths, fmt, cache, renderer="json", *args):
    result = run_vol(paths[fmt], paths["symbols"], PLUGIN, *args, renderer=renderer, cache=cache)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    return result.stdout


def normalise(row):
    """A row as a comparable tuple; the truth keeps lists where the plugin prints joined strings."""
    flags = row["Flags"]
    flags = sorted(flags.split(",")) if isinstance(flags, str) else sorted(flags)
    found_by = row["FoundBy"] if isinstance(row["FoundBy"], str) else "+".join(row["FoundBy"])
    return tuple([row[c] for c in COLUMNS if c not in ("Flags", "FoundBy")] + [found_by, tuple(f for f in flags if f)])


NO_SCAN = ("--no-scan",)
SCANNING = ()

def expected_without_scan(truth):
    rows = []
    for row in truth["rows"]:
        if row["requires_scan"]:
            continue
        rows.append(dict(row, Flags=[f for f in row["Flags"] if f not in row["scan_flags"]]))
    return rows


def expected_rows(truth, mode):
    return truth["rows_with_scan"] if mode == SCANNING else expected_without_scan(truth)


def assert_matches_truth(plugin_rows, truth, mode=NO_SCAN):
    got = sorted(map(normalise, plugin_rows), key=repr)
    want = sorted(map(normalise, expected_rows(truth, mode)), key=repr)
    missing = [row for row in want if row not in got]
    extra = [row for row in got if row not in want]
    assert not missing and not extra, f"missing: {missing}\nextra: {extra}"


ROW_SCENARIOS = ["baseline", "rootkit", "corrupt", "rootkit_unlinked", "evasion"]
#: The plugin's three ways to run: list only; scan where the allocator says blocks lie (the
#: default); scan the whole kernel half.
RUNS = {"no-scan": ({"no_scan": True}, NO_SCAN), "scan": ({}, SCANNING), "full-scan": ({"full_scan": True}, SCANNING)}


def rows_of(paths, fmt, cache, **options):
    """The plugin's rows in-process (see ``plugin_rows``): the matrices run it hundreds of times;
    the command line's own view is tested by the tests that run ``vol``."""
    rows, _warnings = plugin_rows(paths[fmt], paths["symbols"], cache, **options)
    return rows


def assert_every_run_matches_truth(paths, fmt, cache, runs=RUNS) -> None:
    for name, (options, mode) in runs.items():
        try:
            assert_matches_truth(rows_of(paths, fmt, cache, **options), paths["truth_data"], mode)
        except AssertionError as excp:
            raise AssertionError(f"{name}: {excp}") from None


@pytest.mark.parametrize("fmt", ["raw", "dump"])
@pytest.mark.parametrize("profile", BUILTIN_PROFILES)
@pytest.mark.parametrize("scenario", ROW_SCENARIOS)
def test_rows_match_ground_truth(forged, vol_cache, scenario, profile, fmt):
    """Every scenario, profile and format, in each of the three runs."""
    assert_every_run_matches_truth(forged(scenario, profile), fmt, vol_cache)


@pytest.mark.parametrize("scenario", ["baseline", "evasion"])
@pytest.mark.parametrize("isf", real_isf_params())
def test_real_isf_rows_match_ground_truth(forged, vol_cache, isf, scenario):
    """Every real build, a clean system and one with every evasion planted (their code, the
    kernel's exception directory and its inverted function table at that build's offsets): both
    formats list-only; scanning reads the same pages through another path, so one format per
    scan mode."""
    require_real_isf(isf)
    paths = forged(scenario, isf)
    assert_every_run_matches_truth(paths, "raw", vol_cache, {"no-scan": RUNS["no-scan"], "full-scan": RUNS["full-scan"]})
    assert_every_run_matches_truth(paths, "dump", vol_cache, {"no-scan": RUNS["no-scan"], "scan": RUNS["scan"]})


def row_flags(rows):
    return {flag for row in rows for flag in row["Flags"].split(",") if flag}


def check_baseline_flags(paths, cache, mode) -> None:
    rows = rows_of(paths, "raw", cache, no_scan=mode == NO_SCAN)
    flags = row_flags(rows)
    assert not flags & SUSPICIOUS
    # The unnamed objects: reachable through ExpCallbackListHead on 8.1+, by no list on Windows 7
    # (there only the scan finds them, and they are not in \Callback either).
    assert ("not_in_directory" in flags) == (paths["truth_data"]["has_callback_list"] or mode == SCANNING)
    # The freed registration blocks: reported by the scan, informational only.
    assert ("freed" in flags) == (mode == SCANNING)


@pytest.mark.parametrize("profile", BUILTIN_PROFILES)
def test_baseline_has_no_suspicious_flag_without_scan(forged, vol_cache, profile):
    check_baseline_flags(forged("baseline", profile), vol_cache, NO_SCAN)


@pytest.mark.parametrize("profile", BUILTIN_PROFILES)
def test_baseline_has_no_suspicious_flag_with_scan(forged, vol_cache, profile):
    check_baseline_flags(forged("baseline", profile), vol_cache, SCANNING)


def test_rootkit_raises_every_list_only_suspicious_flag(forged, vol_cache):
    """The hidden driver's driver object and inverted-table entry need no scan."""
    rows = rows_of(forged("rootkit", "win10"), "dump", vol_cache, no_scan=True)
    assert SUSPICIOUS - CODE_FLAGS - {"orphan_registration"} <= row_flags(rows)


@pytest.mark.parametrize("scenario", ["rootkit", "rootkit_unlinked"])
def test_scanning_raises_every_suspicious_flag(forged, vol_cache, scenario):
    rows = rows_of(forged(scenario, "win10"), "raw", vol_cache)
    flags = row_flags(rows)
    # Cut links hide what lists reveal (bad_backlink, multiple_on_exclusive, the PatchGuard
    # registrant); the scan brings back every block, as an orphan.
    wanted = SUSPICIOUS - CODE_FLAGS
    if scenario == "rootkit_unlinked":
        wanted -= {"bad_backlink", "multiple_on_exclusive", "unexpected_registrant"}
    assert wanted <= flags and not flags & CODE_FLAGS
    ghost = [row for row in rows if row["Module"] == "ghost.sys"]
    assert ghost and all({"hidden_module", "outside_modules"} <= set(row["Flags"].split(",")) for row in ghost)


@pytest.mark.parametrize("profile", BUILTIN_PROFILES)
def test_unlinked_rootkit_yields_every_planted_block(forged, vol_cache, profile):
    """The issue's acceptance: with every link cut, each planted object and registration is
    still reported, and only freed blocks carry ``freed`` (never with a suspicious flag)."""
    paths = forged("rootkit_unlinked", profile)
    rows = rows_of(paths, "dump", vol_cache)
    planted = {row["Registration"] for row in paths["truth_data"]["rows_with_scan"] if row["Registration"] is not None}
    assert planted <= {row["Registration"] for row in rows}
    assert {row["Object"] for row in paths["truth_data"]["rows_with_scan"]} == {row["Object"] for row in rows}
    for row in rows:
        flags = set(row["Flags"].split(","))
        if "freed" in flags:
            assert flags == {"freed"}


def test_csv_gives_the_same_facts_as_json(forged, vol_cache):
    paths = forged("rootkit", "win10")
    json_rows = json.loads(run_plugin(paths, "raw", vol_cache))
    # Volatility writes CSV with "\\" as escape character; read it back the same way.
    csv_rows = list(csv.DictReader(io.StringIO(run_plugin(paths, "raw", vol_cache, "csv")), escapechar="\\"))
    assert len(csv_rows) == len(json_rows)
    for as_json, as_csv in zip(json_rows, csv_rows):
        for column in COLUMNS:
            value = as_json[column]
            text = as_csv[column]
            if value is None:
                assert text in ("N/A", "-", ""), (column, text)
            elif isinstance(value, bool):
                assert text == str(value)
            elif isinstance(value, int) and column in ("Object", "Registration", "Routine", "Context", "Landing"):
                assert int(text, 16) == value
            else:
                assert str(value) == text, (column, value, text)


def check_scale(paths, cache, mode) -> None:
    rows = rows_of(paths, "dump", cache, no_scan=mode == NO_SCAN)
    truth = paths["truth_data"]
    # 20,000 listed registrations; a scan adds the freed history's registrations.
    assert len(expected_rows(truth, NO_SCAN)) == 20000
    assert len(rows) == len(expected_rows(truth, mode))
    if mode == SCANNING:
        assert all(row["FoundBy"].endswith("+scan") for row in rows)


def test_scale_lists_every_reachable_registration_without_scan(forged, vol_cache):
    check_scale(forged("scale", "win10"), vol_cache, NO_SCAN)


@pytest.mark.parametrize("profile", ["win10"])
def test_scale_lists_every_reachable_registration_with_scan(forged, vol_cache, profile):
    check_scale(forged("scale", profile), vol_cache, SCANNING)


def test_suspicious_option_keeps_only_rows_with_a_suspicious_flag(forged, vol_cache):
    paths = forged("rootkit", "win10")
    everything = json.loads(run_plugin(paths, "raw", vol_cache))
    suspicious = json.loads(run_plugin(paths, "raw", vol_cache, "json", "--suspicious"))
    expected = [row for row in everything if set(row["Flags"].split(",")) & SUSPICIOUS]
    assert suspicious == expected and 0 < len(suspicious) < len(everything)


@pytest.mark.parametrize("profile", BUILTIN_PROFILES)
def test_evasion_shows_every_plant_with_its_landing(forged, vol_cache, profile):
    """Each plant of the evasion scenario, as the plugin prints it (the rows equal the truth's
    above; this pins the plants themselves, so that a truth that lost one cannot pass): two
    argument gadgets mid-function landing in pool, a stub in int3 padding landing in pool, a
    stub in .text slack (code_cave) landing in no module and no pool, the swapped bare ret
    (mid_function, x64 only: x86 has no .pdata), the hidden driver known from its driver object
    (and, x64, the image known only to the inverted function table, named by its base)."""
    paths = forged("evasion", profile)
    x64 = paths["truth_data"]["architecture"] == "x64"
    rows = [row for row in rows_of(paths, "raw", vol_cache) if set(row["Flags"].split(",")) & SUSPICIOUS]
    planted = {(row["Flags"], (row["LandingOwner"] or "").split(" ")[0]) for row in rows}
    gadget = "trampoline,mid_function" if x64 else "trampoline"
    expected = {(gadget, "pool"), ("trampoline", "pool"), ("trampoline,code_cave", "none"),
                ("outside_modules,hidden_module", "")}
    if x64:
        expected.add(("mid_function", ""))
    assert planted == expected, rows
    # x86: the stub in int3 padding shows as the gadgets do (no mid_function to tell them apart).
    assert sum(1 for row in rows if row["Flags"] == gadget) == (2 if x64 else 3)
    hidden = {row["Module"] for row in rows if "hidden_module" in row["Flags"]}
    assert "\\Driver\\shade" in hidden and any(name.startswith("hidden@0x") for name in hidden) == x64
