"""An image that lacks evidence never passes for a clean one (issue 21), end to end.

The ``rootkit`` scenario cut to 90% and to 50%, as a crash dump and as a raw image: never exit 0
from ``vol-callbackobjects``, never ``Evidence`` complete in the JSON, never ``ok`` in a sweep,
and always how much is missing. A sweep over a folder mixing good, truncated, triage and
non-image files gives each its true status and reason; bad inputs get one clear line; volshell
opens a DumpType 8 dump through ``vol-callbackobjects volshell``.
"""

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from tests.forge.stories.damage import truncate
from tests.test_crash_dumps import DUMP_TYPE_OFFSET, patched_copy
from tests.volatility_harness import kernel_context
from volatility3_plugins.schema import verdict_line

BIN = Path(sys.executable).parent
COMMAND = str(BIN / "vol-callbackobjects")
MISSING = re.compile(r"[\d,]+ of [\d,]+ pages")


def cut(source: Path, target: Path, fraction: float) -> Path:
    shutil.copyfile(source, target)
    truncate(target, fraction)
    return target


def run(args: List[str], **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([COMMAND, *args], capture_output=True, text=True, env=env, timeout=300, **kwargs)


def plugin(image: Path, symbols: Path, cache: Path) -> subprocess.CompletedProcess:
    return run(["-q", "-r", "json", "--offline", "--cache-path", str(cache), "-s", str(symbols), "-f", str(image),
                "windows.callbackobjects"])


@pytest.mark.parametrize("fraction", [0.9, 0.5])
@pytest.mark.parametrize("fmt", ["dump", "raw"])
def test_a_cut_image_is_never_clean_and_says_how_much_is_missing(forged_formats, vol_cache, tmp_path, fmt, fraction):
    paths = forged_formats("rootkit", "win10")
    image = cut(paths[fmt], tmp_path / f"cut-{paths[fmt].name}", fraction)
    result = plugin(image, paths["symbols"], vol_cache)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode in (verdict_line.DEGRADED_EXIT_STATUS, 1), (result.returncode, result.stderr[-3000:])
    assert MISSING.search(result.stderr) and "past the end of the file" in result.stderr, result.stderr[-3000:]
    if result.returncode == verdict_line.DEGRADED_EXIT_STATUS:
        rows = json.loads(result.stdout)
        assert rows and {row["Evidence"] for row in rows} == {"degraded"}
        said = verdict_line.parse(verdict_line.locate(result.stderr.splitlines()[-1]) or "")
        assert said is not None and said.degraded
        # A raw image is checked against nt!MmPhysicalMemoryBlock while the cut leaves it, else
        # against the pages its page tables map (image_extent.py): either says how much is missing.
        assert re.search(r"(crash dump truncated|raw image truncated|raw image shorter than RAM) \([\d,]+ of [\d,]+ pages missing",
                         said.evidence[0]), said.evidence
    else:
        assert '"Evidence"' not in result.stdout, "a refusal prints no rows"


def test_a_whole_image_is_complete_and_exits_0(forged_formats, vol_cache):
    paths = forged_formats("rootkit", "win10")
    result = plugin(paths["raw"], paths["symbols"], vol_cache)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {row["Evidence"] for row in json.loads(result.stdout)} == {"complete"}
    assert "; evidence complete; " in result.stderr


def test_a_sweep_gives_each_image_its_true_status_and_reason(forged_formats, vol_cache, tmp_path):
    paths = forged_formats("rootkit", "win10")
    folder = tmp_path / "cases"
    folder.mkdir()
    shutil.copyfile(paths["raw"], folder / "good.raw")
    cut(paths["dump"], folder / "cut90.dmp", 0.9)
    cut(paths["raw"], folder / "cut50.raw", 0.5)
    patched_copy(paths["dump"], folder / "triage.dmp", DUMP_TYPE_OFFSET[64], struct.pack("<I", 4))
    (folder / "empty.raw").write_bytes(b"")
    (folder / "random.raw").write_bytes(os.urandom(1 << 20))
    (folder / "notes.raw").write_text("not a memory image\n" * 500)
    out = tmp_path / "swept"
    result = run(["sweep", str(folder), "--out", str(out), "--jobs", "2", "--",
                  "--offline", "--cache-path", str(vol_cache), "-s", str(paths["symbols"])])
    assert result.returncode == 1, result.stderr[-3000:]
    expected = {
        "good.raw": ("ok", None),
        "cut90.dmp": ("degraded", "evidence degraded (crash dump truncated ("),
        "cut50.raw": ("refused", "the raw image is truncated: "),
        "triage.dmp": ("refused", "not a full or kernel memory dump"),
        "empty.raw": ("refused", "an empty file (0 bytes)"),
        "random.raw": ("refused", "reads as random data"),
        "notes.raw": ("refused", "a text file"),
    }
    for name, (status, reason) in expected.items():
        meta = json.loads((out / f"{name}.meta.json").read_text())
        assert meta["status"] == status, (name, meta["status"], meta["reason"])
        if reason is None:
            assert meta["reason"] is None
            continue
        first = meta["reason"].splitlines()[0]
        assert first.startswith(reason) or reason in first, (name, first)
        assert "-s SYMBOLS" not in first, (name, first)
        line = next(line for line in result.stdout.splitlines() if line.startswith(name + " "))
        assert f" {status} " in line and reason in line, line
    assert "1 ok, 1 degraded, 5 refused, 0 failed." in result.stdout
    assert "Stacked with degraded evidence" in (out / "stack.txt").read_text()


def test_volshell_opens_a_debugger_engine_dump(forged_formats, vol_cache):
    """``vol-callbackobjects volshell`` and plain ``volshell -p $(vol-callbackobjects plugin-dir)``
    open a DumpType 8 dump (this package's layer) and read a routine's first bytes: those
    Volatility reads at the same address of the raw image."""
    paths = forged_formats("rootkit", "win10")
    truth = paths["truth_data"]
    routine = next(row["Routine"] for row in truth["rows"] if row["Symbol"] == "RkPowerHook")
    context, kernel_name = kernel_context(paths["raw"], paths["symbols"], vol_cache)
    first = context.layers[context.modules[kernel_name].layer_name].read(routine, 8)
    assert any(first), "the forge writes code at the routine"
    script = f"db({routine:#x}, 8)\n"
    options = ["-q", "--offline", "--cache-path", str(vol_cache), "-s", str(paths["symbols"]), "-f", str(paths["kernel"]), "-w"]
    ours = run(["volshell", *options], input=script)
    plugin_dir = run(["plugin-dir"]).stdout.strip()
    plain = subprocess.run([str(BIN / "volshell"), "-p", plugin_dir, *options], input=script, capture_output=True,
                           text=True, timeout=300)
    for result in (ours, plain):
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert " ".join(f"{byte:02x}" for byte in first) in result.stdout, result.stdout[-2000:]


def test_bad_inputs_get_one_clear_line(tmp_path, vol_cache):
    overview = run(["-h"])
    head = overview.stdout.splitlines()[:8]
    assert any(" sweep " in line for line in head) and any(" stack " in line for line in head)
    assert any("windows.callbackobjects" in line for line in head) and any(" volshell " in line for line in head)
    baseline = run(["-f", str(tmp_path / "x.raw"), "windows.callbackobjects", "--baseline", "--no-scan"])
    assert baseline.returncode == 2 and baseline.stderr.strip().count("\n") == 0
    assert "--baseline needs at least one path" in baseline.stderr
    empty = tmp_path / "empty.raw"
    empty.write_bytes(b"")
    for command in ([COMMAND], [str(BIN / "vol"), "-p", run(["plugin-dir"]).stdout.strip()]):
        result = subprocess.run([*command, "-q", "--offline", "--cache-path", str(vol_cache), "-f", str(empty),
                                 "windows.callbackobjects"], capture_output=True, text=True, timeout=300)
        said = [line for line in result.stderr.splitlines() if "empty file" in line]
        assert result.returncode == 1 and len(said) == 1 and "not a memory image" in said[0], result.stderr
        assert result.stderr.index(said[0]) < result.stderr.index("Unable to validate")
