"""The bounded LIST_ENTRY walker on hand-made lists."""

from volatility3.plugins.windows.callback_objects import walk

from tests.unit import memory

BASE = 0xFFFFF80000100000
HEAD = BASE


def _link(layer, entries):
    """Writes a well-formed circular list HEAD <-> entries..."""
    chain = [HEAD] + entries
    for index, node in enumerate(chain):
        layer.ptr(node, chain[(index + 1) % len(chain)])
        layer.ptr(node + 8, chain[index - 1])


def _setup(count=3):
    context, layer = memory.make_context()
    layer.map(BASE, 0x10000)
    entries = [BASE + 0x100 * (i + 1) for i in range(count)]
    _link(layer, entries)
    return context, layer, entries


def _masked(values):
    return [v & memory.MASK48 for v in values]


def test_well_formed_list():
    context, _layer, entries = _setup()
    result = walk.walk_list(context, "test", HEAD, 8)
    assert result.complete
    assert result.entries == _masked(entries)
    assert not result.problems


def test_empty_list():
    context, layer = memory.make_context()
    layer.map(BASE, 0x100)
    layer.ptr(HEAD, HEAD)
    layer.ptr(HEAD + 8, HEAD)
    result = walk.walk_list(context, "test", HEAD, 8)
    assert result.complete and result.entries == []


def test_cycle_not_through_head_stops_and_backward_walk_recovers():
    context, layer, entries = _setup(4)
    # entry 2 points back to entry 1: an endless loop that never returns to the head
    layer.ptr(entries[2], entries[1])
    result = walk.walk_list(context, "test", HEAD, 8)
    assert not result.complete
    assert any("cycle" in p for p in result.problems)
    # Blink from the head still reaches entry 3; each entry exactly once
    assert sorted(result.entries) == sorted(_masked(entries))
    assert len(result.entries) == len(set(result.entries))


def test_bound_limits_entries():
    context, _layer, entries = _setup(50)
    result = walk.walk_list(context, "test", HEAD, 8, max_entries=10)
    assert len(result.entries) <= 10
    assert any("bound" in p for p in result.problems)


def test_unmapped_flink_then_blink_finds_the_rest():
    context, layer, entries = _setup(4)
    layer.ptr(entries[1], 0xFFFFF80077770000)  # Flink of entry 1 into unmapped memory
    result = walk.walk_list(context, "test", HEAD, 8)
    assert not result.complete
    # entries 0, 1 forward; the unmapped target is yielded (it is where Flink points) and is
    # unreadable, then Blink from the head brings back entries 3 and 2.
    assert _masked(entries) == [e for e in result.entries if e in _masked(entries)]
    assert set(_masked(entries)) <= set(result.entries)
    assert any("unreadable" in p for p in result.problems)


def test_unreadable_head():
    context, _layer = memory.make_context()
    result = walk.walk_list(context, "test", HEAD, 8)
    assert result.head_unreadable and result.entries == []


def test_null_flink():
    context, layer, entries = _setup(2)
    layer.ptr(entries[0], 0)
    result = walk.walk_list(context, "test", HEAD, 8)
    assert not result.complete
    assert set(_masked(entries)) == set(result.entries)


def test_pointers_masked_to_48_bits():
    context, layer, entries = _setup(1)
    result = walk.walk_list(context, "test", HEAD, 8)
    assert result.entries == [entries[0] & memory.MASK48]
    assert result.head == HEAD & memory.MASK48


def test_x86_pointer_size():
    context, layer = memory.make_context(bits=32)
    head, entry = 0x80100000, 0x80100100
    layer.map(head, 0x1000)
    layer.ptr(head, entry, 4)
    layer.ptr(head + 4, entry, 4)
    layer.ptr(entry, head, 4)
    layer.ptr(entry + 4, head, 4)
    result = walk.walk_list(context, "test", head, 4)
    assert result.complete and result.entries == [entry]
