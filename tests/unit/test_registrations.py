"""Reading callback objects and their registrations from hand-made memory with our ISF."""

from volatility3.framework import renderers
from volatility3.plugins.windows.callback_objects import callback_object, registrations, structures

from tests.unit import memory

BASE = 0xFFFFF80000200000
OBJ = BASE + 0x100
REG1 = BASE + 0x400
REG2 = BASE + 0x500
ROUTINE = 0xFFFFF80012345678


def _write_object(layer, address, allow_multiple=1, garbage=True):
    layer.u32(address, structures.CALLBACK_SIGNATURE)
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
    context, layer = memory.make_context()
    table = memory.load_our_table(context)
    layer.map(BASE, 0x1000)
    _write_object(layer, OBJ, allow_multiple=1)
    _write_registration(layer, REG1, OBJ, ROUTINE, 0x1234, busy=2, waiting=1)
    _write_registration(layer, REG2, OBJ, ROUTINE + 0x10, 0)
    _link(layer, OBJ + 0x10, [REG1, REG2])
    return context, layer, table


def test_object_fields_read_exact_widths():
    context, layer, table = _setup()
    body = callback_object.read_callback_object(context, "test", table, OBJ)
    assert body.signature == structures.CALLBACK_SIGNATURE  # 0xDEADBEEF padding ignored
    assert body.signature_ok
    assert body.allow_multiple is True  # one byte, garbage after it ignored
    assert body.registrations_head == (OBJ + 0x10) & memory.MASK48
    layer.u8(OBJ + 0x20, 0)
    assert callback_object.read_callback_object(context, "test", table, OBJ).allow_multiple is False


def test_object_unmapped_is_unreadable_not_an_exception():
    context, _layer, table = _setup()
    body = callback_object.read_callback_object(context, "test", table, 0xFFFFF80099990000)
    assert isinstance(body.signature, renderers.UnreadableValue)
    assert isinstance(body.allow_multiple, renderers.UnreadableValue)
    assert not body.signature_ok


def test_registrations_read():
    context, _layer, table = _setup()
    regs, walked = registrations.list_registrations(context, "test", table, OBJ + 0x10, 8)
    assert walked.complete
    assert [r.address for r in regs] == [REG1 & memory.MASK48, REG2 & memory.MASK48]
    first = regs[0]
    assert first.callback_object == OBJ & memory.MASK48
    assert first.routine == ROUTINE & memory.MASK48
    assert first.context == 0x1234
    assert first.busy == 2
    assert first.unregister_waiting is True
    assert regs[1].unregister_waiting is False  # garbage padding after the BOOLEAN ignored


def test_registration_partly_unmapped():
    context, layer, table = _setup()
    # A registration at the very end of the mapped region: Link readable, the rest not.
    tail = BASE + 0x1000 - 0x10
    _link(layer, OBJ + 0x10, [REG1, tail])
    regs, walked = registrations.list_registrations(context, "test", table, OBJ + 0x10, 8)
    assert len(regs) == 2
    broken = regs[1]
    assert broken.address == tail & memory.MASK48
    for value in (broken.callback_object, broken.routine, broken.context, broken.busy):
        assert isinstance(value, renderers.UnreadableValue)
    assert regs[0].routine == ROUTINE & memory.MASK48


def test_registrations_bounded():
    context, layer, table = _setup()
    entries = [BASE + 0x600 + 0x30 * i for i in range(20)]
    _link(layer, OBJ + 0x10, entries)
    regs, walked = registrations.list_registrations(
        context, "test", table, OBJ + 0x10, 8, max_entries=5
    )
    assert len(regs) == 5
    assert not walked.complete
