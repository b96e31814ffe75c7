"""Shared fixtures: forged images built once per test session, and Volatility's cache."""

import os
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import pytest

from tests.forge.image import dump
from tests.forge.forge import ForgedImage
from tests.forge.scenarios import forge_scenario
from tests.volatility_harness import SHARED_ISF_DIR, real_isfs

# x64 builds, then 32-bit ones: Windows 7 SP1 x86 with PAE (ntkrpamp) and without (ntkrnlmp).
BUILTIN_PROFILES = ("win10", "win7", "win7x86", "win7x86nopae", "win10x86")
SCENARIO_NAMES = ("baseline", "rootkit", "corrupt", "scale")


@pytest.fixture(scope="session")
def vol_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("volatility-cache")


def _label(profile: str) -> str:
    """A short name for a profile: itself, or the start of a real ISF's GUID."""
    return Path(profile).name.split("-")[0][:8] if "/" in profile else profile


def _forger(tmp_path_factory, prefix: str, write: Callable[[ForgedImage, Path], Dict[str, Any]]) -> Callable[[str, str], Dict[str, Any]]:
    """A function (scenario, profile) -> what ``write`` wrote of that image, forged once."""
    cache: Dict[Tuple[str, str], Dict[str, Any]] = {}

    def build(scenario: str, profile: str) -> Dict[str, Any]:
        key = (scenario, profile)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"{prefix}{scenario}-{_label(profile)}")
            cache[key] = write(forge_scenario(scenario, profile), out)
        return cache[key]

    return build


@pytest.fixture(scope="session")
def forged(tmp_path_factory) -> Callable[[str, str], Dict[str, Any]]:
    """forged(scenario, profile) -> paths of raw image, crash dump, symbols and truth."""
    return _forger(tmp_path_factory, "", lambda image, out: dict(image.write(out), truth_data=image.truth))


def _write_every_format(image: ForgedImage, out: Path) -> Dict[str, Any]:
    physical, facts = image.forge.machine.physical, image.machine_facts()
    entry: Dict[str, Any] = dict(image.write(out, formats=image.formats), truth_data=image.truth)
    entry["ram"] = list(physical.runs())
    entry["pages"] = {name: dump.select_pages(physical, facts, dump.FORMATS[name])
                      for name in image.formats if dump.FORMATS[name].dump_type is not None}
    return entry


@pytest.fixture(scope="session")
def forged_formats(tmp_path_factory) -> Callable[[str, str], Dict[str, Any]]:
    """forged_formats(scenario, profile) -> the image in every format its architecture has
    (``dump.FORMATS`` names as keys), ``symbols``, ``truth_data``, ``ram`` (the runs of physical
    pages) and ``pages`` (for each crash-dump format, the runs of pages the dump holds)."""
    return _forger(tmp_path_factory, "formats-", _write_every_format)


MISSING_SHARED = f"real ISFs not found at {SHARED_ISF_DIR} (clone with ../shared beside the checkout)"


def real_isf_params():
    """One parameter per real ISF; one ``None`` parameter where ../shared is absent."""
    isfs = real_isfs()
    if isfs:
        return [pytest.param(str(path), id=path.name.split("-")[0][:8]) for path in isfs]
    return [pytest.param(None, id="no-shared")]


def require_real_isf(isf):
    """Skip with a clear reason without ../shared; in CI the matrix must run, so fail."""
    if isf is None:
        if os.environ.get("CI"):
            pytest.fail(MISSING_SHARED)
        pytest.skip(MISSING_SHARED)
    return isf
