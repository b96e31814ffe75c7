"""Walking ``RegisteredCallbacks`` of a callback object and reading each registration."""

import dataclasses
import functools
from typing import List, Tuple, Union

from volatility3.framework import exceptions, interfaces

from volatility3.plugins.windows.callback_objects import fields, rawmem, structures, walk

Absent = interfaces.renderers.BaseAbsentValue

MAX_REGISTRATIONS = 1024


@dataclasses.dataclass
class Registration:
    address: int  # == address of its Link (offset 0)
    callback_object: Union[int, Absent]
    routine: Union[int, Absent]
    context: Union[int, Absent]
    busy: Union[int, Absent]
    unregister_waiting: Union[bool, Absent]


@dataclasses.dataclass(frozen=True)
class RegistrationLayout:
    """Where the fields of ``_CALLBACK_REGISTRATION`` are, from our ISF."""

    size: int
    pointer_size: int
    callback_object: rawmem.Field
    routine: rawmem.Field
    context: rawmem.Field
    busy: rawmem.Field
    unregister_waiting: rawmem.Field


@functools.lru_cache(maxsize=16)
def _layout(context: interfaces.context.ContextInterface, table_name: str) -> RegistrationLayout:
    name = structures.type_name(table_name, "_CALLBACK_REGISTRATION")
    template = context.symbol_space.get_type(name)

    def member(field: str) -> rawmem.Field:
        return rawmem.member_field(context, name, field)

    pointer = member("CallbackObject")
    return RegistrationLayout(
        size=template.size,
        pointer_size=pointer.size,
        callback_object=pointer,
        routine=member("CallbackFunction"),
        context=member("CallbackContext"),
        busy=member("Busy"),
        unregister_waiting=rawmem.Field(member("UnregisterWaiting").offset, 1),
    )


def registration_layout(
    context: interfaces.context.ContextInterface, table_name: str
) -> RegistrationLayout:
    return _layout(context, table_name)


def parse_registration(layout: RegistrationLayout, address: int, data: bytes, mask: int) -> Registration:
    """A registration from the bytes of the whole structure (``data[0]`` is ``address``)."""
    return Registration(
        address=address,
        callback_object=layout.callback_object.get(data) & mask,
        routine=layout.routine.get(data) & mask,
        context=layout.context.get(data) & mask,
        busy=layout.busy.get(data),
        unregister_waiting=layout.unregister_waiting.get(data) != 0,
    )


def read_registration(
    context: interfaces.context.ContextInterface,
    layer_name: str,
    table_name: str,
    address: int,
) -> Registration:
    """Reads one ``_CALLBACK_REGISTRATION``; each unreadable field becomes UnreadableValue.

    Pointers come back masked to the layer's address width (Volatility's Pointer does so).
    The whole structure is read at once from the page cache; only when that fails are the
    fields read one by one, so a partly mapped block still shows what can be read.
    """
    reader = rawmem.shared_reader(context, layer_name)
    address &= reader.mask
    layout = _layout(context, table_name)
    try:
        data = reader.read(address, layout.size)
    except exceptions.InvalidAddressException:
        pass
    else:
        return parse_registration(layout, address, data, reader.mask)
    reg = context.object(
        structures.type_name(table_name, "_CALLBACK_REGISTRATION"),
        layer_name=layer_name,
        offset=address,
    )
    return Registration(
        address=address,
        callback_object=fields.read_member(reg, "CallbackObject"),
        routine=fields.read_member(reg, "CallbackFunction"),
        context=fields.read_member(reg, "CallbackContext"),
        busy=fields.read_member(reg, "Busy"),
        unregister_waiting=fields.read_member(reg, "UnregisterWaiting", fields.to_bool),
    )


def list_registrations(
    context: interfaces.context.ContextInterface,
    layer_name: str,
    table_name: str,
    registrations_head: int,
    pointer_size: int,
    max_entries: int = MAX_REGISTRATIONS,
) -> Tuple[List[Registration], walk.ListWalk]:
    """Reads every registration linked from the ``RegisteredCallbacks`` head at
    ``registrations_head``. ``Link`` is at offset 0, so each list entry is the registration."""
    link_offset = structures.member_offset(context, table_name, "_CALLBACK_REGISTRATION", "Link")
    walked = walk.walk_list(
        context,
        layer_name,
        registrations_head,
        pointer_size,
        max_entries=max_entries,
        what=f"registrations of object list head {registrations_head:#x}",
    )
    return (
        [
            read_registration(context, layer_name, table_name, entry - link_offset)
            for entry in walked.entries
        ],
        walked,
    )
