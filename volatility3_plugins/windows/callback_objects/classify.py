"""Row classification: from what the routes, the registrations' reads and the attribution
found (the facts) to the flags of each output row.

The evidence rule: a suspicious flag rests on something read from memory. Memory that is
missing, unreadable or all zeros proves nothing, and neither does absence from a walk that did
not reach its end: such rows get the informational ``unreadable`` or ``list_incomplete``
instead, so the analyst sees what could not be judged. The flag names and their order are the
schema's (:mod:`...schema.flags`).
"""

import dataclasses
from typing import List, Optional, Sequence, Set

from ...schema.flags import (
    ALLOCATION_UNKNOWN,
    BAD_BACKLINK,
    BAD_SIGNATURE,
    CODE_CAVE,
    FREED,
    GLOBAL_MISMATCH,
    HIDDEN_MODULE,
    LIST_INCOMPLETE,
    MID_FUNCTION,
    MULTIPLE_ON_EXCLUSIVE,
    NON_EXECUTABLE,
    NOT_IN_BASELINE,
    NOT_IN_DIRECTORY,
    ORPHAN_REGISTRATION,
    OUTSIDE_MODULES,
    TRAMPOLINE,
    UNEXPECTED_REGISTRANT,
    UNLINKED_OBJECT,
    UNREADABLE,
    is_evidence,
    sort_flags,
)
from ..kernelpool.state import BlockState
from ..kernelread.diagnostics import COMPLETE


@dataclasses.dataclass
class ObjectFacts:
    """What the routes and the object's read told us, as classification input."""

    #: The body was read and is not all zeros: only then can it be judged at all.
    body_readable: bool
    signature_ok: bool
    #: ``ExpCallbackListHead`` (8.1+): COMPLETE, INCOMPLETE, or None (no list / unavailable).
    list_state: Optional[str]
    found_by_list: bool
    #: The ``\\Callback`` directory was walked to its end.
    directory_complete: bool
    found_by_directory: bool
    #: A ``nt!ExCb*`` global points here and the object's header, read, names another object.
    global_mismatch: bool
    allow_multiple: Optional[bool]  # None when unreadable
    #: Readable registrations on the object's list.
    registration_count: int
    #: Found by the pool scan alone, in a block whose allocation state the allocator's metadata
    #: cannot tell: it may be a freed object, so its absence from the list proves nothing.
    allocation_unknown: bool = False


@dataclasses.dataclass
class RegistrationFacts:
    #: Some byte of the block read as non-zero: only then is it evidence of anything.
    readable: bool = True
    backlink_ok: Optional[bool] = None  # None when CallbackObject is unreadable or zero
    #: In a listed module (True), in none of a complete module list (False), or unknown (None:
    #: routine unreadable or zero, or no module of an incomplete list holds it).
    in_module: Optional[bool] = None
    #: The routine lies in no module of a module list whose walk did not close.
    module_list_incomplete: bool = False
    executable: Optional[bool] = None  # None when unknown (no section headers, no module)
    unexpected_registrant: bool = False
    #: The routine lies in a driver image that another trace (a loader entry or driver object
    #: in pool or in \\Driver, an entry of the inverted function table) shows and a complete
    #: module list lacks.
    hidden_module: bool = False
    #: The routine's first instructions send control to an argument, or (fixed targets followed)
    #: outside every module of a complete module list.
    trampoline: bool = False
    #: x64: the routine lies inside a function of its image's exception directory, not at its start.
    mid_function: bool = False
    #: The routine lies in an executable section beyond its VirtualSize, or in no section.
    code_cave: bool = False


def classify_object(facts: ObjectFacts) -> Set[str]:
    """Flags that belong to the object, hence to each of its rows."""
    found: Set[str] = set()
    if facts.directory_complete and not facts.found_by_directory:
        found.add(NOT_IN_DIRECTORY)
    if not facts.body_readable:
        # Missing or zeroed memory: not even that it is a callback object can be told.
        found.add(UNREADABLE)
        return found
    if not facts.signature_ok:
        found.add(BAD_SIGNATURE)
    if facts.global_mismatch:
        found.add(GLOBAL_MISMATCH)
    if facts.allocation_unknown:
        found.add(ALLOCATION_UNKNOWN)
    elif facts.list_state is not None and not facts.found_by_list:
        found.add(UNLINKED_OBJECT if facts.list_state == COMPLETE else LIST_INCOMPLETE)
    return found


def classify_routine(facts: RegistrationFacts) -> Set[str]:
    """Flags that say where a registration's routine lies."""
    found: Set[str] = set()
    if facts.in_module is False:
        found.add(OUTSIDE_MODULES)
    if facts.hidden_module:
        found.add(HIDDEN_MODULE)
    if facts.executable is False:
        found.add(NON_EXECUTABLE)
    if facts.trampoline:
        found.add(TRAMPOLINE)
    if facts.mid_function:
        found.add(MID_FUNCTION)
    if facts.code_cave:
        found.add(CODE_CAVE)
    if facts.module_list_incomplete:
        found.add(LIST_INCOMPLETE)
    return found


def classify_registration(facts: RegistrationFacts, object_facts: ObjectFacts) -> Set[str]:
    """Flags of one registration row (object-level flags not included)."""
    if not facts.readable:
        return {UNREADABLE}
    found = classify_routine(facts)
    if facts.backlink_ok is False:
        found.add(BAD_BACKLINK)
    if object_facts.allow_multiple is False and object_facts.registration_count > 1:
        found.add(MULTIPLE_ON_EXCLUSIVE)
    if facts.unexpected_registrant:
        found.add(UNEXPECTED_REGISTRANT)
    return found


def classify(
    object_facts: ObjectFacts, registration_facts: Optional[RegistrationFacts] = None
) -> List[str]:
    """All flags of one output row, sorted by severity. ``registration_facts`` is None for
    the single row of an object without registrations."""
    found = classify_object(object_facts)
    if registration_facts is not None:
        found |= classify_registration(registration_facts, object_facts)
    return sort_flags(found)


def classify_baseline(row_flags: Sequence[str], in_baseline: Optional[bool]) -> List[str]:
    """A registration row's flags with the known-good comparison's verdict: ``in_baseline`` is
    True or False when the row was compared, None when no baseline was given or the row cannot
    be compared (no registration, its owner module or its object's name unknown). A row that is
    no evidence of a live registration (``NO_EVIDENCE``) is never ``not_in_baseline``."""
    if in_baseline is False and is_evidence(row_flags):
        return sort_flags(list(row_flags) + [NOT_IN_BASELINE])
    return list(row_flags)


def classify_loose(facts: RegistrationFacts, state: BlockState, owner_list_complete: bool) -> List[str]:
    """Flags of a loose registration: a block the scan found on no walked list.

    Freed pool is full of stale blocks (the false positive of scanners that report them as
    live): a freed block is ``freed`` and nothing else, whatever its stale contents say, and a
    block whose state the allocator's metadata cannot tell is ``allocation_unknown`` and nothing
    else. An allocated one is ``orphan_registration`` when every object's list was walked to its
    end (``list_incomplete`` when not: its ``CallbackObject`` may lie, and it may be a member past
    a break in any list), plus what its routine's location says; the object-level flags stay on
    the rows of the object it names.
    """
    if state == BlockState.FREED:
        return [FREED]
    if state != BlockState.ALLOCATED:
        return [ALLOCATION_UNKNOWN]
    return sort_flags(
        {ORPHAN_REGISTRATION if owner_list_complete else LIST_INCOMPLETE} | classify_routine(facts)
    )

