"""Hand-made kernel memory for unit tests: a sparse layer and a run context over it."""

import struct
from typing import Callable, Dict, List, Optional, Tuple

from volatility3.framework import contexts, exceptions
from volatility3.framework.layers import physical

from volatility3_plugins.windows.callback_objects import isf
from volatility3_plugins.windows.callback_objects.context import CallbackContext

MASK48 = (1 << 48) - 1


class SparseLayer(physical.BufferDataLayer):
    """A BufferDataLayer whose bytes live in separate mapped regions anywhere in a 48-bit
    (or 32-bit) space, so tests can place structures at kernel addresses and leave the rest
    unmapped, as an Intel32e layer does."""

    def __init__(self, context, config_path: str, name: str, bits: int = 48) -> None:
        super().__init__(context, config_path, name, b"")
        self._bits = bits
        self._regions: Dict[int, bytearray] = {}
        #: Called after every change: run contexts cache pages, a test that rewrites memory
        #: must not read the old bytes.
        self.on_change: List[Callable[[], None]] = []

    def _changed(self) -> None:
        for callback in self.on_change:
            callback()

    @property
    def maximum_address(self) -> int:
        return (1 << self._bits) - 1

    @property
    def address_mask(self) -> int:
        return (1 << self._bits) - 1

    def map(self, base: int, size: int) -> None:
        self._regions[base & self.address_mask] = bytearray(size)
        self._changed()

    def _locate(self, offset: int, length: int) -> Optional[Tuple[bytearray, int]]:
        offset &= self.address_mask
        for base, data in self._regions.items():
            if base <= offset and offset + length <= base + len(data):
                return data, offset - base
        return None

    def is_valid(self, offset: int, length: int = 1) -> bool:
        return self._locate(offset, length) is not None

    def read(self, address: int, length: int, pad: bool = False) -> bytes:
        found = self._locate(address, length)
        if found is None:
            if pad:
                return b"".join(
                    self.read(address + i, 1) if self.is_valid(address + i) else b"\x00"
                    for i in range(length)
                )
            raise exceptions.InvalidAddressException(self.name, address, "unmapped")
        data, start = found
        return bytes(data[start : start + length])

    def write(self, address: int, data: bytes) -> None:
        found = self._locate(address, len(data))
        if found is None:
            raise exceptions.InvalidAddressException(self.name, address, "unmapped write")
        region, start = found
        region[start : start + len(data)] = data
        self._changed()

    # convenience writers
    def ptr(self, address: int, value: int, size: int = 8) -> None:
        self.write(address, value.to_bytes(size, "little"))

    def u32(self, address: int, value: int) -> None:
        self.write(address, struct.pack("<I", value))

    def u8(self, address: int, value: int) -> None:
        self.write(address, bytes([value]))


def make_context(bits: int = 48):
    context = contexts.Context()
    layer = SparseLayer(context, "layers.test", "test", bits=bits)
    context.add_layer(layer)
    return context, layer


def load_our_table(context, is_64bit: bool = True, has_list: bool = True) -> str:
    layout = isf.Layout(is_64bit=is_64bit, has_callback_list=has_list)
    return isf.load_table(context, "test.symbols", layout)


#: Where the test "kernel" module is based (its symbol table is ours: no kernel symbols).
KERNEL_BASE = 0xFFFFF80010000000


def make_kernel(bits: int = 48, has_list: bool = True):
    """(run context, layer): a KernelContext over an empty sparse layer, our ISF loaded."""
    context, layer = make_context(bits)
    table = load_our_table(context, bits == 48, has_list)
    module = context.module(table, layer_name="test", offset=KERNEL_BASE if bits == 48 else 0x82800000)
    kernel = CallbackContext(context, module.name, table, isf.Layout(bits == 48, has_list))
    layer.on_change.append(kernel.reader.invalidate)
    return kernel, layer


def record(address: int, **values):
    """A structure record as a view returns it, for tests that build rows by hand."""
    from volatility3_plugins.windows.kernelread.views import Record

    return Record(address, dict(values), complete=True, zeroed=not any(values.values()))
