"""Reading one ``_CALLBACK_OBJECT`` body with what can be read."""

import dataclasses
from typing import Union

from volatility3.framework import exceptions, interfaces

from volatility3.plugins.windows.callback_objects import fields, rawmem, structures

Absent = interfaces.renderers.BaseAbsentValue


@dataclasses.dataclass
class CallbackObjectBody:
    address: int  # body address, masked to the layer's address width
    signature: Union[int, Absent]
    allow_multiple: Union[bool, Absent]
    registrations_head: int  # address of RegisteredCallbacks (a LIST_ENTRY)

    @property
    def signature_ok(self) -> bool:
        """False also when unreadable: the object then cannot be shown to be a callback."""
        return self.signature == structures.CALLBACK_SIGNATURE


def read_callback_object(
    context: interfaces.context.ContextInterface,
    layer_name: str,
    table_name: str,
    address: int,
) -> CallbackObjectBody:
    """Reads the fields of the object at ``address``. Building the object reads nothing, so
    this never raises for unmapped memory: unreadable fields are UnreadableValue."""
    address &= context.layers[layer_name].address_mask
    head = address + structures.member_offset(
        context, table_name, "_CALLBACK_OBJECT", "RegisteredCallbacks"
    )
    name = structures.type_name(table_name, "_CALLBACK_OBJECT")
    signature = rawmem.member_field(context, name, "Signature")
    allow = rawmem.member_field(context, name, "AllowMultipleCallbacks")
    try:
        data = rawmem.shared_reader(context, layer_name).read(
            address, allow.offset + 1
        )
    except exceptions.InvalidAddressException:
        pass  # field by field below: a partly readable object still shows what it can
    else:
        return CallbackObjectBody(
            address=address,
            signature=signature.get(data),
            # BOOLEAN: one byte, any non-zero value is TRUE (padding after it is garbage)
            allow_multiple=data[allow.offset] != 0,
            registrations_head=head,
        )
    obj = context.object(
        structures.type_name(table_name, "_CALLBACK_OBJECT"),
        layer_name=layer_name,
        offset=address,
    )
    return CallbackObjectBody(
        address=address,
        signature=fields.read_member(obj, "Signature"),
        allow_multiple=fields.read_member(obj, "AllowMultipleCallbacks", fields.to_bool),
        registrations_head=address
        + structures.member_offset(context, table_name, "_CALLBACK_OBJECT", "RegisteredCallbacks"),
    )
