"""The object manager's namespace: the objects of an ``_OBJECT_DIRECTORY`` and the directories
under the root (``\\Callback``, ``\\Driver``, ...), walked bounded and cycle-safe in hostile memory.

A directory keeps 37 hash buckets, each a chain of ``_OBJECT_DIRECTORY_ENTRY`` through
``ChainLink`` (WRK ``base/ntos/ob/obdir.c``); every entry's ``Object`` is a body whose header
(:mod:`.object_headers`) gives its name and type.
"""

import dataclasses
from typing import TYPE_CHECKING, List, Optional, Tuple

from volatility3.framework import exceptions

from .object_headers import HeaderInfo, ObjectHeaders
from .views import ViewError, member_offset

if TYPE_CHECKING:
    from .context import KernelContext

HASH_BUCKETS = 37
MAX_DIRECTORY_ENTRIES = 4096
ROOT_SYMBOL = "ObpRootDirectoryObject"
DIRECTORY_TYPE = "Directory"


@dataclasses.dataclass
class DirectoryWalk:
    entries: List[HeaderInfo]
    complete: bool


def directory_entries(
    kernel: "KernelContext",
    headers: ObjectHeaders,
    directory_body: int,
    max_entries: int = MAX_DIRECTORY_ENTRIES,
) -> DirectoryWalk:
    """Every object of one ``_OBJECT_DIRECTORY``; ``complete`` is False when a bucket or a chain
    could not be read to its end."""
    entry_view = kernel.kernel_view("_OBJECT_DIRECTORY_ENTRY", ["ChainLink", "Object"])
    try:
        buckets_offset = member_offset(kernel.context, kernel.kernel_type("_OBJECT_DIRECTORY"), "HashBuckets")
    except ViewError:
        entry_view = None
    if entry_view is None:
        return DirectoryWalk([], False)
    buckets = (directory_body & kernel.mask) + buckets_offset
    found: List[HeaderInfo] = []
    complete = True
    seen = set()
    for bucket in range(HASH_BUCKETS):
        try:
            entry = kernel.read_pointer(buckets + bucket * kernel.pointer_size)
        except exceptions.InvalidAddressException:
            complete = False
            continue
        while entry:
            if entry in seen:
                # A chain that loops: every entry on it was seen; nothing is missing.
                break
            if len(seen) >= max_entries:
                kernel.diagnostics.warning(f"Object directories past the bound of {max_entries} entries: the rest not read",
                                           f"directory {directory_body:#x}")
                return DirectoryWalk(found, False)
            seen.add(entry)
            record = entry_view.read(kernel.reader, entry)
            if not record.complete:
                complete = False
                break
            if record.Object:
                found.append(headers.info(record.Object))
            entry = record.ChainLink
    return DirectoryWalk(found, complete)


def find_root_directory(kernel: "KernelContext", headers: ObjectHeaders, name: str) -> Tuple[Optional[int], str]:
    """(body of the directory ``\\name``, "") or (None, why it was not found)."""
    if not kernel.symbols.has(ROOT_SYMBOL):
        return None, f"No nt!{ROOT_SYMBOL}"
    root = kernel.read_global_pointer(ROOT_SYMBOL)
    if not root:
        return None, f"nt!{ROOT_SYMBOL} unreadable or null"
    directory_index = headers.type_index(DIRECTORY_TYPE)
    for entry in directory_entries(kernel, headers, root).entries:
        if entry.name == name and (directory_index is None or entry.type_index == directory_index):
            return entry.body, ""
    return None, f"No \\{name} directory in the root directory"
