"""Merging the routes into one record per callback object.

Every route (list, directory, globals, and the pool scan when it ran) is asked once; objects
are merged by body address, each body is read once, and each ``nt!ExCb*`` global is checked
against the name of the object it points at.
"""

import dataclasses
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Set, Tuple

from volatility3.framework import renderers

from ..kernelread import diagnostics
from ..kernelread.object_headers import HeaderInfo, Name
from ..kernelread.views import Record, is_absent
from . import isf, routes

if TYPE_CHECKING:
    from .context import CallbackContext


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
    scan_state: Optional[str] = None

    @property
    def found_by(self) -> str:
        return routes.format_found_by(self.routes)

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
class ObjectInventory:
    """The merged objects and what the routes that found them could tell."""

    objects: List[CallbackObjectRecord]
    list_route: Optional[routes.ListRoute]
    directory_route: Optional[routes.DirectoryRoute]
    globals: Dict[str, int]

    def by_address(self) -> Dict[int, CallbackObjectRecord]:
        return {record.address: record for record in self.objects}


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


def collect_objects(kernel: "CallbackContext", scanned: Iterable[Tuple[int, str]] = ()) -> ObjectInventory:
    """Runs every route and merges the objects by body address, sorted by address.

    ``scanned``: (body, allocation state) of the objects the pool scan confirmed (header type
    ``Callback``); each gets the ``scan`` route, and those no other route reached become records
    of their own."""
    list_route = routes.from_callback_list(kernel)
    directory_route = routes.from_directory(kernel)
    global_route = routes.from_globals(kernel)

    seen_by: Dict[int, Set[str]] = {}

    def add(address: int, route: str) -> None:
        seen_by.setdefault(address, set()).add(route)

    for address in list_route.objects if list_route else ():
        add(address, routes.ROUTE_LIST)
    for address in directory_route.objects if directory_route else ():
        add(address, routes.ROUTE_DIRECTORY)
    for address in sorted(set(global_route.values())):
        add(address, routes.ROUTE_GLOBAL)
    scan_states = dict(scanned)
    for address in scan_states:
        add(address, routes.ROUTE_SCAN)
    if directory_route is not None:
        # A directory entry whose header is lost still places the object another route found.
        for address in directory_route.unreadable & set(seen_by):
            add(address, routes.ROUTE_DIRECTORY)

    headers = kernel.object_headers
    head_offset = kernel.callback_object.offset("RegisteredCallbacks.Flink")
    list_state: Optional[str] = None
    if list_route is not None:
        list_state = diagnostics.COMPLETE if list_route.complete else diagnostics.INCOMPLETE
    records: Dict[int, CallbackObjectRecord] = {}
    for address, found_by in seen_by.items():
        header: Optional[HeaderInfo] = None
        if directory_route is not None and address in directory_route.objects:
            header = directory_route.objects[address]
        elif headers is not None:
            # Found by another route only: the header may still carry a name (an object
            # removed from \Callback keeps its name info).
            header = headers.info(address)
        name: Name = _full_name(header.name) if header is not None else renderers.UnreadableValue()
        records[address] = CallbackObjectRecord(
            address=address,
            name=name,
            routes=found_by,
            body=kernel.callback_object.read(kernel.reader, address),
            registrations_head=(address + head_offset) & kernel.mask,
            list_state=list_state,
            directory_complete=directory_route is not None and directory_route.complete,
            header=header,
            scan_state=scan_states.get(address),
        )

    for symbol, address in sorted(global_route.items(), key=lambda item: (item[1], item[0])):
        record = records[address]
        record.global_symbols.append(symbol)
        record.global_mismatch |= _points_elsewhere(kernel, symbol, record)

    return ObjectInventory(
        objects=sorted(records.values(), key=lambda r: r.address),
        list_route=list_route,
        directory_route=directory_route,
        globals=global_route,
    )
