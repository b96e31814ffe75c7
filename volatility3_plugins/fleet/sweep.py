"""Sweeping a fleet: ``windows.callbackobjects`` over many images, one Volatility process each.

For every image the sweep writes, into its output folder, ``NAME.json`` (the plugin's ``-r json``
output, as Volatility printed it) and ``NAME.meta.json`` (its sidecar: the image, its kernel build
and PDB from the verdict line, the exit status and the reason of a refusal, the options, the
versions, when and where it ran), then the stack of all outputs (``stack.json``, ``stack.txt``).

- Names: an image's file name, or as many of its last path components as tell it apart from the
  others (``host01__memory.raw``); an image an earlier sweep of the folder named keeps its name.
- Status: ``ok`` (a complete verdict), ``degraded`` (rows, but the image lacked evidence: the
  plugin's exit status 3, or its verdict line saying ``evidence degraded``; never ``ok``),
  ``refused`` (no verdict: the reason is the plugin's own message, else what this package's
  layers said of the file, else Volatility's), ``failed`` (the run itself did not finish).
- Resumable: an image whose sidecar says ``ok`` or ``degraded`` for the same image file (size
  and modification time), the same options and with its output present is not run again (the
  same file gives the same verdict). Every file is written
  to a hidden temporary name and renamed, output first and sidecar last, so an interrupted sweep
  leaves no half file and no sidecar claiming an output that is not there. A refused or failed
  image is run again (its cause, missing symbols say, may have been fixed).
- An image the plugin refuses (exit 1: truncated, not Windows, no symbols) is recorded with its
  reason and the sweep goes on; a command line Volatility rejects
  (exit 2, usage) stops the sweep at once, since every image would fail the same way.
"""

import dataclasses
import datetime
import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from ..schema import flags, outputs, verdict_line
from . import executors, paths, stack

PLUGIN = "windows.callbackobjects"
SIDECAR_FORMAT = "callbackobjects-sweep/1"
OK, DEGRADED, REFUSED, FAILED = "ok", "degraded", "refused", "failed"
#: Statuses whose run gave rows (written, stacked, not run again on resume).
WITH_ROWS = (OK, DEGRADED)
#: Sidecar fields that say when and where an image ran, not what it holds.
CIRCUMSTANCES = ("host", "started", "seconds")
#: Volatility options the sweep sets itself.
OWN_OPTIONS = ("-f", "--file", "--single-location", "-r", "--renderer")
#: Most lines of a refusal's explanation, and of warnings, kept in a sidecar.
MAX_REASON_LINES = 40
MAX_WARNINGS = 50
BANNER = "Volatility 3 Framework"
PARTIAL_PREFIX, PARTIAL_SUFFIX = ".", ".partial"
#: Loggers of this package's layers: what they warn about is what the file is (not a memory dump,
#: truncated, damaged), the reason of a refusal when the plugin did not say its own.
LAYERS_LOGGER = "volatility3.plugins.layers."
#: A first line for the refusals Volatility explains only in its own words, each said only where
#: it applies: no layer found (no Windows kernel in the file) is not a symbols problem.
HINTS = (
    (re.compile(r"Unsatisfied requirement \S*\.kernel\.layer_name"),
     "Volatility found no Windows kernel in this file: not a memory image it can open, or the pages that hold "
     "the kernel are missing"),
    (re.compile(r"Unsatisfied requirement \S*\.kernel\.symbol_table_name"),
     "Volatility found a Windows kernel but no symbol table for it (-s SYMBOLS, or no --offline so that "
     "Volatility fetches it)"),
    (re.compile(r"Unsatisfied requirement \S*\.baseline"), "the --baseline outputs cannot be read"),
)


class SweepError(RuntimeError):
    """The sweep cannot go on (bad arguments, Volatility rejecting its command line)."""


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How every image of a sweep is run: Volatility's own options, the plugin's, a time limit."""

    volatility: Tuple[str, ...] = ()
    plugin: Tuple[str, ...] = ()
    #: Seconds before an image's Volatility process is stopped; None: no limit.
    timeout: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class Job:
    """One image to run the plugin on; what a task receives (locally or on a Dask worker)."""

    image: str
    name: str
    options: RunOptions = RunOptions()


@dataclasses.dataclass
class Run:
    """What one Volatility process did; what a task returns."""

    exit_code: Optional[int]
    stdout: str
    stderr: str
    started: str
    seconds: float
    host: str
    versions: Dict[str, Optional[str]]
    #: The runner's own failure (timeout, could not start), None when Volatility ran to its end.
    error: Optional[str] = None


def command(job: Job) -> List[str]:
    """The Volatility command of a job, with the interpreter running the task (a Dask worker's
    own, on a worker)."""
    return [sys.executable, "-m", "volatility3_plugins", *job.options.volatility,
            "-q", "-r", "json", "-f", job.image, PLUGIN, *job.options.plugin]


@functools.lru_cache(maxsize=None)
def _version(distribution: str) -> Optional[str]:
    try:
        from importlib import metadata
    except ImportError:  # pragma: no cover (Python < 3.8)
        return None
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def versions() -> Dict[str, Optional[str]]:
    return {name: _version(name) for name in ("volatility3-callbackobjects", "volatility3")}


def run_image(job: Job) -> Run:
    """Runs the plugin on one image in a Volatility process of its own (the task of a sweep)."""
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    clock = time.monotonic()
    exit_code, stdout, stderr, error = None, "", "", None
    try:
        completed = subprocess.run(
            command(job), stdin=subprocess.DEVNULL, capture_output=True, encoding="utf-8",
            errors="replace", timeout=job.options.timeout,
        )
        exit_code, stdout, stderr = completed.returncode, completed.stdout, completed.stderr
    except subprocess.TimeoutExpired as expired:
        error = f"timed out after {job.options.timeout:g} s"
        stderr = expired.stderr if isinstance(expired.stderr, str) else ""
    except OSError as excp:
        error = f"could not start Volatility: {excp}"
    return Run(exit_code, stdout, stderr, started, round(time.monotonic() - clock, 3), socket.gethostname(),
               versions(), error)


# -- reading what a run printed ------------------------------------------------------------


def _lines(text: str) -> List[str]:
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def verdict_of(stderr: str) -> Optional[str]:
    """The last verdict line the plugin logged, from its prefix on."""
    for line in reversed(_lines(stderr)):
        found = verdict_line.locate(line)
        if found is not None:
            return found
    return None


def refusal_of(lines: Sequence[str]) -> Optional[str]:
    """The plugin's own refusal (:data:`verdict_line.REFUSAL` to the end of its line, without
    the parenthesis Volatility's explanation closes it with)."""
    for line in lines:
        start = line.find(verdict_line.REFUSAL)
        if start >= 0:
            text = line[start:]
            # Volatility writes "ADDRESS in layer NAME (MESSAGE)": its parenthesis, not ours.
            return text[:-1] if line[:start].endswith("(") and text.endswith(")") else text
    return None


def layer_warning_of(lines: Sequence[str]) -> Optional[str]:
    """The first thing this package's layers warned about the file (``file:///...:`` dropped:
    the sweep names the image)."""
    for line in lines:
        if line.startswith(("WARNING", "ERROR", "CRITICAL")) and f" {LAYERS_LOGGER}" in line:
            message = warning_message(line)
            return re.sub(r"^[a-z]+://\S+: ", "", message)
    return None


def explanation(run: Run) -> str:
    """Why a run gave no rows, first line first: the plugin's own refusal, else what this
    package's layers said of the file, else a hint for Volatility's own words where one applies;
    then what Volatility said (its error lines and any explanation on standard output, without
    the banner and the verdict)."""
    said = [line for line in _lines(run.stderr) if not line.startswith(BANNER) and verdict_line.locate(line) is None]
    try:
        json.loads(run.stdout)
    except ValueError:
        said += _lines(run.stdout)
    said = said[-MAX_REASON_LINES:]
    if run.error:
        said.insert(0, run.error)
    first = refusal_of(said) or layer_warning_of(said)
    if first is None:
        first = next((hint for pattern, hint in HINTS if any(pattern.search(line) for line in said)), None)
    return "\n".join(([first] if first else []) + said) or f"exit code {run.exit_code}, nothing said"


def parse_rows(stdout: str) -> Optional[List[Dict[str, Any]]]:
    try:
        return outputs.parse_rows("output", json.loads(stdout))
    except (ValueError, outputs.OutputError):
        return None


def is_usage_error(run: Run) -> bool:
    """Volatility's argument parser rejected the command line (exit 2, ``error:``)."""
    return run.exit_code == 2 and "error:" in run.stderr


def sidecar(job: Job, run: Run, rows: Optional[List[Dict[str, Any]]]) -> Dict[str, Any]:
    """The sidecar of one run (see the module docstring)."""
    verdict = verdict_of(run.stderr)
    said = verdict_line.parse(verdict) if verdict is not None else None
    if run.error is not None or (run.exit_code is not None and run.exit_code < 0):
        status = FAILED
    elif run.exit_code in (0, verdict_line.DEGRADED_EXIT_STATUS):
        degraded = run.exit_code == verdict_line.DEGRADED_EXIT_STATUS or (said is not None and said.degraded)
        status = FAILED if rows is None else DEGRADED if degraded else OK
    else:
        status = REFUSED
    pdb = said.kernel_pdb if said is not None else None
    by_flag: Dict[str, int] = {}
    suspicious_rows = 0
    for row in rows or []:
        row_flags = outputs.row_flags(row)
        suspicious_rows += flags.any_suspicious(row_flags)
        for flag in row_flags:
            by_flag[flag] = by_flag.get(flag, 0) + 1
    if status == OK:
        reason = None
    elif status == DEGRADED:
        causes = said.evidence if said is not None and said.evidence else ("the plugin exited with the status of a degraded verdict",)
        reason = f"evidence degraded ({', '.join(causes)})"
    elif run.exit_code is not None and run.exit_code < 0:
        reason = f"Volatility was killed by signal {-run.exit_code}"
    elif run.error is None and run.exit_code in (0, verdict_line.DEGRADED_EXIT_STATUS):
        reason = "the output is not a JSON list of rows"
    else:
        reason = explanation(run)
    image = os.stat(job.image) if os.path.exists(job.image) else None
    return {
        "format": SIDECAR_FORMAT,
        "image": job.image,
        "image_size": image.st_size if image else None,
        "image_mtime_ns": image.st_mtime_ns if image else None,
        "output": job.name + outputs.OUTPUT_SUFFIX if status in WITH_ROWS else None,
        "status": status,
        "exit_code": run.exit_code,
        "reason": reason,
        "verdict": verdict,
        "build": said.build if said is not None else None,
        "kernel_pdb": {"guid": pdb[0], "age": pdb[1]} if pdb is not None else None,
        "rows": len(rows) if rows is not None else None,
        "suspicious_rows": suspicious_rows if rows is not None else None,
        "flags": {flag: by_flag[flag] for flag in flags.sort_flags(by_flag)},
        "warnings": [line for line in _lines(run.stderr)
                     if line.startswith(("WARNING", "ERROR", "CRITICAL")) and verdict_line.locate(line) is None][:MAX_WARNINGS],
        "plugin": PLUGIN,
        "plugin_options": list(job.options.plugin),
        "volatility_options": list(job.options.volatility),
        "versions": run.versions,
        "host": run.host,
        "started": run.started,
        "seconds": run.seconds,
    }


# -- the output folder --------------------------------------------------------------------


def write_atomically(path: str, text: str) -> None:
    """``path`` appears whole or not at all (a hidden temporary file renamed over it)."""
    folder, name = os.path.split(path)
    partial = os.path.join(folder, f"{PARTIAL_PREFIX}{name}.{os.getpid()}{PARTIAL_SUFFIX}")
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def output_path(out_dir: str, name: str) -> str:
    return os.path.join(out_dir, name + outputs.OUTPUT_SUFFIX)


def record(out_dir: str, job: Job, run: Run) -> Dict[str, Any]:
    """Writes an image's output (when it gave rows) and then its sidecar; returns the sidecar."""
    gave_rows = run.exit_code in (0, verdict_line.DEGRADED_EXIT_STATUS) and run.error is None
    rows = parse_rows(run.stdout) if gave_rows else None
    meta = sidecar(job, run, rows)
    output = output_path(out_dir, job.name)
    if meta["status"] in WITH_ROWS:
        write_atomically(output, run.stdout)
    elif os.path.exists(output):
        os.remove(output)  # an earlier run's rows no longer describe this run
    write_atomically(outputs.sidecar_path(output), json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def existing_sidecars(out_dir: str) -> Dict[str, Tuple[str, Dict[str, Any]]]:
    """Sidecars an earlier sweep left in the folder: image path -> (name, sidecar)."""
    found: Dict[str, Tuple[str, Dict[str, Any]]] = {}
    if not os.path.isdir(out_dir):
        return found
    for file_name in sorted(os.listdir(out_dir)):
        if file_name.endswith(outputs.SIDECAR_SUFFIX) and not file_name.startswith(PARTIAL_PREFIX):
            meta = outputs.read_sidecar(os.path.join(out_dir, file_name[: -len(outputs.SIDECAR_SUFFIX)]
                                                     + outputs.OUTPUT_SUFFIX))
            if meta is not None and isinstance(meta.get("image"), str):
                found[meta["image"]] = (file_name[: -len(outputs.SIDECAR_SUFFIX)], meta)
    return found


def is_done(out_dir: str, job: Job, meta: Optional[Dict[str, Any]]) -> bool:
    """The image was swept with these options, has not changed since, and its output is there."""
    if meta is None or meta.get("status") not in WITH_ROWS or meta.get("image") != job.image:
        return False
    if meta.get("plugin_options") != list(job.options.plugin):
        return False
    if meta.get("volatility_options") != list(job.options.volatility):
        return False
    try:
        image = os.stat(job.image)
    except OSError:
        return False
    if (meta.get("image_size"), meta.get("image_mtime_ns")) != (image.st_size, image.st_mtime_ns):
        return False
    return os.path.isfile(output_path(out_dir, job.name))


def remove_partials(out_dir: str) -> None:
    """Temporary files of an interrupted sweep."""
    for file_name in os.listdir(out_dir):
        if file_name.startswith(PARTIAL_PREFIX) and file_name.endswith(PARTIAL_SUFFIX):
            os.remove(os.path.join(out_dir, file_name))


# -- the sweep ------------------------------------------------------------------------------


@dataclasses.dataclass
class Settings:
    out_dir: str
    workers: int
    options: RunOptions = RunOptions()
    #: A Dask scheduler address, ``local`` for a local Dask cluster, None for local processes.
    scheduler: Optional[str] = None
    #: The stack names the images of a registration carried by at most this many.
    rare: int = 3


@dataclasses.dataclass
class Outcome:
    """One image of the sweep: its job, its sidecar, whether this run skipped it."""

    job: Job
    meta: Dict[str, Any]
    skipped: bool


def check_volatility_options(options: Sequence[str]) -> None:
    for option in options:
        if option.split("=", 1)[0] in OWN_OPTIONS:
            raise SweepError(f"{option}: the sweep sets the image and the renderer itself")
        if option == PLUGIN or option.startswith("windows."):
            raise SweepError(f"{option}: give Volatility's own options only; the sweep runs {PLUGIN} itself")


def prepare_cache(options: Sequence[str]) -> None:
    """Volatility stops with a traceback on a ``--cache-path`` that does not exist: create it."""
    for index, option in enumerate(options):
        if option == "--cache-path" and index + 1 < len(options):
            os.makedirs(options[index + 1], exist_ok=True)
        elif option.startswith("--cache-path="):
            os.makedirs(option.split("=", 1)[1], exist_ok=True)


def plan(images: Sequence[str], settings: Settings) -> Tuple[List[Job], Dict[str, Dict[str, Any]]]:
    """Every image's job (names kept from an earlier sweep of the folder) and the sidecars
    of those already done."""
    earlier = existing_sidecars(settings.out_dir)
    # Names of earlier images stay theirs, swept again or not: their files are in the folder.
    names = paths.unique_names(images, {image: name for image, (name, _) in earlier.items()})
    jobs = [Job(image, names[image], settings.options) for image in images]
    done = {job.image: earlier[job.image][1] for job in jobs
            if job.image in earlier and is_done(settings.out_dir, job, earlier[job.image][1])}
    return jobs, done


def execute(jobs: Sequence[Job], settings: Settings) -> Iterator[Tuple[Job, object]]:
    if settings.scheduler:
        return executors.run_distributed(run_image, jobs, settings.scheduler, settings.workers)
    return executors.run_local(run_image, jobs, settings.workers)


def failed_run(error: BaseException) -> Run:
    """A task that raised instead of returning (a lost Dask worker, say)."""
    return Run(None, "", "", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), 0.0,
               "", versions(), f"the task failed: {type(error).__name__}: {error}")


def sweep(images: Sequence[str], settings: Settings, progress_stream=None) -> List[Outcome]:
    """Runs the plugin on every image not done yet and writes outputs, sidecars and the stack.
    Returns every image's outcome, in the order of ``images``."""
    from .progress import Progress

    check_volatility_options(settings.options.volatility)
    prepare_cache(settings.options.volatility)
    os.makedirs(settings.out_dir, exist_ok=True)
    remove_partials(settings.out_dir)
    jobs, done = plan(images, settings)
    pending = [job for job in jobs if job.image not in done]
    metas: Dict[str, Dict[str, Any]] = dict(done)
    progress = Progress(len(pending), progress_stream)
    progress.start()
    # Nothing left to run: no executor at all (a Dask scheduler is not even contacted).
    results = execute(pending, settings) if pending else iter(())
    try:
        for job, result in results:
            run = result if isinstance(result, Run) else failed_run(result)  # type: ignore[arg-type]
            if is_usage_error(run):
                raise SweepError("Volatility rejected the command line:\n" + explanation(run))
            if run.exit_code == -signal.SIGINT and not settings.scheduler:
                # Ctrl-C reached the local Volatility process too (one process group) and may
                # have been handed to a worker thread, not to this one: the user stopped the
                # sweep, the image did not fail. Nothing is recorded; a resumed sweep runs it.
                raise KeyboardInterrupt
            metas[job.image] = record(settings.out_dir, job, run)
            progress.update(job.name, metas[job.image]["status"], run.seconds)
    finally:
        if hasattr(results, "close"):
            results.close()  # an executor's generator: cancels the tasks not finished
        progress.finish()
    outcomes = [Outcome(job, metas[job.image], job.image in done) for job in jobs]
    write_stack(settings.out_dir, outcomes, settings.rare)
    return outcomes


def stack_of(out_dir: str, outcomes: Sequence[Outcome]) -> stack.Stack:
    """The stack of the sweep's images (not of whatever else the folder holds)."""
    stacked, not_stacked = [], []
    for outcome in outcomes:
        if outcome.meta.get("status") not in WITH_ROWS:
            not_stacked.append((outcome.job.name, f"{outcome.meta.get('status')}: {headline(outcome.meta)}"))
            continue
        try:
            stacked.append((outcome.job.name, outputs.read_output(output_path(out_dir, outcome.job.name))))
        except outputs.OutputError as error:
            not_stacked.append((outcome.job.name, str(error)))
    return stack.build(stacked, not_stacked)


def write_stack(out_dir: str, outcomes: Sequence[Outcome], rare: int) -> stack.Stack:
    found = stack_of(out_dir, outcomes)
    write_atomically(os.path.join(out_dir, outputs.STACK_JSON), stack.render_json(found))
    write_atomically(os.path.join(out_dir, outputs.STACK_TEXT), stack.render_text(found, rare))
    return found


def _images(count: int) -> str:
    return f"{count} image" + ("" if count == 1 else "s")


def warning_message(line: str) -> str:
    """A logged warning without its level and logger (``WARNING  volatility3...: text``)."""
    head, separator, message = line.partition(": ")
    return message if separator and " " in head else line


def headline(meta: Dict[str, Any]) -> str:
    """The first line of an image's reason, without the advice that follows it."""
    reason = (meta.get("reason") or "").splitlines()
    first = reason[0] if reason else ""
    for advice in (". Likely cause", ". Try: "):
        if advice in first:
            first = first[: first.index(advice)]
    return first


def finding(meta: Dict[str, Any]) -> str:
    """What an image's sidecar says needs a look: why it was not swept or why its evidence is
    degraded, its suspicious rows by flag, the first warning the plugin gave (a baseline of
    another build, a route that failed); empty for an image without any."""
    if meta.get("status") not in WITH_ROWS:
        return headline(meta)
    said = [headline(meta)] if meta.get("status") == DEGRADED else []
    if meta.get("suspicious_rows"):
        by_flag = meta.get("flags") or {}
        suspicious = ", ".join(f"{flag} {by_flag[flag]}" for flag in flags.sort_flags(by_flag)
                               if flags.is_suspicious(flag))
        said.append(f"{meta['suspicious_rows']} suspicious rows ({suspicious})")
    warnings = meta.get("warnings") or []
    if warnings and meta.get("status") == OK:
        more = f" (+{len(warnings) - 1} more)" if len(warnings) > 1 else ""
        said.append(f"warning: {warning_message(warnings[0])}{more}")
    return "; ".join(said)


def summary(outcomes: Sequence[Outcome], out_dir: str) -> str:
    """What the sweep found, for standard output: counts, then every image that needs a look
    (suspicious rows, warnings, refused, failed); the others are only counted."""
    by_status: Dict[str, int] = {}
    for outcome in outcomes:
        status = outcome.meta.get("status", FAILED)
        by_status[status] = by_status.get(status, 0) + 1
    skipped = sum(outcome.skipped for outcome in outcomes)
    lines = [
        f"Swept {_images(len(outcomes))} into {out_dir}: {by_status.get(OK, 0)} ok"
        + (f" ({skipped} done by an earlier sweep)" if skipped else "")
        + f", {by_status.get(DEGRADED, 0)} degraded, {by_status.get(REFUSED, 0)} refused, {by_status.get(FAILED, 0)} failed."
    ]
    notable = []
    for outcome in outcomes:
        said = finding(outcome.meta)
        if said or outcome.meta.get("status") != OK:
            build = str(outcome.meta.get("build") or "-")
            notable.append((outcome.job.name, str(outcome.meta.get("status", FAILED)), build, said))
    quiet = len(outcomes) - len(notable)
    if notable:
        header = ("image", "status", "build", "finding")
        widths = [max(len(row[column]) for row in [header] + notable) for column in range(3)]
        lines.append("")
        for row in [header] + notable:
            lines.append("  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3])
    lines.append("")
    lines.append(f"{_images(quiet)} without a suspicious row or warning. "
                 f"Stack: {os.path.join(out_dir, outputs.STACK_TEXT)} (and {outputs.STACK_JSON}).")
    return "\n".join(lines) + "\n"
