"""windows.callbackobjects on forged images, compared row by row with the forge's ground truth."""

import csv
import io
import json

import pytest

from tests.conftest import BUILTIN_PROFILES, real_isf_params, require_real_isf
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


def expected_without_scan(truth):
    rows = []
    for row in truth["rows"]:
        if row["requires_scan"]:
            continue
        rows.append(dict(row, Flags=[f for f in row["Flags"] if f not in row["scan_flags"]]))
    return rows


def assert_matches_truth(plugin_rows, truth):
    got = sorted(map(normalise, plugin_rows), key=repr)
    want = sorted(map(normalise, expected_without_scan(truth)), key=repr)
    missing = [row for row in want if row not in got]
    extra = [row for row in got if row not in want]
    assert not missing and not extra, f"missing: {missing}\nextra: {extra}"


@pytest.mark.parametrize("fmt", ["raw", "dump"])
@pytest.mark.parametrize("profile", BUILTIN_PROFILES)
@pytest.mark.parametrize("scenario", ["baseline", "rootkit", "corrupt"])
def test_rows_match_ground_truth(forged, vol_cache, scenario, profile, fmt):
    paths = forged(scenario, profile)
    rows = json.loads(run_plugin(paths, fmt, vol_cache))
    assert_matches_truth(rows, paths["truth_data"])


@pytest.mark.parametrize("isf", real_isf_params())
def test_real_isf_baseline_rows_match_ground_truth(forged, vol_cache, isf):
    require_real_isf(isf)
    paths = forged("baseline", isf)
    for fmt in ("raw", "dump"):
        assert_matches_truth(json.loads(run_plugin(paths, fmt, vol_cache)), paths["truth_data"])


@pytest.mark.parametrize("profile", BUILTIN_PROFILES)
def test_baseline_has_no_suspicious_flag(forged, vol_cache, profile):
    paths = forged("baseline", profile)
    rows = json.loads(run_plugin(paths, "raw", vol_cache))
    flags = {flag for row in rows for flag in row["Flags"].split(",") if flag}
    assert not flags & SUSPICIOUS
    # The unnamed objects: reachable through ExpCallbackListHead on 8.1+, by no list on Windows 7.
    assert ("not_in_directory" in flags) == paths["truth_data"]["has_callback_list"]


def test_rootkit_raises_every_list_only_suspicious_flag(forged, vol_cache):
    rows = json.loads(run_plugin(forged("rootkit", "win10"), "dump", vol_cache))
    flags = {flag for row in rows for flag in row["Flags"].split(",") if flag}
    assert SUSPICIOUS - {"hidden_module", "orphan_registration"} <= flags


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


def test_scale_lists_every_reachable_registration(forged, vol_cache):
    paths = forged("scale", "win10")
    rows = json.loads(run_plugin(paths, "dump", vol_cache))
    assert len(rows) == len(expected_without_scan(paths["truth_data"])) == 20000


def test_suspicious_option_keeps_only_rows_with_a_suspicious_flag(forged, vol_cache):
    paths = forged("rootkit", "win10")
    everything = json.loads(run_plugin(paths, "raw", vol_cache))
    suspicious = json.loads(run_plugin(paths, "raw", vol_cache, "json", "--suspicious"))
    expected = [row for row in everything if set(row["Flags"].split(",")) & SUSPICIOUS]
    assert suspicious == expected and 0 < len(suspicious) < len(everything)
