"""A bounded, cycle-safe walker for doubly linked ``LIST_ENTRY`` lists in hostile memory.

Membership is decided by following ``Flink`` from the list head only: an unlinked entry keeps
stale pointers into the list, and ``Blink`` pointers are not trusted (the kernel itself
iterates forward). The walk stops at the first broken link (unreadable or null pointer, a
cycle that does not close at the head, the bound); what lies behind a break is for pool
scanning to find (``orphan_registration``), not for the list walk to claim.
"""

import dataclasses
import logging
from typing import List, Optional

from volatility3.framework import exceptions, interfaces

from volatility3.plugins.windows.callback_objects import rawmem

vollog = logging.getLogger(__name__)

DEFAULT_MAX_ENTRIES = 4096


@dataclasses.dataclass
class ListWalk:
    """The result of walking one list."""

    head: int
    entries: List[int] = dataclasses.field(default_factory=list)
    #: True when the Flink chain came back to the head without incident.
    complete: bool = False
    #: True when the head itself could not be read: the list's membership is unknown.
    head_unreadable: bool = False
    problems: List[str] = dataclasses.field(default_factory=list)


def read_pointer(
    context: interfaces.context.ContextInterface,
    layer_name: str,
    address: int,
    pointer_size: int,
) -> int:
    """Reads a little-endian pointer masked to the layer's address width, as Volatility's
    ``Pointer`` does (48 bits on x64), so addresses compare equal to the ones it renders.
    Raises InvalidAddressException. Reads go through the run's shared page cache."""
    return rawmem.shared_reader(context, layer_name).pointer(address, pointer_size)


def walk_list(
    context: interfaces.context.ContextInterface,
    layer_name: str,
    head: int,
    pointer_size: int,
    max_entries: int = DEFAULT_MAX_ENTRIES,
    what: Optional[str] = None,
) -> ListWalk:
    """Walks the list whose LIST_ENTRY head is at ``head`` and returns the addresses of the
    LIST_ENTRY of every entry (not of the containing records), in list order.

    An entry is returned only when its own ``Flink`` is readable: a pointer into unmapped
    memory is a broken link, not an entry. Each entry appears once; at most ``max_entries``
    are returned. Problems are logged as warnings (``what`` names the list) and kept in
    the result.
    """
    layer = context.layers[layer_name]
    head &= layer.address_mask
    result = ListWalk(head=head)
    seen = {head}
    try:
        nxt = read_pointer(context, layer_name, head, pointer_size)
    except exceptions.InvalidAddressException:
        result.head_unreadable = True
        result.problems.append(f"list head {head:#x} unreadable")
        nxt = None
    current = head
    while nxt is not None:
        if nxt == head:
            result.complete = True
            break
        if nxt == 0:
            result.problems.append(f"null Flink in {current:#x}")
            break
        if nxt in seen:
            result.problems.append(f"cycle: Flink of {current:#x} returns to {nxt:#x}, not the head")
            break
        if len(result.entries) >= max_entries:
            result.problems.append(f"bound of {max_entries} entries reached")
            break
        try:
            after = read_pointer(context, layer_name, nxt, pointer_size)
        except exceptions.InvalidAddressException:
            result.problems.append(f"Flink of {current:#x} points to unreadable {nxt:#x}")
            break
        seen.add(nxt)
        result.entries.append(nxt)
        current, nxt = nxt, after
    if result.problems:
        # A kernel list that does not close is smear or tampering: the analyst must know
        # that what follows the break was not listed (only a pool scan can still find it).
        label = what or f"list at {head:#x}"
        vollog.warning(f"{label}: " + "; ".join(result.problems))
    return result
