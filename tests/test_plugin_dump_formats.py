"""windows.callbackobjects gives the raw image's rows from every crash-dump format of the same
memory, and a kernel-only dump costs it nothing: no error, no extra warning.

Each ``vol`` run costs 1-2 s, so formats are crossed with a representative subset rather than
with every profile and scenario: every format on the win10 ``rootkit`` image (x64: DumpType 1, 5,
6, 8, 9, 10) and on the win7x86 one (x86 PAE: 1, 5, 6), in the default mode, whose pool scan
reads the most memory; every real ISF's ``baseline`` on one kernel-only format (6 or 8, in
turn), the formats where a page the plugin needs could be missing. Page-for-page identity of
every format on every built-in profile is checked in-process, far more cheaply, in
test_crash_dumps.py; the raw image itself is checked against the ground truth in
test_plugin_truth.py.
"""

import json
from typing import Dict, List, Tuple

import pytest

from tests.conftest import real_isf_params, require_real_isf
from tests.forge import dump
from tests.test_plugin_truth import SCANNING, assert_matches_truth
from tests.volatility_harness import real_isfs, run_vol

PLUGIN = "windows.callbackobjects"
SUBSET = [(profile, fmt) for profile in ("win10", "win7x86") for fmt in dump.formats_for(profile == "win10")
          if fmt != "raw"]
LOGGER = "volatility3.plugins.layers.crashdump"


def run_plugin(paths, fmt: str, cache, *options: str) -> Tuple[List[Dict], List[str], List[str]]:
    """The rows, the WARNING lines and our layer's log lines of one run; ``options`` are
    Volatility's own (``-v``)."""
    result = run_vol(paths[fmt], paths["symbols"], PLUGIN, cache=cache, options=options)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    lines = result.stderr.splitlines()
    return json.loads(result.stdout), [line for line in lines if line.startswith("WARNING")], \
        [line for line in lines if LOGGER in line]


@pytest.fixture(scope="module")
def raw_runs(forged_formats, vol_cache):
    cache: Dict[str, Tuple[List[Dict], List[str], List[str]]] = {}

    def raw(profile: str):
        if profile not in cache:
            cache[profile] = run_plugin(forged_formats("rootkit", profile), "raw", vol_cache)
        return cache[profile]

    return raw


@pytest.mark.parametrize("profile, fmt", SUBSET, ids=[f"{p}-{f}" for p, f in SUBSET])
def test_every_format_gives_the_raw_images_rows(forged_formats, vol_cache, raw_runs, profile, fmt):
    paths = forged_formats("rootkit", profile)
    raw_rows, raw_warnings, _ = raw_runs(profile)
    assert_matches_truth(raw_rows, paths["truth_data"], SCANNING)
    rows, warnings, said = run_plugin(paths, fmt, vol_cache, "-v")
    assert rows == raw_rows
    assert warnings == raw_warnings, "a crash dump, kernel-only or not, warns about nothing the raw image does not"
    dump_type = dump.FORMATS[fmt].dump_type
    assert len(said) == 1 and f"Windows crash dump of DumpType {dump_type}," in said[0], said
    assert ("kernel memory only" in said[0]) == (dump.FORMATS[fmt].pages == "kernel")


def kernel_only_format(isf) -> str:
    """Real ISFs alternate between the two kernel-only formats, so both meet real layouts."""
    names = [str(path) for path in real_isfs()]
    return "live" if isf not in names or names.index(isf) % 2 == 0 else "kernel"


@pytest.mark.parametrize("isf", real_isf_params())
def test_real_isf_kernel_only_dump_gives_the_ground_truth(forged_formats, vol_cache, isf):
    require_real_isf(isf)
    paths = forged_formats("baseline", isf)
    rows, warnings, _ = run_plugin(paths, kernel_only_format(isf), vol_cache)
    assert_matches_truth(rows, paths["truth_data"], SCANNING)
    assert warnings == []
