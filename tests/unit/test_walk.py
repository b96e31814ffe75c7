"""The bounded LIST_ENTRY walker on hand-made lists."""

import logging

from volatility3_plugins.windows.kernelread import lists

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
    kernel, layer = memory.make_kernel()
    layer.map(BASE, 0x10000)
    entries = [BASE + 0x100 * (i + 1) for i in range(count)]
    _link(layer, entries)
    return kernel, layer, entries


def _masked(values):
    return [v & memory.MASK48 for v in values]


def test_well_formed_list():
    kernel, _layer, entries = _setup()
    result = lists.walk_list(kernel, HEAD, "test list")
    assert result.complete
    assert result.entries == _masked(entries)
    assert not result.problems


def test_empty_list():
    kernel, layer = memory.make_kernel()
    layer.map(BASE, 0x100)
    layer.ptr(HEAD, HEAD)
    layer.ptr(HEAD + 8, HEAD)
    result = lists.walk_list(kernel, HEAD, "test list")
    assert result.complete and result.entries == []


def test_cycle_not_through_head_is_closed_by_the_blinks():
    kernel, layer, entries = _setup(4)
    # entry 2 points back to entry 1: an endless loop that never returns to the head
    layer.ptr(entries[2], entries[1])
    result = lists.walk_list(kernel, HEAD, "test list")
    assert any("cycle" in p for p in result.problems)
    assert not result.forward_closed and result.backward_closed and result.complete
    # entry 3, behind the loop, is reached backward: each entry once, in list order
    assert result.entries == _masked(entries)


def test_both_ways_broken_is_incomplete_and_claims_only_what_was_reached():
    kernel, layer, entries = _setup(5)
    layer.ptr(entries[1], 0xFFFFF80077770000)  # Flink of entry 1 into unmapped memory
    layer.ptr(entries[3] + 8, 0)  # Blink of entry 3 null
    result = lists.walk_list(kernel, HEAD, "test list")
    assert not result.complete
    # forward: 0, 1; backward: 4, 3; entry 2 lies between the breaks and is not claimed
    assert result.entries == _masked([entries[0], entries[1], entries[3], entries[4]])
    assert entries[2] & memory.MASK48 not in result
    assert any("unreadable" in p for p in result.problems) and any("null" in p for p in result.problems)


def test_cut_list_is_recovered_by_the_blinks():
    """A zeroed page or a smeared pointer cuts the Flink chain; the ring of Blinks still closes."""
    kernel, layer, entries = _setup(4)
    layer.ptr(entries[1], 0)
    result = lists.walk_list(kernel, HEAD, "test list")
    assert result.complete and not result.forward_closed
    assert result.entries == _masked(entries)


def test_half_unlinked_entry_counts_as_linked():
    """An entry some walk reaches is on the list, even when the other walk closes without it."""
    kernel, layer, entries = _setup(3)
    layer.ptr(entries[0], entries[2])  # Flink skips entry 1; Blinks still pass through it
    result = lists.walk_list(kernel, HEAD, "test list")
    assert result.forward_closed and result.backward_closed
    assert set(result.entries) == set(_masked(entries))


def test_cycle_of_self_loop():
    kernel, layer, entries = _setup(2)
    layer.ptr(entries[0], entries[0])
    layer.ptr(entries[1] + 8, entries[1])
    result = lists.walk_list(kernel, HEAD, "test list")
    assert result.entries == _masked([entries[0], entries[1]])
    assert not result.complete


def test_bound_limits_entries():
    kernel, _layer, entries = _setup(50)
    result = lists.walk_list(kernel, HEAD, "test list", max_entries=10)
    assert result.entries == _masked(entries[:10] + entries[-10:])
    assert any("bound" in p for p in result.problems)
    assert not result.complete


def test_bound_not_hit_by_exact_count():
    kernel, _layer, entries = _setup(10)
    result = lists.walk_list(kernel, HEAD, "test list", max_entries=10)
    assert result.complete and len(result.entries) == 10


def test_head_pointing_to_unmapped_memory_both_ways_gives_no_entries():
    kernel, layer, entries = _setup(1)
    layer.ptr(HEAD, 0xFFFFF80077770000)
    layer.ptr(HEAD + 8, 0xFFFFF80077770000)
    result = lists.walk_list(kernel, HEAD, "test list")
    assert result.entries == [] and not result.head_unreadable and not result.complete


def test_unreadable_head():
    kernel, _layer = memory.make_kernel()
    result = lists.walk_list(kernel, HEAD, "test list")
    assert result.head_unreadable and result.entries == [] and not result.complete


def test_incomplete_list_is_said_once(caplog):
    caplog.set_level(logging.INFO)
    kernel, layer, entries = _setup(3)
    layer.ptr(entries[0], 0)
    layer.ptr(entries[2] + 8, 0)
    for _ in range(3):
        lists.walk_list(kernel, HEAD, "test list")
    kernel.diagnostics.flush()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"{lists.NOT_WALKED_TO_THE_END}: test list"]
    details = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "test list" in r.getMessage()]
    assert len(details) == 1 and "forward: null link" in details[0], "where it broke: said once, at info level"


def test_pointers_masked_to_48_bits():
    kernel, layer, entries = _setup(1)
    result = lists.walk_list(kernel, HEAD, "test list")
    assert result.entries == [entries[0] & memory.MASK48]
    assert result.head == HEAD & memory.MASK48


def test_x86_pointer_size():
    kernel, layer = memory.make_kernel(bits=32)
    head, entry = 0x80100000, 0x80100100
    layer.map(head, 0x1000)
    layer.ptr(head, entry, 4)
    layer.ptr(head + 4, entry, 4)
    layer.ptr(entry, head, 4)
    layer.ptr(entry + 4, head, 4)
    result = lists.walk_list(kernel, head, "test list")
    assert result.complete and result.entries == [entry]
