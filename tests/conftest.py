"""Shared fixtures: forged images built once per test session, and Volatility's cache."""

import os
from pathlib import Path
from typing import Callable, Dict, Tuple

import pytest

from tests.forge.scenarios import forge_scenario
from tests.volatility_harness import SHARED_ISF_DIR, real_isfs

BUILTIN_PROFILES = ("win10", "win7")
SCENARIO_NAMES = ("baseline", "rootkit", "corrupt", "scale")


@pytest.fixture(scope="session")
def vol_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("volatility-cache")


@pytest.fixture(scope="session")
def forged(tmp_path_factory) -> Callable[[str, str], Dict[str, Path]]:
    """forged(scenario, profile) -> paths of raw image, crash dump, symbols and truth."""
    cache: Dict[Tuple[str, str], Dict[str, Path]] = {}

    def build(scenario: str, profile: str) -> Dict[str, Path]:
        key = (scenario, profile)
        if key not in cache:
            label = Path(profile).name.split("-")[0][:8] if "/" in profile else profile
            out = tmp_path_factory.mktemp(f"{scenario}-{label}")
            image = forge_scenario(scenario, profile)
            cache[key] = dict(image.write(out), truth_data=image.truth)
        return cache[key]

    return build


def real_isf_params():
    """One parameter per real ISF; a clear skip where ../shared is absent, a failure in CI."""
    isfs = real_isfs()
    if isfs:
        return [pytest.param(str(path), id=path.name.split("-")[0][:8]) for path in isfs]
    reason = f"real ISFs not found at {SHARED_ISF_DIR} (clone with ../shared beside the checkout)"
    if os.environ.get("CI"):
        return [pytest.param(None, id="missing-shared", marks=pytest.mark.xfail(reason=reason, strict=True, run=True))]
    return [pytest.param(None, id="no-shared", marks=pytest.mark.skip(reason=reason))]
