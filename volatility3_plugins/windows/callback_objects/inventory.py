"""The callback objects of an image: one record per object, whichever routes reached it.

Every route (list, directory, globals) is asked once (:func:`run_routes`); their objects and
the pool scan's are merged by body address (:func:`merge_routes`); each object's header, body
and list head are read once (:func:`object_record`); each ``nt!ExCb*`` global is checked
against the name of the object it points at (:func:`check_globals`).
"""

import dataclasses
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Set

from volatility3.framework import renderers

from ..kernelpool.state import BlockState
from ..kernelread import diagnostics
from ..kernelread.object_headers import HeaderInfo, Name
from ..kernelread.views import Record, is_absent
from . import isf, routes

if TYPE_CHECKING:
    from .context import CallbackContext
    from .scan_targets import ScannedBlock


@dataclasses.dataclass
class CallbackObjectRecord:
    """One callback object as every route saw it."""

    address: int  # body address, masked as Volatility renders kernel pointers
    #: Full path (``\\Callback\\...``); None when the object has no name; UnreadableValue when
    #: it has one that cannot be read.
    name: Name
    routes: Set[str]
    body: Record  # the _CALLBACK_OBJECT view's record
    registrations_head: int
    #: How the routes that can prove absence fared: ``ExpCallbackListHead`` (diagnostics.COMPLETE,
    #: diagnostics.INCOMPLETE, or None where there is no such list or it could not be read) and
    #: whether the ``\Callback`` directory was walked to its end.
    list_state: Optional[str]
    directory_complete: bool
    #: The object's header, when one could be decoded (names and types are evidence only when
    #: ``header.readable``).
    header: Optional[HeaderInfo] = None
    global_symbols: List[str] = dataclasses.field(default_factory=list)
    global_mismatch: bool = False
    #: The allocation state of the object's pool block when the scan found it, else None.
    scan_state: Optional[BlockState] = None

    @property
    def found_by(self) -> str:
        return routes.format_found_by(self.routes)

    @property
    def display_name(self) -> str:
        """How warnings name the object: its name where it was read, else what it is."""
        if isinstance(self.name, str):
            return self.name
        kind = "unnamed object" if self.name is None else "object whose name cannot be read"
        return f"{kind} {self.address:#x}"

    @property
    def signature_ok(self) -> bool:
        """False also when unreadable: the object then cannot be shown to be a callback."""
        return self.body.Signature == isf.CALLBACK_SIGNATURE

    @property
    def body_readable(self) -> bool:
        """The signature and flag could be read and the body is not all zeros."""
        return not self.body.zeroed and self.body.readable("Signature") and self.body.readable("AllowMultipleCallbacks")

    @property
    def allow_multiple(self):
        return self.body.AllowMultipleCallbacks


@dataclasses.dataclass
class RoutesFound:
    """What the list, directory and global routes found (a route that could not run is None)."""

    list_route: Optional[routes.ListRoute]
    directory_route: Optional[routes.DirectoryRoute]
    globals: Dict[str, int]


def run_routes(kernel: "CallbackContext") -> RoutesFound:
    """Every route asked once, in the order the verdict line names them."""
    return RoutesFound(routes.from_callback_list(kernel), routes.from_directory(kernel), routes.from_globals(kernel))


def merge_routes(found: RoutesFound, scanned: Iterable[int] = ()) -> Dict[int, Set[str]]:
    """Body address -> the routes that reached it; ``scanned`` are the bodies the pool scan
    confirmed (route ``scan``)."""
    seen_by: Dict[int, Set[str]] = {}

    def add(address: int, route: str) -> None:
        seen_by.setdefault(address, set()).add(route)

    for address in found.list_route.objects if found.list_route else ():
        add(address, routes.ROUTE_LIST)
    for address in found.directory_route.objects if found.directory_route else ():
        add(address, routes.ROUTE_DIRECTORY)
    for address in sorted(set(found.globals.values())):
        add(address, routes.ROUTE_GLOBAL)
    for address in scanned:
        add(address, routes.ROUTE_SCAN)
    if found.directory_route is not None:
        # A directory entry whose header is lost still places the object another route found.
        for address in found.directory_route.unreadable & set(seen_by):
            add(address, routes.ROUTE_DIRECTORY)
    return seen_by


def _full_name(bare: Name) -> Name:
    if isinstance(bare, str) and bare:
        return routes.NAME_PREFIX + bare
    if bare == "":
        return None
    return bare


def _points_elsewhere(kernel: "CallbackContext", symbol: str, record: CallbackObjectRecord) -> bool:
    """Evidence that ``nt!symbol`` points at another object than the one of its name: the
    object's header was read (not zeros) and names another object, or says it has no name.
    An unreadable header or name proves nothing."""
    wanted = routes.expected_global_name(symbol)
    if record.header is None or not record.header.readable or is_absent(record.name):
        kernel.diagnostics.info(f"nt!{symbol} points at {record.address:#x}, whose name cannot be read: not judged")
        return False
    name = record.name
    if isinstance(name, str) and name.lower() == wanted.lower():
        return False
    kernel.diagnostics.info(f"nt!{symbol} points at {record.address:#x} named {name or '(none)'}, expected {wanted}")
    return True


def object_record(
    kernel: "CallbackContext", address: int, found_by: Set[str], found: RoutesFound, scan_state: Optional[BlockState]
) -> CallbackObjectRecord:
    """One object as the routes saw it: its header (name, type), body and list head read once."""
    directory_route = found.directory_route
    header: Optional[HeaderInfo] = None
    if directory_route is not None and address in directory_route.objects:
        header = directory_route.objects[address]
    elif kernel.object_headers is not None:
        # Found by another route only: the header may still carry a name (an object
        # removed from \Callback keeps its name info).
        header = kernel.object_headers.info(address)
    list_state: Optional[str] = None
    if found.list_route is not None:
        list_state = diagnostics.COMPLETE if found.list_route.complete else diagnostics.INCOMPLETE
    return CallbackObjectRecord(
        address=address,
        name=_full_name(header.name) if header is not None else renderers.UnreadableValue(),
        routes=found_by,
        body=kernel.callback_object.read(kernel.reader, address),
        registrations_head=(address + kernel.callback_object.offset("RegisteredCallbacks.Flink")) & kernel.mask,
        list_state=list_state,
        directory_complete=directory_route is not None and directory_route.complete,
        header=header,
        scan_state=scan_state,
    )


def check_globals(kernel: "CallbackContext", records: Dict[int, CallbackObjectRecord], pointers: Dict[str, int]) -> None:
    """Each ``nt!ExCb*`` global noted on the object it points at, with whether it points at
    another object than the one of its name (``global_mismatch``)."""
    for symbol, address in sorted(pointers.items(), key=lambda item: (item[1], item[0])):
        record = records[address]
        record.global_symbols.append(symbol)
        record.global_mismatch |= _points_elsewhere(kernel, symbol, record)


def collect_objects(kernel: "CallbackContext", scanned: Iterable["ScannedBlock"] = ()) -> List[CallbackObjectRecord]:
    """Every callback object the routes reach, merged by body address, sorted by it.

    ``scanned``: the objects the pool scan confirmed (header type ``Callback``); each gets the
    ``scan`` route, and those no other route reached become records of their own."""
    found = run_routes(kernel)
    scan_states = {block.address: block.state for block in scanned}
    records = {
        address: object_record(kernel, address, found_by, found, scan_states.get(address))
        for address, found_by in merge_routes(found, scan_states).items()
    }
    check_globals(kernel, records, found.globals)
    return sorted(records.values(), key=lambda r: r.address)
