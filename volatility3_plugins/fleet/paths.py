"""From command-line arguments to the files a fleet command works on, and names for them.

An argument is a file (taken whatever its name), a folder (searched, subfolders included, for
the files a command wants: memory images for a sweep, JSON outputs for a stack), a glob pattern
the shell left unexpanded (``'cases/*/memory.dmp'``, ``**`` included), or ``@FILE``: a list
file, one argument of these kinds per line (blank lines and ``#`` comments skipped, relative
paths taken from the list file's folder).
"""

import glob
import os
from typing import Callable, Dict, Iterable, List, Mapping, Sequence, Set

#: File names a folder is searched for when sweeping: the raw formats responders name their
#: acquisitions with (``.raw``, ``.mem``, ``.img``, ``.bin``, ``.001``, VMware's ``.vmem``),
#: Windows crash dumps (``.dmp``), VirtualBox core dumps (``.elf``) and AFF4 containers. A file
#: named on the command line, in a list file or by a glob is taken whatever its name.
IMAGE_SUFFIXES = (".raw", ".mem", ".dmp", ".vmem", ".img", ".bin", ".001", ".elf", ".aff4")
#: Deepest list-file nesting (a list naming itself must not loop).
MAX_LIST_DEPTH = 8
GLOB_CHARACTERS = frozenset("*?[")


class PathError(ValueError):
    """An argument that names nothing usable."""


def _walk(folder: str, wanted: Callable[[str], bool]) -> List[str]:
    found = []
    for root, subfolders, files in os.walk(folder):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        found.extend(os.path.join(root, name) for name in sorted(files) if wanted(name))
    return found


def _expand_one(argument: str, wanted: Callable[[str], bool], base: str, depth: int) -> List[str]:
    if argument.startswith("@"):
        return _read_list(os.path.join(base, argument[1:]), wanted, depth + 1)
    path = os.path.join(base, os.path.expanduser(argument))
    if os.path.isdir(path):
        found = _walk(path, wanted)
        if not found:
            raise PathError(f"{argument}: a folder without any file to take (looked for {describe(wanted)})")
        return found
    if os.path.isfile(path):
        return [path]
    if GLOB_CHARACTERS.intersection(argument):
        matches = sorted(glob.glob(path, recursive=True))
        found = []
        for match in matches:
            found.extend(_walk(match, wanted) if os.path.isdir(match) else [match])
        if found:
            return found
        raise PathError(f"{argument}: the pattern matches no file")
    raise PathError(f"{argument}: no such file or folder")


def _read_list(list_path: str, wanted: Callable[[str], bool], depth: int) -> List[str]:
    if depth > MAX_LIST_DEPTH:
        raise PathError(f"@{list_path}: list files nested deeper than {MAX_LIST_DEPTH} (a list naming itself?)")
    try:
        with open(list_path, "r", encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise PathError(f"@{list_path}: cannot read the list file ({error})") from None
    base = os.path.dirname(os.path.abspath(list_path))
    found: List[str] = []
    for line in lines:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            found.extend(_expand_one(entry, wanted, base, depth))
    return found


def describe(wanted: Callable[[str], bool]) -> str:
    return getattr(wanted, "description", "matching files")


def expand(arguments: Sequence[str], wanted: Callable[[str], bool]) -> List[str]:
    """The absolute paths the arguments name, in order, each once (by real path). ``wanted``
    says which file names a folder search takes. Raises :class:`PathError` on an argument that
    names nothing."""
    seen: Set[str] = set()
    found: List[str] = []
    for argument in arguments:
        for path in _expand_one(argument, wanted, os.getcwd(), 0):
            real = os.path.realpath(path)
            if real not in seen:
                seen.add(real)
                found.append(os.path.abspath(path))
    return found


def suffix_filter(suffixes: Iterable[str], description: str) -> Callable[[str], bool]:
    """A folder-search filter taking names that end with one of ``suffixes`` (any case)."""
    lowered = tuple(suffix.lower() for suffix in suffixes)

    def wanted(name: str) -> bool:
        return not name.startswith(".") and name.lower().endswith(lowered)

    wanted.description = description  # type: ignore[attr-defined]
    return wanted


def image_filter() -> Callable[[str], bool]:
    return suffix_filter(IMAGE_SUFFIXES, "memory images: " + ", ".join(f"*{s}" for s in IMAGE_SUFFIXES))


def unique_names(paths: Sequence[str], taken: Mapping[str, str] = None, strip: str = "") -> Dict[str, str]:
    """A short name per path, unique among them: its file name, or as many of its last path
    components as tell it apart, joined with ``__`` (``host01__memory.raw``). ``taken`` maps
    paths to names already given (an earlier sweep's): those are kept, and no new path gets one
    of them. ``strip`` is a suffix removed from every name (``.json`` for outputs)."""
    taken = dict(taken or {})
    names: Dict[str, str] = {path: taken[path] for path in paths if path in taken}
    used = set(taken.values())
    pending = [path for path in paths if path not in names]
    parts = {path: os.path.normpath(path).strip(os.sep).split(os.sep) for path in pending}
    depth = 1
    while pending:
        candidates: Dict[str, List[str]] = {}
        for path in pending:
            name = "__".join(parts[path][-depth:])
            if strip and name.endswith(strip) and len(name) > len(strip):
                name = name[: -len(strip)]
            candidates.setdefault(name, []).append(path)
        still = []
        for name, holders in candidates.items():
            exhausted = all(depth >= len(parts[path]) for path in holders)
            if (len(holders) == 1 and name not in used) or exhausted:
                for path in holders:
                    names[path] = _free(name, used)
                    used.add(names[path])
            else:
                still.extend(holders)
        pending = still
        depth += 1
    return names


def _free(name: str, used: Set[str]) -> str:
    """``name``, or ``name~N`` with the smallest N not in ``used``."""
    candidate, number = name, 0
    while candidate in used:
        number += 1
        candidate = f"{name}~{number}"
    return candidate
