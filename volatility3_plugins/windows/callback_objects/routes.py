"""The routes to callback objects: ``list`` (nt!ExpCallbackListHead, 8.1+), ``directory`` (the
``\\Callback`` object directory) and ``global`` (the ``nt!ExCb*`` pointers).

Each route returns object BODY addresses masked to the kernel layer's width (the way Volatility
renders kernel pointers) and records its state in the run's diagnostics: complete (absence from
it is evidence), incomplete (walked but broken: absence proves nothing) or unavailable.
"""

import dataclasses
from typing import TYPE_CHECKING, Dict, List, Optional, Set

from ..kernelread import diagnostics, lists, object_directory
from ..kernelread.object_headers import HeaderInfo, ObjectHeaders
from . import isf

if TYPE_CHECKING:
    from .context import CallbackContext

ROUTE_LIST = "list"
ROUTE_DIRECTORY = "directory"
ROUTE_GLOBAL = "global"
ROUTE_SCAN = "scan"
#: The fixed order of route names in the FoundBy column.
ROUTE_ORDER = (ROUTE_LIST, ROUTE_DIRECTORY, ROUTE_GLOBAL, ROUTE_SCAN)

CALLBACK_DIRECTORY = "Callback"
CALLBACK_TYPE = "Callback"
#: The kernel global that points at the ``Callback`` object type.
CALLBACK_TYPE_GLOBAL = "ExCallbackObjectType"
NAME_PREFIX = "\\Callback\\"
#: Kernel globals that point at callback objects: ``nt!ExCb<Name>`` -> ``\\Callback\\<Name>``.
GLOBAL_PREFIX = "ExCb"

MAX_OBJECTS_PER_LIST = 4096


def format_found_by(routes) -> str:
    """``list+directory+global``: the routes that saw an object, in the fixed order."""
    rank = {route: index for index, route in enumerate(ROUTE_ORDER)}
    return "+".join(sorted(set(routes), key=lambda r: (rank.get(r, len(rank)), r)))


def expected_global_name(symbol_name: str) -> str:
    """``ExCbPowerState`` -> ``\\Callback\\PowerState``."""
    bare = symbol_name[len(GLOBAL_PREFIX):] if symbol_name.startswith(GLOBAL_PREFIX) else symbol_name
    return NAME_PREFIX + bare


# --- list route --------------------------------------------------------------------------


@dataclasses.dataclass
class ListRoute:
    objects: List[int]
    #: Every callback object is on this list (8.1+): absence is evidence only when complete.
    complete: bool


def from_callback_list(kernel: "CallbackContext", max_objects: int = MAX_OBJECTS_PER_LIST) -> Optional[ListRoute]:
    """Objects linked into ``nt!ExpCallbackListHead``; None before 8.1 or when the head is
    unreadable (then membership is unknown and ``unlinked_object`` must not be raised)."""
    head = kernel.symbols.address(isf.LIST_HEAD_SYMBOL)
    if head is None:
        kernel.diagnostics.info("No nt!ExpCallbackListHead (before Windows 8.1): list route not available")
        kernel.diagnostics.route(ROUTE_LIST, diagnostics.NOT_ON_THIS_BUILD, "before Windows 8.1")
        return None
    if not kernel.callback_object.has("ExpCallbackList.Flink"):
        kernel.diagnostics.warning("Callback object layout has no ExpCallbackList: list route skipped")
        kernel.diagnostics.route(ROUTE_LIST, diagnostics.UNAVAILABLE, "no ExpCallbackList member")
        return None
    link = kernel.callback_object.offset("ExpCallbackList.Flink")
    walked = lists.walk_list(kernel, head, "nt!ExpCallbackListHead", max_objects)
    if walked.head_unreadable:
        kernel.diagnostics.route(ROUTE_LIST, diagnostics.UNAVAILABLE, "head unreadable")
        return None
    objects = [(entry - link) & kernel.mask for entry in walked.entries]
    state = diagnostics.COMPLETE if walked.complete else diagnostics.INCOMPLETE
    kernel.diagnostics.route(ROUTE_LIST, state, f"{len(objects)} objects")
    return ListRoute(objects=objects, complete=walked.complete)


# --- directory route ---------------------------------------------------------------------


def find_callback_directory(kernel: "CallbackContext", headers: ObjectHeaders) -> Optional[int]:
    """Body address of ``\\Callback`` (name ``Callback``, type ``Directory`` in the root)."""
    body, why = object_directory.find_root_directory(kernel, headers, CALLBACK_DIRECTORY)
    if body is None:
        kernel.diagnostics.warning(f"{why}: directory route skipped")
    return body


@dataclasses.dataclass
class DirectoryRoute:
    directory: int  # body of \Callback
    objects: Dict[int, HeaderInfo]  # body -> its header (name, type)
    complete: bool
    #: Bodies of entries whose header could not be read: an object another route finds there
    #: is in the directory, though its type cannot be told from here.
    unreadable: Set[int] = dataclasses.field(default_factory=set)


def from_directory(kernel: "CallbackContext") -> Optional[DirectoryRoute]:
    """Objects of type ``Callback`` in ``\\Callback``; None when the directory is not found."""
    headers = kernel.object_headers
    if headers is None:
        kernel.diagnostics.route(ROUTE_DIRECTORY, diagnostics.UNAVAILABLE, "object headers unusable")
        return None
    directory = find_callback_directory(kernel, headers)
    if directory is None:
        kernel.diagnostics.route(ROUTE_DIRECTORY, diagnostics.UNAVAILABLE, "no \\Callback directory")
        return None
    callback_index = headers.type_index(CALLBACK_TYPE, CALLBACK_TYPE_GLOBAL)
    if callback_index is None:
        kernel.diagnostics.warning("The Callback object type cannot be identified: directory route skipped")
        kernel.diagnostics.route(ROUTE_DIRECTORY, diagnostics.UNAVAILABLE, "Callback type unknown")
        return None
    walked = object_directory.directory_entries(kernel, headers, directory)
    found = {entry.body: entry for entry in walked.entries if entry.readable and entry.type_index == callback_index}
    unreadable = {entry.body for entry in walked.entries if not entry.readable}
    state = diagnostics.COMPLETE if walked.complete else diagnostics.INCOMPLETE
    kernel.diagnostics.route(ROUTE_DIRECTORY, state, f"{len(found)} objects")
    if not walked.complete:
        kernel.diagnostics.warning("\\Callback directory incomplete: some hash chains could not be read")
    return DirectoryRoute(directory=directory, objects=found, complete=walked.complete, unreadable=unreadable)


# --- global route ------------------------------------------------------------------------


def global_symbols(kernel: "CallbackContext") -> List[str]:
    """Every ``nt!ExCb*`` the kernel's symbol table has: each points at the built-in callback
    object of the matching name (``ExCbPowerState`` -> ``\\Callback\\PowerState``)."""
    return list(kernel.symbols.with_prefix(GLOBAL_PREFIX))


def from_globals(kernel: "CallbackContext") -> Dict[str, int]:
    """``{symbol: object body}`` for each ``nt!ExCb*`` that holds a non-null pointer; missing
    or unreadable ones are logged and left out."""
    found: Dict[str, int] = {}
    for symbol in global_symbols(kernel):
        value = kernel.read_global_pointer(symbol)
        if value:
            found[symbol] = value
    kernel.diagnostics.route(ROUTE_GLOBAL, diagnostics.COMPLETE, f"{len(found)} pointers")
    return found
