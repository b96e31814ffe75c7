"""Walking ``RegisteredCallbacks`` of a callback object and reading each registration."""

import dataclasses
from typing import List, Tuple, Union

from volatility3.framework import interfaces

from volatility3.plugins.windows.callback_objects import fields, structures, walk

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


def read_registration(
    context: interfaces.context.ContextInterface,
    layer_name: str,
    table_name: str,
    address: int,
) -> Registration:
    """Reads one ``_CALLBACK_REGISTRATION``; each unreadable field becomes UnreadableValue.

    Pointers come back masked to the layer's address width (Volatility's Pointer does so).
    """
    address &= context.layers[layer_name].address_mask
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
