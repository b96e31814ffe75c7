"""Reading single fields of hostile structures: one unreadable field must not hide the others."""

import logging
from typing import Callable, Union

from volatility3.framework import constants, exceptions, interfaces, renderers

vollog = logging.getLogger(__name__)

Value = Union[int, bool, interfaces.renderers.BaseAbsentValue]


def read_member(
    struct: interfaces.objects.ObjectInterface,
    member: str,
    convert: Callable[[object], Value] = int,
) -> Value:
    """Reads ``struct.member`` and converts it; UnreadableValue when the memory is not there."""
    try:
        return convert(getattr(struct, member))
    except exceptions.InvalidAddressException:
        vollog.log(
            constants.LOGLEVEL_VVV,
            f"{struct.vol.type_name}.{member} at {struct.vol.offset:#x} unreadable",
        )
        return renderers.UnreadableValue()


def to_bool(value: object) -> bool:
    """BOOLEAN fields are one byte: any non-zero value is TRUE, as the kernel tests it."""
    return int(value) != 0  # type: ignore[call-overload]


def is_absent(value: object) -> bool:
    return isinstance(value, interfaces.renderers.BaseAbsentValue)
