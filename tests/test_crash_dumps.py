"""Every crash-dump format the forge writes, read back page for page, and what a responder sees
when a dump cannot be opened.

Two independent readers check each dump against the raw image of the same memory:
- kdmp-parser (its Python bindings), the maintained reader of all these formats; it reads
  64-bit dumps only, so the x86 dumps are checked by Volatility alone;
- Volatility's own layer stack with this package's stacker loaded, as ``vol -p`` loads it: every
  page the dump holds reads back identical, every other page of RAM is absent, and exactly one
  crash-dump layer is stacked (Volatility's own for the DumpTypes it lists, ours for the rest).
Everything here runs in-process, without a ``vol`` subprocess, so it covers every built-in
profile; the plugin's rows on each format are compared in test_plugin_dump_formats.py.
"""

import functools
import logging
import shutil
import struct
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

import kdmp_parser
import pytest
import volatility3.framework.automagic
import volatility3.framework.layers
from volatility3 import framework
from volatility3.framework import contexts, interfaces
from volatility3.framework.automagic import stacker
from volatility3.framework.layers import crash, physical

from tests.conftest import BUILTIN_PROFILES
from tests.forge.image import dump
from tests.forge.memory.physical import PhysicalMemory
from tests.volatility_harness import run_vol
from volatility3_plugins.layers import crashdump

PAGE = 0x1000
X64_PROFILES = [profile for profile in BUILTIN_PROFILES if profile in ("win10", "win7")]
DUMP_FORMATS = [name for name, fmt in dump.FORMATS.items() if fmt.dump_type is not None]
DUMP_TYPE_OFFSET = {64: 0xF98, 32: 0xF88}


@pytest.fixture(autouse=True)
def fresh_log_memory(monkeypatch):
    """The layer says each fact once per process; each test here is a process of its own."""
    monkeypatch.setattr(crashdump, "_said", crashdump.SaidOnce(crashdump.vollog))


def page_numbers(runs: Sequence[Tuple[int, int]]) -> Iterator[int]:
    for first, count in runs:
        yield from range(first, first + count)


@functools.lru_cache(maxsize=2)
def raw_bytes(path: Path) -> bytes:
    return path.read_bytes()


def all_stackers() -> List[type]:
    """Every stacker Volatility knows, in the order LayerStacker runs them."""
    framework.import_files(volatility3.framework.layers, True)
    framework.import_files(volatility3.framework.automagic, True)
    return sorted(framework.class_subclasses(interfaces.automagic.StackerLayerInterface), key=lambda s: s.stack_order)


def crash_stackers() -> List[type]:
    return [crashdump.WindowsCrashDumpExtendedStacker, crash.WindowsCrashDumpStacker]


def open_file(path: Path) -> contexts.Context:
    context = contexts.Context()
    context.config["FileLayer.location"] = path.resolve().as_uri()
    context.add_layer(physical.FileLayer(context, "FileLayer", "FileLayer"))
    return context


def stack(path: Path, stackers: List[type]) -> Tuple[contexts.Context, List[str]]:
    """Stack layers on a file as LayerStacker does; returns the context and the stack, top first."""
    context = open_file(path)
    return context, stacker.LayerStacker.stack_layer(context, "FileLayer", list(stackers))


def crash_layers(context: contexts.Context, names: List[str]) -> list:
    return [context.layers[name] for name in names if isinstance(context.layers[name], crash.WindowsCrashDump32Layer)]


def opened_by_volatility(fmt: str, bits: int) -> bool:
    parent = crash.WindowsCrashDump64Layer if bits == 64 else crash.WindowsCrashDump32Layer
    return dump.FORMATS[fmt].dump_type in parent.supported_dumptypes


def check_stacked_pages(paths, fmt: str, stackers: List[type]) -> None:
    context, names = stack(paths[fmt], stackers)
    layers = crash_layers(context, names)
    assert len(layers) == 1, f"{fmt}: one crash-dump layer expected, stacked {names}"
    layer = layers[0]
    bits = 64 if isinstance(layer, crash.WindowsCrashDump64Layer) else 32
    assert isinstance(layer, crashdump._ExtendedDumpTypes) != opened_by_volatility(fmt, bits), type(layer)
    raw = raw_bytes(paths["raw"])
    held = set(page_numbers(paths["pages"][fmt]))
    wrong = [n for n in sorted(held) if layer.read(n * PAGE, PAGE) != raw[n * PAGE : (n + 1) * PAGE]]
    assert not wrong, f"{fmt}: {len(wrong)} pages differ from the raw image, first {wrong[0]:#x}"
    absent = [n for n in page_numbers(paths["ram"]) if n not in held]
    assert not any(layer.is_valid(n * PAGE) for n in absent), f"{fmt}: a page the dump does not hold reads as present"


def check_kdmp_parser(paths, fmt: str) -> None:
    parser = kdmp_parser.KernelDumpParser(paths[fmt])
    assert parser.type == dump.FORMATS[fmt].dump_type
    raw = raw_bytes(paths["raw"])
    addresses = set(parser.pages.keys())
    assert addresses == {n * PAGE for n in page_numbers(paths["pages"][fmt])}, fmt
    wrong = [a for a in sorted(addresses) if bytes(parser.pages[a]) != raw[a : a + PAGE]]
    assert not wrong, f"{fmt}: kdmp-parser reads {len(wrong)} pages unlike the raw image, first {wrong[0]:#x}"


@pytest.mark.parametrize("profile", X64_PROFILES)
def test_kdmp_parser_reads_every_page_of_every_x64_format(forged_formats, profile):
    paths = forged_formats("rootkit", profile)
    for fmt in DUMP_FORMATS:
        check_kdmp_parser(paths, fmt)


@pytest.mark.parametrize("profile", BUILTIN_PROFILES)
def test_volatility_reads_every_page_of_every_format(forged_formats, profile):
    """Through the crash-dump stackers (ours and Volatility's), every format of the profile."""
    paths = forged_formats("rootkit", profile)
    for fmt in DUMP_FORMATS:
        if fmt in paths:
            check_stacked_pages(paths, fmt, crash_stackers())
        else:
            assert dump.FORMATS[fmt].x64_only and profile not in X64_PROFILES


def test_full_stack_holds_one_crash_layer_under_the_kernel_layer(forged_formats):
    """With every stacker Volatility has, as LayerStacker runs them: one crash-dump layer, the
    Intel layer on top of it, whichever stacker opened the dump."""
    paths = forged_formats("rootkit", "win10")
    for fmt in DUMP_FORMATS:
        context, names = stack(paths[fmt], all_stackers())
        assert len(crash_layers(context, names)) == 1, names
        assert type(context.layers[names[0]]).__name__ == "WindowsIntel32e", names
        assert isinstance(context.layers[names[1]], crash.WindowsCrashDump32Layer), names


def patched_copy(source: Path, target: Path, offset: int, data: bytes) -> Path:
    shutil.copyfile(source, target)
    with open(target, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)
    return target


def stack_with_log(path: Path, caplog) -> Tuple[object, List[logging.LogRecord]]:
    caplog.clear()
    context = open_file(path)
    layer = crashdump.WindowsCrashDumpExtendedStacker.stack(context, "FileLayer")
    return layer, [r for r in caplog.records if r.name == crashdump.vollog.name]


@pytest.mark.parametrize("dump_type, words", [(0, "DUMP_TYPE_UNKNOWN"), (2, "kernel summary dump"), (3, "holds no memory pages"),
                                              (4, "triage dump"), (7, "DUMP_TYPE_AUTOMATIC"), (0x20, "no Windows or debugger")])
def test_unsupported_dump_types_are_named_once_and_not_opened(forged_formats, tmp_path, caplog, dump_type, words):
    caplog.set_level(logging.INFO, logger=crashdump.vollog.name)
    paths = forged_formats("rootkit", "win10")
    path = patched_copy(paths["dump"], tmp_path / f"type{dump_type}.dmp", DUMP_TYPE_OFFSET[64], struct.pack("<I", dump_type))
    for attempt in range(2):
        layer, records = stack_with_log(path, caplog)
        assert layer is None
        if attempt == 0:
            assert [r.levelno for r in records] == [logging.WARNING]
            message = records[0].getMessage()
            assert f"64-bit Windows crash dump of DumpType {dump_type}," in message and words in message, message
            assert "\n" not in message
        else:
            assert records == [], "said once per file"


def test_x86_debugger_engine_dump_is_refused_with_the_reason(forged_formats, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=crashdump.vollog.name)
    paths = forged_formats("rootkit", "win7x86")
    path = patched_copy(paths["dump"], tmp_path / "x86-type8.dmp", DUMP_TYPE_OFFSET[32], struct.pack("<I", 8))
    layer, records = stack_with_log(path, caplog)
    assert layer is None
    assert [r.levelno for r in records] == [logging.WARNING]
    assert "32-bit Windows crash dump of DumpType 8" in records[0].getMessage()
    assert "no public description of its layout exists for 32-bit dumps" in records[0].getMessage()


@pytest.mark.parametrize("fmt", ["dump", "bitmap", "live", "kernel"])
def test_facts_are_logged_once_and_volatilitys_own_types_left_to_it(forged_formats, caplog, fmt):
    caplog.set_level(logging.INFO, logger=crashdump.vollog.name)
    paths = forged_formats("rootkit", "win10")
    layer, records = stack_with_log(paths[fmt], caplog)
    assert (layer is None) == opened_by_volatility(fmt, 64)
    assert [r.levelno for r in records] == [logging.INFO]
    message = records[0].getMessage()
    dump_type = dump.FORMATS[fmt].dump_type
    bugcheck = dump.BUGCHECK_LIVE_SYSTEM_DUMP if fmt == "live" else dump.BUGCHECK_MANUALLY_INITIATED_CRASH
    assert f"64-bit Windows crash dump of DumpType {dump_type}," in message
    assert f"bug check {bugcheck:#x} (0x0, 0x0, 0x0, 0x0); system time 2024-11-21 15:28:22 UTC" in message
    assert ("left to Volatility's own WindowsCrashDump64Layer" in message) == opened_by_volatility(fmt, 64)
    assert ("kernel memory only" in message) == (fmt in ("live", "kernel"))
    assert stack_with_log(paths[fmt], caplog)[1] == []


def test_a_volatility_that_opens_type_6_takes_it_over(forged_formats, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger=crashdump.vollog.name)
    monkeypatch.setattr(crash.WindowsCrashDump64Layer, "supported_dumptypes", [1, 5, 6])
    layer, records = stack_with_log(forged_formats("rootkit", "win10")["live"], caplog)
    assert layer is None and "left to Volatility's own" in records[0].getMessage()


def test_no_crash_layer_is_stacked_on_a_crash_layer(forged_formats):
    context, names = stack(forged_formats("rootkit", "win10")["kernel"], crash_stackers())
    assert crashdump.WindowsCrashDumpExtendedStacker.stack(context, names[0]) is None


def test_truncated_and_damaged_dumps_open_what_is_there_or_say_why(forged_formats, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=crashdump.vollog.name)
    paths = forged_formats("rootkit", "win10")
    truncated = tmp_path / "truncated.dmp"
    shutil.copyfile(paths["kernel"], truncated)
    with open(truncated, "r+b") as handle:
        handle.truncate(truncated.stat().st_size - 10 * PAGE)
    layer, records = stack_with_log(truncated, caplog)
    assert [r.levelno for r in records] == [logging.WARNING, logging.INFO]
    total = sum(count for _, count in paths["pages"]["kernel"])
    assert f"truncated: 10 of {total:,} pages (40 KiB, <1%) lie past the end of the file" in records[0].getMessage()
    held = list(page_numbers(paths["pages"]["kernel"]))
    raw = raw_bytes(paths["raw"])
    assert all(layer.read(n * PAGE, PAGE) == raw[n * PAGE : (n + 1) * PAGE] for n in held[:-10])
    assert not any(layer.is_valid(n * PAGE) for n in held[-10:])

    damaged = patched_copy(paths["kernel"], tmp_path / "damaged.dmp", 0x2004, b"XXXX")
    layer, records = stack_with_log(damaged, caplog)
    assert layer is None and [r.levelno for r in records] == [logging.WARNING]
    assert records[0].getMessage().endswith("cannot open this damaged Windows crash dump of DumpType 8: no RDMP header at 0x2000")


@pytest.mark.parametrize("fmt", ["dump", "bitmap"])
def test_a_truncated_dump_volatility_opens_itself_is_said_to_be_truncated(forged_formats, tmp_path, caplog, fmt):
    """DumpTypes 1 and 5 are Volatility's to open, and its layer never compares the file's size
    with the pages the header places in it: the stacker says it, once, with how much is missing."""
    caplog.set_level(logging.INFO, logger=crashdump.vollog.name)
    paths = forged_formats("rootkit", "win10")
    cut = tmp_path / f"cut-{fmt}.dmp"
    shutil.copyfile(paths[fmt], cut)
    with open(cut, "r+b") as handle:
        handle.truncate(cut.stat().st_size - 100 * PAGE - 10)
    layer, records = stack_with_log(cut, caplog)
    assert layer is None, "left to Volatility's own layer"
    total = sum(count for _, count in paths["pages"][fmt])
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"the crash dump is truncated: 101 of {total:,} pages (404 KiB, " in warnings[0], warnings
    assert stack_with_log(cut, caplog)[1] == [], "said once per file"


def fragmented_memory(runs: int) -> PhysicalMemory:
    """Every other page present: ``runs`` ranges that cannot merge."""
    memory = PhysicalMemory()
    for index in range(runs):
        memory.write((0x100 + 2 * index) * PAGE, index.to_bytes(4, "little"))
    return memory


def reads_to_open(path: Path, layer_class) -> Tuple[int, int]:
    """How many reads of the file opening ``path`` with ``layer_class`` costs, and its segments."""
    context = open_file(path)
    base = context.layers["FileLayer"]
    calls = []
    read = base.read
    base.read = lambda offset, length, pad=False: calls.append(length) or read(offset, length, pad)
    context.config["dump.base_layer"] = "FileLayer"
    layer = layer_class(context, "dump", "dump")
    return len(calls), len(layer._segments)


def test_opening_reads_the_page_list_once_whatever_its_length(tmp_path):
    """Opening a type 8/10 dump costs a fixed number of reads (the range list in one piece),
    no more than opening the same memory as type 5 with Volatility's layer, which reads its
    bitmap a dword at a time; a type 6 bitmap is also read in one piece."""
    facts = dump.MachineFacts(True, False, 0x1AD000, 19041, 0, 0, 0)
    costs = {}
    for runs in (10, 3000):
        memory = fragmented_memory(runs)
        for fmt in ("complete", "bitmap"):
            path = tmp_path / f"{runs}-{fmt}.dmp"
            dump.write_crash_dump(memory, path, facts, dump.FORMATS[fmt])
            layer_class = crash.WindowsCrashDump64Layer if fmt == "bitmap" else crashdump.WindowsCrashDumpExtended64Layer
            costs[runs, fmt] = reads_to_open(path, layer_class)
        kernel_bitmap = patched_copy(tmp_path / f"{runs}-bitmap.dmp", tmp_path / f"{runs}-live.dmp", DUMP_TYPE_OFFSET[64],
                                     struct.pack("<I", dump.DUMP_TYPE_BITMAP_KERNEL))
        costs[runs, "live"] = reads_to_open(kernel_bitmap, crashdump.WindowsCrashDumpExtended64Layer)
    for fmt in ("complete", "live"):
        assert costs[10, fmt][0] == costs[3000, fmt][0], costs
        assert costs[3000, fmt][1] == 3000, costs
        assert costs[3000, fmt][0] <= costs[3000, "bitmap"][0], costs


def test_vol_names_an_unsupported_dump_type_in_one_line_without_a_traceback(forged_formats, vol_cache, tmp_path):
    paths = forged_formats("rootkit", "win10")
    path = patched_copy(paths["dump"], tmp_path / "triage.dmp", DUMP_TYPE_OFFSET[64], struct.pack("<I", 4))
    result = run_vol(path, paths["symbols"], "windows.callbackobjects", cache=vol_cache)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "DumpType" in line]
    assert len(lines) == 1 and lines[0].startswith("WARNING"), result.stderr[-3000:]
    assert "DumpType 4, a triage dump" in lines[0]
