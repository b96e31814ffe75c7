"""Benchmark: windows.callbackobjects and windows.poolmap against windows.modules and
windows.callbacks on busy images.

    .venv/bin/python benchmarks/run.py                  # forge, measure, print
    .venv/bin/python benchmarks/run.py --write-results  # ... and rewrite benchmarks/RESULTS.md

Two images, each forged as it is written (never held in memory whole) and measured as a raw
image and as a crash dump:

The desktop: the ``busy`` scenario (tests/forge/stories/busy.py), a 4 GiB Windows 10 machine
whose RAM is nearly all mapped into kernel space and in use (a non-paged segment heap of 256 MiB
full of noise blocks, pool-like and cache-like pages, a few hundred decoy ``CBRe``/``Call``
strings) with the ``baseline`` callback inventory and its freed history. Each command runs as
its own ``vol`` process (the user's view: start-up, automagic, rendering with the ``quick``
renderer into /dev/null):

- ``windows.modules`` (the list-walking baseline),
- ``windows.callbacks`` (Volatility's, which scans pool),
- ``windows.callbackobjects`` (ours, default run: with pool scanning),
- ``windows.callbackobjects --no-scan`` (ours, list only),
- ``windows.callbackobjects`` with a forced full scan, when the plugin has such an option
  (``FULL_SCAN_OPTION``; until then the default run is the full scan).

The server: ``busy_server`` on 8 GiB of RAM, a non-paged heap of 512 MiB of subsegments (the
heap a responder waits on): ``windows.modules``, the default run, ``--no-scan`` and
``windows.poolmap --summary``; the cost of the heap is the default run less ``--no-scan``, per
MiB of heap and as a read rate.

Wall time and peak RSS come from ``/usr/bin/time -v`` when present, else from ``os.wait4`` on
the child (its ``ru_maxrss``). Each command runs ``--repeat`` times after unmeasured warm-up
runs per format (symbol and identifier caches, the OS page cache, the plugin's bytecode, kept
under ``--out`` as an installed plugin keeps it); the median is reported. Targets (issue 14): default run <= 0.2x windows.callbacks, forced full scan <= 0.35x
windows.callbacks, ``--no-scan`` <= 1.1x windows.modules, peak memory <= 1.5x windows.modules;
(issue 20) on the server image, default run <= 1.5x windows.modules, ``windows.poolmap
--summary`` <= 2x windows.modules, the heap read at >= 1 GB/s.

``--write-results`` rewrites RESULTS.md's figures and keeps its hand-written sections (from
``## The benchmark`` on). Never part of the test suite: it takes many minutes and writes 24 GiB
(each image raw and as a dump; each is deleted once measured unless ``--keep``).
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
PLUGIN_DIR = REPO / "volatility3_plugins"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TIME = "/usr/bin/time"
SCENARIO = "busy"
SERVER_SCENARIO = "busy_server"
SERVER_MEMORY = "8G"
#: The option the allocator-aware scan is to offer for a full scan of the kernel half.
FULL_SCAN_OPTION = "--full-scan"
#: Where RESULTS.md's hand-written part starts: kept as it is by --write-results.
KEPT_FROM = "## The benchmark"

DEFAULT = "callbackobjects (default)"
NO_SCAN = "callbackobjects --no-scan"
FULL_SCAN = "callbackobjects full scan"
MODULES = "windows.modules"
CALLBACKS = "windows.callbacks"

#: (label, plugin, plugin arguments)
COMMANDS: Sequence[Tuple[str, str, Tuple[str, ...]]] = (
    (MODULES, "windows.modules", ()),
    (CALLBACKS, "windows.callbacks", ()),
    (DEFAULT, "windows.callbackobjects", ()),
    (NO_SCAN, "windows.callbackobjects", ("--no-scan",)),
)
POOLMAP_SUMMARY = "poolmap --summary"
#: The server image's commands.
SERVER_COMMANDS: Sequence[Tuple[str, str, Tuple[str, ...]]] = (
    (MODULES, "windows.modules", ()),
    (DEFAULT, "windows.callbackobjects", ()),
    (NO_SCAN, "windows.callbackobjects", ("--no-scan",)),
    (POOLMAP_SUMMARY, "windows.poolmap", ("--summary",)),
)
SERVER_RATIOS = (
    ("default run / windows.modules (time)", DEFAULT, MODULES, "seconds", 1.5),
    ("poolmap --summary / windows.modules (time)", POOLMAP_SUMMARY, MODULES, "seconds", 2.0),
    ("default run / windows.modules (peak RSS)", DEFAULT, MODULES, "rss_mib", 1.5),
    ("poolmap --summary / windows.modules (peak RSS)", POOLMAP_SUMMARY, MODULES, "rss_mib", 1.5),
)
#: The heap read rate the server image's default run must reach (bytes per second).
HEAP_RATE_TARGET = 1e9
#: (description, numerator, denominator, "seconds" or "rss_mib", target)
RATIOS = (
    ("default run / windows.callbacks (time)", DEFAULT, CALLBACKS, "seconds", 0.2),
    ("forced full scan / windows.callbacks (time)", FULL_SCAN, CALLBACKS, "seconds", 0.35),
    ("--no-scan / windows.modules (time)", NO_SCAN, MODULES, "seconds", 1.1),
    ("default run / windows.modules (peak RSS)", DEFAULT, MODULES, "rss_mib", 1.5),
    ("--no-scan / windows.modules (peak RSS)", NO_SCAN, MODULES, "rss_mib", 1.5),
)


def vol_command(image: Path, symbols: Path, cache: Path, plugin: str, args: Sequence[str]) -> List[str]:
    return [
        sys.executable, "-c", "import sys; from volatility3.cli import main; sys.argv[0] = 'vol'; main()",
        "-q", "-r", "quick", "--offline", "--cache-path", str(cache), "-s", str(symbols),
        "-p", str(PLUGIN_DIR), "-f", str(image), plugin, *args,
    ]


def keep_bytecode(folder: Path) -> None:
    """Have every run from now on keep its compiled bytecode in ``folder`` (``PYTHONPYCACHEPREFIX``;
    the warm-up run compiles it), outside the source tree, which stays clean: Volatility runs from
    its installed, compiled modules, and so does a plugin once installed or run once from a
    checkout. Without it every run of ours would compile its ~70 modules again (~0.1 s here)
    while ``windows.modules`` compiles nothing: not what a user waits for."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(folder)


def measure(command: List[str]) -> Tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one run of ``command`` (in this process's environment)."""
    env = dict(os.environ)
    if os.path.exists(TIME):
        with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
            completed = subprocess.run([TIME, "-v", "-o", report.name, *command], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, text=True, env=env)
            if completed.returncode != 0:
                raise RuntimeError(f"{command[-1]} failed:\n{completed.stderr[-3000:]}")
            text = Path(report.name).read_text()
        wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text).group(1)
        seconds = 0.0
        for part in wall.split(":"):
            seconds = seconds * 60 + float(part)
        rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
        return seconds, rss_kib / 1024
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _pid, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    stderr = child.stderr.read().decode(errors="replace") if child.stderr else ""
    if child.returncode != 0:
        raise RuntimeError(f"{command[-1]} failed:\n{stderr[-3000:]}")
    return seconds, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def forge(out: Path, profile: str, memory_size: str, seed: int, scenario: str = SCENARIO) -> Dict[str, object]:
    """Forge (or reuse) a busy image; returns its ground truth."""
    if not ((out / "memory.raw").exists() and (out / "memory.dmp").exists() and (out / "truth.json").exists()):
        print(f"forging {scenario} on {profile} with {memory_size} of memory into {out} ...", flush=True)
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "tests.forge", scenario, "--profile", profile, "--out", str(out),
                        "--memory-size", memory_size, "--seed", str(seed)], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        print(f"forged in {time.monotonic() - started:.0f} s", flush=True)
    else:
        print(f"reusing the image in {out}")
    return json.loads((out / "truth.json").read_text())


def has_full_scan_option(image: Path, symbols: Path, cache: Path) -> bool:
    help_text = subprocess.run(vol_command(image, symbols, cache, "windows.callbackobjects", ("--help",)),
                               capture_output=True, text=True).stdout
    return FULL_SCAN_OPTION in help_text


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        memory = f", {kib / 1024 / 1024:.0f} GiB RAM"
    except (OSError, AttributeError):
        pass
    try:
        from volatility3.framework import constants
        volatility = constants.PACKAGE_VERSION
    except ImportError:
        volatility = "?"
    load = ""
    if hasattr(os, "getloadavg"):
        load = f"; load average {os.getloadavg()[1]:.1f} when measuring started (other work shares the machine)"
    return (f"{cpu}, {os.cpu_count()} logical CPUs{memory}; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}; Volatility 3 {volatility}{load}")


def image_description(truth: Dict[str, object], profile: str, memory_size: str, scenario: str = SCENARIO) -> str:
    notes = truth.get("notes", {}).get("busy", {})  # type: ignore[union-attr]
    heap = notes.get("heap_noise", {})
    return (f"`{scenario}` scenario, profile `{profile}` (build {truth['build']}), {memory_size} of RAM, seed "
            f"{truth['seed']}: {notes.get('filler_pages', 0):,} filler pages mapped in kernel space "
            f"({notes.get('decoy_pages', 0)} with decoys), a non-paged heap of "
            f"{heap.get('bytes', 0) / 2**20:.0f} MiB ({heap.get('lfh_blocks', 0):,} allocated and "
            f"{heap.get('lfh_freed', 0):,} freed LFH blocks, {heap.get('vs_blocks', 0):,} allocated and "
            f"{heap.get('vs_freed', 0):,} freed VS blocks), {len(truth['rows_with_scan'])} rows expected from ours")


Results = Dict[str, Dict[str, Tuple[float, float]]]


def command_table(results: Results, labels: Sequence[str], repeat: int) -> List[str]:
    lines = ["| command | raw: wall (s) | raw: peak RSS (MiB) | dump: wall (s) | dump: peak RSS (MiB) |",
             "|---|---|---|---|---|"]
    for label in labels:
        cells = [f"{results[fmt][label][0]:.2f} | {results[fmt][label][1]:.1f}" for fmt in ("raw", "dump")]
        lines.append(f"| `{label}` | " + " | ".join(cells) + " |")
    runs = f"Median of {repeat} runs" if repeat > 1 else "One run"
    return lines + ["", f"{runs} after warm-up runs per format (caches, compiled bytecode); renderer `quick` to /dev/null.", "",
                    "| ratio | raw | dump | target | met |", "|---|---|---|---|---|"]


def ratio_lines(results: Results, ratios: Sequence[Tuple[str, str, str, str, float]]) -> Tuple[List[str], bool]:
    lines, all_met = [], True
    for description, numerator, denominator, what, target in ratios:
        index = 0 if what == "seconds" else 1
        values = [results[fmt][numerator][index] / results[fmt][denominator][index] for fmt in ("raw", "dump")]
        met = all(value <= target for value in values)
        all_met &= met
        lines.append(f"| {description} | {values[0]:.2f} | {values[1]:.2f} | <= {target} | {'yes' if met else 'NO'} |")
    return lines, all_met


def server_report(results: Results, repeat: int, heap_bytes: int) -> Tuple[str, bool]:
    """The server image's table, ratios and the heap's cost: the default run less ``--no-scan``,
    per MiB of heap and as a read rate."""
    lines = command_table(results, [label for label, _, _ in SERVER_COMMANDS], repeat)
    ratios, met = ratio_lines(results, SERVER_RATIOS)
    lines += ratios
    costs = []
    for fmt in ("raw", "dump"):
        seconds = max(results[fmt][DEFAULT][0] - results[fmt][NO_SCAN][0], 1e-6)
        costs.append((seconds * 1000 / (heap_bytes / 2**20), heap_bytes / seconds))
    rate_met = all(rate >= HEAP_RATE_TARGET for _, rate in costs)
    lines.append(f"| heap read (default run less --no-scan): MB/s | {costs[0][1] / 1e6:.0f} | {costs[1][1] / 1e6:.0f} "
                 f"| >= {HEAP_RATE_TARGET / 1e6:.0f} | {'yes' if rate_met else 'NO'} |")
    lines += ["", f"Cost of the heap: {costs[0][0]:.2f} ms per MiB raw, {costs[1][0]:.2f} ms per MiB from the dump "
              f"({heap_bytes / 2**20:.0f} MiB of subsegments)."]
    return "\n".join(lines), met and rate_met


def report(results: Results, repeat: int, full_scan: bool) -> Tuple[str, bool]:
    lines = command_table(results, [label for label, _, _ in COMMANDS] + ([FULL_SCAN] if full_scan else []), repeat)
    all_met = True
    for description, numerator, denominator, what, target in RATIOS:
        if numerator == FULL_SCAN and not full_scan:
            lines.append(f"| {description} | n/a | n/a | <= {target} | no option yet: the default run is the full scan |")
            continue
        found, met = ratio_lines(results, [(description, numerator, denominator, what, target)])
        lines += found
        all_met &= met
    return "\n".join(lines), all_met


def measure_image(out: Path, commands: Sequence[Tuple[str, str, Tuple[str, ...]]], cache: Path,
                  repeat: int) -> Results:
    """Every command on the raw image and the dump of the image in ``out``, median of ``repeat``."""
    symbols = out / "symbols"
    results: Results = {}
    for fmt, name in (("raw", "memory.raw"), ("dump", "memory.dmp")):
        image = out / name
        measure(vol_command(image, symbols, cache, "windows.modules", ()))  # warm-up: caches
        measure(vol_command(image, symbols, cache, "windows.callbackobjects", ()))  # ... and our bytecode
        results[fmt] = {}
        for label, plugin, plugin_args in commands:
            runs = [measure(vol_command(image, symbols, cache, plugin, plugin_args)) for _ in range(repeat)]
            results[fmt][label] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
            print(f"{fmt:4s} {label:32s} {results[fmt][label][0]:7.2f} s  {results[fmt][label][1]:7.1f} MiB", flush=True)
    return results


def kept_sections(path: Path) -> str:
    """RESULTS.md's hand-written part (from ``## The benchmark`` on), kept by --write-results."""
    if not path.exists():
        return ""
    text = path.read_text()
    start = text.find(KEPT_FROM)
    return "\n" + text[start:].rstrip() + "\n" if start >= 0 else ""


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "callbackobjects-benchmark",
                        help="where the images are forged (reused when present)")
    parser.add_argument("--profile", default="win10")
    parser.add_argument("--memory-size", default="4G")
    parser.add_argument("--server-memory-size", default=SERVER_MEMORY)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--write-results", action="store_true", help=f"rewrite {RESULTS.name}")
    parser.add_argument("--keep", action="store_true", help="keep the forged images afterwards")
    args = parser.parse_args(argv)

    cache = args.out / "volatility-cache"
    cache.mkdir(parents=True, exist_ok=True)
    keep_bytecode(args.out / "bytecode")
    conditions = machine()  # before the runs load the machine themselves
    out = args.out / f"{SCENARIO}-{args.profile}-{args.memory_size}-{args.seed}"
    truth = forge(out, args.profile, args.memory_size, args.seed)
    full_scan = has_full_scan_option(out / "memory.raw", out / "symbols", cache)
    commands = list(COMMANDS) + ([(FULL_SCAN, "windows.callbackobjects", (FULL_SCAN_OPTION,))] if full_scan else [])
    results = measure_image(out, commands, cache, args.repeat)
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    text, met = report(results, args.repeat, full_scan)
    section = f"Image: {image_description(truth, args.profile, args.memory_size)}.\n\n{text}"

    server_out = args.out / f"{SERVER_SCENARIO}-{args.profile}-{args.server_memory_size}-{args.seed}"
    server_truth = forge(server_out, args.profile, args.server_memory_size, args.seed, SERVER_SCENARIO)
    server_results = measure_image(server_out, SERVER_COMMANDS, cache, args.repeat)
    if not args.keep:
        shutil.rmtree(server_out, ignore_errors=True)
    heap_bytes = server_truth["notes"]["busy"]["heap_noise"]["bytes"]  # type: ignore[index]
    server_text, server_met = server_report(server_results, args.repeat, heap_bytes)
    section += ("\n\n## A server's heap\n\nImage: "
                + image_description(server_truth, args.profile, args.server_memory_size, SERVER_SCENARIO)
                + ".\n\n" + server_text)
    print()
    print(section)
    if args.write_results:
        RESULTS.write_text(
            "# Benchmark results\n\n"
            f"Measured {datetime.date.today().isoformat()} with `.venv/bin/python benchmarks/run.py "
            f"--write-results{'' if args.repeat == 3 else f' --repeat {args.repeat}'}` on: {conditions}.\n\n"
            + section + "\n" + ANALYSIS + kept_sections(RESULTS)
        )
        print(f"\nwrote {RESULTS}")
    return 0 if met and server_met else 1


#: Written under the figures: what they mean (rewritten with them by --write-results).
ANALYSIS = """
## Reading the figures

- The image is what a responder gets from a busy 4 GiB Windows 10 machine: nearly every frame
  mapped in kernel space and holding pool-like or cache-like data, so a scan of the whole
  kernel half reads about 4 GiB. `windows.modules` walks one list and reads almost nothing.
- The default run reads only the non-paged heap's LFH and VS subsegments (256 MiB here), where
  the segment heap's metadata says its blocks lie, and takes every block's allocation state from
  that metadata. `windows.callbacks` scans the whole kernel half through Volatility's `layer.scan`,
  a Python translation of every page.
- The forced full scan (`--full-scan`) reads physical memory in 4 MiB sequential pieces, looks
  for the tags only where a pool header keeps them, and maps the few hits back through one walk
  of the page tables: about 4 GiB at well over 400 MB/s; memory grows with the hits whose pool
  header can hold their tag's structure, not with the image.
- Volatility's translation layers cache their last 512 `read()` results; the scans read around
  that cache (through the layers' mappings), or the default run alone would hold 300 MB.
- `--no-scan` builds only what its rows need: two object-type indices instead of the type map,
  a kernel-symbol index built from the ISF's dictionary in one pass.
- The server image's heap is read by one walk of the page tables per range (tables read whole
  and kept) and positioned reads of the image straight into one reused buffer
  (`kernelread/translation.py`): no per-page translation through Volatility. What remains is
  Python's own cost of searching every pool-header position for the scan's tags, and of
  decoding every LFH subsegment and VS chunk for the pool map's summary.
"""


if __name__ == "__main__":
    sys.exit(main())
