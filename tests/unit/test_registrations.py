"""Reading callback objects and their registrations from hand-made memory with our ISF."""

from volatility3.framework import renderers
from volatility3_plugins.windows.callback_objects import isf, registrations

from tests.unit import memory

BASE = 0xFFFFF80000200000
OBJ = BASE + 0x100
REG1 = BASE + 0x400
REG2 = BASE + 0x500
ROUTINE = 0xFFFFF80012345678


def _write_object(layer, address, allow_multiple=1, garbage=True):
    layer.u32(address, isf.CALLBACK_SIGNATURE)
    if garbage:
        layer.u32(address + 4, 0xDEADBEEF)  # padding after Signature
        layer.write(address + 0x21, b"\xAA" * 7)  # padding after AllowMultipleCallbacks
    layer.u8(address + 0x20, allow_multiple)


def _write_registration(layer, address, owner, routine, ctx, busy=0, waiting=0):
    layer.ptr(address + 0x10, owner)
    layer.ptr(address + 0x18, routine)
    layer.ptr(address + 0x20, ctx)
    layer.u32(address + 0x28, busy)
    layer.u8(address + 0x2C, waiting)
    layer.write(address + 0x2D, b"\xCC\xCC\xCC")  # garbage padding


def _link(layer, head, entries):
    chain = [head] + entries
    for index, node in enumerate(chain):
        layer.ptr(node, chain[(index + 1) % len(chain)])
        layer.ptr(node + 8, chain[index - 1])


def _setup():
    kernel, layer = memory.make_kernel()
    layer.map(BASE, 0x1000)
    _write_object(layer, OBJ, allow_multiple=1)
    _write_registration(layer, REG1, OBJ, ROUTINE, 0x1234, busy=2, waiting=1)
    _write_registration(layer, REG2, OBJ, ROUTINE + 0x10, 0)
    _link(layer, OBJ + 0x10, [REG1, REG2])
    return kernel, layer


def test_object_fields_read_exact_widths():
    kernel, layer = _setup()
    body = kernel.callback_object.read(kernel.reader, OBJ)
    assert body.Signature == isf.CALLBACK_SIGNATURE  # 0xDEADBEEF padding ignored
    assert body.AllowMultipleCallbacks is True  # one byte, garbage after it ignored
    assert kernel.callback_object.offset("RegisteredCallbacks.Flink") == 0x10
    assert body.complete and not body.zeroed
    layer.u8(OBJ + 0x20, 0)
    assert kernel.callback_object.read(kernel.reader, OBJ).AllowMultipleCallbacks is False


def test_object_unmapped_is_unreadable_not_an_exception():
    kernel, _layer = _setup()
    body = kernel.callback_object.read(kernel.reader, 0xFFFFF80099990000)
    assert isinstance(body.Signature, renderers.UnreadableValue)
    assert isinstance(body.AllowMultipleCallbacks, renderers.UnreadableValue)
    assert not body.complete and body.zeroed


def test_zeroed_object_is_told_apart():
    kernel, layer = _setup()
    assert kernel.callback_object.read(kernel.reader, BASE + 0xC00).zeroed


def test_registrations_read():
    kernel, _layer = _setup()
    listed = registrations.list_registrations(kernel, OBJ + 0x10)
    regs = listed.registrations
    assert listed.complete
    assert [r.address for r in regs] == [REG1 & memory.MASK48, REG2 & memory.MASK48]
    first = regs[0]
    assert first.callback_object == OBJ & memory.MASK48
    assert first.routine == ROUTINE & memory.MASK48
    assert first.context == 0x1234
    assert first.busy == 2
    assert first.unregister_waiting is True
    assert regs[1].unregister_waiting is False  # garbage padding after the BOOLEAN ignored


def test_registration_partly_unmapped():
    kernel, layer = _setup()
    # A registration at the very end of the mapped region: Link readable, the rest not.
    tail = BASE + 0x1000 - 0x10
    _link(layer, OBJ + 0x10, [REG1, tail])
    regs = registrations.list_registrations(kernel, OBJ + 0x10).registrations
    assert len(regs) == 2
    broken = regs[1]
    assert broken.address == tail & memory.MASK48
    for value in (broken.callback_object, broken.routine, broken.context, broken.busy):
        assert isinstance(value, renderers.UnreadableValue)
    assert regs[0].routine == ROUTINE & memory.MASK48


def test_registrations_bounded():
    kernel, layer = _setup()
    entries = [BASE + 0x600 + 0x30 * i for i in range(20)]
    _link(layer, OBJ + 0x10, entries)
    listed = registrations.list_registrations(kernel, OBJ + 0x10, max_entries=5)
    assert len(listed.registrations) == 10  # five each way
    assert not listed.complete
