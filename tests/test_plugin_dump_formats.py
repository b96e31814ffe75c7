"""windows.callbackobjects gives the raw image's rows from every crash-dump format of the same
memory, and a kernel-only dump costs it nothing: no error, no extra warning.

Each ``vol`` run costs 1-2 s, so formats are crossed with a representative subset rather than
with every profile and scenario: every format on the win10 ``rootkit`` image (x64: DumpType 1, 5,
6, 8, 9, 10) and on the win7x86 one (x86 PAE: 1, 5, 6), in the default mode, whose pool scan
reads the most memory; and ``baseline`` on the oldest and the newest real ISF (a classic-pool
and a segment-heap build) on a kernel-only format (6 and 8), the formats where a page the
plugin needs could be missing. Which pages a kernel-only dump holds follows from the page
tables, not from the build, and every real ISF already runs on raw and type-1 images in
test_plugin_truth.py. Page-for-page identity of
every format on every built-in profile is checked in-process, far more cheaply, in
test_crash_dumps.py; the raw image itself is checked against the ground truth in
test_plugin_truth.py.
"""

import json
from typing import Dict, List, Tuple

import pytest

from tests.conftest import require_real_isf
from tests.forge.image import dump
from tests.forge.profiles.layout import KNOWN_BUILDS
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


@pytest.mark.parametrize("profile", sorted({profile for profile, _ in SUBSET}))
def test_raw_rows_match_the_ground_truth(forged_formats, raw_runs, profile):
    """The rows every format must reproduce are the truth's."""
    raw_rows, _, _ = raw_runs(profile)
    assert_matches_truth(raw_rows, forged_formats("rootkit", profile)["truth_data"], SCANNING)


@pytest.mark.parametrize("profile, fmt", SUBSET, ids=[f"{p}-{f}" for p, f in SUBSET])
def test_every_format_gives_the_raw_images_rows(forged_formats, vol_cache, raw_runs, profile, fmt):
    paths = forged_formats("rootkit", profile)
    raw_rows, raw_warnings, _ = raw_runs(profile)
    rows, warnings, said = run_plugin(paths, fmt, vol_cache, "-v")
    assert rows == raw_rows
    assert warnings == raw_warnings, "a crash dump, kernel-only or not, warns about nothing the raw image does not"
    dump_type = dump.FORMATS[fmt].dump_type
    assert len(said) == 1 and f"Windows crash dump of DumpType {dump_type}," in said[0], said
    assert ("kernel memory only" in said[0]) == (dump.FORMATS[fmt].pages == "kernel")


def oldest_and_newest_real_isfs():
    """(ISF, format) parameters: the oldest real build on ``live`` (6), the newest on ``kernel`` (8)."""
    known = sorted((KNOWN_BUILDS[path.name.split("-")[0]], str(path)) for path in real_isfs()
                   if path.name.split("-")[0] in KNOWN_BUILDS)
    if not known:
        return [pytest.param(None, "live", id="no-shared")]
    (oldest_build, oldest), (newest_build, newest) = known[0], known[-1]
    return [pytest.param(isf, fmt, id=f"{build}-{fmt}")
            for build, isf, fmt in ((oldest_build, oldest, "live"), (newest_build, newest, "kernel"))]


@pytest.mark.parametrize("isf, fmt", oldest_and_newest_real_isfs())
def test_real_isf_kernel_only_dump_gives_the_ground_truth(forged_formats, vol_cache, isf, fmt):
    require_real_isf(isf)
    paths = forged_formats("baseline", isf)
    rows, warnings, _ = run_plugin(paths, fmt, vol_cache)
    assert_matches_truth(rows, paths["truth_data"], SCANNING)
    assert [line for line in warnings if ": Verdict: " not in line] == [], "nothing but the plugin's closing verdict"
