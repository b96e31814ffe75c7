"""A bounded, cycle-safe walker for doubly linked ``LIST_ENTRY`` lists in hostile memory.

Membership is decided from the list head only: an unlinked entry keeps stale pointers into the
list, so starting from an entry proves nothing. The walker follows ``Flink`` from the head; if
that chain breaks (unreadable or null pointer, cycle that does not close at the head, bound
reached) it also follows ``Blink`` from the head so the entries behind the break are still
found.
"""

import dataclasses
import logging
from typing import List, Optional

from volatility3.framework import exceptions, interfaces

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
    Raises InvalidAddressException."""
    layer = context.layers[layer_name]
    data = layer.read(address, pointer_size)
    return int.from_bytes(data, "little") & layer.address_mask


def _follow(
    context: interfaces.context.ContextInterface,
    layer_name: str,
    head: int,
    pointer_size: int,
    link_offset: int,
    max_entries: int,
    seen: set,
    result: ListWalk,
    direction: str,
) -> List[int]:
    """Follows one direction from the head; returns the entries found, in walk order."""
    found: List[int] = []
    current = head
    while True:
        try:
            nxt = read_pointer(context, layer_name, current + link_offset, pointer_size)
        except exceptions.InvalidAddressException:
            if current == head:
                result.head_unreadable = True
                result.problems.append(f"list head {head:#x} unreadable")
            else:
                result.problems.append(f"{direction} of entry {current:#x} unreadable")
            return found
        if nxt == head:
            if direction == "Flink":
                result.complete = True
            return found
        if nxt == 0:
            result.problems.append(f"null {direction} in entry {current:#x}")
            return found
        if nxt in seen:
            if direction == "Flink":
                result.problems.append(
                    f"cycle: {direction} of {current:#x} returns to {nxt:#x}, not the head"
                )
            # Backwards, meeting an entry the Flink walk already found is the normal way
            # to stop: the two walks met behind the break.
            return found
        if len(seen) > max_entries:  # ``seen`` holds the head too
            result.problems.append(f"bound of {max_entries} entries reached")
            return found
        seen.add(nxt)
        found.append(nxt)
        current = nxt


def walk_list(
    context: interfaces.context.ContextInterface,
    layer_name: str,
    head: int,
    pointer_size: int,
    max_entries: int = DEFAULT_MAX_ENTRIES,
    what: Optional[str] = None,
) -> ListWalk:
    """Walks the list whose LIST_ENTRY head is at ``head`` and returns the addresses of the
    LIST_ENTRY of every entry (not of the containing records).

    The head is masked to the layer's address width first. Each entry appears at most once;
    at most ``max_entries`` entries are returned. Problems are logged at debug level with
    ``what`` naming the list, and kept in the result.
    """
    layer = context.layers[layer_name]
    head &= layer.address_mask
    result = ListWalk(head=head)
    seen: set = {head}
    forward = _follow(
        context, layer_name, head, pointer_size, 0, max_entries, seen, result, "Flink"
    )
    backward: List[int] = []
    if not result.complete and not result.head_unreadable:
        backward = _follow(
            context,
            layer_name,
            head,
            pointer_size,
            pointer_size,
            max_entries,
            seen,
            result,
            "Blink",
        )
    # Blink order is reversed list order: put those entries back in list order.
    result.entries = forward + list(reversed(backward))
    if result.problems:
        label = what or f"list at {head:#x}"
        vollog.debug(f"{label}: " + "; ".join(result.problems))
    return result
