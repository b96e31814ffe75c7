"""The project as a user gets it: pip install, the console command, the README's two commands and
docs/FLEET.md's fleet demo."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.volatility_harness import REPO
from volatility3_plugins import PLUGIN_DIRECTORY, _with_plugin_directory


def test_plugin_directory_is_added_once_and_merged_with_the_users():
    assert _with_plugin_directory(["-f", "x", "windows.info"]) == ["-p", PLUGIN_DIRECTORY, "-f", "x", "windows.info"]
    assert _with_plugin_directory(["-p", "mine", "-f", "x"]) == ["-p", f"mine;{PLUGIN_DIRECTORY}", "-f", "x"]
    assert _with_plugin_directory(["--plugin-dirs=mine"]) == [f"--plugin-dirs=mine;{PLUGIN_DIRECTORY}"]


def test_installed_package_runs_without_the_checkout(forged_formats, vol_cache, tmp_path):
    """pip install puts the plugin, its ISF, its data and the crash-dump layer where the installed
    plugin finds them: the installed command opens a live kernel dump (DumpType 6), which
    Volatility alone does not."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", str(target), str(REPO)], check=True, capture_output=True)
    installed = target / "volatility3_plugins"
    assert sorted(p.name for p in (installed / "symbols" / "windows").glob("*.json")) == [
        "callbackobjects-x64-win7.json", "callbackobjects-x64.json", "callbackobjects-x86-win7.json", "callbackobjects-x86.json",
        "kernel-supplement-x64.json"]
    assert (installed / "windows" / "callback_objects" / "expected_registrants.json").is_file()
    assert (installed / "layers" / "crashdump.py").is_file()
    assert (target / "bin" / "vol-callbackobjects").is_file()

    paths = forged_formats("rootkit", "win10")
    env = dict(os.environ, PYTHONPATH=str(target))
    command = [sys.executable, "-c", "from volatility3_plugins import main; main()", "-q", "--offline",
               "--cache-path", str(vol_cache), "-s", str(paths["symbols"]), "-f", str(paths["live"]),
               "windows.callbackobjects", "--suspicious"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "outside_modules" in result.stdout and "global_mismatch" in result.stdout


def clean_clone(tmp_path: Path) -> Path:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    return clone


@pytest.mark.skipif(shutil.which("git") is None, reason="git is needed to clone the checkout")
def test_readme_test_command_installs_and_collects_from_a_clean_clone(tmp_path):
    """./scripts/test in a fresh clone builds its own venv and finds the suite. (The suite itself
    is what CI runs through .ci/run; running it again in here would recurse.)"""
    clone = clean_clone(tmp_path)
    result = subprocess.run(["./scripts/test", "-q", "--collect-only"], cwd=clone, capture_output=True, text=True,
                            timeout=900, env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (clone / ".venv" / "bin" / "python").exists()
    assert " tests collected" in result.stdout and "test_rows_match_ground_truth" in result.stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="git is needed to clone the checkout")
def test_readme_demo_commands_from_a_clean_clone(tmp_path):
    """./scripts/demo in a fresh clone: new venv, install, forge, run; a flagged outside_modules row.
    Then ./scripts/fleet-demo: a forged fleet swept, compared with its golden images, stacked."""
    clone = clean_clone(tmp_path)
    readme = (clone / "README.md").read_text()
    assert "./scripts/demo" in readme and "./scripts/test" in readme
    result = subprocess.run(["./scripts/demo"], cwd=clone, capture_output=True, text=True, timeout=900,
                            env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    # Columns: ... Module (9), Symbol (10), Flags (11), Landing, LandingOwner, Evidence (14).
    rows = [cells for cells in (line.split("\t") for line in result.stdout.splitlines())
            if len(cells) == 15 and "outside_modules" in cells[11].split(",")]
    assert rows and all(cells[14] == "complete" for cells in rows), result.stdout[-3000:]
    assert any(row[9] == "N/A" and int(row[5], 16) for row in rows)

    # The fleet demo in the same clone (its venv is built): the sweeps' summary names the two
    # rootkit hosts with their ten plants not in the baseline, the other build with its warning,
    # and the stack carries each plant on those two hosts only. (Its page is docs/FLEET.md.)
    assert "./scripts/fleet-demo" in (clone / "docs" / "FLEET.md").read_text()
    result = subprocess.run(["./scripts/fleet-demo"], cwd=clone, capture_output=True, text=True, timeout=900,
                            env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    findings = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("host")}
    assert sorted(findings) == ["host05.raw", "host11.raw", "host13.raw"], result.stdout[-3000:]
    assert all("not_in_baseline 10)" in findings[host] for host in ("host05.raw", "host11.raw"))
    assert "warning: Baseline of another build" in findings["host13.raw"]
    plants = [line for line in result.stdout.splitlines() if line.endswith("host05.raw, host11.raw")]
    assert len(plants) == 10 and all(line.split()[0] == "2" and "not_in_baseline" in line for line in plants)
