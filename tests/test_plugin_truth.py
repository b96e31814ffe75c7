"""windows.callbackobjects on forged images, compared row by row with the forge's ground truth,
in both modes: ``--no-scan`` (list, directory and globals) and the default (with pool scanning).

Known failures (issue 14): on segment-heap builds (18362 and later) a freed block keeps an
allocated ``PoolType`` (an LFH free only clears bitmap bits), but today's scan judges "freed"
by ``PoolType == 0``: every freed registration of the forge's freed history comes out as an
``orphan_registration`` (with ``outside_modules`` where its routine was in the unloaded driver)
instead of ``freed``, and the deleted callback object as a live ``unlinked_object``. Exactly
those expectations are marked ``xfail(strict=True)``: they must fail today and pass once the
allocator-aware scan lands.
"""

import csv
import io
import json
from pathlib import Path
from typing import Iterable, List

import pytest

from tests.conftest import BUILTIN_PROFILES, real_isf_params, require_real_isf
from tests.forge.layout import BUILTIN_PROFILES as PROFILE_TABLES
from tests.forge.layout import KNOWN_BUILDS, SEGMENT_HEAP_FIRST_BUILD, load_profile
from tests.volatility_harness import run_vol

PLUGIN = "windows.callbackobjects"
COLUMNS = ["Object", "Name", "AllowMultiple", "FoundBy", "Registration", "Routine", "Context", "Busy",
           "UnregisterWaiting", "Module", "Symbol", "Flags"]
SUSPICIOUS = {"outside_modules", "hidden_module", "non_executable", "unlinked_object", "orphan_registration",
              "bad_backlink", "multiple_on_exclusive", "bad_signature", "unexpected_registrant", "global_mismatch"}


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

ISSUE_14 = pytest.mark.xfail(strict=True, reason=(
    "issue 14: segment-heap frees leave PoolType allocated; the scan's PoolType == 0 test reports "
    "freed registrations as orphan_registration and the deleted callback object as unlinked"))


def segment_heap_profile(profile: str) -> bool:
    return load_profile(PROFILE_TABLES[profile])["metadata"]["forge_profile"]["build"] >= SEGMENT_HEAP_FIRST_BUILD


def segment_heap_isf(isf) -> bool:
    return isf is not None and KNOWN_BUILDS.get(Path(isf).name.split("-")[0].upper(), 0) >= SEGMENT_HEAP_FIRST_BUILD


def scanning_params(profiles: Iterable[str], *rest: Iterable) -> List:
    """(profile, *rest) parameters of scanning runs, ISSUE_14 on segment-heap profiles."""
    combos: List[tuple] = [(profile,) for profile in profiles]
    for values in rest:
        combos = [combo + (value,) for combo in combos for value in values]
    return [pytest.param(*combo, marks=[ISSUE_14] if segment_heap_profile(combo[0]) else [],
                         id="-".join(str(part) for part in combo)) for combo in combos]


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


ROW_SCENARIOS = ["baseline", "rootkit", "corrupt", "rootkit_unlinked"]


@pytest.mark.parametrize("fmt", ["raw", "dump"])
@pytest.mark.parametrize("profile", BUILTIN_PROFILES)
@pytest.mark.parametrize("scenario", ROW_SCENARIOS)
def test_rows_match_ground_truth_without_scan(forged, vol_cache, scenario, profile, fmt):
    paths = forged(scenario, profile)
    rows = json.loads(run_plugin(paths, fmt, vol_cache, "json", *NO_SCAN))
    assert_matches_truth(rows, paths["truth_data"], NO_SCAN)


@pytest.mark.parametrize("profile,fmt,scenario", scanning_params(BUILTIN_PROFILES, ["raw", "dump"], ROW_SCENARIOS))
def test_rows_match_ground_truth_with_scan(forged, vol_cache, scenario, profile, fmt):
    paths = forged(scenario, profile)
    rows = json.loads(run_plugin(paths, fmt, vol_cache, "json", *SCANNING))
    assert_matches_truth(rows, paths["truth_data"], SCANNING)


@pytest.mark.parametrize("isf", real_isf_params())
def test_real_isf_baseline_rows_match_ground_truth(forged, vol_cache, isf):
    require_real_isf(isf)
    paths = forged("baseline", isf)
    for fmt in ("raw", "dump"):
        assert_matches_truth(json.loads(run_plugin(paths, fmt, vol_cache, "json", *NO_SCAN)), paths["truth_data"])


@pytest.mark.parametrize("isf", [pytest.param(*param.values, marks=[ISSUE_14] if segment_heap_isf(param.values[0]) else [],
                                              id=param.id) for param in real_isf_params()])
def test_real_isf_baseline_rows_match_ground_truth_with_scan(forged, vol_cache, isf):
    """Scanning reads the same pages through a different path: one format is enough per build."""
    require_real_isf(isf)
    paths = forged("baseline", isf)
    rows = json.loads(run_plugin(paths, "dump", vol_cache, "json", *SCANNING))
    assert_matches_truth(rows, paths["truth_data"], SCANNING)


def row_flags(rows):
    return {flag for row in rows for flag in row["Flags"].split(",") if flag}


def check_baseline_flags(paths, cache, mode) -> None:
    rows = json.loads(run_plugin(paths, "raw", cache, "json", *mode))
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


@pytest.mark.parametrize("profile", scanning_params(BUILTIN_PROFILES))
def test_baseline_has_no_suspicious_flag_with_scan(forged, vol_cache, profile):
    check_baseline_flags(forged("baseline", profile), vol_cache, SCANNING)


def test_rootkit_raises_every_list_only_suspicious_flag(forged, vol_cache):
    rows = json.loads(run_plugin(forged("rootkit", "win10"), "dump", vol_cache, "json", *NO_SCAN))
    assert SUSPICIOUS - {"hidden_module", "orphan_registration"} <= row_flags(rows)


@pytest.mark.parametrize("scenario", ["rootkit", "rootkit_unlinked"])
def test_scanning_raises_every_suspicious_flag(forged, vol_cache, scenario):
    rows = json.loads(run_plugin(forged(scenario, "win10"), "raw", vol_cache))
    flags = row_flags(rows)
    # Cut links hide what lists reveal (bad_backlink, multiple_on_exclusive, the PatchGuard
    # registrant); the scan brings back every block, as an orphan.
    wanted = SUSPICIOUS if scenario == "rootkit" else SUSPICIOUS - {"bad_backlink", "multiple_on_exclusive", "unexpected_registrant"}
    assert wanted <= flags
    ghost = [row for row in rows if row["Module"] == "ghost.sys"]
    assert ghost and all({"hidden_module", "outside_modules"} <= set(row["Flags"].split(",")) for row in ghost)


@pytest.mark.parametrize("profile", scanning_params(BUILTIN_PROFILES))
def test_unlinked_rootkit_yields_every_planted_block(forged, vol_cache, profile):
    """The issue's acceptance: with every link cut, each planted object and registration is
    still reported, and only freed blocks carry ``freed`` (never with a suspicious flag)."""
    paths = forged("rootkit_unlinked", profile)
    rows = json.loads(run_plugin(paths, "dump", vol_cache))
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
            elif isinstance(value, int) and column in ("Object", "Registration", "Routine", "Context"):
                assert int(text, 16) == value
            else:
                assert str(value) == text, (column, value, text)


def check_scale(paths, cache, mode) -> None:
    rows = json.loads(run_plugin(paths, "dump", cache, "json", *mode))
    truth = paths["truth_data"]
    # 20,000 listed registrations; a scan adds the freed history's registrations.
    assert len(expected_rows(truth, NO_SCAN)) == 20000
    assert len(rows) == len(expected_rows(truth, mode))
    if mode == SCANNING:
        assert all(row["FoundBy"].endswith("+scan") for row in rows)


def test_scale_lists_every_reachable_registration_without_scan(forged, vol_cache):
    check_scale(forged("scale", "win10"), vol_cache, NO_SCAN)


@pytest.mark.parametrize("profile", scanning_params(["win10"]))
def test_scale_lists_every_reachable_registration_with_scan(forged, vol_cache, profile):
    check_scale(forged("scale", profile), vol_cache, SCANNING)


def test_suspicious_option_keeps_only_rows_with_a_suspicious_flag(forged, vol_cache):
    paths = forged("rootkit", "win10")
    everything = json.loads(run_plugin(paths, "raw", vol_cache))
    suspicious = json.loads(run_plugin(paths, "raw", vol_cache, "json", "--suspicious"))
    expected = [row for row in everything if set(row["Flags"].split(",")) & SUSPICIOUS]
    assert suspicious == expected and 0 < len(suspicious) < len(everything)
