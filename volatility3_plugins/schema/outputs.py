"""Reading the plugin's own JSON outputs (``-r json``) and the sidecars a sweep writes beside them.

Known-good comparison (``--baseline``) and stacking (``vol-callbackobjects stack``) both read what
earlier runs of ``windows.callbackobjects`` printed: a JSON list of rows, one object per row with
the plugin's columns (Volatility's JSON renderer adds ``__children``). A fleet sweep writes, beside
each output ``NAME.json``, a sidecar ``NAME.meta.json`` with what the rows do not carry: the image,
its kernel build, the plugin's exit status and verdict line.

Anything else is refused with a message saying what the file is and what was expected, never a
traceback: a responder pointing ``--baseline`` at the wrong folder must learn it at once.

Standard library only: the fleet commands use it without starting Volatility.
"""

import dataclasses
import json
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence

from . import columns

#: A plugin output is ``NAME.json``; its sidecar, written by a sweep, ``NAME.meta.json``.
OUTPUT_SUFFIX = ".json"
SIDECAR_SUFFIX = ".meta.json"
#: Files a sweep writes into its output folder that are not plugin outputs.
STACK_JSON = "stack.json"
STACK_TEXT = "stack.txt"
NOT_OUTPUTS = frozenset({STACK_JSON})

#: Largest output read (bytes): the plugin's output of a busy machine is a few MiB; a larger
#: file is not one.
MAX_OUTPUT_BYTES = 512 << 20


class OutputError(ValueError):
    """A path that is not a readable JSON output of ``windows.callbackobjects``."""


@dataclasses.dataclass
class Output:
    """One image's output: its rows as the JSON renderer wrote them, and its sidecar if any."""

    path: str
    rows: List[Dict[str, Any]]
    sidecar: Optional[Dict[str, Any]] = None

    @property
    def build(self) -> Optional[int]:
        """The image's kernel build, as the sweep recorded it (None: no sidecar, or unknown)."""
        build = (self.sidecar or {}).get("build")
        return build if isinstance(build, int) and not isinstance(build, bool) else None

    @property
    def evidence(self) -> Optional[str]:
        """``degraded`` when the rows' ``Evidence`` column or the sweep's sidecar says so,
        ``complete`` when either says so and none says degraded, None when neither says."""
        said = {row.get(columns.EVIDENCE.name) for row in self.rows} | {(self.sidecar or {}).get("status")}
        if columns.DEGRADED in said:
            return columns.DEGRADED
        return columns.COMPLETE if said & {columns.COMPLETE, "ok"} else None

    @property
    def image(self) -> Optional[str]:
        image = (self.sidecar or {}).get("image")
        return image if isinstance(image, str) else None


def is_output_name(file_name: str) -> bool:
    """Whether a file found in a folder is taken for a plugin output (sidecars and the stack
    a sweep writes beside the outputs are not)."""
    return (
        file_name.endswith(OUTPUT_SUFFIX)
        and not file_name.endswith(SIDECAR_SUFFIX)
        and file_name not in NOT_OUTPUTS
        and not file_name.startswith(".")  # a sweep's partial files, editors' swap files
    )


def find_outputs(path: str) -> List[str]:
    """The output files a path names: the file itself, or every output below a folder (its
    subfolders included: golden images are often kept one folder per build), sorted."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise OutputError(f"{path}: no such file or folder")
    found = []
    for folder, subfolders, files in os.walk(path):
        subfolders.sort()
        found.extend(os.path.join(folder, name) for name in sorted(files) if is_output_name(name))
    if not found:
        raise OutputError(f"{path}: a folder without any JSON output of windows.callbackobjects (*{OUTPUT_SUFFIX})")
    return found


def sidecar_path(output_path: str) -> str:
    """``NAME.meta.json`` beside ``NAME.json``."""
    stem = output_path[: -len(OUTPUT_SUFFIX)] if output_path.endswith(OUTPUT_SUFFIX) else output_path
    return stem + SIDECAR_SUFFIX


def read_json(path: str) -> Any:
    """A JSON document; OutputError when the file cannot be read or is not JSON."""
    try:
        if os.path.getsize(path) > MAX_OUTPUT_BYTES:
            raise OutputError(f"{path}: larger than {MAX_OUTPUT_BYTES >> 20} MiB, not an output of the plugin")
        with open(path, "r", encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as error:
        raise OutputError(f"{path}: cannot be read ({error.strerror or error})") from None
    except (ValueError, RecursionError) as error:
        raise OutputError(f"{path}: not JSON ({error})") from None


def read_sidecar(output_path: str) -> Optional[Dict[str, Any]]:
    """The sweep's sidecar of an output; None when there is none or it is not a JSON object
    (a sidecar only adds facts: its absence never stops a comparison)."""
    path = sidecar_path(output_path)
    if not os.path.isfile(path):
        return None
    try:
        document = read_json(path)
    except OutputError:
        return None
    return document if isinstance(document, dict) else None


def _flatten(rows: Sequence[Any]) -> Iterator[Any]:
    """Rows with their children (the plugin writes none; a tree renderer's output might)."""
    pending = list(reversed(rows))
    while pending:
        row = pending.pop()
        yield row
        children = row.get("__children") if isinstance(row, dict) else None
        if isinstance(children, list):
            pending.extend(reversed(children))


def parse_rows(path: str, document: Any) -> List[Dict[str, Any]]:
    """The rows of a decoded output; OutputError naming what is wrong with it."""
    if not isinstance(document, list):
        raise OutputError(
            f"{path}: not a list of rows (a JSON output of `vol -r json ... windows.callbackobjects` is one)"
        )
    rows: List[Dict[str, Any]] = []
    for index, row in enumerate(_flatten(document)):
        if not isinstance(row, dict):
            raise OutputError(f"{path}: row {index} is not an object of columns")
        missing = [column for column in columns.READ_BACK if column not in row]
        if missing:
            raise OutputError(
                f"{path}: row {index} lacks the column(s) {', '.join(missing)}: not an output of "
                "windows.callbackobjects, or one made with --hide-columns hiding them"
            )
        if not isinstance(row[columns.FLAGS.name], (str, type(None))):
            raise OutputError(f"{path}: row {index} has Flags that are not a comma-separated string")
        rows.append(row)
    return rows


def read_output(path: str) -> Output:
    """One output file with its sidecar."""
    return Output(path, parse_rows(path, read_json(path)), read_sidecar(path))


def load_outputs(paths: Sequence[str]) -> List[Output]:
    """Every output the paths name (files, or folders searched for ``*.json``), each once."""
    seen = set()
    loaded = []
    for path in paths:
        for found in find_outputs(path):
            real = os.path.realpath(found)
            if real not in seen:
                seen.add(real)
                loaded.append(read_output(found))
    return loaded


def row_flags(row: Dict[str, Any]) -> List[str]:
    """The ``Flags`` column of a row as a list (the renderer joins them with commas)."""
    flags = row.get(columns.FLAGS.name)
    return [flag for flag in flags.split(",") if flag] if isinstance(flags, str) else []
