"""Docs that cannot drift: every Volatility plugin the documentation pages (``DOCS``: README.md,
docs/, the forge's page, the benchmark results) name exists in the installed Volatility 3, every
shell command they give either runs on the demo image or is marked as an example for a real
image, and every relative link they hold leads to a file and, for a page, to one of its headings.

Shell blocks (```sh) start with a comment saying what they are:
- ``# On the demo image:`` each command runs here, in a folder holding the demo image that
  ``./scripts/demo`` forges (``demo/``), and must succeed without a traceback; a command may end
  in ``> FILE`` (its output written to FILE in that folder, for the commands after it): a block
  holding one is a recipe, its commands run in order, in one test;
- ``# Example for a real image`` ... not run (there is no real image here); its plugin names are
  still checked;
- ``# In a checkout`` ... the README's two commands and docs/FLEET.md's fleet demo, run from a
  clean clone by ``tests/test_packaging.py`` (running the suite from inside itself would recurse).

A page that gives a shell command must be in ``DOCS``: content moves between pages (issue 19 moved
most of the README into docs/, tests/forge/README.md and benchmarks/RESULTS.md), and a command in
a page nobody collects would stop being tested without a word.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Set, Tuple

import pytest

from tests.forge.scenarios import forge_scenario
from tests.volatility_harness import PLUGIN_DIR, REPO

DOCS = ([REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))
        + [REPO / "tests" / "forge" / "README.md", REPO / "benchmarks" / "RESULTS.md"])
#: Pages with shell blocks that are not a user's commands, and why no doc test runs them.
NOT_RUN = {
    Path("tests/forge/profiles/README.md"): "maintainers' commands regenerating the forge's profiles from the "
    "real ISFs in ../shared and Volatility 2 vtypes files, which a checkout does not hold",
}
DEMO = "# On the demo image:"
EXAMPLE = "# Example for a real image"
CHECKOUT = "# In a checkout"
PLUGIN_NAME = re.compile(r"(?<![\w./-])(windows(?:\.[a-z_][a-z0-9_]*)+)(?:\.[A-Z]\w*)?")
BIN = Path(sys.executable).parent


def shell_blocks() -> List[Tuple[Path, List[str]]]:
    blocks = []
    for path in DOCS:
        for match in re.finditer(r"^```sh\n(.*?)^```", path.read_text(), re.S | re.M):
            blocks.append((path, match.group(1).strip("\n").splitlines()))
    return blocks


def markdown_pages() -> List[Path]:
    """Every Markdown page of the checkout, outside hidden folders (.venv, .git) and the demos'
    forged output."""
    pages = []
    for folder, subfolders, files in os.walk(REPO):
        subfolders[:] = [name for name in subfolders if not name.startswith(".") and name not in ("demo", "fleet-demo")]
        pages += [Path(folder) / name for name in files if name.endswith(".md")]
    return sorted(pages)


def without_code(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation but ``-`` and ``_`` dropped,
    spaces to ``-``."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def commands(lines: List[str]) -> List[str]:
    """The commands of a block: comment lines dropped, trailing comments cut."""
    found = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            found.append(line.split("  #")[0].strip())
    return found


@pytest.fixture(scope="module")
def volatility_plugins() -> Set[str]:
    """Plugin names the installed Volatility lists (with this project's folder), in both forms:
    ``windows.modscan`` and ``windows.modscan.ModScan``."""
    result = subprocess.run([str(BIN / "vol"), "-p", str(PLUGIN_DIR), "-h"], capture_output=True, text=True)
    names: Set[str] = set()
    for name in re.findall(r"^\s{4}(\w+(?:\.\w+)+)", result.stdout, re.M):
        names.add(name)
        names.add(name.rsplit(".", 1)[0])
    assert "windows.modules" in names and "windows.callbackobjects" in names, result.stdout[-2000:]
    return names


def test_every_plugin_the_docs_name_exists(volatility_plugins):
    named: Dict[str, List[str]] = {}
    for path in DOCS:
        for match in PLUGIN_NAME.finditer(path.read_text()):
            named.setdefault(match.group(1), []).append(path.name)
    assert named, "the docs name no plugin?"
    unknown = {name: files for name, files in named.items() if name not in volatility_plugins}
    assert not unknown, f"plugins named in the docs that Volatility does not have: {unknown}"


def test_every_page_with_a_shell_command_is_collected():
    holding = [page for page in markdown_pages() if re.search(r"^```sh$", page.read_text(), re.M)]
    assert holding, "no page gives a shell command?"
    missing = [str(page.relative_to(REPO)) for page in holding if page not in DOCS and page.relative_to(REPO) not in NOT_RUN]
    assert not missing, f"pages whose shell commands no doc test runs: {missing}"


def test_relative_links_lead_to_a_file_and_a_heading():
    broken = []
    for path in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", without_code(path.read_text())):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, fragment = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            if not linked.exists():
                broken.append((path.name, target, "no such file"))
            elif fragment and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", without_code(linked.read_text()), re.M)
                if fragment not in {anchor(heading) for heading in headings}:
                    broken.append((path.name, target, "no such heading"))
    assert not broken, broken


def test_every_shell_block_says_what_it_is():
    for path, lines in shell_blocks():
        assert lines and lines[0].startswith((DEMO, EXAMPLE, CHECKOUT)), (path.name, lines[:2])
        if lines[0].startswith(EXAMPLE):
            assert all("IMAGE" in command for command in commands(lines) if "-f" in command.split()), (path.name, lines)


def test_checkout_commands_are_the_ones_the_packaging_tests_run():
    packaging = (REPO / "tests" / "test_packaging.py").read_text()
    for path, lines in shell_blocks():
        if lines[0].startswith(CHECKOUT):
            for command in commands(lines):
                assert f'"{command.split()[0]}"' in packaging, (path.name, command)


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory) -> Path:
    """A folder holding ``demo/`` as ``./scripts/demo`` forges it (rootkit, win10, raw)."""
    folder = tmp_path_factory.mktemp("docs-demo")
    forge_scenario("rootkit", "win10").write(folder / "demo", formats=("raw",))
    return folder


def demo_commands() -> List[Tuple[str, Tuple[str, ...]]]:
    """Each command of the demo blocks on its own; a recipe's (a block with a ``> FILE``) together."""
    found: List[Tuple[str, Tuple[str, ...]]] = []
    for path, lines in shell_blocks():
        if not lines[0].startswith(DEMO):
            continue
        block = commands(lines)
        doc = str(path.relative_to(REPO))
        if any(" > " in command for command in block):
            found.append((doc, tuple(block)))
        else:
            found += [(doc, (command,)) for command in block]
    return found


def run_demo_command(folder: Path, home: Path, command: str) -> None:
    """One command as a responder types it in ``folder``: through the shell when it pipes commands
    into volshell, with this environment's programs first on the PATH; ``> FILE`` writes FILE there."""
    command, _, target = command.partition(" > ")
    env = dict(os.environ, HOME=str(home), PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if "|" in command:
        assert shlex.split(command.split("|")[-1])[0] == "vol-callbackobjects", command
        argv = ["bash", "-c", "set -o pipefail; " + command]
    else:
        argv = shlex.split(command)
        assert argv[0] in ("vol-callbackobjects", "vol"), command
        argv[0] = str(BIN / argv[0])
    result = subprocess.run(argv, cwd=folder, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, (command, result.stderr[-3000:])
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout.strip(), command
    if "--dump" in argv:
        base = argv[argv.index("--base") + 1]
        assert list((folder / "demo").glob(f"*.{base}.dmp")), (command, result.stdout[-2000:])
    if "volshell" in command:
        assert "Error" not in result.stdout and re.search(r"0x[0-9a-f]+ +[0-9a-f]{2} [0-9a-f]{2}", result.stdout), result.stdout
    if target:
        (folder / target.strip()).write_text(result.stdout)


@pytest.mark.parametrize("doc,recipe", demo_commands())
def test_demo_commands_run(demo_folder, tmp_path, doc, recipe):
    for command in recipe:
        run_demo_command(demo_folder, tmp_path, command)


def demo_truth_addresses(truth: Dict[str, Any]) -> Set[int]:
    """Every address of the demo's ``truth`` a command may name: module bases (listed, hidden and
    unloaded) and the rows' objects, registrations and routines."""
    found = {module["base"] for module in truth["modules"] + truth["unloaded_modules"]}
    for row in truth["rows_with_scan"]:
        found.update(row[column] for column in ("Object", "Registration", "Routine") if row[column] is not None)
    found.update(entry["end"] for entry in truth["unloaded_drivers"])
    return found


def test_the_demo_commands_name_the_demos_addresses(forged):
    """The addresses the guide's demo commands give are the demo's own (its seed fixes them): a
    forge change that moves them must change the guide too."""
    named = {int(address, 16) for path, lines in shell_blocks() if lines[0].startswith(DEMO)
             for line in lines for address in re.findall(r"0x[0-9a-f]{8,}", line)}
    known = demo_truth_addresses(forged("rootkit", "win10")["truth_data"])
    assert named and named <= known, sorted(hex(a) for a in named - known)
