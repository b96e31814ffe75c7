"""Merging the routes into one record per callback object, and turning records and their
registrations into classified output rows."""

import dataclasses
import logging
from typing import Dict, Iterable, Iterator, List, Optional, Set, Tuple, Union

from volatility3.framework import exceptions, interfaces, renderers

from volatility3.plugins.windows.callback_objects import (
    attribution,
    callback_object,
    discovery,
    expected,
    fields,
    flags,
    registrations,
    poolscan,
    walk,
)

vollog = logging.getLogger(__name__)

Absent = interfaces.renderers.BaseAbsentValue


@dataclasses.dataclass
class CallbackObjectRecord:
    """One callback object as seen by all routes."""

    address: int  # body address, masked like Volatility renders kernel pointers
    name: Optional[str]  # full path (\Callback\...), None when unnamed or unreadable
    routes: Set[str]
    body: callback_object.CallbackObjectBody
    layer_name: str
    table_name: str
    pointer_size: int
    list_walked: bool
    directory_walked: bool
    global_symbols: List[str] = dataclasses.field(default_factory=list)
    global_mismatch: bool = False

    _found_by: Optional[Tuple[frozenset, str]] = dataclasses.field(
        default=None, repr=False, compare=False
    )

    @property
    def found_by(self) -> str:
        # Asked once per output row: format once per set of routes.
        key = frozenset(self.routes)
        if self._found_by is None or self._found_by[0] != key:
            self._found_by = (key, discovery.format_found_by(key))
        return self._found_by[1]


def object_headers(
    context: interfaces.context.ContextInterface, kernel_module_name: str
) -> Optional[discovery.ObjectHeaders]:
    try:
        return discovery.ObjectHeaders(context, kernel_module_name)
    except (exceptions.SymbolError, exceptions.InvalidAddressException) as excp:
        vollog.warning(f"Object headers unusable ({excp}): directory route, names and object scan skipped")
        return None


def collect_objects(
    context: interfaces.context.ContextInterface,
    kernel_module_name: str,
    callback_table_name: str,
    scanned: Optional[Iterable[int]] = None,
    headers: Optional[discovery.ObjectHeaders] = None,
) -> List[CallbackObjectRecord]:
    """Runs every available route and merges the objects by body address.

    ``scanned``: bodies that pool scanning confirmed (header type ``Callback``); each gets the
    ``scan`` route, those no other route reached become records of their own."""
    kernel = context.modules[kernel_module_name]
    layer_name = kernel.layer_name
    pointer_size = discovery._kernel_pointer_size(context, kernel_module_name)

    list_route = discovery.from_callback_list(context, kernel_module_name, callback_table_name)
    if headers is None:
        headers = object_headers(context, kernel_module_name)
    directory_route = (
        discovery.from_directory(context, kernel_module_name, headers) if headers else None
    )
    global_route = discovery.from_globals(context, kernel_module_name)

    routes: Dict[int, Set[str]] = {}
    order: List[int] = []

    def add(address: int, route: str) -> None:
        if address not in routes:
            routes[address] = set()
            order.append(address)
        routes[address].add(route)

    for address in list_route.objects if list_route else []:
        add(address, discovery.ROUTE_LIST)
    for address in directory_route.objects if directory_route else {}:
        add(address, discovery.ROUTE_DIRECTORY)
    for _symbol, address in discovery.global_pairs(global_route):
        add(address, discovery.ROUTE_GLOBAL)
    for address in scanned or ():
        add(address, discovery.ROUTE_SCAN)

    records: Dict[int, CallbackObjectRecord] = {}
    for address in order:
        name: Optional[str] = None
        if directory_route and address in directory_route.objects:
            name = directory_route.objects[address]
        elif headers is not None:
            # Found by another route only: the header may still carry a name (an object
            # removed from \Callback keeps its name info).
            bare = headers.name(address)
            name = discovery.NAME_PREFIX + bare if bare else None
        records[address] = CallbackObjectRecord(
            address=address,
            name=name,
            routes=routes[address],
            body=callback_object.read_callback_object(
                context, layer_name, callback_table_name, address
            ),
            layer_name=layer_name,
            table_name=callback_table_name,
            pointer_size=pointer_size,
            list_walked=list_route is not None,
            directory_walked=directory_route is not None,
        )

    for symbol, address in discovery.global_pairs(global_route):
        record = records[address]
        record.global_symbols.append(symbol)
        wanted = discovery.expected_global_name(symbol)
        if record.name is None or record.name.lower() != wanted.lower():
            record.global_mismatch = True
            vollog.info(
                f"nt!{symbol} points at {address:#x} named {record.name or '(none)'}, "
                f"expected {wanted}"
            )

    return sorted(records.values(), key=lambda r: r.address)


def read_registrations(
    context: interfaces.context.ContextInterface,
    record: CallbackObjectRecord,
    max_entries: int = registrations.MAX_REGISTRATIONS,
) -> Tuple[List[registrations.Registration], walk.ListWalk]:
    return registrations.list_registrations(
        context,
        record.layer_name,
        record.table_name,
        record.body.registrations_head,
        record.pointer_size,
        max_entries=max_entries,
    )


def object_facts(record: CallbackObjectRecord, registration_count: int) -> flags.ObjectFacts:
    allow = record.body.allow_multiple
    return flags.ObjectFacts(
        found_by_directory=discovery.ROUTE_DIRECTORY in record.routes,
        directory_walked=record.directory_walked,
        found_by_list=discovery.ROUTE_LIST in record.routes,
        list_walked=record.list_walked,
        signature_ok=record.body.signature_ok,
        global_mismatch=record.global_mismatch,
        allow_multiple=None if fields.is_absent(allow) else bool(allow),
        registration_count=registration_count,
    )


@dataclasses.dataclass
class Row:
    """One output row: an object with one of its registrations (or with none)."""

    record: CallbackObjectRecord
    registration: Optional[registrations.Registration]
    attribution: Optional[attribution.Attribution]
    flags: List[str]


def classify(
    record: CallbackObjectRecord,
    regs: List[registrations.Registration],
    attributor: attribution.Attributor,
    rules: expected.ExpectedRegistrants,
) -> List[Row]:
    """The rows of one object with their flags, sorted by severity."""
    obj_facts = object_facts(record, len(regs))
    if not regs:
        return [Row(record, None, None, flags.classify(obj_facts))]
    rows: List[Row] = []
    for reg in regs:
        attrib: Optional[attribution.Attribution] = None
        in_module: Optional[bool] = None
        executable: Optional[bool] = None
        module_name: Optional[str] = None
        hidden = False
        if not fields.is_absent(reg.routine):
            attrib = attributor.attribute(int(reg.routine))
            in_module = attrib.in_module if attributor.modules_available else None
            executable = attrib.executable
            module_name = attrib.module.name if attrib.module else None
            hidden = attrib.hidden_module
        backlink: Optional[bool] = None
        if not fields.is_absent(reg.callback_object):
            backlink = int(reg.callback_object) == record.address
        unexpected = in_module is not None and rules.is_unexpected(record.name, module_name)
        reg_facts = flags.RegistrationFacts(
            backlink_ok=backlink,
            in_module=in_module,
            executable=executable,
            unexpected_registrant=unexpected,
            hidden_module=hidden,
        )
        rows.append(Row(record, reg, attrib, flags.classify(obj_facts, reg_facts)))
    return rows


def classify_loose(
    record: CallbackObjectRecord,
    reg: registrations.Registration,
    freed: bool,
    attributor: attribution.Attributor,
) -> Row:
    """The row of a scanned registration block on no list, shown with the object its
    ``CallbackObject`` names (``record``)."""
    attrib: Optional[attribution.Attribution] = None
    facts = flags.RegistrationFacts(
        backlink_ok=None, in_module=None, executable=None, unexpected_registrant=False
    )
    if not fields.is_absent(reg.routine):
        attrib = attributor.attribute(int(reg.routine))
        facts = flags.RegistrationFacts(
            backlink_ok=None,
            in_module=attrib.in_module if attributor.modules_available else None,
            executable=attrib.executable,
            unexpected_registrant=False,
            hidden_module=attrib.hidden_module,
        )
    return Row(record, reg, attrib, flags.classify_loose(facts, freed))


def rows_for_objects(
    context: interfaces.context.ContextInterface,
    records: List[CallbackObjectRecord],
    attributor: attribution.Attributor,
    rules: expected.ExpectedRegistrants,
) -> Iterator[Row]:
    for record in records:
        regs, _walked = read_registrations(context, record)
        yield from classify(record, regs, attributor, rules)
