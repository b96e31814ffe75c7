"""Bounded, cycle-safe walkers for the kernel's lists in hostile memory: doubly linked
``LIST_ENTRY`` lists (:func:`walk_list`) and singly linked chains (:func:`walk_chain`, the
interlocked ``SLIST`` of :func:`walk_slist`).

The list is walked from its head in both directions: forward by ``Flink`` and backward by
``Blink``. An entry is on the list when either walk reaches it, and the list is *complete* when
either walk comes back to the head: then an entry reached by neither is really off the list
(an unlinked entry keeps stale pointers into the list, but no member points at it). When
neither walk closes (a zeroed page, an unmapped pointer, a cycle, smear), the list is
*incomplete*: what no walk reached may still be a member, so its absence proves nothing.

Each walk stops at its first broken link: an unreadable or null pointer, a cycle that does not
close at the head, or the bound. An entry is returned only when its own link in the walk's
direction could be read: a pointer into unmapped memory is a broken link, not an entry.
"""

import dataclasses
from typing import TYPE_CHECKING, FrozenSet, List, Optional, Tuple

from volatility3.framework import exceptions

if TYPE_CHECKING:
    from .context import KernelContext

DEFAULT_MAX_ENTRIES = 4096
#: The one warning every list that no walk closed is named in (where each broke: ``-v``).
NOT_WALKED_TO_THE_END = "Lists not walked to their end (what they hold may be missing; -v says where each broke)"


@dataclasses.dataclass
class ListWalk:
    """The result of walking one list both ways."""

    head: int
    #: Entry addresses (of their LIST_ENTRY) in list order: the forward walk's, then those only
    #: the backward walk reached.
    entries: List[int] = dataclasses.field(default_factory=list)
    forward_closed: bool = False
    backward_closed: bool = False
    #: The head itself could not be read: nothing is known of the list.
    head_unreadable: bool = False
    problems: List[str] = dataclasses.field(default_factory=list)
    members: FrozenSet[int] = frozenset()

    @property
    def complete(self) -> bool:
        """Some walk came back to the head: membership is known."""
        return self.forward_closed or self.backward_closed

    def __contains__(self, address: int) -> bool:
        return address in self.members


def _walk_one_way(
    kernel: "KernelContext", head: int, first: int, link_offset: int, max_entries: int
) -> Tuple[List[int], bool, Optional[str]]:
    """Follow the link at ``link_offset`` of each entry from ``first``: (entries, closed, problem)."""
    entries: List[int] = []
    seen = {head}
    current, following = head, first
    while True:
        if following == head:
            return entries, True, None
        if following == 0:
            return entries, False, f"null link in {current:#x}"
        if following in seen:
            return entries, False, f"cycle: {current:#x} links back to {following:#x}, not the head"
        if len(entries) >= max_entries:
            return entries, False, f"bound of {max_entries} entries reached"
        try:
            after = kernel.read_pointer(following + link_offset)
        except exceptions.InvalidAddressException:
            return entries, False, f"{current:#x} links to unreadable {following:#x}"
        seen.add(following)
        entries.append(following)
        current, following = following, after


def walk_list(
    kernel: "KernelContext",
    head: int,
    what: str,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> ListWalk:
    """Walk the list whose LIST_ENTRY head is at ``head`` both ways, at most ``max_entries``
    entries each way. A list that no walk could close is named (``what``: the list, by its
    owner's name where it was read) in the run's one warning about such lists: the analyst must
    know that its members may not all be listed."""
    head &= kernel.mask
    result = ListWalk(head=head)
    try:
        flink = kernel.read_pointer(head)
        blink = kernel.read_pointer(head + kernel.pointer_size)
    except exceptions.InvalidAddressException:
        result.head_unreadable = True
        result.problems.append(f"list head {head:#x} unreadable")
        kernel.diagnostics.warning(NOT_WALKED_TO_THE_END, what, result.problems[0])
        return result
    forward, result.forward_closed, problem = _walk_one_way(kernel, head, flink, 0, max_entries)
    if problem:
        result.problems.append(f"forward: {problem}")
    backward, result.backward_closed, problem = _walk_one_way(kernel, head, blink, kernel.pointer_size, max_entries)
    if problem:
        result.problems.append(f"backward: {problem}")
    reached = set(forward)
    result.entries = forward + [entry for entry in reversed(backward) if entry not in reached]
    result.members = frozenset(result.entries)
    if not result.complete:
        kernel.diagnostics.warning(NOT_WALKED_TO_THE_END, what, "; ".join(result.problems))
    elif result.problems:
        kernel.diagnostics.info(f"{what}: " + "; ".join(result.problems) + " (the other direction closed)")
    return result


@dataclasses.dataclass
class ChainWalk:
    """A singly linked chain walked from its first entry (an ``SLIST``, a free list linked
    through the first pointer of each entry): the entries reached and whether it ended on a
    null link (``complete``) or broke (``problem``)."""

    entries: List[int] = dataclasses.field(default_factory=list)
    complete: bool = True
    problem: Optional[str] = None


def walk_chain(kernel: "KernelContext", first: int, max_entries: int = DEFAULT_MAX_ENTRIES) -> ChainWalk:
    """Follow the pointer at offset 0 of each entry from ``first`` until a null link: bounded,
    cycle-safe, stopping at an unreadable entry."""
    walk = ChainWalk()
    seen = set()
    entry = first
    while entry:
        if entry in seen:
            walk.complete, walk.problem = False, f"cycle at {entry:#x}"
            break
        if len(walk.entries) >= max_entries:
            walk.complete, walk.problem = False, f"bound of {max_entries} entries reached"
            break
        try:
            following = kernel.read_pointer(entry)
        except exceptions.InvalidAddressException:
            walk.complete, walk.problem = False, f"entry {entry:#x} unreadable"
            break
        seen.add(entry)
        walk.entries.append(entry)
        entry = following
    return walk


def slist_first(kernel: "KernelContext", address: int) -> Optional[int]:
    """The first entry of the ``_SLIST_HEADER`` at ``address`` (x64 ``HeaderX64.NextEntry`` << 4,
    the address's bits 4-47 made canonical; x86 ``Next``); None when unreadable."""
    from .addresses import canonical

    view = kernel.kernel_view("_SLIST_HEADER", ["HeaderX64.NextEntry"], optional=["HeaderX64.NextEntry"])
    if view is not None and view.has("HeaderX64.NextEntry"):
        record = view.read(kernel.reader, address)
        if not record.complete:
            return None
        return canonical(record["HeaderX64.NextEntry"] << 4, kernel.pointer_size) & kernel.mask
    try:
        return kernel.read_pointer(address)
    except exceptions.InvalidAddressException:
        return None


def walk_slist(kernel: "KernelContext", address: int, max_entries: int = DEFAULT_MAX_ENTRIES) -> Optional[ChainWalk]:
    """The entries of the interlocked list whose ``_SLIST_HEADER`` is at ``address`` (each
    entry's first pointer names the next); None when the header is unreadable."""
    first = slist_first(kernel, address)
    if first is None:
        return None
    return walk_chain(kernel, first, max_entries)
